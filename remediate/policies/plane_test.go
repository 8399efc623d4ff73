package policies_test

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
)

// Every probe of the node failing at once (a host firewall starts dropping
// ICMP) is the probe plane, not the paths: no group moves, each says why
// once. One primary failing alone still fails over.
func TestProbePlaneDownIsUnknownNodeWide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := config(t, remediate.ModeAuto, group("fast"))
		r := newRig(t, cfg)
		var down1, down2 atomic.Bool
		r.cfg.Failover = append(r.cfg.Failover, dualWAN(r, "fast"))
		r.wan(&down1, &down2)
		r.start()
		r.run(3 * time.Second)
		wan := r.wg.endpointOf(tunnelDev)
		var dropAll atomic.Bool
		for _, target := range []string{primaryTarget, backupTarget} {
			r.fault(target, func(int) probertest.Reply { return probertest.Reply{Drop: dropAll.Load(), Delay: time.Millisecond} })
		}
		dropAll.Store(true)
		down1.Store(true)
		down2.Store(true)
		r.run(20 * time.Second)
		if r.onBackup() || r.wg.endpointOf(tunnelDev) != wan || len(r.routes.writes()) != 0 {
			t.Fatalf("a broken probe plane moved traffic: on backup %v, endpoint %s, writes %v", r.onBackup(), r.wg.endpointOf(tunnelDev), r.routes.writes())
		}
		if s := r.suppressed("probe_plane_down"); len(s) < 1 || len(s) > 2 {
			t.Errorf("probe plane down audited %d times, want once per group that wanted to move: %+v", len(s), r.audits())
		}
		dropAll.Store(false)
		down1.Store(false)
		down2.Store(false)
		r.run(10 * time.Second)
		r.fault(primaryTarget, dead) // one path alone: a real failure
		waitFor(t, 2*time.Second, "the switch of the group whose primary alone failed", r.onBackup)
	})
}
