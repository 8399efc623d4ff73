package policies_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

func synctestWait() { synctest.Wait() }

func newTracerProvider(sr *tracetest.SpanRecorder) *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
}

// waitFor lets fake time pass in small steps until cond holds, and returns
// how long that took; it fails the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
	}
	return time.Since(start)
}

var operatorRoutes = []string{"10.50.0.0/16 dev wg-b metric 200 proto 4", "10.50.0.0/16 dev wg-p metric 100 proto 4"}

// The primary dies: the fast profile moves the prefix within the detection
// bound, with one audited decision, metric and span; traffic returns only
// after the primary has been up for hold_down.
func TestFailoverAndReturnAfterHoldDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.start()
		r.run(3 * time.Second)
		if r.onBackup() || len(r.audits()) != 0 {
			t.Fatalf("healthy paths: routes %v, audits %v; want nothing done", r.routes.show(), r.audits())
		}
		r.fault(primaryTarget, dead)
		took := waitFor(t, 2*time.Second, "switch to the backup", r.onBackup)
		// Next probe within 100 ms, 6 suspect probes 25 ms apart, the last
		// lost after 250 ms.
		if took > 550*time.Millisecond {
			t.Errorf("switched %s after the primary died, want <= 550ms (fast profile)", took)
		}
		want := append(slices.Clone(operatorRoutes), ours)
		slices.Sort(want)
		if diff := cmp.Diff(want, r.routes.show()); diff != "" {
			t.Errorf("routes (-want +got)\n%s", diff)
		}
		a := r.taken()
		if len(a) != 1 || a[0].Action != "switch_to_backup" || a[0].Result != "ok" || a[0].Mode != "auto" || !strings.Contains(a[0].Reason, "7 probes lost in a row") {
			t.Fatalf("audit %+v, want one switch_to_backup ok with the losses as reason", a)
		}
		if r.metric("wgpulse_remediation_last_decision_timestamp_seconds", map[string]string{"action": "switch_to_backup", "reason": "primary_down"}) == 0 {
			t.Error("the last decision's reason code is not primary_down")
		}
		if r.metric("wgpulse_failover_active_path", map[string]string{"path": "backup"}) != 1 ||
			r.metric("wgpulse_remediation_actions_total", map[string]string{"action": "switch_to_backup", "result": "ok", "mode": "auto"}) != 1 {
			t.Error("metrics do not show the switch")
		}

		r.fault(primaryTarget, nil)
		r.run(20 * time.Second)
		if !r.onBackup() {
			t.Fatal("returned before hold_down (30s)")
		}
		if s := r.suppressed("hold_down"); len(s) != 1 {
			t.Errorf("hold-down audited %d times, want once per episode: %+v", len(s), s)
		}
		waitFor(t, 15*time.Second, "return to the primary", func() bool { return !r.onBackup() })
		if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
			t.Errorf("after the return, routes are not the operator's (-want +got)\n%s", diff)
		}
		a = r.taken()
		if len(a) != 2 || a[1].Action != "return_to_primary" || !strings.Contains(a[1].Reason, "hold_down 30s") {
			t.Fatalf("audit %+v, want the return after hold_down", a)
		}
		spans := r.spans.Ended()
		if len(spans) != 3 {
			t.Fatalf("%d spans, want 3 (switch, hold-down, return)", len(spans))
		}
		attrs := map[string]string{}
		for _, kv := range spans[0].Attributes() {
			attrs[string(kv.Key)] = kv.Value.AsString()
		}
		if attrs["wgpulse.action"] != "switch_to_backup" || attrs["wgpulse.result"] != "ok" || attrs["wgpulse.group"] != "dc1-to-aws" || attrs["wgpulse.reason"] == "" {
			t.Errorf("span attributes %v", attrs)
		}
	})
}

