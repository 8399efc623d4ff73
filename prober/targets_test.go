package prober_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
)

func TestTargetsFromSnapshot(t *testing.T) {
	snap := &collector.Snapshot{Devices: []collector.Device{{
		Name: "wg0", MTU: 1420,
		Peers: []collector.Peer{
			{PublicKey: "A", Name: "aws", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.200.1.1/32"), netip.MustParsePrefix("10.50.0.0/16")}},
			{PublicKey: "B", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("fd00::2/128")}},
			{PublicKey: "C", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/16")}}, // no host route: not probed
		},
	}}}
	cfg := prober.DefaultConfig()
	cfg.Targets = []prober.TargetConfig{{Name: "aws-transit", Address: "10.50.0.1", Device: "wg0", Interval: 5 * time.Second}}
	got := prober.Targets(snap, cfg)
	want := []prober.Target{ // by device, address and port
		{Device: "wg0", Address: netip.MustParseAddr("10.50.0.1"), PublicKey: "A", Name: "aws-transit", Size: 56, Interval: 5 * time.Second, DeviceMTU: 1420},
		{Device: "wg0", Address: netip.MustParseAddr("10.200.1.1"), PublicKey: "A", Name: "aws", Size: 56, Interval: time.Second, DeviceMTU: 1420},
		{Device: "wg0", Address: netip.MustParseAddr("fd00::2"), PublicKey: "B", Size: 56, Interval: time.Second, DeviceMTU: 1420},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	cfg.AutoTargets = false
	if got := prober.Targets(snap, cfg); len(got) != 1 || got[0].Name != "aws-transit" {
		t.Errorf("auto_targets: false still probes peers: %+v", got)
	}
	cfg.Enabled = false
	if got := prober.Targets(snap, cfg); len(got) != 0 {
		t.Errorf("enabled: false still probes: %+v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*prober.Config)
		want string
	}{
		{"defaults", func(*prober.Config) {}, ""},
		{"interval", func(c *prober.Config) { c.Interval = time.Millisecond }, "interval: must be at least 10ms"},
		{"window", func(c *prober.Config) { c.Window = 0 }, "window: must be between"},
		{"target address", func(c *prober.Config) { c.Targets = []prober.TargetConfig{{Address: "nope", Device: "wg0"}} }, `targets[0].address: "nope" is not an IP address`},
		{"target device", func(c *prober.Config) { c.Targets = []prober.TargetConfig{{Address: "10.0.0.1"}} }, "targets[0].device: required"},
		{"pmtu min", func(c *prober.Config) { c.PMTU.Min = 576 }, "pmtu.min: must be 1200..9000"},
		// Duplicates are found by the address, not its spelling.
		{"duplicate target", func(c *prober.Config) {
			c.Targets = []prober.TargetConfig{{Address: "fd00:0::1", Device: "wg0"}, {Address: "fd00::1", Device: "wg0"}}
		}, "targets[1].address: fd00::1 on wg0 listed twice"},
		{"same address, other device", func(c *prober.Config) {
			c.Targets = []prober.TargetConfig{{Address: "fd00:0::1", Device: "wg0"}, {Address: "fd00::1", Device: "wg1"}}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := prober.DefaultConfig()
			tc.mod(&cfg)
			err := cfg.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}
