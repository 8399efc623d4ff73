package policies_test

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wgpulse/wgpulse/remediate"
)

// Look before you leap: a switch or a return that the kernel or WireGuard
// would not carry is suppressed with a reason saying what to fix.
func TestLookBeforeYouLeap(t *testing.T) {
	t.Run("backup peer does not allow the prefix", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
			r.wg.allowed[backupDev] = nil // the far end of the backup allows only its tunnel address
			r.fault(primaryTarget, dead)
			r.start()
			r.run(5 * time.Second)
			if s := r.suppressed("backup_not_allowed"); r.onBackup() || len(s) != 1 || !strings.Contains(s[0].Reason, "AllowedIPs") {
				t.Fatalf("switch into a backup that would drop the prefix: on backup %v, audits %+v", r.onBackup(), r.audits())
			}
		})
	})
	t.Run("a prefix holds the backup peer's endpoint", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
			r.wg.endpoint[backupDev] = netip.MustParseAddrPort("10.50.3.3:51820") // the backup's peer lives inside the LAN it would carry
			r.fault(primaryTarget, dead)
			r.start()
			r.run(5 * time.Second)
			if s := r.suppressed("endpoint_in_prefix"); r.onBackup() || len(s) != 1 || !strings.Contains(s[0].Reason, "10.50.3.3:51820") {
				t.Fatalf("switch that would loop the tunnel into itself: on backup %v, audits %+v", r.onBackup(), r.audits())
			}
		})
	})
	t.Run("a policy rule sends the prefix by a third device", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
			r.routes.links["vrf-blue"] = 9
			r.routes.rule = map[string]string{lan: "vrf-blue"}
			r.fault(primaryTarget, dead)
			r.start()
			r.run(5 * time.Second)
			if s := r.suppressed("lookup_elsewhere"); r.onBackup() || len(s) != 1 || !strings.Contains(s[0].Reason, "via vrf-blue, neither the primary wg-p nor the backup wg-b") {
				t.Fatalf("switch of a prefix the kernel sends elsewhere: on backup %v, audits %+v", r.onBackup(), r.audits())
			}
		})
	})
	t.Run("the primary's routes gone, the lookup falls to the default route", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
			r.routes.links["eth0"] = 9
			r.routes.operatorRoute("0.0.0.0/0", "eth0", 0)
			r.routes.mu.Lock() // wg-quick down of the primary: its routes went with it
			r.routes.table = slices.DeleteFunc(r.routes.table, func(rt netlink.Route) bool { return rt.LinkIndex == r.routes.links[primaryDev] })
			r.routes.mu.Unlock()
			r.fault(primaryTarget, dead)
			r.start()
			waitFor(t, 5*time.Second, "the switch: a lookup via the default route is no reason to stay", r.onBackup)
		})
	})
	t.Run("no route via the primary to return to", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
			r.fault(primaryTarget, dead)
			r.start()
			waitFor(t, 5*time.Second, "switch", r.onBackup)
			// wg-quick down/up of the primary without its routes: the tunnel
			// answers again, but nothing routes the LAN through it.
			r.routes.mu.Lock()
			r.routes.table = slices.DeleteFunc(r.routes.table, func(rt netlink.Route) bool { return rt.LinkIndex == r.routes.links[primaryDev] })
			r.routes.mu.Unlock()
			r.fault(primaryTarget, nil)
			r.run(40 * time.Second)
			if s := r.suppressed("no_primary_route"); !r.onBackup() || len(s) != 1 || !strings.Contains(s[0].Reason, "no route via the primary wg-p carries 10.50.0.0/16") {
				t.Fatalf("return with no route via the primary: on backup %v, audits %+v; want staying, said once", r.onBackup(), r.audits())
			}
			_, covering, _ := net.ParseCIDR("10.0.0.0/8") // a covering route via the primary is enough
			r.routes.mu.Lock()
			r.routes.table = append(r.routes.table, netlink.Route{Dst: covering, LinkIndex: r.routes.links[primaryDev], Priority: 100, Protocol: 4, Table: 254})
			r.routes.mu.Unlock()
			waitFor(t, 5*time.Second, "the return once a route via the primary covers the LAN", func() bool { return !r.onBackup() })
		})
	})
}