// Each rule makes a path down on its own: losses in a row (one fewer does
// not), loss ratio, median RTT, and a stale handshake while the probes have
// no verdict.
func TestThresholds(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*failover.Group)
		fault   func(n int) probertest.Reply
		stale   bool // the primary's handshake is older than 180 s
		switch_ bool
		reason  string
	}{
		{name: "5 losses in a row with losses 6: no switch", fault: func(n int) probertest.Reply {
			if n%6 == 5 {
				return probertest.Reply{Delay: time.Millisecond}
			}
			return probertest.Reply{Drop: true}
		}, mod: func(g *failover.Group) { g.LossRatio = 0.99 }},
		{name: "6 losses in a row", fault: dead, switch_: true, reason: "6 probes lost in a row"},
		{name: "loss ratio", fault: func(n int) probertest.Reply {
			if n%2 == 0 {
				return probertest.Reply{Drop: true}
			}
			return probertest.Reply{Delay: time.Millisecond}
		}, switch_: true, reason: "of probes lost over 1m0s (rule: above 30%)"},
		{name: "median RTT", mod: func(g *failover.Group) { g.RTT = 100 * time.Millisecond },
			fault: func(int) probertest.Reply { return probertest.Reply{Delay: 300 * time.Millisecond} }, switch_: true, reason: "median RTT 300ms"},
		{name: "stale handshake while the probes have no verdict", stale: true, switch_: true, reason: "no handshake for over 3m0s",
			mod:   func(g *failover.Group) { g.Timeout = time.Minute },
			fault: func(int) probertest.Reply { return probertest.Reply{Delay: 2 * time.Minute} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := group("default")
				if tt.mod != nil {
					tt.mod(&g)
				}
				r := newRig(t, config(t, remediate.ModeAuto, g))
				if tt.stale {
					r.wg.handshake[primaryDev] = time.Now().Add(-200 * time.Second)
				}
				r.fault(primaryTarget, tt.fault)
				r.start()
				r.run(90 * time.Second)
				if r.onBackup() != tt.switch_ {
					t.Fatalf("on the backup: %v, want %v; audits %+v", r.onBackup(), tt.switch_, r.audits())
				}
				if tt.switch_ && !strings.Contains(r.taken()[0].Reason, tt.reason) {
					t.Errorf("reason %q, want it to contain %q", r.taken()[0].Reason, tt.reason)
				}
			})
		})
	}
}

// A degraded primary (loss ratio) moves only to a backup better by the
// margin; a dead one moves to any healthy backup.
func TestMargin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("default")))
		r.fault(primaryTarget, lossySeconds(20, 0, 3, 6, 9, 12, 15, 18)) // 35%: down (rule: above 30%)
		r.fault(backupTarget, lossySeconds(25, 0, 4, 8, 12, 16, 20, 23)) // 28%: up, but not 10 points better
		r.start()
		r.run(3 * time.Minute)
		if r.onBackup() || len(r.suppressed("margin")) != 1 {
			t.Fatalf("35%% vs 28%% loss: on backup %v, audits %+v; want staying, with one margin suppression", r.onBackup(), r.audits())
		}
		r.fault(backupTarget, nil) // the backup gets clean
		waitFor(t, 90*time.Second, "switch to a clearly better backup", r.onBackup)
	})
}

// An outage in the primary's first 20 s (the agent just started, say):
// the group leaves, returns after hold_down once the primary answers, and
// stays. The default profile's 30%-of-1m rule weighs the 17 lost probes
// against the 60 a full window holds (28%): judged on the outcomes seen so
// far (17 of 30 once the window held half, 57%) the primary went down
// again after the return and the group left it a second time.
func TestYoungWindowOutageIsOneFailover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("default")
		g.HoldDown = 5 * time.Second
		r := newRig(t, config(t, remediate.ModeAuto, g))
		r.start()
		r.run(2 * time.Second)
		r.fault(primaryTarget, dead)
		r.run(17 * time.Second)
		if !r.onBackup() {
			t.Fatalf("primary dead for 17 s: not on the backup: %+v", r.audits())
		}
		r.fault(primaryTarget, nil)
		r.run(2 * time.Minute)
		if r.onBackup() || len(r.taken()) != 2 {
			t.Errorf("after a 17 s outage and 2 minutes of a clean primary: on backup %v, %d switches, want 2 (away and back): %+v", r.onBackup(), len(r.taken()), r.taken())
		}
	})
}

