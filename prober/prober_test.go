package prober_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// gatherer is the prober's registry-side metrics (its own counters).
func gatherer(p *prober.Prober) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(p)
	return reg
}

// counter is the value of one of the prober's unlabelled counters.
func counter(t *testing.T, p *prober.Prober, name string) float64 {
	t.Helper()
	mfs, err := gatherer(p).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func testConfig() prober.Config {
	cfg := prober.DefaultConfig()
	cfg.PMTU.Enabled = false
	cfg.Window = 10 * time.Second
	return cfg
}

// runProber starts a prober inside the bubble with targets on device wg0.
func runProber(t *testing.T, cfg prober.Config, fn *probertest.Net, pmtu prober.PMTUProbeFunc, addrs ...string) (*prober.Prober, context.CancelFunc) {
	t.Helper()
	p, err := prober.New(cfg, slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open, PMTUProbe: pmtu})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go p.Run(ctx)
	var ts []prober.Target
	for i, a := range addrs {
		ts = append(ts, prober.Target{Device: "wg0", Address: netip.MustParseAddr(a), PublicKey: fmt.Sprintf("key%d", i), Name: "peer-" + a, DeviceMTU: 1420})
	}
	p.SetTargets(prober.OwnTargets, ts)
	return p, cancel
}

func health(t *testing.T, p *prober.Prober, addr string) prober.Health {
	t.Helper()
	for _, h := range p.Health() {
		if h.Target.Address.String() == addr {
			return h
		}
	}
	t.Fatalf("no target %s", addr)
	return prober.Health{}
}

// exported is the value of a prober metric for a target, as scraped.
func exported(t *testing.T, p *prober.Prober, name, addr string) float64 {
	t.Helper()
	mfs, err := p.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" && l.GetValue() == addr {
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestEveryProbeEndsExactlyOnce: fast, slow (late) and duplicating targets.
// Every sent probe ends once, in-flight probes are not counted, late and
// duplicate replies are counted apart.
func TestEveryProbeEndsExactlyOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(_ string, dst netip.Addr, n int) probertest.Reply {
			switch dst.String() {
			case "10.0.0.1":
				return probertest.Reply{Delay: 10 * time.Millisecond}
			case "10.0.0.2": // answers after the 2 s timeout: lost, then late
				return probertest.Reply{Delay: 3 * time.Second}
			case "10.0.0.3": // every reply arrives twice
				return probertest.Reply{Delay: 5 * time.Millisecond, Dups: 1}
			default: // never answers
				return probertest.Reply{Drop: true}
			}
		})
		p, cancel := runProber(t, testConfig(), fn, nil, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
		defer cancel()
		time.Sleep(20*time.Second + 500*time.Millisecond)
		synctest.Wait()

		for _, tc := range []struct {
			addr                      string
			success, late, dups, lost bool
		}{
			{"10.0.0.1", true, false, false, false},
			{"10.0.0.2", false, true, false, true},
			{"10.0.0.3", true, false, true, false},
			{"10.0.0.4", false, false, false, true},
		} {
			h := health(t, p, tc.addr)
			sent := uint64(fn.Sent(netip.MustParseAddr(tc.addr)))
			// Probes sent in the last timeout (2 s) may still be in flight.
			if h.Probes > sent || h.Probes+2 < sent || sent < 19 {
				t.Errorf("%s: %d probes finished of %d sent; want all but those within the 2s timeout", tc.addr, h.Probes, sent)
			}
			if tc.success && (h.Failures != 0 || h.LossRatio != 0 || !h.Up) {
				t.Errorf("%s: failures %d loss %v up %v, want a clean target", tc.addr, h.Failures, h.LossRatio, h.Up)
			}
			if tc.lost && (h.Failures != h.Probes || h.Up || h.LossRatio != 1) {
				t.Errorf("%s: failures %d of %d, loss %v, up %v; want all lost", tc.addr, h.Failures, h.Probes, h.LossRatio, h.Up)
			}
			late := float64(h.Late)
			if tc.late && (late < float64(h.Failures)-1 || late > float64(h.Failures)) {
				t.Errorf("%s: %v late replies for %d lost probes answered after 3s", tc.addr, late, h.Failures)
			}
			if !tc.late && late != 0 {
				t.Errorf("%s: %v late replies, want 0", tc.addr, late)
			}
			dups := float64(h.Duplicates)
			if tc.dups && dups != float64(h.Probes) {
				t.Errorf("%s: %v duplicates for %d answered probes", tc.addr, dups, h.Probes)
			}
			if !tc.dups && dups != 0 {
				t.Errorf("%s: %v duplicates, want 0", tc.addr, dups)
			}
			if got := exported(t, p, "wgpulse_probes_total", tc.addr); got != float64(h.Probes) {
				t.Errorf("%s: wgpulse_probes_total %v != %d", tc.addr, got, h.Probes)
			}
		}
	})
}

