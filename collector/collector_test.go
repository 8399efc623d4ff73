package collector_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
)

// fakeClient is a fake of the wgctrl transport: each call returns the next
// prepared state of the named device.
type fakeClient struct {
	devices func(name string) (*wgtypes.Device, error)
}

func (f *fakeClient) Device(name string) (*wgtypes.Device, error) { return f.devices(name) }

type fakeLinks struct {
	links []netlink.Link
	err   error
}

func (f *fakeLinks) LinkList() ([]netlink.Link, error) { return f.links, f.err }

func key(t *testing.T, b byte) wgtypes.Key {
	t.Helper()
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	return k
}

func udp(s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func cidr(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

var t0 = time.Unix(1_700_000_000, 0)

func newCollector(t *testing.T, cfg collector.Config, c collector.WGClient, l collector.LinkHandle, uapi []string, logs *bytes.Buffer) *collector.Collector {
	t.Helper()
	if logs == nil {
		logs = new(bytes.Buffer)
	}
	now := t0
	col, err := collector.New(cfg, slog.New(slog.NewTextHandler(logs, nil)), collector.Options{
		Client:   c,
		Links:    l,
		ListUAPI: func() ([]string, error) { return uapi, nil },
		Now:      func() time.Time { now = now.Add(time.Second); return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return col
}

func TestExposition(t *testing.T) {
	priv := key(t, 9)
	devPub := priv.PublicKey()
	peerA, peerB := key(t, 1), key(t, 2)
	psk := key(t, 7)
	dev := &wgtypes.Device{
		Name: "wg0", Type: wgtypes.LinuxKernel, PrivateKey: priv, PublicKey: devPub, ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{
				PublicKey: peerA, PresharedKey: psk, Endpoint: udp("192.0.2.10:51820"),
				LastHandshakeTime: time.Unix(1_699_999_990, 500_000_000), ReceiveBytes: 1000, TransmitBytes: 2000,
				PersistentKeepaliveInterval: 25 * time.Second,
				AllowedIPs:                  []net.IPNet{cidr("10.200.0.2/32"), cidr("fd00::2/128")},
			},
			// Never handshook, no endpoint, no keepalive: all zeros, never "now - epoch".
			{PublicKey: peerB, LastHandshakeTime: time.Unix(0, 0), AllowedIPs: []net.IPNet{cidr("10.50.0.0/16")}},
		},
	}
	cfg := collector.DefaultConfig()
	cfg.PeerNames = map[string]string{peerA.String(): "aws-eu-west-1"}
	col := newCollector(t, cfg,
		&fakeClient{devices: func(string) (*wgtypes.Device, error) { return dev, nil }},
		&fakeLinks{links: []netlink.Link{&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0", MTU: 1420}}, &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}}}},
		nil, nil)
	col.Poll()

	a, b, d := peerA.String(), peerB.String(), devPub.String()
	want := fmt.Sprintf(`
# HELP wireguard_device_info Metadata about a WireGuard device.
# TYPE wireguard_device_info gauge
wireguard_device_info{device="wg0",listen_port="51820",public_key="%[3]s",type="kernel"} 1
# HELP wireguard_device_mtu_bytes Link MTU of the device (netlink).
# TYPE wireguard_device_mtu_bytes gauge
wireguard_device_mtu_bytes{device="wg0"} 1420
# HELP wireguard_device_peers Number of peers configured on the device.
# TYPE wireguard_device_peers gauge
wireguard_device_peers{device="wg0"} 2
# HELP wireguard_peer_allowed_ips_info One series per allowed IP prefix of a peer.
# TYPE wireguard_peer_allowed_ips_info gauge
wireguard_peer_allowed_ips_info{allowed_ips="10.200.0.2/32",device="wg0",family="IPv4",name="aws-eu-west-1",public_key="%[1]s"} 1
wireguard_peer_allowed_ips_info{allowed_ips="fd00::2/128",device="wg0",family="IPv6",name="aws-eu-west-1",public_key="%[1]s"} 1
wireguard_peer_allowed_ips_info{allowed_ips="10.50.0.0/16",device="wg0",family="IPv4",name="",public_key="%[2]s"} 1
# HELP wireguard_peer_endpoint_changes_total Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).
# TYPE wireguard_peer_endpoint_changes_total counter
wireguard_peer_endpoint_changes_total{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 0
wireguard_peer_endpoint_changes_total{device="wg0",name="",public_key="%[2]s"} 0
# HELP wireguard_peer_info Metadata about a peer; endpoint is empty until one is known.
# TYPE wireguard_peer_info gauge
wireguard_peer_info{device="wg0",endpoint="192.0.2.10:51820",name="aws-eu-west-1",public_key="%[1]s"} 1
wireguard_peer_info{device="wg0",endpoint="",name="",public_key="%[2]s"} 1
# HELP wireguard_peer_last_endpoint_change_seconds Unix time of the last endpoint change seen; 0 if never.
# TYPE wireguard_peer_last_endpoint_change_seconds gauge
wireguard_peer_last_endpoint_change_seconds{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 0
wireguard_peer_last_endpoint_change_seconds{device="wg0",name="",public_key="%[2]s"} 0
# HELP wireguard_peer_last_handshake_seconds Unix time of the last completed handshake; 0 if the peer never completed one.
# TYPE wireguard_peer_last_handshake_seconds gauge
wireguard_peer_last_handshake_seconds{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 1.6999999905e+09
wireguard_peer_last_handshake_seconds{device="wg0",name="",public_key="%[2]s"} 0
# HELP wireguard_peer_persistent_keepalive_seconds PersistentKeepalive interval; 0 when off.
# TYPE wireguard_peer_persistent_keepalive_seconds gauge
wireguard_peer_persistent_keepalive_seconds{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 25
wireguard_peer_persistent_keepalive_seconds{device="wg0",name="",public_key="%[2]s"} 0
# HELP wireguard_peer_receive_bytes_total Bytes received from the peer.
# TYPE wireguard_peer_receive_bytes_total counter
wireguard_peer_receive_bytes_total{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 1000
wireguard_peer_receive_bytes_total{device="wg0",name="",public_key="%[2]s"} 0
# HELP wireguard_peer_transmit_bytes_total Bytes sent to the peer.
# TYPE wireguard_peer_transmit_bytes_total counter
wireguard_peer_transmit_bytes_total{device="wg0",name="aws-eu-west-1",public_key="%[1]s"} 2000
wireguard_peer_transmit_bytes_total{device="wg0",name="",public_key="%[2]s"} 0
`, a, b, d)
	names := []string{"wireguard_device_info", "wireguard_device_mtu_bytes", "wireguard_device_peers",
		"wireguard_peer_allowed_ips_info", "wireguard_peer_endpoint_changes_total", "wireguard_peer_info",
		"wireguard_peer_last_endpoint_change_seconds", "wireguard_peer_last_handshake_seconds",
		"wireguard_peer_persistent_keepalive_seconds", "wireguard_peer_receive_bytes_total", "wireguard_peer_transmit_bytes_total"}
	if err := testutil.GatherAndCompare(gatherer(t, col), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(gatherer(t, col))
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 0 {
		t.Fatalf("lint problems: %v", problems)
	}
	// The snapshot carries the same facts, typed, for later packages.
	snap := col.Latest()
	p := snap.Devices[0].Peers[1]
	if _, ok := p.HandshakeAge(t0); ok || !p.LastHandshake.IsZero() {
		t.Errorf("never-handshaked peer: LastHandshake = %v, want zero", p.LastHandshake)
	}
	if snap.Devices[0].MTU != 1420 || snap.Devices[0].Peers[0].Name != "aws-eu-west-1" {
		t.Errorf("snapshot device = %+v", snap.Devices[0])
	}
}

func TestPrivateKeysNeverExported(t *testing.T) {
	priv, psk := key(t, 9), key(t, 7)
	dev := &wgtypes.Device{Name: "wg0", PrivateKey: priv, PublicKey: priv.PublicKey(),
		Peers: []wgtypes.Peer{{PublicKey: key(t, 1), PresharedKey: psk}}}
	col := newCollector(t, collector.DefaultConfig(), &fakeClient{devices: func(string) (*wgtypes.Device, error) { return dev, nil }}, &fakeLinks{}, []string{"wg0"}, nil)
	col.Poll()
	var out bytes.Buffer
	if err := writeText(gatherer(t, col), &out); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{priv.String(), psk.String()} {
		if strings.Contains(out.String(), secret) {
			t.Fatalf("secret key %q found in exposition", secret)
		}
	}
	if !strings.Contains(out.String(), priv.PublicKey().String()) {
		t.Fatal("exposition lacks the device public key; the check above proves nothing")
	}
}

// TestEndpointChanges walks a peer through polls: first sight is not a change,
// each differing endpoint counts once, a repeated endpoint does not count.
func TestEndpointChanges(t *testing.T) {
	peer := key(t, 1)
	steps := []struct {
		name     string
		endpoint string // "" = none
		want     uint64
	}{
		{"no endpoint yet", "", 0},
		{"first endpoint is first sight", "198.51.100.1:40000", 0},
		{"same endpoint again", "198.51.100.1:40000", 0},
		{"NAT rebinds the source port", "198.51.100.1:40001", 1},
		{"unchanged after the rebind", "198.51.100.1:40001", 1},
		{"roams to a new address", "[2001:db8::1]:40001", 2},
	}
	var i int
	client := &fakeClient{devices: func(string) (*wgtypes.Device, error) {
		p := wgtypes.Peer{PublicKey: peer}
		if e := steps[i].endpoint; e != "" {
			p.Endpoint = udp(e)
		}
		return &wgtypes.Device{Name: "wg0", Peers: []wgtypes.Peer{p}}, nil
	}}
	col := newCollector(t, collector.Config{PollInterval: time.Second, Devices: []string{"wg0"}}, client, &fakeLinks{}, nil, nil)
	var lastChange time.Time
	for i = range steps {
		snap := col.Poll()
		got := snap.Devices[0].Peers[0]
		if got.EndpointChanges != steps[i].want {
			t.Fatalf("step %q: EndpointChanges = %d, want %d", steps[i].name, got.EndpointChanges, steps[i].want)
		}
		if steps[i].want > 0 && i > 0 && steps[i].want != steps[i-1].want {
			if !got.LastEndpointChange.After(lastChange) {
				t.Fatalf("step %q: LastEndpointChange %v did not advance", steps[i].name, got.LastEndpointChange)
			}
			lastChange = got.LastEndpointChange
		}
	}
	const want = `
# HELP wireguard_peer_endpoint_changes_total Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).
# TYPE wireguard_peer_endpoint_changes_total counter
wireguard_peer_endpoint_changes_total{device="wg0",name="",public_key="AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="} 2
`
	if err := testutil.GatherAndCompare(gatherer(t, col), strings.NewReader(want), "wireguard_peer_endpoint_changes_total"); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceVanishes: one device disappears between polls and then fails
// with an error; the other device keeps being exported, the error is counted
// per poll and logged once per state change.
func TestDeviceVanishes(t *testing.T) {
	var polls int
	client := &fakeClient{devices: func(name string) (*wgtypes.Device, error) {
		if name == "wg-a" && polls >= 2 && polls < 5 {
			return nil, fmt.Errorf("open /var/run/wireguard/wg-a.sock: %w", os.ErrNotExist)
		}
		return &wgtypes.Device{Name: name, Peers: []wgtypes.Peer{{PublicKey: key(t, 1)}}}, nil
	}}
	var logs bytes.Buffer
	col := newCollector(t, collector.DefaultConfig(), client, &fakeLinks{}, []string{"wg-a", "wg-b"}, &logs)
	for polls = 0; polls < 6; polls++ {
		snap := col.Poll()
		if polls == 0 {
			// Every watched device's error counter exists from the first
			// poll, so increase() sees the first failure.
			const zero = `
# HELP wgpulse_collector_errors_total Failed reads per device; device="" counts failures to list devices.
# TYPE wgpulse_collector_errors_total counter
wgpulse_collector_errors_total{device=""} 0
wgpulse_collector_errors_total{device="wg-a"} 0
wgpulse_collector_errors_total{device="wg-b"} 0
`
			if err := testutil.GatherAndCompare(gatherer(t, col), strings.NewReader(zero), "wgpulse_collector_errors_total"); err != nil {
				t.Errorf("after the first poll: %v", err)
			}
		}
		var got []string
		for _, d := range snap.Devices {
			got = append(got, d.Name)
		}
		// A failed read carries the last good read forward, marked stale, so
		// consumers (probe targets, the remediator) do not see it vanish.
		if diff := cmp.Diff([]string{"wg-a", "wg-b"}, got); diff != "" {
			t.Errorf("poll %d: devices (-want +got):\n%s", polls, diff)
		}
		failing := polls >= 2 && polls < 5
		if a, _ := snap.Device("wg-a"); a.Stale != failing || (failing && snap.Errors["wg-a"] == nil) {
			t.Errorf("poll %d: wg-a stale=%v error=%v, want stale and an error exactly while reads fail", polls, a.Stale, snap.Errors["wg-a"])
		}
		if failing {
			// ... but not exported as current state.
			if n, err := testutil.GatherAndCount(gatherer(t, col), "wireguard_device_info"); err != nil || n != 1 {
				t.Errorf("poll %d: %d wireguard_device_info series (%v), want only wg-b's", polls, n, err)
			}
		}
	}
	const want = `
# HELP wgpulse_collector_errors_total Failed reads per device; device="" counts failures to list devices.
# TYPE wgpulse_collector_errors_total counter
wgpulse_collector_errors_total{device=""} 0
wgpulse_collector_errors_total{device="wg-a"} 3
wgpulse_collector_errors_total{device="wg-b"} 0
# HELP wgpulse_collector_device_up 1 if the device was read in the last poll, 0 if reading it failed.
# TYPE wgpulse_collector_device_up gauge
wgpulse_collector_device_up{device="wg-a"} 1
wgpulse_collector_device_up{device="wg-b"} 1
`
	if err := testutil.GatherAndCompare(gatherer(t, col), strings.NewReader(want), "wgpulse_collector_errors_total", "wgpulse_collector_device_up"); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "cannot read WireGuard device"); n != 1 {
		t.Errorf("error logged %d times over 3 failing polls, want once:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "readable again"); n != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `not found (check collector.devices`) {
		t.Errorf("log does not say what to check:\n%s", logs.String())
	}
}

func TestPermissionDeniedSaysWhatToGrant(t *testing.T) {
	client := &fakeClient{devices: func(name string) (*wgtypes.Device, error) {
		return nil, fmt.Errorf("wglinux: %w", os.ErrPermission)
	}}
	var logs bytes.Buffer
	col := newCollector(t, collector.DefaultConfig(), client, &fakeLinks{}, []string{"wg0"}, &logs)
	for range 3 {
		col.Poll()
	}
	if n := strings.Count(logs.String(), "grant CAP_NET_ADMIN"); n != 1 {
		t.Fatalf("permission hint logged %d times, want exactly once:\n%s", n, logs.String())
	}
}

func TestEnumerationErrorKeepsUserspaceDevices(t *testing.T) {
	client := &fakeClient{devices: func(name string) (*wgtypes.Device, error) {
		return &wgtypes.Device{Name: name, Type: wgtypes.Userspace}, nil
	}}
	col := newCollector(t, collector.DefaultConfig(), client, &fakeLinks{err: errors.New("netlink: operation not permitted")}, []string{"wg-u"}, nil)
	snap := col.Poll()
	if len(snap.Devices) != 1 || snap.Devices[0].Name != "wg-u" || snap.Devices[0].MTU != 0 {
		t.Fatalf("devices = %+v, want wg-u with unknown MTU", snap.Devices)
	}
	if snap.Errors[""] == nil {
		t.Fatal("enumeration error not recorded")
	}
}

func TestPeerNamesFromBothSources(t *testing.T) {
	a, b, c := key(t, 1), key(t, 2), key(t, 3)
	dir := t.TempDir()
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
# Name = not-a-peer
ListenPort = 51820

[Peer]
# Name = dc1-primary
PublicKey = %s
AllowedIPs = 10.200.1.1/32

[Peer]
PublicKey = %s
# Name = from-file-overridden
`, key(t, 9).String(), a.String(), b.String())
	if err := os.WriteFile(filepath.Join(dir, "wg0.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := collector.DefaultConfig()
	cfg.PeerNamesFiles = filepath.Join(dir, "*.conf")
	cfg.PeerNames = map[string]string{b.String(): "from-config"}
	dev := &wgtypes.Device{Name: "wg0", Peers: []wgtypes.Peer{{PublicKey: a}, {PublicKey: b}, {PublicKey: c}}}
	col := newCollector(t, cfg, &fakeClient{devices: func(string) (*wgtypes.Device, error) { return dev, nil }}, &fakeLinks{}, []string{"wg0"}, nil)
	snap := col.Poll()
	var got []string
	for _, p := range snap.Devices[0].Peers {
		got = append(got, p.Name)
	}
	if diff := cmp.Diff([]string{"dc1-primary", "from-config", ""}, got); diff != "" {
		t.Fatalf("names (-want +got):\n%s", diff)
	}

	// Reload picks up a changed file.
	if err := os.WriteFile(filepath.Join(dir, "wg0.conf"), []byte(strings.ReplaceAll(conf, "dc1-primary", "dc1-renamed")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := col.ApplyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if got := col.Poll().Devices[0].Peers[0].Name; got != "dc1-renamed" {
		t.Fatalf("after reload name = %q, want dc1-renamed", got)
	}
}

// Endpoint lines that name a host are kept for remediate.reresolve; those
// that hold an address, or no valid port, are not.
func TestEndpointHostsFromFiles(t *testing.T) {
	a, b, c, d := key(t, 1), key(t, 2), key(t, 3), key(t, 4)
	dir := t.TempDir()
	conf := fmt.Sprintf(`[Interface]
PrivateKey = %s
ListenPort = 51820

[Peer]
Endpoint = hub.example.net:51820
PublicKey = %s

[Peer]
PublicKey = %s
Endpoint = 198.51.100.1:51820

[Peer]
PublicKey = %s
endpoint=[2001:db8::1]:51820

[Peer]
PublicKey = %s
Endpoint = hub2.example.net:0
`, key(t, 9).String(), a.String(), b.String(), c.String(), d.String())
	if err := os.WriteFile(filepath.Join(dir, "wg0.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := collector.DefaultConfig()
	cfg.PeerNamesFiles = filepath.Join(dir, "*.conf")
	dev := &wgtypes.Device{Name: "wg0", Peers: []wgtypes.Peer{{PublicKey: a}, {PublicKey: b}, {PublicKey: c}, {PublicKey: d}}}
	col := newCollector(t, cfg, &fakeClient{devices: func(string) (*wgtypes.Device, error) { return dev, nil }}, &fakeLinks{}, []string{"wg0"}, nil)
	var got []string
	for _, p := range col.Poll().Devices[0].Peers {
		got = append(got, p.EndpointHost)
	}
	if diff := cmp.Diff([]string{"hub.example.net:51820", "", "", ""}, got); diff != "" {
		t.Fatalf("endpoint hosts (-want +got):\n%s", diff)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  collector.Config
		want string // substring; "" = valid
	}{
		{"defaults", collector.DefaultConfig(), ""},
		{"poll too fast", collector.Config{PollInterval: time.Millisecond}, "poll_interval: must be at least 100ms"},
		{"long device", collector.Config{PollInterval: time.Second, Devices: []string{"a-very-long-devname"}}, "devices[0]"},
		{"duplicate device", collector.Config{PollInterval: time.Second, Devices: []string{"wg0", "wg0"}}, `devices[1]: device "wg0" listed twice`},
		{"bad key", collector.Config{PollInterval: time.Second, PeerNames: map[string]string{"c2VjcmV0": "x"}}, "peer_names: a key of 8 characters"},
		{"bad glob", collector.Config{PollInterval: time.Second, PeerNamesFiles: "/etc/wireguard/[.conf"}, "peer_names_files: bad glob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
				t.Fatalf("error echoes the key value: %v", err)
			}
		})
	}
}

func TestSubscribeGetsNewestAndEndsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := &fakeClient{devices: func(name string) (*wgtypes.Device, error) { return &wgtypes.Device{Name: name}, nil }}
		col := newCollector(t, collector.DefaultConfig(), client, &fakeLinks{}, []string{"wg0"}, nil)
		ctx, cancel := context.WithCancel(context.Background())
		ch := col.Subscribe(ctx)
		col.Poll()
		last := col.Poll()
		synctest.Wait()
		if got := <-ch; got != last {
			t.Fatal("subscriber did not get the newest snapshot")
		}
		// A subscriber that stopped reading never blocks the poller.
		_ = col.Subscribe(ctx)
		for range 100 {
			col.Poll()
		}
		cancel()
		synctest.Wait()
		if _, ok := <-ch; ok {
			t.Fatal("channel still open after its context ended")
		}
	})
}

// TestHandshakeStates: never -> fresh is "established", fresh -> stale after
// 180 s is "lost", stale -> fresh is "regained"; each is published once, with
// the state and its start on the snapshot.
func TestHandshakeStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		peer := key(t, 1)
		var hs time.Time // the device's LastHandshakeTime
		client := &fakeClient{devices: func(string) (*wgtypes.Device, error) {
			return &wgtypes.Device{Name: "wg0", Peers: []wgtypes.Peer{{PublicKey: peer, LastHandshakeTime: hs}}}, nil
		}}
		now := t0
		col, err := collector.New(collector.Config{PollInterval: time.Second, Devices: []string{"wg0"}, PeerNames: map[string]string{peer.String(): "aws"}},
			slog.New(slog.DiscardHandler), collector.Options{Client: client, Links: &fakeLinks{}, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		changes := col.SubscribeChanges(ctx)
		var got []string
		step := func(advance time.Duration, want collector.HandshakeState) {
			t.Helper()
			now = now.Add(advance)
			p := col.Poll().Devices[0].Peers[0]
			if p.Handshake != want {
				t.Fatalf("at %s: state %s, want %s", now.Sub(t0), p.Handshake, want)
			}
			synctest.Wait()
			for {
				select {
				case c := <-changes:
					got = append(got, fmt.Sprintf("%s %s@%s", c.Kind(), c.Name, c.Time.Sub(t0)))
					continue
				default:
				}
				break
			}
		}
		step(0, collector.HandshakeNever) // first sight: no change
		hs = now.Add(time.Second)
		step(5*time.Second, collector.HandshakeFresh)
		step(170*time.Second, collector.HandshakeFresh) // 174 s old
		step(10*time.Second, collector.HandshakeStale)  // 184 s old
		step(10*time.Second, collector.HandshakeStale)
		hs = now
		step(5*time.Second, collector.HandshakeFresh)
		want := []string{"handshake_established aws@5s", "handshake_lost aws@3m5s", "handshake_regained aws@3m20s"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("changes (-want +got)\n%s", diff)
		}
		if since := col.Latest().Devices[0].Peers[0].HandshakeSince; !since.Equal(t0.Add(200 * time.Second)) {
			t.Errorf("HandshakeSince = %s, want the poll that saw the regain (3m20s)", since.Sub(t0))
		}
	})
}

// TestRemovedPeerIsForgotten: a peer that leaves the device and comes back
// later starts fresh (its new endpoint is first sight, not a rebind), even
// when polls carry the same timestamp.
func TestRemovedPeerIsForgotten(t *testing.T) {
	a, b := key(t, 1), key(t, 2)
	peers := []wgtypes.Peer{{PublicKey: a, Endpoint: udp("198.51.100.1:1000")}, {PublicKey: b, Endpoint: udp("198.51.100.2:2000")}}
	client := &fakeClient{devices: func(string) (*wgtypes.Device, error) {
		return &wgtypes.Device{Name: "wg0", Peers: peers}, nil
	}}
	col, err := collector.New(collector.Config{PollInterval: time.Second, Devices: []string{"wg0"}}, slog.New(slog.DiscardHandler),
		collector.Options{Client: client, Links: &fakeLinks{}, Now: func() time.Time { return t0 }}) // a clock that never moves
	if err != nil {
		t.Fatal(err)
	}
	col.Poll()
	peers = peers[:1] // b removed
	col.Poll()
	peers = append(peers, wgtypes.Peer{PublicKey: b, Endpoint: udp("203.0.113.9:3000")}) // b back, elsewhere
	snap := col.Poll()
	if got := snap.Devices[0].Peers[1].EndpointChanges; got != 0 {
		t.Errorf("re-added peer counts %d endpoint changes, want 0 (first sight)", got)
	}
}

// The snapshot lists a device's peers by public key, whatever order the
// device reads in (wireguard-go's is Go map order, another on every read):
// the status API, the scrape and the prober's targets see one order. A
// peer added or removed takes or leaves its place; a key read twice is
// one peer.
func TestPeersAreInKeyOrder(t *testing.T) {
	keys := make([]wgtypes.Key, 40)
	for i := range keys {
		keys[i] = key(t, byte(200-3*i)) // read order is not key order
	}
	var read []wgtypes.Peer
	setPeers := func(ks []wgtypes.Key) {
		read = read[:0]
		for i, k := range ks {
			read = append(read, wgtypes.Peer{PublicKey: k, Endpoint: udp(fmt.Sprintf("198.51.100.%d:51820", i+1))})
		}
	}
	client := &fakeClient{devices: func(string) (*wgtypes.Device, error) {
		rand.Shuffle(len(read), func(i, j int) { read[i], read[j] = read[j], read[i] })
		return &wgtypes.Device{Name: "wg0", Peers: slices.Clone(read)}, nil
	}}
	col := newCollector(t, collector.Config{PollInterval: time.Second, Devices: []string{"wg0"}}, client, &fakeLinks{}, nil, nil)
	order := func() []string {
		var out []string
		for _, p := range col.Poll().Devices[0].Peers {
			out = append(out, p.PublicKey)
		}
		return out
	}
	want := func(ks []wgtypes.Key) []string {
		var out []string
		for _, k := range ks {
			out = append(out, k.String())
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	setPeers(keys)
	for i := range 5 {
		if got := order(); !slices.Equal(got, want(keys)) {
			t.Fatalf("poll %d: peers in the order %v, want by key %v", i, got, want(keys))
		}
	}
	setPeers(append(slices.Clone(keys[:10]), keys[11:]...)) // one removed
	if got := order(); !slices.Equal(got, want(read2keys(read))) {
		t.Fatalf("after a removal: %v, want %v", got, want(read2keys(read)))
	}
	setPeers(append(slices.Clone(keys), key(t, 255))) // it is back, with a new one
	if got := order(); !slices.Equal(got, want(read2keys(read))) {
		t.Fatalf("after two additions: %v, want %v", got, want(read2keys(read)))
	}
	setPeers(append(slices.Clone(keys[:20]), keys[0])) // 21 reads of 20 keys
	if got := order(); !slices.Equal(got, want(keys[:20])) {
		t.Fatalf("a key read twice: %v, want it once among %v", got, want(keys[:20]))
	}
}

func read2keys(ps []wgtypes.Peer) []wgtypes.Key {
	var out []wgtypes.Key
	for _, p := range ps {
		out = append(out, p.PublicKey)
	}
	return out
}