// A primary that flaps can cause at most three switches: away, back (the
// penalty reaches suppress) and away again (leaving a dead path is never
// damped); then the group stays on the backup until the penalty decays.
func TestDampingBoundsFlapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.HoldDown = 2 * time.Second
		g.LossRatio = 0.99 // else the 10 s loss window keeps the primary down through 5 s up: no flap at all
		r := newRig(t, config(t, remediate.ModeAuto, g))
		r.start()
		r.run(2 * time.Second)
		for range 12 { // 2 minutes of 5 s down, 5 s up
			r.fault(primaryTarget, dead)
			r.run(5 * time.Second)
			r.fault(primaryTarget, nil)
			r.run(5 * time.Second)
		}
		if n := len(r.taken()); n != 3 {
			t.Errorf("%d switches while flapping for 2 minutes, want 3: %+v", n, r.taken())
		}
		if !r.onBackup() || len(r.suppressed("damped")) == 0 {
			t.Errorf("after damping: on backup %v, damped suppressions %d; want staying on the backup, audited", r.onBackup(), len(r.suppressed("damped")))
		}
		if p := r.metric("wgpulse_failover_damping_penalty", nil); p < 2000 {
			t.Errorf("penalty %v, want >= suppress 2000", p)
		}
		// The penalty decays (half-life 15 min) below reuse 750: back to the primary.
		waitFor(t, time.Hour, "return once the penalty decayed", func() bool { return !r.onBackup() })
		// The return itself adds its 1000.
		if p := r.metric("wgpulse_failover_damping_penalty", nil) - 1000; p >= 750 || p < 700 {
			t.Errorf("returned with penalty %v, want just below reuse 750", p)
		}
	})
}

func TestRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.HoldDown = time.Second
		g.Damping = remediate.Damping{Penalty: 1, Suppress: 1e9, Reuse: 1e8, HalfLife: time.Minute} // off, in effect
		g.RateLimit = remediate.RateLimit{Burst: 2, Per: time.Hour}
		r := newRig(t, config(t, remediate.ModeAuto, g))
		r.start()
		r.run(2 * time.Second)
		r.fault(primaryTarget, dead)
		waitFor(t, 2*time.Second, "switch", r.onBackup)
		r.fault(primaryTarget, nil)
		waitFor(t, 5*time.Second, "return", func() bool { return !r.onBackup() })
		r.fault(primaryTarget, dead) // leaving a dead primary is an escape: the empty bucket does not hold it
		waitFor(t, 2*time.Second, "the second switch, through the empty bucket", r.onBackup)
		r.fault(primaryTarget, nil)
		r.run(10 * time.Second)
		if !r.onBackup() || len(r.taken()) != 3 || len(r.suppressed("rate_limited")) != 1 {
			t.Fatalf("second return within the hour: on backup %v, taken %d, rate-limited audits %d; want suppressed", r.onBackup(), len(r.taken()), len(r.suppressed("rate_limited")))
		}
		// The bucket refills: one change every 30 min.
		waitFor(t, 31*time.Minute, "return once a token is back", func() bool { return !r.onBackup() })
	})
}

// script plays the same faults on a node and returns its decisions.
func script(t *testing.T, mode remediate.Mode) (*rig, []auditLine) {
	g := group("fast")
	g.HoldDown = 5 * time.Second
	r := newRig(t, config(t, mode, g))
	r.start()
	r.run(2 * time.Second)
	r.fault(primaryTarget, dead)
	r.run(3 * time.Second)
	r.fault(primaryTarget, nil)
	r.run(10 * time.Second)
	r.fault(primaryTarget, dead)
	r.fault(backupTarget, dead)
	r.run(5 * time.Second)
	r.fault(backupTarget, nil)
	r.run(5 * time.Second)
	r.stop()
	return r, r.audits()
}

// Dry-run decides exactly what auto decides, and touches nothing.
func TestDryRunParity(t *testing.T) {
	var auto, dry []auditLine
	var dryRig *rig
	synctest.Test(t, func(t *testing.T) { _, auto = script(t, remediate.ModeAuto) })
	synctest.Test(t, func(t *testing.T) { dryRig, dry = script(t, remediate.ModeDryRun) })
	if len(auto) < 4 {
		t.Fatalf("the script made only %d decisions in auto: %+v", len(auto), auto)
	}
	strip := func(as []auditLine) []auditLine {
		out := slices.Clone(as)
		for i := range out {
			out[i].Mode, out[i].Reason = "", ""
			if out[i].Result == "ok" || out[i].Result == "dry_run" {
				out[i].Result = "taken"
			}
		}
		return out
	}
	if diff := cmp.Diff(strip(auto), strip(dry)); diff != "" {
		t.Errorf("dry-run decisions differ from auto's (-auto +dry-run)\n%s", diff)
	}
	for _, a := range dry {
		if a.Mode != "dry-run" || a.Result == "ok" {
			t.Errorf("dry-run audit line %+v: want mode dry-run and result dry_run or suppressed", a)
		}
	}
	if w := dryRig.routes.writes(); len(w) != 0 {
		t.Errorf("dry-run wrote routes: %v", w)
	}
	if _, err := os.Stat(dryRig.cfg.StateFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dry-run wrote its state file (%v); it touches nothing", err)
	}
}

