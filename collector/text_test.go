package collector_test

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/expo/expotest"
)

// The text path (WriteText, what a text scrape gets) writes byte for byte
// what expfmt writes for Gather's families (what the protobuf path and the
// other tests see), also for names that need escaping, a peer without
// handshake or endpoint, large counters, a device without MTU and one that
// failed to read (not exported).
func TestWriteTextMatchesGather(t *testing.T) {
	peerA, peerB, peerC := key(t, 1), key(t, 2), key(t, 3)
	wg0 := &wgtypes.Device{Name: "wg0", Type: wgtypes.LinuxKernel, PrivateKey: key(t, 9), PublicKey: key(t, 9).PublicKey(), ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{PublicKey: peerA, Endpoint: udp("[2001:db8::1]:51820"), LastHandshakeTime: time.Unix(1_699_999_990, 500_000_000),
				ReceiveBytes: 1 << 53, TransmitBytes: 123456789012, PersistentKeepaliveInterval: 25 * time.Second,
				AllowedIPs: []net.IPNet{cidr("10.200.0.2/32"), cidr("fd00::2/128")}},
			{PublicKey: peerB, LastHandshakeTime: time.Unix(0, 0)},
		}}
	wg1 := &wgtypes.Device{Name: "wg1", Type: wgtypes.Userspace, PrivateKey: key(t, 8), PublicKey: key(t, 8).PublicKey(), ListenPort: 1,
		Peers: []wgtypes.Peer{{PublicKey: peerC, AllowedIPs: []net.IPNet{cidr("0.0.0.0/0")}}}}
	broken := true
	cfg := collector.DefaultConfig()
	cfg.Devices = []string{"wg0", "wg1", "wg2"}
	cfg.PeerNames = map[string]string{peerA.String(): `dc "north"\rack 1`, peerB.String(): "line\nbreak ünïcode"}
	col := newCollector(t, cfg, &fakeClient{devices: func(name string) (*wgtypes.Device, error) {
		switch {
		case name == "wg0":
			return wg0, nil
		case name == "wg1":
			return wg1, nil
		case name == "wg2" && !broken:
			return &wgtypes.Device{Name: "wg2", PublicKey: key(t, 7).PublicKey()}, nil
		}
		return nil, errors.New("permission denied")
	}}, &fakeLinks{links: []netlink.Link{&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0", MTU: 1420}}}}, nil, nil)
	col.Poll()
	broken = false
	col.Poll() // wg2 read once
	broken = true
	col.Poll() // wg2 stale now

	got := expotest.TextMatchesGather(t, col)
	if !strings.Contains(got, `name="dc \"north\"\\rack 1"`) || strings.Contains(got, `device="wg2"`) {
		t.Errorf("escaping or the stale device is not what the test is about:\n%s", got)
	}
}
