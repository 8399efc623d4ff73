package prober_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// TestSameTargetSetAgainAllocatesNothing: the agent hands the prober its
// targets again after every collector poll; a set that did not change is
// not merged again (1,000 targets cost thousands of allocations a poll).
func TestSameTargetSetAgainAllocatesNothing(t *testing.T) {
	fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
	p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
	if err != nil {
		t.Fatal(err)
	}
	var ts []prober.Target
	for i := range 1000 {
		ts = append(ts, tgt(fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)))
	}
	p.SetTargets(prober.OwnTargets, ts)
	if n := len(p.Health()); n != 1000 {
		t.Fatalf("%d targets probed, want 1000", n)
	}
	again := append([]prober.Target(nil), ts...) // equal, not the same slice
	if allocs := testing.AllocsPerRun(10, func() { p.SetTargets(prober.OwnTargets, again) }); allocs != 0 {
		t.Errorf("the same 1,000 targets again allocate %.0f times, want 0", allocs)
	}
	changed := append([]prober.Target(nil), ts...)
	changed[999].Interval = 2 * time.Second
	p.SetTargets(prober.OwnTargets, changed)
	if h := health(t, p, "10.1.3.250"); h.Target.Interval != 2*time.Second {
		t.Errorf("a changed interval was not applied: %s", h.Target.Interval)
	}
}

// TestSameSetRetriesATargetWhoseSocketDidNotOpen: a target whose device
// could not be opened (not there yet, no privileges) is tried again by the
// next set even when that set is the same.
func TestSameSetRetriesATargetWhoseSocketDidNotOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		fn.SetOpenError("wg1", errors.New("no such device"))
		p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go p.Run(ctx)
		late := prober.Target{Device: "wg1", Address: netip.MustParseAddr("10.9.0.1")}
		set := []prober.Target{tgt("10.0.0.1"), late}
		p.SetTargets(prober.OwnTargets, set)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if n := fn.Sent(late.Address); n != 0 {
			t.Fatalf("%d probes through a device that did not open", n)
		}
		fn.SetOpenError("wg1", nil)
		p.SetTargets(prober.OwnTargets, set) // the same set, as after the next poll
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if n := fn.Sent(late.Address); n == 0 {
			t.Error("the same set did not retry the target whose device opens now: no probe sent")
		}
	})
}

// TestTargetsLaterOneReplaces: a configured target on an auto target's
// device and address replaces it (one target per key; the list is in key
// order).
func TestTargetsLaterOneReplaces(t *testing.T) {
	snap := &collector.Snapshot{Devices: []collector.Device{{
		Name: "wg0", MTU: 1420,
		Peers: []collector.Peer{
			{PublicKey: "A", Name: "aws", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.200.1.1/32")}},
			{PublicKey: "B", Name: "gcp", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.200.1.2/32")}},
		},
	}}}
	cfg := prober.DefaultConfig()
	cfg.Targets = []prober.TargetConfig{
		{Name: "aws-edge", Address: "10.200.1.1", Device: "wg0", Interval: 5 * time.Second},
		{Address: "10.200.1.1", Device: "wg0", TCPPort: 443}, // another key: a TCP target
	}
	var got []string
	for _, tg := range prober.Targets(snap, cfg) {
		got = append(got, fmt.Sprintf("%s %s %s", tg.Key(), tg.Name, tg.Interval))
	}
	want := []string{"wg0|10.200.1.1 aws-edge 5s", "wg0|10.200.1.1:443 aws 1s", "wg0|10.200.1.2 gcp 1s"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got)\n%s", diff)
	}
}

// TestTargetsInAnyPeerOrderAreTheSameSet: wireguard-go lists its peers in
// Go map order, another on every read. The targets of such a snapshot are
// an equal list, so handing them to the prober after every poll merges
// nothing again (at 10,000 peers the merge was 8 MB of garbage a poll).
func TestTargetsInAnyPeerOrderAreTheSameSet(t *testing.T) {
	var peers []collector.Peer
	for i := range 1000 {
		peers = append(peers, collector.Peer{PublicKey: fmt.Sprintf("k%d", i), AllowedIPs: []netip.Prefix{
			netip.MustParsePrefix(fmt.Sprintf("10.1.%d.%d/32", i/250, i%250+1)), netip.MustParsePrefix(fmt.Sprintf("fd00::%x/128", i+1))}})
	}
	snap := func(ps []collector.Peer) *collector.Snapshot {
		return &collector.Snapshot{Devices: []collector.Device{{Name: "wg0", MTU: 1420, Peers: ps}}}
	}
	cfg := prober.DefaultConfig()
	first := prober.Targets(snap(peers), cfg)
	shuffled := slices.Clone(peers)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	again := prober.Targets(snap(shuffled), cfg)
	if len(first) != 2000 || !slices.Equal(first, again) {
		t.Fatalf("the same peers in another order give another list (%d and %d targets)", len(first), len(again))
	}
	fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Drop: true} })
	p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
	if err != nil {
		t.Fatal(err)
	}
	p.SetTargets(prober.OwnTargets, first)
	if allocs := testing.AllocsPerRun(5, func() { p.SetTargets(prober.OwnTargets, again) }); allocs != 0 {
		t.Errorf("the same peers in another order: SetTargets allocates %.0f times, want 0 (merged again)", allocs)
	}
}
