package diagnose_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
)

var now = time.Unix(1_700_000_000, 0)

const (
	keyDev0 = "RGV2aWNlMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="
	keyDev1 = "RGV2aWNlMTExMTExMTExMTExMTExMTExMTExMTExMTE="
	keyA    = "UGVlckFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
	keyB    = "UGVlckJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
	keyC    = "UGVlckNDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M="
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func route(dst, dev string, proto int) diagnose.Route {
	return diagnose.Route{Dst: netip.MustParsePrefix(dst), Device: dev, Protocol: proto}
}

// clampRuleset is a gateway's forward chain that clamps the MSS of every
// forwarded SYN to the route's MTU (nft -j list ruleset of `tcp flags syn
// tcp option maxseg size set rt mtu`).
func clampRuleset(t *testing.T) *diagnose.Ruleset {
	return ruleset(t, `{"nftables": [`+clampJSON+`]}`)
}

const clampJSON = `{"chain": {"family": "inet", "table": "mss", "name": "forward", "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}},
		{"rule": {"family": "inet", "table": "mss", "chain": "forward", "handle": 2, "expr": [
			{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "flags"}}, "right": "syn"}},
			{"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": {"rt": {"key": "mtu"}}}}]}}`

func emptyRuleset(t *testing.T) *diagnose.Ruleset {
	rs, err := diagnose.ParseRuleset([]byte(`{"nftables": []}`))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// cleanNode is a healthy hub: wg0 with two sites (their tunnel addresses
// and LANs routed into it), wg1 a backup tunnel to site A's LAN (routed via
// wg0 while the primary carries it), the underlay on eth0.
func cleanNode(t *testing.T) diagnose.Node {
	fresh := now.Add(-30 * time.Second)
	return diagnose.Node{
		Now: now,
		Devices: []collector.Device{
			{Name: "wg0", PublicKey: keyDev0, ListenPort: 51820, MTU: 1420, Peers: []collector.Peer{
				{PublicKey: keyA, Name: "site-a", Endpoint: netip.MustParseAddrPort("192.0.2.10:51820"), LastHandshake: fresh, Handshake: collector.HandshakeFresh,
					AllowedIPs: pfx("10.200.0.2/32", "10.50.0.0/16"), PersistentKeepalive: 25 * time.Second},
				{PublicKey: keyB, Name: "site-b", Endpoint: netip.MustParseAddrPort("192.0.2.11:51820"), LastHandshake: fresh, Handshake: collector.HandshakeFresh,
					AllowedIPs: pfx("10.200.0.3/32", "10.60.0.0/16")},
			}},
			{Name: "wg1", PublicKey: keyDev1, ListenPort: 51821, MTU: 1420, Peers: []collector.Peer{
				{PublicKey: keyC, Name: "site-a-backup", Endpoint: netip.MustParseAddrPort("198.51.100.10:51820"), LastHandshake: fresh, Handshake: collector.HandshakeFresh,
					AllowedIPs: pfx("10.201.0.2/32", "10.50.0.0/16")},
			}},
		},
		Routes: []diagnose.Route{
			route("10.200.0.0/24", "wg0", 2), route("10.201.0.0/24", "wg1", 2),
			route("10.50.0.0/16", "wg0", 4), route("10.60.0.0/16", "wg0", 4),
			route("192.0.2.0/24", "eth0", 2), route("198.51.100.0/24", "eth0", 2), route("0.0.0.0/0", "eth0", 4),
		},
		LinkMTU:  map[string]int{"eth0": 1500, "wg0": 1420, "wg1": 1420},
		Addrs:    map[string][]netip.Prefix{"eth0": pfx("192.0.2.1/24"), "eth1": pfx("10.10.0.1/24"), "wg0": pfx("10.200.0.1/24"), "lo": pfx("127.0.0.1/8")},
		Firewall: clampRuleset(t),
		// A gateway: forwarding on, loose reverse-path filtering, fair
		// queueing on the tunnels, the MSS of forwarded TCP clamped.
		Host: &diagnose.Host{Forward4: true, RPFilter: map[string]int{"eth0": 2, "wg0": 2, "wg1": 0},
			Qdisc: map[string]string{"eth0": "fq_codel", "wg0": "fq_codel", "wg1": "cake"}},
	}
}

func ruleset(t *testing.T, js string) *diagnose.Ruleset {
	t.Helper()
	rs, err := diagnose.ParseRuleset([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestCleanNodeHasNoFindings(t *testing.T) {
	t.Run("with a failover group its backup can carry", func(t *testing.T) {
		n := cleanNode(t)
		n.Failover = []diagnose.FailoverGroup{{Name: "to-a", Prefixes: pfx("10.50.0.0/16"), Backup: "wg1"}}
		if fs := diagnose.Check(n); len(fs) != 0 {
			t.Errorf("findings %v", fs)
		}
	})
	if fs := diagnose.Check(cleanNode(t)); len(fs) != 0 {
		t.Fatalf("clean node: %v", fs)
	}
}

// Each fault, made on the clean node, gives exactly its finding.
func TestEachCheckFindsItsFault(t *testing.T) {
	peer := func(n *diagnose.Node, dev, p int) *collector.Peer { return &n.Devices[dev].Peers[p] }
	for _, tc := range []struct {
		name     string
		fault    func(*diagnose.Node)
		check    string
		severity diagnose.Severity
		object   string // part of the finding's object
		evidence string // part of its evidence
		n        int    // findings expected (default 1)
	}{
		{"overlapping AllowedIPs", func(n *diagnose.Node) {
			peer(n, 0, 1).AllowedIPs = append(peer(n, 0, 1).AllowedIPs, pfx("10.50.7.0/24")...)
		},
			diagnose.CheckAllowedIPsOverlap, diagnose.Warning, "peer site-b on wg0", "10.50.7.0/24 lies inside 10.50.0.0/16 of peer site-a on wg0", 1},
		{"a LAN route inside AllowedIPs", func(n *diagnose.Node) { n.Routes = append(n.Routes, route("10.50.5.0/24", "eth0", 2)) },
			diagnose.CheckAllowedIPsRouted, diagnose.Warning, "peer site-a", "routed by route 10.50.5.0/24 dev eth0", 2}, // primary and backup
		{"AllowedIPs never routed", func(n *diagnose.Node) { n.Routes = n.Routes[:3] /* drops 10.60/16 and the default */ },
			diagnose.CheckAllowedIPsRouted, diagnose.Warning, "peer site-b on wg0", "no route at all", 1},
		{"route into the tunnel no peer allows", func(n *diagnose.Node) { n.Routes = append(n.Routes, route("10.99.0.0/16", "wg0", 4)) },
			diagnose.CheckRouteNotAllowed, diagnose.Error, "route 10.99.0.0/16 dev wg0", "no peer of wg0 has 10.99.0.0/16", 1},
		{"a hub's subnet route over thousands of /32 peers names five of them", func(n *diagnose.Node) {
			for i := range 2000 {
				peer(n, 0, 1).AllowedIPs = append(peer(n, 0, 1).AllowedIPs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 70, byte(i >> 8), byte(i)}), 32))
			}
			n.Routes = append(n.Routes, route("10.70.0.0/16", "wg0", 4))
		},
			diagnose.CheckRouteNotAllowed, diagnose.Warning, "route 10.70.0.0/16 dev wg0",
			"allow only 10.70.0.0/32, 10.70.0.1/32, 10.70.0.2/32, 10.70.0.3/32, 10.70.0.4/32, and 1995 more of 10.70.0.0/16", 1},
		{"route only partly allowed", func(n *diagnose.Node) { n.Routes = append(n.Routes, route("10.48.0.0/12", "wg0", 4)) },
			diagnose.CheckRouteNotAllowed, diagnose.Warning, "route 10.48.0.0/12 dev wg0", "allow only 10.50.0.0/16, 10.60.0.0/16 of 10.48.0.0/12", 1},
		{"NAT rebinds without keepalive", func(n *diagnose.Node) { peer(n, 0, 1).EndpointChanges = 3 },
			diagnose.CheckNATWithoutKeepalive, diagnose.Warning, "peer site-b on wg0", "changed 3 times", 1},
		{"device MTU above the underlay", func(n *diagnose.Node) { n.Devices[0].MTU = 1460 },
			diagnose.CheckMTUAboveUnderlay, diagnose.Warning, "device wg0 over eth0 (IPv4)", "MTU 1460, but the underlay to 192.0.2.10 leaves 1440", 1},
		{"path MTU below the device", func(n *diagnose.Node) { n.PathMTU = map[string]int{diagnose.PeerKey("wg0", keyA): 1300} },
			diagnose.CheckPathMTUBelowDevice, diagnose.Warning, "peer site-a on wg0", "at most 1300 bytes", 1},
		{"stale handshake", func(n *diagnose.Node) {
			peer(n, 0, 0).Handshake, peer(n, 0, 0).LastHandshake = collector.HandshakeStale, now.Add(-5*time.Minute)
		}, diagnose.CheckHandshakeStale, diagnose.Error, "peer site-a on wg0", "last handshake 5m0s ago", 1},
		{"never handshook with an endpoint", func(n *diagnose.Node) {
			peer(n, 1, 0).Handshake, peer(n, 1, 0).LastHandshake = collector.HandshakeNever, time.Time{}
		}, diagnose.CheckHandshakeNever, diagnose.Warning, "peer site-a-backup on wg1", "endpoint 198.51.100.10:51820 is set", 1},
		{"listen port dropped", func(n *diagnose.Node) {
			rs, err := diagnose.ParseRuleset([]byte(`{"nftables": [
				{"chain": {"family": "inet", "table": "f", "name": "in", "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
				{"rule": {"family": "inet", "table": "f", "chain": "in", "handle": 4, "expr": [
					{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 51821}}, {"drop": null}]}},
				` + clampJSON + `]}`))
			if err != nil {
				panic(err)
			}
			n.Firewall = rs
		}, diagnose.CheckListenPortFiltered, diagnose.Error, "listen port 51821/udp of wg1 (IPv4)", "dropped by rule handle 4 in chain inet f in", 1},
		{"firewall unreadable", func(n *diagnose.Node) { n.Firewall, n.FirewallErr = nil, diagnose.ErrNoNft },
			diagnose.CheckFirewallUnknown, diagnose.Info, "listen port 5182", "nft (nftables) is not installed", 2},
		{"one key pair on two tunnels", func(n *diagnose.Node) { peer(n, 1, 0).PublicKey = keyA },
			diagnose.CheckDuplicateKey, diagnose.Error, "peer site-a", "configured on devices wg0, wg1", 2},
		{"a peer with the device's own key", func(n *diagnose.Node) { peer(n, 0, 1).PublicKey = keyDev0 },
			diagnose.CheckPeerKeyIsOwn, diagnose.Error, "peer site-b on wg0", "this device's own", 1},
		{"device unreadable", func(n *diagnose.Node) { n.Errors = map[string]error{"wg2": errors.New("connection refused")} },
			diagnose.CheckDeviceUnreadable, diagnose.Error, "device wg2", "connection refused", 1},
		{"failover backup does not allow a prefix", func(n *diagnose.Node) {
			n.Failover = []diagnose.FailoverGroup{{Name: "to-a", Prefixes: pfx("10.50.0.0/16", "10.70.0.0/16"), Backup: "wg1"}}
		}, diagnose.CheckFailoverBackupNotAllowed, diagnose.Error, "failover group to-a, prefix 10.70.0.0/16", "no peer of the backup wg1 allows 10.70.0.0/16", 1},
		{"failover prefix holds the backup's endpoint", func(n *diagnose.Node) {
			peer(n, 1, 0).Endpoint = netip.MustParseAddrPort("10.50.3.3:51820") // the backup's peer lives inside the LAN it would carry
			n.Devices[1].MTU, n.LinkMTU["wg1"] = 1360, 1360                     // (reached through wg0, so fits inside it)
			n.Failover = []diagnose.FailoverGroup{{Name: "to-a", Prefixes: pfx("10.50.0.0/16"), Backup: "wg1"}}
		}, diagnose.CheckFailoverEndpointInPrefix, diagnose.Error, "prefix 10.50.0.0/16", "holds the endpoint 10.50.3.3:51820 of peer site-a-backup on wg1", 1},
		{"strict rp_filter on a failover group's backup", func(n *diagnose.Node) {
			n.Failover = []diagnose.FailoverGroup{{Name: "to-a", Prefixes: pfx("10.50.0.0/16"), Primary: "wg0", Backup: "wg1"}}
			n.Host.RPFilter["wg1"] = 1
		}, diagnose.CheckRPFilterStrict, diagnose.Warning, "failover group to-a, device wg1", "strict (rp_filter 1", 1},
		{"forwarding off with LANs routed into a tunnel", func(n *diagnose.Node) { n.Host.Forward4 = false },
			diagnose.CheckForwardingOff, diagnose.Warning, "dev wg0", "eth1 holds 10.10.0.1/24 (a LAN this node is the gateway of), but net.ipv4.ip_forward is 0", 1},
		{"fwmark rules without src_valid_mark", func(n *diagnose.Node) {
			n.Devices[0].FirewallMark = 0xca6c
			n.Host.MarkRules = []diagnose.MarkRule{{Priority: 32764, Mark: 0xca6c, Invert: true, Table: 51820}}
		}, diagnose.CheckFwmarkWithoutSrcValidMark, diagnose.Warning, "ip rule 32764 (not fwmark 0xca6c lookup 51820)", "src_valid_mark is 0", 1},
		{"a forward hook that drops the tunnel's traffic", func(n *diagnose.Node) {
			n.Firewall = ruleset(t, `{"nftables": [
				{"chain": {"family": "inet", "table": "f", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
				{"rule": {"family": "inet", "table": "f", "chain": "fwd", "handle": 7, "expr": [
					{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}}, {"drop": null}]}},
				`+clampJSON+`]}`)
		}, diagnose.CheckForwardDropsTunnel, diagnose.Warning, "forwarding from wg0 (IPv4)", "dropped by rule handle 7 in chain inet f fwd", 1},
		{"a tunnel without fair queueing", func(n *diagnose.Node) { n.Host.Qdisc["wg1"] = "noqueue" },
			diagnose.CheckQdiscNoAQM, diagnose.Info, "device wg1", "root qdisc noqueue", 1},
		{"a gateway that does not clamp the MSS", func(n *diagnose.Node) { n.Firewall = emptyRuleset(t) },
			diagnose.CheckMSSClampMissing, diagnose.Info, "forwarding into wg0", "10.50.0.0/16 is routed into wg0 for the LAN on eth1 (10.10.0.1/24), and no rule clamps the TCP MSS", 1},
		{"a clamp for another device only", func(n *diagnose.Node) {
			n.Firewall = ruleset(t, `{"nftables": [
				{"chain": {"family": "inet", "table": "wgpulse", "name": "mss-clamp", "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}},
				{"rule": {"family": "inet", "table": "wgpulse", "chain": "mss-clamp", "handle": 2, "expr": [
					{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg1"}},
					{"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": 1380}}]}}]}`)
		}, diagnose.CheckMSSClampMissing, diagnose.Info, "forwarding into wg0", "no rule clamps the TCP MSS", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := cleanNode(t)
			tc.fault(&n)
			fs := diagnose.Check(n)
			if len(fs) != tc.n {
				t.Fatalf("%d findings, want %d: %v", len(fs), tc.n, fs)
			}
			for _, f := range fs {
				if f.Check != tc.check || f.Severity != tc.severity || !strings.Contains(f.Object, tc.object) || !strings.Contains(f.Evidence, tc.evidence) || f.Fix == "" {
					t.Errorf("got %v\nwant check %s, severity %s, object ~ %q, evidence ~ %q and a fix", f, tc.check, tc.severity, tc.object, tc.evidence)
				}
			}
			if want := int(tc.severity); diagnose.ExitCode(fs) != want {
				t.Errorf("exit code %d, want %d", diagnose.ExitCode(fs), want)
			}
		})
	}
}

// What remediate.mtu sets (a route MTU within the measured path) answers
// the path MTU finding; a peer with keepalive behind a NAT is fine; a peer
// without an endpoint that never handshook is only waiting.
func TestMitigatedFaultsAreNotFindings(t *testing.T) {
	n := cleanNode(t)
	n.PathMTU = map[string]int{diagnose.PeerKey("wg0", keyA): 1300}
	// As remediate.mtu does it: its own route one metric below the operator's.
	n.Routes[2].Priority = 100
	n.Routes = append(n.Routes, diagnose.Route{Dst: netip.MustParsePrefix("10.50.0.0/16"), Device: "wg0", Protocol: 117, Priority: 99, MTU: 1300})
	n.Devices[0].Peers[0].EndpointChanges = 4 // keepalive 25 s
	n.Devices[1].Peers[0].Handshake, n.Devices[1].Peers[0].Endpoint = collector.HandshakeNever, netip.AddrPort{}
	if fs := diagnose.Check(n); len(fs) != 0 {
		t.Fatalf("mitigated faults reported: %v", fs)
	}
	// Within the grace, a fresh peer is not reported yet.
	n = cleanNode(t)
	n.NeverGrace = time.Minute
	p := &n.Devices[1].Peers[0]
	p.Handshake, p.HandshakeSince = collector.HandshakeNever, now.Add(-30*time.Second)
	if fs := diagnose.Check(n); len(fs) != 0 {
		t.Fatalf("peer 30 s old within a 1 m grace: %v", fs)
	}
}

// Forwarding off where there is no LAN: a node that only uses the tunnel
// itself (a laptop on its Wi-Fi, a one-NIC cloud VM: the only private
// address is on the way to the endpoints) is no gateway.
func TestForwardingOffWithoutALANIsFine(t *testing.T) {
	n := cleanNode(t)
	n.Host.Forward4 = false
	n.Addrs = map[string][]netip.Prefix{"eth0": pfx("192.168.1.20/24"), "lo": pfx("127.0.0.1/8"), "wg0": pfx("10.200.0.1/24")}
	if fs := diagnose.Check(n); len(fs) != 0 {
		t.Errorf("findings %v", fs)
	}
}

// A sysctl that could not be read (IPv6 disabled, a sandbox hiding
// /proc/sys) skips the checks that need it: no finding from a zero.
func TestUnreadSysctlsAreNoFindings(t *testing.T) {
	n := cleanNode(t)
	n.Host.Forward4 = false
	n.Devices[0].FirewallMark = 0xca6c
	n.Host.MarkRules = []diagnose.MarkRule{{Priority: 32764, Mark: 0xca6c, Invert: true, Table: 51820}}
	n.Host.Unread = map[string]bool{"net.ipv4.ip_forward": true, "net.ipv4.conf.all.src_valid_mark": true}
	if fs := diagnose.Check(n); len(fs) != 0 {
		t.Errorf("findings from unread sysctls: %v", fs)
	}
}

// A running agent checks on every poll. A handshake_never finding whose
// peer, name and endpoint are unchanged is the last poll's (its text is not
// built again); any change gives the words a fresh check gives. Either way
// the findings are exactly those of a check with no history.
func TestUnchangedFindingsAreCarriedOver(t *testing.T) {
	never := func(n *diagnose.Node) {
		for i := range n.Devices {
			for j := range n.Devices[i].Peers {
				p := &n.Devices[i].Peers[j]
				p.Handshake, p.LastHandshake = collector.HandshakeNever, time.Time{}
			}
		}
		n.Devices[0].Peers[1].EndpointChanges = 2 // and a NAT without keepalive on site-b
	}
	n := cleanNode(t)
	never(&n)
	first := diagnose.Check(n)
	if got := strings.Count(fmt.Sprint(first), diagnose.CheckHandshakeNever); got != 3 {
		t.Fatalf("%d handshake_never findings, want 3: %v", got, first)
	}

	n.Previous = first
	n.Devices[0].Peers[0].Endpoint = netip.MustParseAddrPort("192.0.2.99:51820") // site-a roamed
	n.Devices[1].Peers[0].Name = "site-a-spare"                                  // site-a-backup renamed
	again := diagnose.Check(n)
	fresh := n
	fresh.Previous = nil
	if want := diagnose.Check(fresh); !reflect.DeepEqual(again, want) {
		t.Fatalf("with the last poll's findings:\n%v\nwithout:\n%v", again, want)
	}
	if got := strings.Count(fmt.Sprint(again), string(diagnose.CheckNATWithoutKeepalive)); got != 1 {
		t.Errorf("the NAT check did not run on a carried-over peer: %v", again)
	}
	byKey := func(fs []diagnose.Finding, key string) diagnose.Finding {
		for _, f := range fs {
			if f.Check == diagnose.CheckHandshakeNever && f.PublicKey == key {
				return f
			}
		}
		t.Fatalf("no handshake_never finding for %s in %v", key, fs)
		return diagnose.Finding{}
	}
	same := func(a, b string) bool { return len(a) > 0 && unsafe.StringData(a) == unsafe.StringData(b) }
	if a, b := byKey(first, keyB), byKey(again, keyB); !same(a.Evidence, b.Evidence) || !same(a.Fix, b.Fix) || !same(a.Object, b.Object) {
		t.Errorf("site-b unchanged: its finding was built again, not carried over")
	}
	if a, b := byKey(first, keyA), byKey(again, keyA); same(a.Evidence, b.Evidence) || !strings.Contains(b.Evidence, "192.0.2.99:51820") {
		t.Errorf("site-a roamed: evidence %q carried over (was %q)", b.Evidence, a.Evidence)
	}
	if a, b := byKey(first, keyC), byKey(again, keyC); same(a.Object, b.Object) || !strings.Contains(b.Object, "site-a-spare") {
		t.Errorf("site-a-backup renamed: object %q carried over (was %q)", b.Object, a.Object)
	}
}
