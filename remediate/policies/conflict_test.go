package policies_test

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// A conflict that lasts (an operator route overriding ours while the group
// is on the backup) is one episode: counted, audited and backed off from
// once, not every 2 s check, so the group does not freeze: once the
// primary is back it returns after hold_down.
func TestLastingConflictIsOneEpisode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
		r.routes.operatorRoute(lan, backupDev, 9) // below ours, another protocol: it carries the traffic instead
		r.run(time.Minute)
		if n := r.metric("wgpulse_remediation_conflicts_total", map[string]string{"group": "dc1-to-aws"}); n != 1 {
			t.Errorf("%v conflicts counted in a minute of one lasting conflict, want 1", n)
		}
		if n := strings.Count(r.logs.String(), `"msg":"conflict: something else changed what wgpulse owns`); n != 1 {
			t.Errorf("%d conflict audit lines, want 1", n)
		}
		spans := 0
		for _, s := range r.spans.Ended() {
			if s.Name() == "remediate.failover.conflict" {
				spans++
			}
		}
		if spans != 1 {
			t.Errorf("%d conflict spans, want 1", spans)
		}
		if st := r.status().Groups[0]; st.Conflicts != 1 {
			t.Errorf("status conflicts_in_a_row %d, want 1", st.Conflicts)
		}
		r.fault(primaryTarget, nil)
		waitFor(t, 45*time.Second, "the return while the conflict lasts", func() bool { return !r.onBackup() })
	})
}

// An escape from a dead path waits for no backoff: an operator deleting
// our route while the primary is dead is one conflict, and the group, back
// on the (dead) primary, leaves it again at once. Reverted a second time,
// the conflict is lasting: status, metric and even the escape waits out
// the backoff, so two managers cannot fight faster than it doubles.
func TestEscapeIgnoresBackoffUntilTheConflictLasts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
		lasting := map[string]string{"policy": "failover", "group": "dc1-to-aws"}
		if v, ok := r.lookup("wgpulse_remediation_conflict_lasting", lasting); !ok || v != 0 {
			t.Fatalf("wgpulse_remediation_conflict_lasting %v (present %v) before any conflict, want 0", v, ok)
		}

		r.routes.deleteOurs()
		deleted := time.Now()
		waitFor(t, 5*time.Second, "the escape after the first conflict", r.onBackup)
		if took := time.Since(deleted); took > 4*time.Second {
			t.Errorf("escape %s after our route was deleted: the backoff held it", took)
		}
		if st := r.status().Groups[0]; st.Conflicts != 1 || st.Lasting {
			t.Errorf("after one conflict: conflicts_in_a_row %d, lasting %v; want 1, false", st.Conflicts, st.Lasting)
		}

		r.routes.deleteOurs()
		r.run(5 * time.Second)
		if r.onBackup() {
			t.Fatal("re-added at once after the second revert: a lasting conflict must wait out the backoff")
		}
		st := r.status().Groups[0]
		if st.Conflicts != 2 || !st.Lasting || st.BackoffUntil == nil || st.Active != "primary" || !strings.Contains(st.Conflict, "was deleted") {
			t.Errorf("lasting conflict status: %+v", st)
		}
		if v := r.metric("wgpulse_remediation_conflict_lasting", lasting); v != 1 {
			t.Errorf("wgpulse_remediation_conflict_lasting %v in a lasting conflict, want 1", v)
		}
		if s := r.suppressed("backoff"); len(s) != 1 {
			t.Errorf("%d backoff audit lines for the held escape, want 1: %+v", len(s), r.audits())
		}
		waitFor(t, time.Minute, "the escape after the backoff", r.onBackup)
		if left := time.Until(*st.BackoffUntil); left > time.Second {
			t.Errorf("escaped %s before the backoff ended", left)
		}
		r.run(remediate.LastingFor)
		if v := r.metric("wgpulse_remediation_conflict_lasting", lasting); v != 0 {
			t.Errorf("wgpulse_remediation_conflict_lasting %v after %s without a conflict, want 0", v, remediate.LastingFor)
		}
	})
}

// The rate limit bounds voluntary changes; an escape from a dead path goes
// through an empty bucket.
func TestEscapeIgnoresTheRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.RateLimit = remediate.RateLimit{Burst: 1, Per: time.Hour}
		r := failedOver(t, config(t, remediate.ModeAuto, g))
		r.fault(primaryTarget, nil)
		r.fault(backupTarget, dead)
		waitFor(t, 10*time.Second, "the escape from the dead backup with the bucket empty", func() bool { return !r.onBackup() })
		if s := r.suppressed("rate_limited"); len(s) != 0 {
			t.Errorf("escape audited as rate limited: %+v", s)
		}
	})
}

// The in-force check looks where the kernel sends traffic, not only at the
// exact prefix: a policy rule sending the LAN elsewhere (what wg-quick's
// fwmark table or a VRF does) and a more specific operator route via the
// primary inside ours are conflicts, found within a check, each once.
func TestInForceSeesRulesAndMoreSpecificRoutes(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		fault      func(r *rig)
	}{
		{"a policy rule", "via wg-p, not wg-b: a policy rule", func(r *rig) {
			r.routes.mu.Lock()
			r.routes.rule = map[string]string{lan: primaryDev}
			r.routes.mu.Unlock()
		}},
		{"a more specific route via the primary", "10.50.7.0/24 dev wg-p metric 100 proto 4 is more specific than our 10.50.0.0/16", func(r *rig) {
			r.routes.operatorRoute("10.50.7.0/24", primaryDev, 100)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
				r.run(5 * time.Second)
				if c := r.metric("wgpulse_remediation_conflicts_total", nil); c != 0 {
					t.Fatalf("%v conflicts with our route in force", c)
				}
				tc.fault(r)
				r.run(20 * time.Second)
				if c := r.metric("wgpulse_remediation_conflicts_total", nil); c != 1 || !strings.Contains(r.logs.String(), tc.want) {
					t.Errorf("%v conflicts; want 1, logged with %q", c, tc.want)
				}
				if !r.onBackup() {
					t.Error("our route went: an override is reported, not fought or given up")
				}
			})
		})
	}
}