// A restart on the backup while the primary is still down neither adds a
// duplicate nor flips back; the state file's damping survives.
func TestRestartKeepsTheBackupAndItsState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "switch", r.onBackup)
		r.stop() // restore_on_exit is off: the route stays, as after a crash
		writes := len(r.routes.writes())
		r.start() // same kernel, same state file, the primary still dead
		r.run(20 * time.Second)
		if !r.onBackup() || len(r.routes.writes()) != writes || len(r.taken()) != 1 {
			t.Fatalf("after the restart: on backup %v, %d new route writes, audits %+v; want the backup kept untouched",
				r.onBackup(), len(r.routes.writes())-writes, r.audits())
		}
		if r.metric("wgpulse_failover_active_path", map[string]string{"path": "backup"}) != 1 {
			t.Error("active path metric lost across the restart")
		}
		st := r.status()
		if st.Groups[0].Switches != 1 || st.Groups[0].Penalty < 900 {
			t.Errorf("damping state lost across the restart: %+v", st.Groups[0])
		}
		b, err := os.ReadFile(r.cfg.StateFile)
		if err != nil || !strings.Contains(string(b), `"active": "backup"`) || !strings.Contains(string(b), `"device": "wg-b"`) {
			t.Errorf("state file disagrees with the kernel (%v):\n%s", err, b)
		}
	})
}

// A corrupt state file is kept aside and, in auto, remediation starts
// paused (the pause or a change it recorded may be lost): the kernel is
// followed, nothing is written, the reason is in the log, the status and a
// metric, until an operator resumes.
func TestCorruptStateFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := config(t, remediate.ModeAuto, group("fast"))
		r := newRig(t, cfg)
		r.routes.operatorRoute(lan, backupDev, 10)
		r.routes.table[len(r.routes.table)-1].Protocol = remediate.DefaultRouteProtocol // ours, from an earlier run
		if err := os.WriteFile(cfg.StateFile, []byte(`{"version": 1, "groups": {`), 0o600); err != nil {
			t.Fatal(err)
		}
		r.start()
		r.run(5 * time.Second)
		aside, _ := filepath.Glob(cfg.StateFile + ".corrupt-*")
		if len(aside) != 1 {
			t.Errorf("corrupt file not kept aside: %v", aside)
		}
		if st := r.status(); st.Groups[0].Active != "backup" || len(r.routes.writes()) != 0 {
			t.Errorf("active %s with writes %v; want the backup, as the kernel shows, untouched", st.Groups[0].Active, r.routes.writes())
		}
		if r.metric("wgpulse_remediation_state_file_errors_total", nil) != 1 || !strings.Contains(r.logs.String(), "starting paused: the state file was unusable") {
			t.Error("corrupt state file not reported")
		}
		if st := r.rem.Status(); !st.Paused || !strings.Contains(st.PausedReason, "unusable") ||
			r.metric("wgpulse_remediation_state_file_unusable", nil) != 1 || r.metric("wgpulse_remediation_paused", nil) != 1 {
			t.Fatalf("status %+v: want paused with the reason, and the unusable metric at 1", st)
		}
		if _, err := os.Stat(cfg.StateFile); err != nil {
			t.Errorf("no fresh state file written: %v", err)
		}
		r.run(30 * time.Second) // the primary is up: a return is wanted, and held
		if len(r.routes.writes()) != 0 || len(r.suppressed("paused")) != 1 {
			t.Fatalf("while paused: writes %v, audits %+v; want nothing done, the return audited as paused once", r.routes.writes(), r.audits())
		}
		r.rem.Resume("test")
		waitFor(t, 35*time.Second, "the return once resumed", func() bool { return !r.onBackup() })
		if r.metric("wgpulse_remediation_state_file_unusable", nil) != 0 || r.rem.Status().PausedReason != "" {
			t.Error("resuming did not clear the unusable state")
		}
	})
}

