package policies_test

import (
	"encoding/json"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// A kernel call that hangs in one policy delays no other: the MTU policy's
// route dump for its peer's prefix never returns, and the failover group
// still switches within the fast profile's bound; /metrics still answers,
// and GET /-/remediate within a second, naming the busy policy.
func TestSlowKernelCallInOnePolicyDelaysNoOther(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := config(t, remediate.ModeAuto, group("fast"))
		cfg.MTU.Enabled, cfg.MTU.Devices, cfg.MTU.Min = true, []string{backupDev}, 1200
		r := newRig(t, cfg)
		const busy = "10.60.0.0/16"
		r.wg.allowed[backupDev] = append(r.wg.allowed[backupDev], busy)
		release := make(chan struct{})
		r.routes.hang, r.routes.hung = map[string]chan struct{}{busy: release}, make(chan string, 1)
		r.pmtu.Store(backupTarget, 1232) // the MTU policy wants a route for 10.60.0.0/16: it reads the table first
		r.start()
		t.Cleanup(func() { close(release) }) // before the rig stops: the MTU policy's goroutine must end
		select {
		case <-r.routes.hung:
		case <-time.After(2 * time.Minute):
			t.Fatal("the MTU policy never read the routes of its peer's prefix")
		}
		r.run(time.Second) // the MTU policy stays stuck in its dump

		r.fault(primaryTarget, dead)
		took := waitFor(t, 5*time.Second, "switch to the backup while the MTU policy is stuck", r.onBackup)
		if took > 550*time.Millisecond {
			t.Errorf("switched %s after the primary died, want <= 550ms (fast profile) whatever the MTU policy does", took)
		}
		if a := r.taken(); len(a) != 1 || a[0].Action != "switch_to_backup" || a[0].Result != "ok" {
			t.Errorf("audit %+v, want one switch_to_backup ok", a)
		}
		if v := r.metric("wgpulse_failover_active_path", map[string]string{"path": "backup"}); v != 1 {
			t.Errorf("/metrics: active path backup = %v while the MTU policy is stuck, want 1", v)
		}
		start := time.Now()
		st := r.rem.Status()
		if waited := time.Since(start); waited > 1100*time.Millisecond {
			t.Errorf("status waited %s for the stuck policy, want at most about 1s", waited)
		}
		if !slices.Equal(st.Busy, []string{"mtu"}) {
			t.Errorf("busy policies %v, want [mtu]", st.Busy)
		}
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Groups []struct{ Active string }
		}
		if err := json.Unmarshal(b, &got); err != nil || len(got.Groups) != 1 || got.Groups[0].Active != "backup" {
			t.Errorf("status %s: want the failover group on the backup (%v)", b, err)
		}
	})
}
