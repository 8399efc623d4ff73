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
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "switch", r.onBackup)
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