// TestRepliesNeverMixAcrossTargets: 300 targets on one shared socket, each
// answering with its own loss pattern; some replies come from the wrong
// address or carry another probe's sequence number. Each target's counts must
// be exactly its own.
func TestRepliesNeverMixAcrossTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 300
		var addrs []string
		for i := range n {
			addrs = append(addrs, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1))
		}
		fn := probertest.New(func(_ string, dst netip.Addr, k int) probertest.Reply {
			i := int(dst.As4()[2])*250 + int(dst.As4()[3]) - 1
			switch {
			case i%3 == 0 && k%2 == 1: // every other probe of every third target is lost
				return probertest.Reply{Drop: true}
			case i%7 == 0 && k%4 == 3: // spoofed: the reply claims to come from another target
				return probertest.Reply{Delay: time.Millisecond, From: netip.MustParseAddr("10.1.0.1")}
			}
			return probertest.Reply{Delay: time.Duration(1+i%50) * time.Millisecond}
		})
		p, cancel := runProber(t, testConfig(), fn, nil, addrs...)
		defer cancel()
		time.Sleep(12 * time.Second)
		synctest.Wait()
		for i, a := range addrs {
			h := health(t, p, a)
			var wantLost uint64
			for k := range h.Probes {
				if (i%3 == 0 && k%2 == 1) || (i%7 == 0 && k%4 == 3 && a != "10.1.0.1") {
					wantLost++
				}
			}
			if h.Failures != wantLost {
				t.Errorf("%s: %d failures of %d probes, want exactly its own %d", a, h.Failures, h.Probes, wantLost)
			}
			// Its own delay, also where spoofed replies (1 ms) arrived.
			if wantRTT := time.Duration(1+i%50) * time.Millisecond; h.Probes == 0 || h.RTT != wantRTT {
				t.Errorf("%s: last RTT %v after %d probes, want %v (its own delay)", a, h.RTT, h.Probes, wantRTT)
			}
		}
		if stray, err := testutil.GatherAndCount(gatherer(p), "wgpulse_prober_stray_replies_total"); err != nil || stray == 0 || counter(t, p, "wgpulse_prober_stray_replies_total") == 0 {
			t.Error("spoofed replies were not counted as stray")
		}
	})
}

// TestLossWindowJitterAndRecovery: 20% loss then clean; jitter from an
// alternating RTT; the loss ratio recovers within one window.
func TestLossWindowJitterAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var clean sync.Map
		fn := probertest.New(func(_ string, dst netip.Addr, k int) probertest.Reply {
			if _, ok := clean.Load("yes"); !ok && k%5 == 4 {
				return probertest.Reply{Drop: true}
			}
			return probertest.Reply{Delay: time.Duration(10+10*(k%2)) * time.Millisecond} // 10, 20, 10, 20 ms
		})
		cfg := testConfig()
		p, cancel := runProber(t, cfg, fn, nil, "10.0.0.9")
		defer cancel()
		time.Sleep(120 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.9")
		if h.LossRatio < 0.15 || h.LossRatio > 0.25 {
			t.Errorf("loss ratio %v with every 5th probe lost, want 0.2", h.LossRatio)
		}
		// |D| is 10ms between every answered pair of neighbours (pairs around
		// a loss are skipped, including the 20ms/20ms pair across it); after
		// ~70 updates J = 10ms * (1 - (15/16)^70) = 9.89ms.
		if h.Jitter < 9800*time.Microsecond || h.Jitter > 10*time.Millisecond {
			t.Errorf("jitter %v, want 9.8-10ms", h.Jitter)
		}
		clean.Store("yes", true)
		time.Sleep(cfg.Window + cfg.Timeout + time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.9"); h.LossRatio != 0 || !h.Up {
			t.Errorf("one window after the loss stopped: loss %v up %v, want 0 and up", h.LossRatio, h.Up)
		}
	})
}

// TestUpNeedsThreeLosses: up stays 1 through a single loss and drops after
// three consecutive ones.
func TestUpNeedsThreeLosses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down sync.Map
		fn := probertest.New(func(_ string, dst netip.Addr, k int) probertest.Reply {
			if _, ok := down.Load("yes"); ok || k == 3 {
				return probertest.Reply{Drop: true}
			}
			return probertest.Reply{Delay: time.Millisecond}
		})
		p, cancel := runProber(t, testConfig(), fn, nil, "10.0.0.5")
		defer cancel()
		time.Sleep(7 * time.Second) // probe 3 was lost along the way
		synctest.Wait()
		if h := health(t, p, "10.0.0.5"); !h.Up || h.Failures != 1 {
			t.Fatalf("after one loss: up %v failures %d, want up with 1 failure", h.Up, h.Failures)
		}
		down.Store("yes", true)
		time.Sleep(6 * time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.5"); h.Up {
			t.Fatalf("path down for 6s (3+ lost probes): still up")
		}
	})
}

