package policies_test

import (
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/remediate"
)

// wgQuickRig is a node whose primary was brought up by wg-quick with
// `Table = auto` (its route for the LAN has metric 0, proto boot, and
// nothing can be below it) and whose backup has `Table = off` (no route).
func wgQuickRig(t *testing.T) *rig {
	r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
	r.routes.table = nil
	_, dst, _ := net.ParseCIDR(lan)
	r.routes.table = append(r.routes.table, netlink.Route{Dst: dst, LinkIndex: r.routes.links[primaryDev], Priority: 0, Protocol: 3, Table: unix.RT_TABLE_MAIN})
	return r
}

const wgQuickRoute = "10.50.0.0/16 dev wg-p metric 0 proto 3"

var halves = []string{"10.50.0.0/17 dev wg-b metric 10 proto 117", "10.50.128.0/17 dev wg-b metric 10 proto 117"}

// wg-quick's metric-0 route is beaten by the prefix's halves (longest match
// wins whatever the metric): a cut fails over within the fast bound, the
// return leaves exactly wg-quick's route, a restart on the backup adopts
// the halves without a write, and deleting one half is a conflict.
func TestFailoverOverWgQuickMetricZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := wgQuickRig(t)
		r.start()
		r.run(2 * time.Second)
		r.fault(primaryTarget, dead)
		onHalves := func() bool {
			rs := r.routes.show()
			return slices.Contains(rs, halves[0]) && slices.Contains(rs, halves[1])
		}
		took := waitFor(t, 2*time.Second, "the halves via the backup", onHalves)
		if took > 550*time.Millisecond {
			t.Errorf("switched %s after the primary died, want <= 550ms (fast profile)", took)
		}
		want := append([]string{wgQuickRoute}, halves...)
		slices.Sort(want)
		if diff := cmp.Diff(want, r.routes.show()); diff != "" {
			t.Errorf("routes on the backup (-want +got)\n%s", diff)
		}
		if s := r.suppressed("metric_too_high"); len(s) != 0 {
			t.Errorf("the metric-0 route suppressed the switch: %+v", s)
		}
		b, err := os.ReadFile(r.cfg.StateFile)
		if err != nil || !strings.Contains(string(b), `"prefix": "10.50.128.0/17"`) {
			t.Errorf("state file does not list the halves in force (%v):\n%s", err, b)
		}

		r.stop() // a restart on the backup, the primary still dead
		writes := len(r.routes.writes())
		r.start()
		r.run(5 * time.Second)
		if st := r.status().Groups[0]; st.Active != "backup" || len(r.routes.writes()) != writes {
			t.Fatalf("after a restart: active %s, %d new writes; want the halves adopted untouched", st.Active, len(r.routes.writes())-writes)
		}

		r.fault(primaryTarget, nil)
		waitFor(t, 40*time.Second, "the return", func() bool { return !onHalves() })
		if diff := cmp.Diff([]string{wgQuickRoute}, r.routes.show()); diff != "" {
			t.Errorf("after the return the routes are not wg-quick's (-want +got)\n%s", diff)
		}

		r.fault(primaryTarget, dead)
		waitFor(t, 2*time.Second, "the second switch", onHalves)
		r.routes.mu.Lock()
		r.routes.table = slices.DeleteFunc(r.routes.table, func(rt netlink.Route) bool { return rt.Dst.String() == "10.50.128.0/17" })
		r.routes.mu.Unlock()
		r.run(3 * time.Second)
		if r.metric("wgpulse_remediation_conflicts_total", map[string]string{"group": "dc1-to-aws"}) != 1 {
			t.Error("a half deleted behind our back is not a conflict")
		}
	})
}
