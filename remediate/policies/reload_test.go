package policies_test

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// A reload that removes a group on the backup hands its change back first,
// audited, when its primary is up again (it is still within hold_down);
// the policies keep running on the new config while they decide (the race
// detector watches), and the group's series go with it.
func TestReloadRemovesAGroupOnTheBackup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := group("fast")
		g.HoldDown = 10 * time.Minute
		r := newRig(t, config(t, remediate.ModeAuto, g))
		r.fault(primaryTarget, dead)
		r.start()
		waitFor(t, 5*time.Second, "switch", r.onBackup)
		r.fault(primaryTarget, nil)
		r.run(5 * time.Second)
		next := r.cfg
		next.Failover = nil
		next.Keepalive.Enabled, next.Keepalive.Devices = true, []string{primaryDev}
		if err := policies.Apply(context.Background(), r.rem, next); err != nil {
			t.Fatal(err)
		}
		r.run(3 * time.Second)
		if diff := cmp.Diff(operatorRoutes, r.routes.show()); diff != "" {
			t.Errorf("after the reload the routes are not the operator's (-want +got)\n%s", diff)
		}
		a := r.taken()
		if len(a) != 2 || a[1].Action != "return_to_primary" || !strings.Contains(a[1].Reason, "no longer covers this change the same way after a reload") {
			t.Errorf("audit %+v, want the removed group's return", a)
		}
		if got := r.status().Groups; len(got) != 0 {
			t.Errorf("groups after the reload: %+v", got)
		}
		for _, name := range []string{"wgpulse_failover_active_path", "wgpulse_remediation_actions_total", "wgpulse_remediation_policy_info"} {
			if r.has(name, map[string]string{"group": "dc1-to-aws"}) {
				t.Errorf("the removed group's %s is still exported", name)
			}
		}
		if r.metric("wgpulse_remediation_policy_info", map[string]string{"policy": "keepalive", "group": primaryDev}) != 1 {
			t.Error("the keepalive policy switched on by the reload is not running")
		}
		off := next
		off.Keepalive.Enabled = false
		if err := policies.Apply(context.Background(), r.rem, off); err != nil {
			t.Fatal(err)
		}
		if r.has("wgpulse_remediation_policy_info", map[string]string{"policy": "keepalive", "group": primaryDev}) {
			t.Error("the keepalive policy switched off by a reload still reports its device")
		}
		// Policies are fixed at build time: a reload cannot bring others.
		if err := r.rem.ApplyConfig(context.Background(), next.Config, nil); err == nil {
			t.Error("a reload without the running policies was accepted")
		}
	})
}
