package prober_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// startProber runs a prober with the given targets of one owner.
func startProber(t *testing.T, fn *probertest.Net, owner string, ts ...prober.Target) (*prober.Prober, context.CancelFunc) {
	t.Helper()
	p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go p.Run(ctx)
	p.SetTargets(owner, ts)
	return p, cancel
}

func tgt(addr string) prober.Target {
	return prober.Target{Device: "wg0", Address: netip.MustParseAddr(addr), Name: "peer-" + addr, PublicKey: "key-" + addr}
}

// switchable answers until down is set, then drops everything.
func switchable(down *atomic.Bool, delay time.Duration) *probertest.Net {
	return probertest.New(func(string, netip.Addr, int) probertest.Reply {
		if down.Load() {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: delay}
	})
}

// Targets with different timeouts share one socket; each probe is lost at
// its own target's deadline, even behind older probes with a longer one.
func TestPerTargetTimeoutsOnOneSocket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Drop: true} })
		slow, fast := tgt("10.0.0.1"), tgt("10.0.0.2")
		slow.Timeout = 5 * time.Second
		fast.Timeout, fast.Interval = 250*time.Millisecond, 100*time.Millisecond
		p, cancel := startProber(t, fn, "test", slow, fast)
		defer cancel()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.1"); h.Probes != 0 {
			t.Errorf("5s-timeout target: %d probes finished after 3s, want none yet", h.Probes)
		}
		h := health(t, p, "10.0.0.2")
		sent := uint64(fn.Sent(netip.MustParseAddr("10.0.0.2")))
		// Probes sent more than 250 ms ago are lost; at most 3 are still in flight.
		if h.Failures+3 < sent || h.Failures > sent {
			t.Errorf("250ms-timeout target: %d lost of %d sent after 3s; want all but the last 250ms", h.Failures, sent)
		}
	})
}

// A late reply to an old probe does not end the run of losses after it: a
// run counts in send order, not in the order probes finish.
func TestLossRunsCountInSendOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Probe k%4 == 0 is answered after 1.5 s; the others fail to send at
		// once (counted lost immediately). In finish order, the late reply
		// of probe 0 (t=1.5s) lands after the loss of probe 1 (t=1s).
		fn := probertest.New(func(_ string, _ netip.Addr, n int) probertest.Reply {
			if n%4 == 0 {
				return probertest.Reply{Delay: 1500 * time.Millisecond}
			}
			return probertest.Reply{Err: errors.New("no route")}
		})
		p, cancel := startProber(t, fn, prober.OwnTargets, tgt("10.0.0.3"))
		defer cancel()
		// Probes go out at phase, phase+1s, ...; run on after the 4th send.
		for i := 0; i < 40; i++ {
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			h := health(t, p, "10.0.0.3")
			if h.Probes >= 4 { // 0 ok (late), 1, 2, 3 lost: three in a row after the answered one
				if h.State != prober.StateDown || h.LostInARow != 3 {
					t.Fatalf("after probes 0 (answered late) and 1-3 (lost): state %s with %d in a row, want down with 3", h.State, h.LostInARow)
				}
				return
			}
		}
		t.Fatal("4 probes never finished")
	})
}

// Fresh targets are unknown, the first reply makes them up, the rule makes
// them down; every change is published once with its reason and Since.
func TestThreeStateHealthAndChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		fn := switchable(&down, time.Millisecond)
		p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		changes := p.SubscribeChanges(ctx)
		go p.Run(ctx)
		target := tgt("10.0.0.4")
		target.Rule = prober.Rule{Losses: 4}
		p.SetTargets("test", []prober.Target{target})
		synctest.Wait()
		if h := health(t, p, "10.0.0.4"); h.State != prober.StateUnknown {
			t.Fatalf("fresh target: %s, want unknown", h.State)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		up := health(t, p, "10.0.0.4")
		if up.State != prober.StateUp || up.Since.IsZero() {
			t.Fatalf("answering target: %s since %v, want up", up.State, up.Since)
		}
		down.Store(true)
		cut := time.Now()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.4")
		if h.State != prober.StateDown || !strings.Contains(h.Reason, "4 probes lost in a row") {
			t.Fatalf("dead target: %s (%s), want down by 4 losses", h.State, h.Reason)
		}
		// 4 probes at 1/s, the last one lost after the 2 s timeout.
		if d := h.Since.Sub(cut); d < 4*time.Second || d > 6*time.Second {
			t.Errorf("down %s after the cut, want 4-6s (3 more probes + 2s timeout)", d)
		}
		down.Store(false)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		var got []string
		for len(got) < 3 {
			select {
			case c := <-changes:
				got = append(got, c.From.String()+">"+c.Health.State.String())
				synctest.Wait()
			default:
				t.Fatalf("changes so far %v, want unknown>up, up>down, down>up", got)
			}
		}
		if strings.Join(got, " ") != "unknown>up up>down down>up" {
			t.Errorf("changes %v, want unknown>up up>down down>up", got)
		}
		select {
		case c := <-changes:
			t.Errorf("extra change %v > %v", c.From, c.Health.State)
		default:
		}
	})
}

