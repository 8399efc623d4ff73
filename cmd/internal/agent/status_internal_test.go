package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

type wgFunc func(string) (*wgtypes.Device, error)

func (f wgFunc) Device(n string) (*wgtypes.Device, error) { return f(n) }

// fakeKernel is the netlink transport of the checks: links and the main
// table, changeable by the test.
type fakeKernel struct {
	mu     sync.Mutex
	routes []netlink.Route
	reads  int
}

func (k *fakeKernel) LinkList() ([]netlink.Link, error) {
	return []netlink.Link{
		&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0", Index: 5, MTU: 1420}},
		&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2, MTU: 1500}},
	}, nil
}

func (k *fakeKernel) RouteListFiltered(int, *netlink.Route, uint64) ([]netlink.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reads++
	return append([]netlink.Route(nil), k.routes...), nil
}

func (k *fakeKernel) AddrList(netlink.Link, int) ([]netlink.Addr, error) {
	return []netlink.Addr{
		{IPNet: &net.IPNet{IP: net.IPv4(10, 200, 0, 1), Mask: net.CIDRMask(24, 32)}, LinkIndex: 5},
		{IPNet: &net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)}, LinkIndex: 5}, // the kernel's link-local: not exported
	}, nil
}

func ipnet(s string) *net.IPNet {
	_, n, _ := net.ParseCIDR(s)
	return n
}