// TestMaxRateStretchesIntervals: 3,000 targets at 1/s against max_rate 1000
// are each probed every 3 s, so the whole prober sends 1,000 probes/s.
func TestMaxRateStretchesIntervals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		var addrs []string
		for i := range 3000 {
			addrs = append(addrs, fmt.Sprintf("10.2.%d.%d", i/250, i%250+1))
		}
		p, cancel := runProber(t, testConfig(), fn, nil, addrs...)
		defer cancel()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		var sent int
		for _, a := range addrs {
			n := fn.Sent(netip.MustParseAddr(a))
			if n < 9 || n > 11 {
				t.Fatalf("%s probed %d times in 30s, want about 10 (every 3s)", a, n)
			}
			sent += n
		}
		if rate := float64(sent) / 30; rate > 1050 {
			t.Errorf("%.0f probes/s in total, want at most max_rate 1000", rate)
		}
		if h := health(t, p, addrs[0]); h.Target.Interval != 3*time.Second {
			t.Errorf("effective interval %v, want 3s", h.Target.Interval)
		}
	})
}

// TestLongRTTsAtFullRateLoseNothing: replies after 10 s with a 15 s timeout
// at 1,000 probes/s keep 10,000 probes in flight on one socket. The slot ring
// must grow to hold them rather than end live probes early as lost.
func TestLongRTTsAtFullRateLoseNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: 10 * time.Second} })
		var addrs []string
		for i := range 1000 {
			addrs = append(addrs, fmt.Sprintf("10.3.%d.%d", i/250, i%250+1))
		}
		cfg := testConfig()
		cfg.Timeout = 15 * time.Second
		cfg.Window = 30 * time.Second
		p, cancel := runProber(t, cfg, fn, nil, addrs...)
		defer cancel()
		time.Sleep(25 * time.Second)
		synctest.Wait()
		var probes, failures uint64
		for _, h := range p.Health() {
			probes += h.Probes
			failures += h.Failures
		}
		if probes < 10000 || failures != 0 {
			t.Errorf("%d probes answered after 10s, %d counted lost; want >= 10000 and none lost", probes, failures)
		}
	})
}

// TestReloadedWindowAppliesToExistingTargets: shortening prober.window on
// reload takes effect for targets already probed.
func TestReloadedWindowAppliesToExistingTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var clean sync.Map
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply {
			if _, ok := clean.Load("yes"); ok {
				return probertest.Reply{Delay: time.Millisecond}
			}
			return probertest.Reply{Drop: true}
		})
		cfg := testConfig()
		cfg.Window = time.Minute
		p, cancel := runProber(t, cfg, fn, nil, "10.0.0.7")
		defer cancel()
		time.Sleep(20 * time.Second)
		clean.Store("yes", true)
		cfg.Window = 5 * time.Second
		if err := p.ApplyConfig(cfg); err != nil {
			t.Fatal(err)
		}
		p.SetTargets(prober.OwnTargets, []prober.Target{{Device: "wg0", Address: netip.MustParseAddr("10.0.0.7"), PublicKey: "key0", Name: "peer-10.0.0.7", DeviceMTU: 1420}})
		time.Sleep(cfg.Window + cfg.Timeout + time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.7"); h.LossRatio != 0 {
			t.Errorf("loss ratio %v 8s after the window was shortened to 5s, want 0 (the old 1m window still applies)", h.LossRatio)
		}
	})
}

// TestProbesLeaveInBatches: probes due within a few milliseconds leave in
// one wake-up of the scheduler (at most 100 a second at 1 s intervals, not
// one per target), at most 10 ms early, and every target keeps its interval:
// its kth probe leaves within 10 ms before its first probe + k intervals.
func TestProbesLeaveInBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		sends := map[netip.Addr][]time.Time{}
		instants := map[time.Time]bool{}
		fn := probertest.New(func(_ string, dst netip.Addr, _ int) probertest.Reply {
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			sends[dst] = append(sends[dst], now)
			instants[now] = true
			return probertest.Reply{Delay: time.Millisecond}
		})
		var addrs []string
		for i := range 200 {
			addrs = append(addrs, fmt.Sprintf("10.9.%d.%d", i/200, i%200+1))
		}
		start := time.Now()
		_, cancel := runProber(t, testConfig(), fn, nil, addrs...)
		defer cancel()
		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(instants) > 10*100+10 {
			t.Errorf("200 targets at 1 s sent at %d distinct instants in 10 s, want at most ~1,000 (one wake-up per 10 ms)", len(instants))
		}
		t.Logf("200 targets at 1 s: %d send instants in 10 s", len(instants))
		for dst, ts := range sends {
			if len(ts) < 10 {
				t.Fatalf("%s: %d probes in 10 s, want 10", dst, len(ts))
			}
			for k, at := range ts {
				want := ts[0].Add(time.Duration(k) * time.Second)
				if at.After(want) || at.Before(want.Add(-10*time.Millisecond)) {
					t.Fatalf("%s: probe %d left %v after the first, want %v or up to 10 ms sooner", dst, k, at.Sub(ts[0]), want.Sub(ts[0]))
				}
			}
			if ts[0].Sub(start) > time.Second {
				t.Fatalf("%s: first probe %v after the start, want within its 1 s phase", dst, ts[0].Sub(start))
			}
		}
	})
}