// Suspicion: a target probed every second with Suspect 100ms is found dead
// in well under its interval times its rule, and the extra probes never
// count in the SLI. A healthy target sends none.
func TestSuspectProbesConfirmADeadPathFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		fn := switchable(&down, time.Millisecond)
		target := tgt("10.0.0.5")
		target.Suspect, target.Timeout, target.Rule = 100*time.Millisecond, 500*time.Millisecond, prober.Rule{Losses: 5}
		p, cancel := startProber(t, fn, "test", target)
		defer cancel()
		time.Sleep(20 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.5")
		if sent := fn.Sent(target.Address); uint64(sent) != h.Probes && uint64(sent) != h.Probes+1 {
			t.Errorf("healthy target: %d sent for %d SLI probes; want no extra probes", sent, h.Probes)
		}
		probesBefore := h.Probes
		down.Store(true)
		cut := time.Now()
		for h.State != prober.StateDown && time.Since(cut) < 10*time.Second {
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
			h = health(t, p, "10.0.0.5")
		}
		// Next regular probe within 1 s, then 4 extra 100 ms apart, the last
		// lost after 500 ms: at most 1 + 0.4 + 0.5 s.
		if d := time.Since(cut); h.State != prober.StateDown || d > 1900*time.Millisecond {
			t.Fatalf("dead path: %s after %s, want down within 1.9s (5 losses at 1/s would take 4.5-5.5s)", h.State, d)
		}
		time.Sleep(5 * time.Second) // down: suspicion stops, regular probes continue
		synctest.Wait()
		h = health(t, p, "10.0.0.5")
		if extra := fn.Sent(target.Address) - int(h.Probes); extra < 4 || extra > 5 {
			t.Errorf("%d extra probes in the episode, want the 4 that confirm it (+1 SLI probe in flight)", extra)
		}
		if n := h.Probes - probesBefore; n > 7 {
			t.Errorf("SLI counted %d probes in ~6s at 1/s: extra probes leaked into the SLI", n)
		}
	})
}

func TestLossRatioAndRTTRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slow atomic.Bool
		fn := probertest.New(func(_ string, dst netip.Addr, n int) probertest.Reply {
			switch dst.String() {
			case "10.0.0.6": // every other probe lost: never 3 in a row
				if n%2 == 1 {
					return probertest.Reply{Drop: true}
				}
			case "10.0.0.7":
				if slow.Load() {
					return probertest.Reply{Delay: 300 * time.Millisecond}
				}
			}
			return probertest.Reply{Delay: 10 * time.Millisecond}
		})
		lossy, laggy := tgt("10.0.0.6"), tgt("10.0.0.7")
		lossy.Window, lossy.Rule = 20*time.Second, prober.Rule{Losses: 3, LossRatio: 0.3}
		laggy.Rule = prober.Rule{RTT: 200 * time.Millisecond}
		p, cancel := startProber(t, fn, "test", lossy, laggy)
		defer cancel()
		time.Sleep(5 * time.Second) // 2 lost of the 20 probes the 20 s window holds: 10%
		synctest.Wait()
		if h := health(t, p, "10.0.0.6"); h.State != prober.StateUp {
			t.Errorf("lossy target with %d outcomes: %s, want up until its losses pass 30%% of what the window holds", h.Probes, h.State)
		}
		time.Sleep(15 * time.Second) // 9 lost (2 s timeouts): 45%
		synctest.Wait()
		if h := health(t, p, "10.0.0.6"); h.State != prober.StateDown || !strings.Contains(h.Reason, "of probes lost over 20s (rule: above 30%)") {
			t.Errorf("every other probe lost: %s (%s), want down by the ratio rule", h.State, h.Reason)
		}
		if h := health(t, p, "10.0.0.7"); h.State != prober.StateUp {
			t.Errorf("10ms target: %s (%s), want up", h.State, h.Reason)
		}
		slow.Store(true)
		time.Sleep(6 * time.Second) // 5 of the last 8 replies at 300 ms
		synctest.Wait()
		if h := health(t, p, "10.0.0.7"); h.State != prober.StateDown || !strings.Contains(h.Reason, "median RTT 300ms") {
			t.Errorf("300ms target: %s (%s), want down by the RTT rule", h.State, h.Reason)
		}
	})
}