// The continuous checks and the status API on fake transports: a route into
// wg0 no peer allows is a problem (metric, status) until it is removed; a
// peer with an endpoint that never handshook is reported only after the
// grace; each peer gets its health word, probe numbers and rates.
func TestChecksAndStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		devKey, _ := wgtypes.GeneratePrivateKey()
		a, b := wgtypes.Key{1}, wgtypes.Key{2}
		var mu sync.Mutex
		rx := int64(0)
		client := wgFunc(func(name string) (*wgtypes.Device, error) {
			mu.Lock()
			defer mu.Unlock()
			rx += 5000 // 1 kB/s at a 5 s poll
			return &wgtypes.Device{Name: name, Type: wgtypes.Userspace, PublicKey: devKey.PublicKey(), ListenPort: 51820, Peers: []wgtypes.Peer{
				{PublicKey: a, Endpoint: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 51820}, LastHandshakeTime: time.Now().Add(-10 * time.Second),
					ReceiveBytes: rx, AllowedIPs: []net.IPNet{*ipnet("10.200.0.2/32")}, PersistentKeepaliveInterval: 25 * time.Second},
				{PublicKey: b, Endpoint: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 11), Port: 51820}, AllowedIPs: []net.IPNet{*ipnet("10.200.0.3/32")}},
			}}, nil
		})
		kernel := &fakeKernel{routes: []netlink.Route{
			{Dst: ipnet("10.200.0.0/24"), LinkIndex: 5, Protocol: 2, Type: 1, Table: 254},
			{Dst: ipnet("192.0.2.0/24"), LinkIndex: 2, Protocol: 2, Type: 1, Table: 254},
			{Dst: ipnet("10.99.0.0/16"), LinkIndex: 5, Protocol: 4, Type: 1, Table: 254},
		}}
		fn := probertest.New(func(_ string, dst netip.Addr, _ int) probertest.Reply {
			if dst == netip.MustParseAddr("10.200.0.3") {
				return probertest.Reply{Drop: true}
			}
			return probertest.Reply{Delay: 3 * time.Millisecond}
		})
		ag, err := New(Options{Logger: slog.New(slog.DiscardHandler),
			Collector: collector.Options{Client: client, ListUAPI: func() ([]string, error) { return []string{"wg0"}, nil }, Links: kernel},
			Prober: prober.Options{Open: fn.Open, PMTUProbe: func(_ context.Context, _ prober.Target, size int, _ time.Duration, _ bool) (bool, bool, error) {
				return size <= 1420, false, nil // the path passes what the device sends
			}},
			Routes: noRoutes{}, Checks: kernel,
			Firewall: func(context.Context) (*diagnose.Ruleset, error) {
				return diagnose.ParseRuleset([]byte(`{"nftables": []}`))
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer ag.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for _, c := range ag.components {
			if _, ok := c.(remediateComponent); !ok { // no failover group: nothing to run
				go c.Run(ctx)
			}
		}
		problem := func(check string) float64 {
			t.Helper()
			mfs, err := ag.Gatherer().Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if mf.GetName() == "wgpulse_config_problem" && l.GetName() == "check" && l.GetValue() == check {
							return m.GetGauge().GetValue()
						}
					}
				}
			}
			return 0
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if problem(diagnose.CheckRouteNotAllowed) != 1 {
			t.Errorf("route 10.99.0.0/16 into wg0: no wgpulse_config_problem{check=%q}", diagnose.CheckRouteNotAllowed)
		}
		if problem(diagnose.CheckHandshakeNever) != 0 {
			t.Errorf("never handshaked after 30 s: reported within the %s grace", neverGrace)
		}

		// The device's address, and every prefix containing it, for the
		// cross-node AllowedIPs rule.
		if n, _ := testutil.GatherAndCount(ag.Gatherer(), "wgpulse_device_address_info"); n != 1 {
			t.Errorf("%d wgpulse_device_address_info series, want 1", n)
		}
		mfs, _ := ag.Gatherer().Gather()
		prefixes := map[string]bool{}
		for _, mf := range mfs {
			if mf.GetName() == "wgpulse_device_address_prefix_info" {
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "prefix" {
							prefixes[l.GetValue()] = true
						}
					}
				}
			}
		}
		if len(prefixes) != 33 || !prefixes["10.200.0.1/32"] || !prefixes["10.200.0.0/24"] || !prefixes["0.0.0.0/0"] || !prefixes["10.0.0.0/8"] {
			t.Errorf("covering prefixes of 10.200.0.1: %v", prefixes)
		}

		st := getStatus(t, ag)
		if len(st.Devices) != 1 || len(st.Devices[0].Peers) != 2 {
			t.Fatalf("status: %+v", st)
		}
		pa, pb := st.Devices[0].Peers[0], st.Devices[0].Peers[1]
		if pa.Health != "ok" || pa.Probe == nil || pa.Probe.State != "up" || pa.Probe.RTTP50Seconds != 0.003 || pa.ReceiveBytesPerSec != 1000 ||
			pa.HandshakeAgeSeconds == nil || pa.KeepaliveSeconds != 25 || !strings.Contains(pa.Reason, "RTT p50 3ms") {
			t.Errorf("peer A: %+v probe %+v", pa, pa.Probe)
		}
		if pb.Health != "never" || pb.HandshakeAgeSeconds != nil || !strings.Contains(pb.Reason, "endpoint 192.0.2.11:51820") {
			t.Errorf("peer B: %+v", pb)
		}
		if len(st.Problems) != 1 || st.Problems[0].Check != diagnose.CheckRouteNotAllowed {
			t.Errorf("problems: %v", st.Problems)
		}

		// After the grace, the never-handshaked peer is a problem too; the
		// route removed, its problem goes at the next routing-table read.
		kernel.mu.Lock()
		kernel.routes = kernel.routes[:2]
		kernel.mu.Unlock()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if problem(diagnose.CheckHandshakeNever) != 1 || problem(diagnose.CheckRouteNotAllowed) != 0 {
			t.Errorf("after 2m30s: handshake_never %v (want 1), route_not_allowed %v (want 0)",
				problem(diagnose.CheckHandshakeNever), problem(diagnose.CheckRouteNotAllowed))
		}
		if kernel.reads < 2 || kernel.reads > 7 {
			t.Errorf("routing table read %d times in 2m30s, want every %s", kernel.reads, routesEvery)
		}
	})
}

func getStatus(t *testing.T, a *Agent) Status {
	t.Helper()
	h, err := a.Handler()
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", StatusPath, nil))
	var st Status
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &st) != nil || st.Version != 1 {
		t.Fatalf("GET %s: %d %s", StatusPath, rec.Code, rec.Body.String())
	}
	return st
}

// noRoutes is a route transport that must not be used (no failover group).
type noRoutes struct{ remediate.RouteHandle }

