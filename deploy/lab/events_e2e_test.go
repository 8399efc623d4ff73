package lab_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// eventLines returns the agent's JSON log lines that carry an event.
func eventLines(a *lab.Agent) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(a.Logs()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["event"] != nil {
			out = append(out, m)
		}
	}
	return out
}

// The SIEM's view of a real lab: the hub's agent (--log.format=json) logs
// one JSON line per connection event, each provoked for real: a peer added,
// its AllowedIPs changed, removed; the hub's own key changed; a NAT rebind;
// a peer re-added that handshakes for the first time, then loses its
// session when its path is cut (180 s) and regains it when restored. No line
// carries a private key.
func TestConnectionEventsOnTheLab(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	tun := func(name string) lab.Tunnel { return mustTunnel(t, l, name) }
	cfg := filepath.Join(t.TempDir(), "hub.yml")
	if err := os.WriteFile(cfg, []byte(l.AgentConfig("hub", lab.Remediation{ProberYAML: "enabled: false"})), 0o600); err != nil {
		t.Fatal(err)
	}
	hub := labtest.StartAgent(t, bin, l.HubNamespace, agentAddr, "--config.file="+cfg, "--log.format=json", "--log.level=info")
	run := func(ns string, args ...string) {
		t.Helper()
		if err := lab.IP(append([]string{"netns", "exec", ns}, args...)...); err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
	}
	var privateKeys []string
	expect := func(what string, within time.Duration, match func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			for _, e := range eventLines(hub) {
				if match(e) {
					t.Logf("%s: %v", what, e)
					return e
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s event within %s; events: %v", what, within, eventLines(hub))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	is := func(kind, device, key string) func(map[string]any) bool {
		return func(e map[string]any) bool {
			return e["event"] == kind && e["device"] == device && (key == "" || e["public_key"] == key)
		}
	}
	time.Sleep(2 * time.Second) // the baseline poll

	// A peer added, its AllowedIPs changed, removed.
	d1b := tun("dc1-backup")
	ghost, _ := wgtypes.GeneratePrivateKey()
	g := ghost.PublicKey().String()
	run(l.HubNamespace, "wg", "set", d1b.HubDevice, "peer", g, "allowed-ips", "10.77.0.1/32")
	if e := expect("peer_added", 10*time.Second, is("peer_added", d1b.HubDevice, g)); e["new"] != "10.77.0.1/32" {
		t.Errorf("peer_added: new=%v, want the AllowedIPs", e["new"])
	}
	run(l.HubNamespace, "wg", "set", d1b.HubDevice, "peer", g, "allowed-ips", "10.77.0.2/32")
	if e := expect("allowed_ips_changed", 10*time.Second, is("allowed_ips_changed", d1b.HubDevice, g)); e["old"] != "10.77.0.1/32" || e["new"] != "10.77.0.2/32" {
		t.Errorf("allowed_ips_changed: old=%v new=%v", e["old"], e["new"])
	}
	run(l.HubNamespace, "wg", "set", d1b.HubDevice, "peer", g, "remove")
	expect("peer_removed", 10*time.Second, is("peer_removed", d1b.HubDevice, g))

	// The hub device's own key changed.
	newKey, _ := wgtypes.GeneratePrivateKey()
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(newKey.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	privateKeys = append(privateKeys, newKey.String(), ghost.String())
	run(l.HubNamespace, "wg", "set", d1b.HubDevice, "private-key", keyFile)
	if e := expect("device_key_changed", 10*time.Second, func(e map[string]any) bool {
		return e["event"] == "device_key_changed" && e["device"] == d1b.HubDevice
	}); e["new_public_key"] != newKey.PublicKey().String() || e["old_public_key"] != d1b.HubPublicKey {
		t.Errorf("device_key_changed: %v, want old %s new %s", e, d1b.HubPublicKey, newKey.PublicKey())
	}

	// A NAT rebind on dc1-primary: the hub sees the site's new endpoint.
	d1p := tun("dc1-primary")
	if _, err := l.Fault("dc1-primary", "rebind"); err != nil {
		t.Fatal(err)
	}
	dc1, _ := l.Site("dc1")
	go func() { _, _ = lab.Ping(dc1.Namespace, d1p.RemoteAddress, 5, 200*time.Millisecond, 56, false) }()
	if e := expect("endpoint_changed", 30*time.Second, is("endpoint_changed", d1p.HubDevice, d1p.PublicKey)); e["old"] == e["new"] || e["old"] == nil || e["name"] != "dc1-primary" {
		t.Errorf("endpoint_changed: %v", e)
	}

	// dc2-backup re-added on the hub: its first handshake, when the hub
	// sends to it.
	d2b := tun("dc2-backup")
	var peer wgtypes.Peer
	if err := func() error { // userspace devices: their UAPI sockets are reachable from here
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		d, err := c.Device(d2b.HubDevice)
		if err != nil {
			return err
		}
		peer = d.Peers[0]
		return c.ConfigureDevice(d2b.HubDevice, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer.PublicKey, Remove: true}}})
	}(); err != nil {
		t.Fatal(err)
	}
	expect("peer_removed (dc2-backup)", 10*time.Second, is("peer_removed", d2b.HubDevice, d2b.PublicKey))
	var allowed []string
	for _, a := range peer.AllowedIPs {
		allowed = append(allowed, a.String())
	}
	run(l.HubNamespace, "wg", "set", d2b.HubDevice, "peer", d2b.PublicKey, "endpoint", peer.Endpoint.String(), "allowed-ips", strings.Join(allowed, ","))
	go func() { _, _ = lab.Ping(l.HubNamespace, d2b.LocalAddress, 10, 500*time.Millisecond, 56, false) }()
	expect("handshake_established", 30*time.Second, is("handshake_established", d2b.HubDevice, d2b.PublicKey))

	// Its path cut: the session is lost 180 s after that handshake; back,
	// it is regained.
	cut := time.Now()
	if _, err := l.Fault("dc2-backup", "down"); err != nil {
		t.Fatal(err)
	}
	lost := expect("handshake_lost", 240*time.Second, is("handshake_lost", d2b.HubDevice, d2b.PublicKey))
	t.Logf("handshake_lost %s after the cut (last handshake %v)", time.Since(cut).Round(time.Second), lost["last_handshake"])
	if _, err := l.Fault("dc2-backup", "up"); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = lab.Ping(l.HubNamespace, d2b.LocalAddress, 20, 500*time.Millisecond, 56, false) }()
	if e := expect("handshake_regained", 60*time.Second, is("handshake_regained", d2b.HubDevice, d2b.PublicKey)); e["last_handshake"] == nil {
		t.Errorf("handshake_regained without the last handshake before the gap: %v", e)
	}

	for _, line := range strings.Split(hub.Logs(), "\n") {
		for _, k := range privateKeys {
			if strings.Contains(line, k) {
				t.Fatalf("a private key in the agent's log: %s", line)
			}
		}
	}
}