// Two agents in auto on one state file would fight: the second refuses,
// naming the first's PID; the lock goes with the first.
func TestStateFileLock(t *testing.T) {
	cfg := config(t, remediate.ModeAuto, group("fast"))
	r := newRig(t, cfg) // its fake transports only
	first, err := policies.New(cfg, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: nilSnaps{}, Prober: nilProber{}, Routes: r.routes, Peers: r.wg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = policies.New(cfg, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: nilSnaps{}, Prober: nilProber{}, Routes: r.routes, Peers: r.wg})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("locked by another wgpulse (pid %d)", os.Getpid())) {
		t.Fatalf("second agent on the state file: %v; want a refusal naming the holder's PID", err)
	}
	dry := cfg
	dry.Mode = remediate.ModeDryRun // dry-run writes nothing: no lock needed
	if _, err := policies.New(dry, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: nilSnaps{}, Prober: nilProber{}, Routes: r.routes}); err != nil {
		t.Errorf("a dry-run agent beside it: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { first.Run(ctx); close(done) }()
	cancel()
	<-done
	if _, err := policies.New(cfg, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: nilSnaps{}, Prober: nilProber{}, Routes: r.routes}); err != nil {
		t.Errorf("after the first stopped: %v; want the lock free", err)
	}
}

type nilSnaps struct{}

func (nilSnaps) Subscribe(context.Context) <-chan *collector.Snapshot { return nil }

type nilProber struct{}

func (nilProber) SubscribeChanges(context.Context) <-chan prober.StateChange { return nil }
func (nilProber) HealthOf(string) (prober.Health, bool)                      { return prober.Health{}, false }
func (nilProber) SetTargets(string, []prober.Target)                         {}
func (nilProber) ResetState(string)                                          {}
func (nilProber) ResearchPMTU(string)                                        {}
func (nilProber) Subscribe(context.Context) <-chan prober.Result             { return nil }

func TestPauseAndResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.start()
		r.run(time.Second)
		r.rem.Pause("test")
		r.fault(primaryTarget, dead)
		r.run(5 * time.Second)
		if r.onBackup() || len(r.suppressed("paused")) != 1 || r.metric("wgpulse_remediation_paused", nil) != 1 {
			t.Fatalf("paused: on backup %v, paused audits %d; want no action, audited once", r.onBackup(), len(r.suppressed("paused")))
		}
		r.rem.Resume("test")
		waitFor(t, time.Second, "switch after resume", r.onBackup)
		if r.metric("wgpulse_remediation_paused", nil) != 0 {
			t.Error("paused gauge still 1")
		}
	})
}

// Both paths down: stay, and say why, once.
func TestBothPathsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.start()
		r.run(time.Second)
		r.fault(backupTarget, dead)
		r.run(2 * time.Second)
		r.fault(primaryTarget, dead)
		r.run(30 * time.Second)
		s := r.suppressed("both_down")
		if r.onBackup() || len(s) != 1 || !strings.Contains(s[0].Reason, "backup down") {
			t.Fatalf("both down: on backup %v, audits %+v; want staying, said once", r.onBackup(), r.audits())
		}
	})
}

// Unknown is never a reason to act: a backup with no verdict yet, and a
// device whose read fails.
func TestUnknownIsNotDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.openErr = map[string]error{backupDev: errors.New("cannot open an ICMP socket")} // the backup is never probed: no verdict
		r.wg.fail[primaryDev] = true                                                      // and the primary's device cannot be read
		r.start()
		r.run(10 * time.Second)
		if len(r.audits()) != 0 {
			t.Fatalf("acted or wanted to act on unknown: %+v", r.audits())
		}
		r.fault(primaryTarget, dead)
		r.run(10 * time.Second)
		if s := r.suppressed("unknown"); r.onBackup() || len(s) != 1 {
			t.Fatalf("primary down, backup unknown: on backup %v, audits %+v; want staying, audited", r.onBackup(), r.audits())
		}
	})
}