// An outage in a target's first seconds (its start, a failover's reset)
// is judged as a full window would judge it: 5 probes lost of the 20 a
// 20 s window holds is 25%, under the 30% rule. Once the target answers it
// is up, and it stays up as the window fills: judged on the outcomes seen
// so far it went up, then down at 50% when the window held 10 (seen on
// kernel WireGuard: up, then down by the ratio 0.7 s later, then up).
func TestEarlyOutageIsJudgedAsInAFullWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(_ string, _ netip.Addr, n int) probertest.Reply {
			if n < 5 { // the first five probes lost
				return probertest.Reply{Drop: true}
			}
			return probertest.Reply{Delay: 10 * time.Millisecond}
		})
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		target := tgt("10.0.0.9")
		target.Window, target.Rule = 20*time.Second, prober.Rule{Losses: 3, LossRatio: 0.3}
		p, err := prober.New(testConfig(), slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
		if err != nil {
			t.Fatal(err)
		}
		changes := p.SubscribeChanges(ctx)
		go p.Run(ctx)
		p.SetTargets("test", []prober.Target{target})
		var seen []string
		done := make(chan struct{})
		go func() {
			defer close(done)
			for c := range changes {
				seen = append(seen, fmt.Sprintf("%s->%s (%s)", c.From, c.Health.State, c.Health.Reason))
			}
		}()
		time.Sleep(7 * time.Second) // probe 5, the first answered, went out at 5 s
		synctest.Wait()
		early := health(t, p, "10.0.0.9")
		time.Sleep(25 * time.Second) // the window full and more
		synctest.Wait()
		h := health(t, p, "10.0.0.9")
		stop()
		<-done
		t.Logf("verdicts %q", seen)
		if early.State != prober.StateUp {
			t.Errorf("2 s after answering again with 5 of 20 lost: %s (%s), want up", early.State, early.Reason)
		}
		ups, downs := 0, 0
		for _, s := range seen {
			ups += strings.Count(s, "->up")
			downs += strings.Count(s, "->down")
		}
		if h.State != prober.StateUp || ups != 1 || downs != 1 {
			t.Errorf("verdicts %q, now %s: want down by losses, then up once and for good", seen, h.State)
		}
	})
}

// Another owner's spec wins for the same address, with the peer's labels;
// the prober's own set changing (a device read failing, a peer renamed)
// keeps the target and its counts.
func TestOwnersAndInPlaceChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		auto := tgt("10.0.0.8")
		auto.Name = "aws"
		p, cancel := startProber(t, fn, prober.OwnTargets, auto)
		defer cancel()
		path := prober.Target{Device: "wg0", Address: auto.Address, Interval: 100 * time.Millisecond, Rule: prober.Rule{Losses: 6}}
		p.SetTargets("remediate", []prober.Target{path})
		time.Sleep(10 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.8")
		if h.Target.Interval != 100*time.Millisecond || h.Target.Name != "aws" || h.Target.PublicKey != auto.PublicKey || h.Probes < 90 {
			t.Fatalf("merged target %+v with %d probes, want the path's 100ms interval and the peer's labels", h.Target, h.Probes)
		}
		before := h.Probes
		auto.Name = "aws-renamed"
		p.SetTargets(prober.OwnTargets, []prober.Target{auto}) // SIGHUP renamed the peer
		synctest.Wait()
		h = health(t, p, "10.0.0.8")
		if h.Target.Name != "aws-renamed" || h.Probes < before || h.State != prober.StateUp {
			t.Fatalf("after a rename: %+v, %d probes (had %d), %s; want the same target renamed, counts and state kept", h.Target, h.Probes, before, h.State)
		}
		if got := exported(t, p, "wgpulse_probes_total", "10.0.0.8"); got < float64(before) {
			t.Errorf("exported probes %v after the rename, want the kept count", got)
		}
		p.SetTargets(prober.OwnTargets, nil) // e.g. the peer is gone from the snapshot
		synctest.Wait()
		if h := health(t, p, "10.0.0.8"); h.Probes < before || h.Target.Interval != 100*time.Millisecond {
			t.Errorf("the other owner's target must stay: %+v", h)
		}
	})
}

// After ResetState the verdict starts over: unknown, and probes sent before
// (still in flight on the old path) do not decide the new one.
func TestResetState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		fn := switchable(&down, time.Millisecond)
		target := tgt("10.0.0.9")
		target.Timeout, target.Rule = 500*time.Millisecond, prober.Rule{Losses: 3}
		p, cancel := startProber(t, fn, "test", target)
		defer cancel()
		down.Store(true)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.9"); h.State != prober.StateDown {
			t.Fatalf("before the reset: %s, want down", h.State)
		}
		probes := health(t, p, "10.0.0.9").Probes
		down.Store(false) // the new path works
		p.ResetState(target.Key())
		if h := health(t, p, "10.0.0.9"); h.State != prober.StateUnknown || h.LostInARow != 0 {
			t.Fatalf("after the reset: %s with %d lost in a row, want unknown and 0", h.State, h.LostInARow)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.9")
		if h.State != prober.StateUp || h.Probes < probes {
			t.Errorf("on the new path: %s with %d probes (had %d); want up, SLI counts kept", h.State, h.Probes, probes)
		}
		down.Store(true) // and a dead new path is found down again
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.9"); h.State != prober.StateDown {
			t.Errorf("dead new path: %s, want down", h.State)
		}
	})
}
