package policies_test

import (
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/remediate"
)

// savedGroup reads one group's part of the state file.
func savedGroup(t *testing.T, r *rig, name string) map[string]any {
	t.Helper()
	var st struct {
		Policies struct {
			Failover struct {
				Groups map[string]map[string]any `json:"groups"`
			} `json:"failover"`
		} `json:"policies"`
	}
	if err := json.Unmarshal(readState(t, r), &st); err != nil {
		t.Fatal(err)
	}
	return st.Policies.Failover.Groups[name]
}

// A group removed by a reload while on the backup, with its primary still
// dead, keeps its routes: deleting them would drop the traffic. wgpulse
// keeps owning them (state file, status, series) and hands them back,
// audited, once the primary has been up for hold_down.
func TestRemovedGroupOnADeadPrimaryIsHandedBackLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
		next := r.cfg
		next.Failover = nil
		r.reload(next)
		r.run(10 * time.Second)
		if !r.onBackup() {
			t.Fatal("the reload deleted the removed group's route with its primary dead")
		}
		if s := r.suppressed("primary_not_up"); len(s) != 1 || !strings.Contains(s[0].Reason, "kept on the backup") {
			t.Errorf("the kept route is not audited once: %+v", r.audits())
		}
		st := r.status().Groups
		if len(st) != 1 || !st[0].Retired || st[0].Handback != remediate.UndoReload || st[0].Active != "backup" {
			t.Fatalf("status of the removed group: %+v", st)
		}
		if !r.has("wgpulse_remediation_policy_info", map[string]string{"policy": "failover", "group": "dc1-to-aws"}) {
			t.Error("the kept group's series are gone while its route is in the kernel")
		}
		if g := savedGroup(t, r, "dc1-to-aws"); g["handback"] != remediate.UndoReload || g["config"] == nil {
			t.Errorf("state file part of the kept group: %v", g)
		}

		r.fault(primaryTarget, nil)
		healed := time.Now()
		waitFor(t, time.Minute, "the hand-back", func() bool { return !r.onBackup() })
		if took := time.Since(healed); took < 5*time.Second {
			t.Errorf("handed back %s after the primary healed: before hold_down (5 s, fast)", took)
		}
		if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
			t.Errorf("after the hand-back (-want +got)\n%s", diff)
		}
		a := r.taken()
		if last := a[len(a)-1]; last.Action != "return_to_primary" || last.Result != "ok" || !strings.Contains(last.Reason, "after a reload") {
			t.Errorf("hand-back audit: %+v", last)
		}
		if got := r.status().Groups; len(got) != 0 {
			t.Errorf("groups after the hand-back: %+v", got)
		}
		if r.has("wgpulse_remediation_policy_info", map[string]string{"policy": "failover", "group": "dc1-to-aws"}) {
			t.Error("the handed-back group's series are still exported")
		}
	})
}

// Leaving auto while on the backup hands the traffic back when the primary
// is up and routed, at once; with the primary dead it keeps the routes,
// says so, and a dry-run agent hands them back once the primary is up.
func TestLeavingAutoOnTheBackup(t *testing.T) {
	t.Run("primary up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			g := group("fast")
			g.HoldDown = 10 * time.Minute
			r := failedOver(t, config(t, remediate.ModeAuto, g))
			r.fault(primaryTarget, nil)
			r.run(5 * time.Second)
			next := r.cfg
			next.Mode = remediate.ModeDryRun
			r.reload(next)
			if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
				t.Errorf("routes after leaving auto (-want +got)\n%s", diff)
			}
			a := r.taken()
			if last := a[len(a)-1]; last.Action != "return_to_primary" || last.Mode != "auto" || !strings.Contains(last.Reason, "leaves auto") {
				t.Errorf("hand-back audit: %+v", a)
			}
			if st := r.status().Groups[0]; st.Active != "primary" || st.Handback != "" {
				t.Errorf("status after the hand-back: %+v", st)
			}
		})
	})
	t.Run("primary dead", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
			next := r.cfg
			next.Mode = remediate.ModeDryRun
			r.reload(next)
			r.run(10 * time.Second)
			if !r.onBackup() {
				t.Fatal("leaving auto deleted our route with the primary dead")
			}
			if s := r.suppressed("primary_not_up"); len(s) != 1 || !strings.Contains(s[0].Reason, "leaves auto") {
				t.Errorf("the kept route is not audited once: %+v", r.audits())
			}
			if st := r.status().Groups[0]; st.Handback != remediate.UndoLeaveAuto || st.Retired {
				t.Errorf("status while kept: %+v", st)
			}
			r.fault(primaryTarget, nil)
			waitFor(t, time.Minute, "the hand-back in dry-run", func() bool { return !r.onBackup() })
			a := r.taken()
			if last := a[len(a)-1]; last.Action != "return_to_primary" || last.Mode != "dry-run" || last.Result != "ok" {
				t.Errorf("hand-back audit: %+v", last)
			}
			// The group is a dry-run group again: a new outage is a dry-run switch.
			r.fault(primaryTarget, dead)
			r.run(5 * time.Second)
			if a := r.taken(); r.onBackup() || a[len(a)-1].Result != "dry_run" {
				t.Errorf("after the hand-back: on backup %v, last audit %+v; want a dry-run switch", r.onBackup(), a[len(a)-1])
			}
		})
	})
}

// A start whose config no longer has a group the state file shows on the
// backup (removed while the agent was stopped) hands its routes back once
// the conditions allow, audited; until then they stay ours.
func TestStartHandsBackAGroupNoLongerConfigured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
		r.stop() // the route stays, as after a crash
		r.cfg.Failover = nil
		r.start()
		r.run(10 * time.Second)
		if !r.onBackup() {
			t.Fatal("the start deleted the unconfigured group's route with its primary dead")
		}
		if s := r.suppressed("primary_not_up"); len(s) != 1 || !strings.Contains(s[0].Reason, "no longer covers") {
			t.Errorf("the kept route is not audited once: %+v", r.audits())
		}
		if st := r.status().Groups; len(st) != 1 || st[0].Handback != remediate.UndoOutOfScope || !st[0].Retired {
			t.Errorf("status: %+v", st)
		}
		r.fault(primaryTarget, nil)
		waitFor(t, time.Minute, "the hand-back", func() bool { return !r.onBackup() })
		if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
			t.Errorf("after the hand-back (-want +got)\n%s", diff)
		}
		r.stop()
		if g := savedGroup(t, r, "dc1-to-aws"); g != nil {
			t.Errorf("the handed-back group is still in the state file: %v", g)
		}
	})
}

// Leaving auto undoes the MTU policy's route too: nothing would maintain it
// (raise it when the path recovers), so it goes, audited with leave_auto.
func TestLeavingAutoUndoesTheMTURoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mtuConfig(t, remediate.ModeAuto))
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		waitFor(t, 2*time.Minute, "an MTU route", func() bool { return r.ourMTURoute() != "" })
		next := r.cfg
		next.Mode = remediate.ModeDryRun
		r.reload(next)
		if rt := r.ourMTURoute(); rt != "" {
			t.Errorf("our MTU route %s is still there after leaving auto", rt)
		}
		a := r.taken()
		if last := a[len(a)-1]; last.Action != "raise_mtu" || last.Result != "ok" || !strings.Contains(last.Reason, "leaves auto") {
			t.Errorf("undo audit: %+v", a)
		}
	})
}
