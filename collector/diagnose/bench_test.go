package diagnose_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
)

// BenchmarkCheck runs every check on a hub of 10,000 peers, each with a
// tunnel address and a LAN routed into the device, as the agent does on
// every poll: a gateway (forwarding on, a LAN on eth1) with its host
// settings read.
func BenchmarkCheck(b *testing.B) {
	const n = 10000
	d := collector.Device{Name: "wg0", PublicKey: keyDev0, ListenPort: 51820, MTU: 1420}
	routes := []diagnose.Route{
		{Dst: netip.MustParsePrefix("10.200.0.0/16"), Device: "wg0", Protocol: 2},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Device: "eth0", Protocol: 4},
		{Dst: netip.MustParsePrefix("192.0.2.0/24"), Device: "eth0", Protocol: 2},
	}
	for i := range n {
		lan := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		d.Peers = append(d.Peers, collector.Peer{
			PublicKey: fmt.Sprintf("%043d=", i), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 51820),
			Handshake: collector.HandshakeFresh, PersistentKeepalive: 25 * time.Second,
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), 32), lan},
		})
		routes = append(routes, diagnose.Route{Dst: lan, Device: "wg0", Protocol: 4})
	}
	// The gateway clamps the MSS of what it forwards (else mss_clamp_missing).
	rs, err := diagnose.ParseRuleset([]byte(`{"nftables": [` + clampJSON + `]}`))
	if err != nil {
		b.Fatal(err)
	}
	node := diagnose.Node{Now: time.Now(), Devices: []collector.Device{d}, Routes: routes, LinkMTU: map[string]int{"eth0": 1500, "wg0": 1420}, Firewall: rs,
		Addrs: map[string][]netip.Prefix{"eth0": {netip.MustParsePrefix("192.0.2.1/24")}, "eth1": {netip.MustParsePrefix("172.16.0.1/24")}},
		Host:  &diagnose.Host{Forward4: true, Forward6: true, RPFilter: map[string]int{"wg0": 2}, Qdisc: map[string]string{"wg0": "fq_codel"}}}
	var fs []diagnose.Finding
	for b.Loop() {
		fs = diagnose.Check(node)
	}
	if len(fs) != 0 {
		b.Fatalf("findings on a clean hub: %d, first %v", len(fs), fs[0])
	}
}