// restore_on_exit hands back what is safe to: a group on the backup whose
// primary is up again (within hold_down) returns on a clean exit; one
// whose primary is still down keeps its routes, audited, because deleting
// them would drop the traffic.
func TestRestoreOnExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.HoldDown = 10 * time.Minute
		cfg := config(t, remediate.ModeAuto, g)
		cfg.RestoreOnExit = true
		r := newRig(t, cfg)
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "switch", r.onBackup)
		r.fault(primaryTarget, nil)
		r.run(5 * time.Second) // up again, still within hold_down: on the backup
		if !r.onBackup() {
			t.Fatal("returned within hold_down")
		}
		r.stop()
		if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
			t.Errorf("after a clean exit the routes are not as before (-want +got)\n%s", diff)
		}
		if a := r.taken(); a[len(a)-1].Action != "return_to_primary" || !strings.Contains(a[len(a)-1].Reason, "restore_on_exit") {
			t.Errorf("restore not audited: %+v", a)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		cfg := config(t, remediate.ModeAuto, group("fast"))
		cfg.RestoreOnExit = true
		r := newRig(t, cfg)
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "switch", r.onBackup)
		r.stop()
		if !r.onBackup() {
			t.Error("restore_on_exit deleted our route with the primary down: the traffic is dropped")
		}
		if s := r.suppressed("primary_not_up"); len(s) != 1 || !strings.Contains(s[0].Reason, "restore_on_exit") || !strings.Contains(s[0].Reason, "kept on the backup") {
			t.Errorf("the kept route is not audited: %+v", r.audits())
		}
	})
}

// Preflight: a missing backup device, or operator routes neither the
// prefix's route nor its halves would beat, suppress the switch with a
// reason saying what to fix.
func TestPreflight(t *testing.T) {
	for _, tc := range []struct {
		name, reason, why string
		mod               func(*rig)
	}{
		{"device missing", "device_missing", "device wg-b does not exist", func(r *rig) { delete(r.routes.links, backupDev) }},
		{"metric too high", "metric_too_high", "lower route_metric", func(r *rig) { // neither the prefix nor its halves would win
			r.routes.operatorRoute(lan, primaryDev, 5)
			r.routes.operatorRoute("10.50.128.0/17", primaryDev, 5)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
				tc.mod(r)
				r.fault(primaryTarget, dead)
				r.start()
				r.run(5 * time.Second)
				s := r.suppressed(tc.reason)
				if len(s) != 1 || !strings.Contains(s[0].Reason, tc.why) || len(r.routes.writes()) != 0 {
					t.Fatalf("audits %+v, writes %v; want one %s suppression saying %q", r.audits(), r.routes.writes(), tc.reason, tc.why)
				}
			})
		})
	}
}

// A failed add leaves nothing half-done, is audited as an error and backs off.
func TestFailedActionBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.Prefixes = []string{lan, "10.60.0.0/16"}
		r := newRig(t, config(t, remediate.ModeAuto, g))
		r.wg.allowed[backupDev] = append(r.wg.allowed[backupDev], "10.60.0.0/16")
		r.routes.failAdd = syscall.EPERM
		r.fault(primaryTarget, dead)
		r.start()
		r.run(5 * time.Second)
		a := r.taken()
		if len(a) != 1 || a[0].Result != "error" || r.onBackup() {
			t.Fatalf("audits %+v; want one failed switch and no route", a)
		}
		if !strings.Contains(r.logs.String(), "needs CAP_NET_ADMIN") {
			t.Error("a refused route change does not say what to grant")
		}
		if r.metric("wgpulse_remediation_actions_total", map[string]string{"action": "switch_to_backup", "result": "error"}) != 1 {
			t.Error("failed action not counted")
		}
		r.routes.mu.Lock()
		r.routes.failAdd = nil
		r.routes.mu.Unlock()
		waitFor(t, 11*time.Second, "retry after the backoff", r.onBackup)
	})
}

// Every series exists from the start, at zero.
func TestMetricsPresentFromStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.start()
		waitIdle()
		for _, s := range []struct {
			name   string
			labels map[string]string
		}{
			{"wgpulse_remediation_actions_total", map[string]string{"policy": "failover", "group": "dc1-to-aws", "action": "switch_to_backup", "result": "ok", "mode": "auto"}},
			{"wgpulse_remediation_suppressed_total", map[string]string{"policy": "failover", "group": "dc1-to-aws", "reason": "damped"}},
			{"wgpulse_failover_active_path", map[string]string{"group": "dc1-to-aws", "path": "backup"}},
			{"wgpulse_failover_path_healthy", map[string]string{"group": "dc1-to-aws", "path": "primary"}},
			{"wgpulse_remediation_paused", nil},
			{"wgpulse_remediation_conflicts_total", map[string]string{"group": "dc1-to-aws"}},
		} {
			if v := r.metric(s.name, s.labels); v != 0 {
				t.Errorf("%s%v = %v at start, want 0", s.name, s.labels, v)
			}
		}
		if r.metric("wgpulse_failover_active_path", map[string]string{"path": "primary"}) != 1 {
			t.Error("active path primary not 1 at start")
		}
	})
}