// A peer's failover group: a route group's path runs through the device
// and a target the peer allows; an endpoint group names device and peer.
// A primary whose traffic is on the backup is degraded.
func TestFailoverOfAPeer(t *testing.T) {
	groups := []failover.GroupStatus{
		{Name: "dc1", Mode: "route", Active: "backup", Paths: map[string]failover.PathStatus{
			"primary": {Device: "wg-p", Target: "10.200.1.2"}, "backup": {Device: "wg-b", Target: "10.200.2.2"}}},
		{Name: "wan", Mode: "endpoint", Device: "wg0", Peer: "peer-key", Active: "primary"},
	}
	peer := func(key, allowed string) collector.Peer {
		return collector.Peer{PublicKey: key, AllowedIPs: []netip.Prefix{netip.MustParsePrefix(allowed)}, Handshake: collector.HandshakeFresh, LastHandshake: time.Now()}
	}
	for _, tc := range []struct {
		device string
		p      collector.Peer
		want   *FailoverStatus
	}{
		{"wg-p", peer("a", "10.200.1.2/32"), &FailoverStatus{Group: "dc1", Path: "primary", Active: "backup"}},
		{"wg-b", peer("b", "10.200.2.0/30"), &FailoverStatus{Group: "dc1", Path: "backup", Active: "backup"}},
		{"wg-p", peer("c", "10.9.0.0/16"), nil}, // the device, but not the target
		{"wg0", peer("peer-key", "10.0.0.0/8"), &FailoverStatus{Group: "wan", Path: "primary", Active: "primary"}},
		{"wg0", peer("other", "10.0.0.0/8"), nil},
	} {
		got := failoverOf(groups, tc.device, tc.p)
		if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
			t.Errorf("%s on %s: %+v, want %+v", tc.p.PublicKey, tc.device, got, tc.want)
		}
	}
	p := peer("a", "10.200.1.2/32")
	age := 5.0
	ps := PeerStatus{HandshakeAgeSeconds: &age, Failover: failoverOf(groups, "wg-p", p)}
	if word, why := healthWord(collector.Device{Name: "wg-p", MTU: 1420}, p, ps, DefaultConfig().Alerts, nil, "", time.Now()); word != "degraded" || why != "traffic on the backup path" {
		t.Errorf("primary carried by the backup: %s (%s), want degraded", word, why)
	}
}

// Every health word and its reason.
func TestHealthWords(t *testing.T) {
	now := time.Now()
	age := 5.0
	th := DefaultConfig().Alerts // loss 5%, RTT p99 250 ms
	dev := collector.Device{Name: "wg0", MTU: 1420}
	fresh := collector.Peer{PublicKey: "k", Handshake: collector.HandshakeFresh, LastHandshake: now.Add(-5 * time.Second)}
	probe := func(mod func(*ProbeStatus)) PeerStatus {
		pr := &ProbeStatus{Target: "10.0.0.1", State: "up", RTTP50Seconds: 0.002, RTTP99Seconds: 0.004, PathMTU: 1420}
		mod(pr)
		return PeerStatus{HandshakeAgeSeconds: &age, Probe: pr}
	}
	for _, tc := range []struct {
		name     string
		p        collector.Peer
		ps       PeerStatus
		problems map[string]bool
		word     string
		reason   string
	}{
		{"fresh and fast", fresh, probe(func(*ProbeStatus) {}), nil, "ok", "handshake 5s ago, RTT p50 2ms"},
		{"never, no endpoint", collector.Peer{}, PeerStatus{}, nil, "never", "no endpoint: waiting for the peer"},
		{"stale", collector.Peer{Handshake: collector.HandshakeStale, LastHandshake: now.Add(-200 * time.Second)}, PeerStatus{}, nil, "down", "last handshake 3m20s ago (> 180 s)"},
		{"probe down", fresh, probe(func(p *ProbeStatus) { p.State = "down" }), nil, "down", "probe of 10.0.0.1 down"},
		{"loss", fresh, probe(func(p *ProbeStatus) { p.LossRatio = 0.2 }), nil, "degraded", "loss 20%"},
		{"slow", fresh, probe(func(p *ProbeStatus) { p.RTTP99Seconds = 0.4 }), nil, "degraded", "RTT p99 400ms"},
		{"path MTU", fresh, probe(func(p *ProbeStatus) { p.PathMTU = 1300 }), nil, "degraded", "path MTU 1300 < device MTU 1420"},
		{"a check fails", fresh, probe(func(*ProbeStatus) {}), map[string]bool{"wg0|k|nat_without_keepalive": true}, "degraded", "problem: nat_without_keepalive"},
	} {
		word, reason := healthWord(dev, tc.p, tc.ps, th, tc.problems, "wg0|k", now)
		if word != tc.word || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: %s (%s), want %s (%s)", tc.name, word, reason, tc.word, tc.reason)
		}
	}
}
