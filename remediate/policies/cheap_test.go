package policies_test

import (
	"slices"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// The rails come before any route read: a switch held back (here by the
// backoff after its own failure) costs no route dump on each 100 ms tick.
func TestHeldDecisionReadsNoRoutes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.routes.failAdd = syscall.EPERM
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "the failed switch", func() bool { return len(r.audits()) > 0 })
		r.run(time.Second)
		before := r.routes.dumpCount()
		r.run(7 * time.Second) // within the 10 s backoff: 70 ticks that want to switch
		if n := r.routes.dumpCount() - before; n > 0 {
			t.Errorf("%d route dumps while the backoff held the switch, want 0", n)
		}
		if s := r.suppressed("backoff"); len(s) != 1 {
			t.Errorf("backoff audited %d times, want once: %+v", len(s), r.audits())
		}
	})
}

// A failed route read is unknown: it changes no belief. At start, with the
// state file saying the group is on the backup, a route dump that fails
// keeps it there (no write, no flip); once reads work, the kernel confirms.
func TestFailedRouteReadKeepsBeliefs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := failedOver(t, config(t, remediate.ModeAuto, group("fast")))
		r.stop()
		writes := len(r.routes.writes())
		r.routes.mu.Lock()
		r.routes.failGet = syscall.ENOBUFS
		r.routes.mu.Unlock()
		r.start()
		r.run(10 * time.Second)
		if st := r.status().Groups[0]; st.Active != "backup" || len(r.routes.writes()) != writes {
			t.Errorf("with route reads failing: active %s, %d new writes; want the saved backup, untouched", st.Active, len(r.routes.writes())-writes)
		}
		if c := r.metric("wgpulse_remediation_conflicts_total", nil); c != 0 {
			t.Errorf("%v conflicts from failed reads", c)
		}
		r.routes.mu.Lock()
		r.routes.failGet = nil
		r.routes.mu.Unlock()
		r.run(10 * time.Second)
		if st := r.status().Groups[0]; st.Active != "backup" || !slices.Contains(r.routes.show(), ours) || len(r.routes.writes()) != writes {
			t.Errorf("reads back: active %s, routes %v; want the backup confirmed, untouched", st.Active, r.routes.show())
		}
	})
}
