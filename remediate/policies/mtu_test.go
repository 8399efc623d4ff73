package policies_test

import (
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// mtuConfig is the MTU policy on the rig's primary device.
func mtuConfig(t *testing.T, mode remediate.Mode) policies.Config {
	cfg := config(t, mode)
	cfg.MTU.Enabled, cfg.MTU.Devices, cfg.MTU.HoldDown = true, []string{primaryDev}, time.Minute
	cfg.MTU.Min = 1200 // an IPv4 site behind a path below 1280
	return cfg
}

// ourMTURoute returns our MTU route for the LAN prefix, if any.
func (r *rig) ourMTURoute() string {
	for _, rt := range r.routes.show() {
		if strings.HasPrefix(rt, "10.50.0.0/16 dev wg-p metric 99 proto 117 mtu ") {
			return rt
		}
	}
	return ""
}

// A path that passes at most 1232 bytes: the peer's routed prefix gets an
// owned route one metric below the operator's with the measured MTU; the
// device and the probed tunnel address are left alone. When the path is
// back the MTU returns after hold_down.
func TestMTUPerDestinationAndRaise(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mtuConfig(t, remediate.ModeAuto))
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		took := waitFor(t, 2*time.Minute, "an MTU route", func() bool { return r.ourMTURoute() != "" })
		t.Logf("MTU route after %s: %s", took, r.ourMTURoute())
		var mtu int
		if _, err := fmtSscanf(r.ourMTURoute(), "10.50.0.0/16 dev wg-p metric 99 proto 117 mtu %d", &mtu); err != nil || mtu > 1232 || mtu < 1212 {
			t.Fatalf("route %q: want an MTU within 20 bytes below 1232", r.ourMTURoute())
		}
		if m := r.routes.linkMTU(primaryDev); m != 1420 {
			t.Errorf("device MTU changed to %d: the per-destination route must do", m)
		}
		for _, rt := range r.routes.show() {
			if strings.HasPrefix(rt, primaryTarget) {
				t.Errorf("route %q covers the probed tunnel address: the search would be capped", rt)
			}
		}
		a := r.taken()
		if len(a) != 1 || a[0].Action != "lower_mtu" || !strings.Contains(a[0].Reason, "path MTU measured") {
			t.Fatalf("audits %+v", a)
		}
		if v := r.metric("wgpulse_remediation_mtu_bytes", map[string]string{"device": primaryDev, "mechanism": "route"}); v != float64(mtu) {
			t.Errorf("wgpulse_remediation_mtu_bytes = %v, want %d", v, mtu)
		}

		r.pmtu.Store(primaryTarget, 1420) // fixed; the next full search (1 m) sees it
		waitFor(t, 4*time.Minute, "the MTU route gone", func() bool { return r.ourMTURoute() == "" })
		if diff := slices.Compare(operatorRoutes, r.routes.show()); diff != 0 {
			t.Errorf("routes after the raise: %v, want the operator's", r.routes.show())
		}
		a = r.taken()
		if len(a) != 2 || a[1].Action != "raise_mtu" || len(r.suppressed("hold_down")) != 1 {
			t.Errorf("audits %+v; want the raise after one hold-down suppression", r.audits())
		}
	})
}

// A peer with no routed prefix: the whole device is the fallback. The
// lowered device caps the search, so after hold_down it tries the full MTU
// again, and a path still bad is lowered again.
func TestMTUDeviceFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mtuConfig(t, remediate.ModeAuto))
		r.pmtu.Store(primaryTarget, 1300)
		r.start()
		waitFor(t, 2*time.Minute, "the device MTU lowered", func() bool { return r.routes.linkMTU(primaryDev) < 1420 })
		if m := r.routes.linkMTU(primaryDev); m > 1300 || m < 1280 {
			t.Fatalf("device MTU %d, want within 20 bytes below 1300", m)
		}
		waitFor(t, 3*time.Minute, "a try at the full MTU", func() bool { return r.routes.linkMTU(primaryDev) == 1420 })
		waitFor(t, 2*time.Minute, "lowered again: the path is still bad", func() bool { return r.routes.linkMTU(primaryDev) < 1420 })
		r.pmtu.Store(primaryTarget, 1420)
		waitFor(t, 4*time.Minute, "back to the full MTU", func() bool { return r.routes.linkMTU(primaryDev) == 1420 })
		r.run(3 * time.Minute)
		if m := r.routes.linkMTU(primaryDev); m != 1420 {
			t.Errorf("device MTU %d after the path recovered, want 1420 to stay: %+v", m, r.audits())
		}
	})
}

// Under mtu.min the policy says so and changes nothing: no MTU it may set
// would make packets fit.
func TestMTUBelowPolicyMin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := mtuConfig(t, remediate.ModeAuto)
		cfg.MTU.Min = 1280
		r := newRig(t, cfg)
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		r.run(2 * time.Minute)
		s := r.suppressed("below_floor")
		if r.ourMTURoute() != "" || len(s) != 1 || !strings.Contains(s[0].Reason, "lower mtu.min") {
			t.Errorf("route %q, audits %+v; want no change and one below_floor line saying what to do", r.ourMTURoute(), r.audits())
		}
	})
}

// Below the prober's floor: with below_min: min, mtu.min is set when it is
// below the floor that failed; with ignore, nothing.
func TestMTUBelowTheFloor(t *testing.T) {
	for _, tc := range []struct {
		belowMin string
		want     bool
	}{{"min", true}, {"ignore", false}} {
		t.Run(tc.belowMin, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := mtuConfig(t, remediate.ModeAuto)
				cfg.MTU.Min, cfg.MTU.BelowMin = 1100, tc.belowMin
				r := newRig(t, cfg)
				r.wg.allowed[primaryDev] = []string{lan}
				r.pmtu.Store(primaryTarget, 1150) // below the prober's floor 1200
				r.start()
				r.run(2 * time.Minute)
				got := r.ourMTURoute()
				if (got != "") != tc.want || (tc.want && !strings.HasSuffix(got, "mtu 1100")) {
					t.Errorf("below_min %s: route %q, want one with mtu 1100: %v", tc.belowMin, got, tc.want)
				}
			})
		})
	}
}

// Dry-run decides and tells, and changes nothing; something else deleting
// the route in auto is a conflict that is backed off from.
func TestMTUDryRunAndConflict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mtuConfig(t, remediate.ModeDryRun))
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		r.run(2 * time.Minute)
		a := r.taken()
		if len(a) != 1 || a[0].Action != "lower_mtu" || a[0].Result != "dry_run" || len(r.routes.writes()) != 0 {
			t.Fatalf("dry-run: audits %+v, writes %v; want one dry_run decision and nothing touched", a, r.routes.writes())
		}
	})
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mtuConfig(t, remediate.ModeAuto))
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		waitFor(t, 2*time.Minute, "an MTU route", func() bool { return r.ourMTURoute() != "" })
		r.routes.deleteOurs()
		r.run(3 * time.Second)
		if c := r.metric("wgpulse_remediation_conflicts_total", map[string]string{"group": primaryDev}); c != 1 {
			t.Fatalf("conflicts %v, want 1", c)
		}
		// Packets above the path MTU vanish: lowering it is an escape, which
		// no backoff holds; reverted twice in a row, it waits the backoff out.
		waitFor(t, 2*time.Second, "re-applied at once (an escape)", func() bool { return r.ourMTURoute() != "" })
		r.routes.deleteOurs()
		r.run(3 * time.Second)
		if c := r.metric("wgpulse_remediation_conflicts_total", map[string]string{"group": primaryDev}); c != 2 || r.ourMTURoute() != "" {
			t.Fatalf("second revert: conflicts %v, our route %q; want 2 and no route until the backoff ends", c, r.ourMTURoute())
		}
		if v := r.metric("wgpulse_remediation_conflict_lasting", map[string]string{"policy": "mtu", "group": primaryDev}); v != 1 {
			t.Errorf("wgpulse_remediation_conflict_lasting %v, want 1", v)
		}
		waitFor(t, 25*time.Second, "re-applied after the 20 s backoff", func() bool { return r.ourMTURoute() != "" })
	})
}

func TestMTURestoreOnExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := mtuConfig(t, remediate.ModeAuto)
		cfg.RestoreOnExit = true
		r := newRig(t, cfg)
		r.wg.allowed[primaryDev] = []string{lan}
		r.pmtu.Store(primaryTarget, 1232)
		r.start()
		waitFor(t, 2*time.Minute, "an MTU route", func() bool { return r.ourMTURoute() != "" })
		r.stop()
		if slices.Compare(operatorRoutes, r.routes.show()) != 0 {
			t.Errorf("after a clean exit: %v, want the operator's routes", r.routes.show())
		}
	})
}

// Three peers on one device with no routed prefixes, one behind a 1300-byte
// path. By default the whole-device fallback is off on a shared device: the
// decision is held (shared_device), audited once, nothing changes. With
// shared_device_fallback the bad peer's fallback owns the device MTU, and
// the other peers' searches, capped by it, are not taken as measurements:
// they decide nothing, and the device never goes below the bad path.
func TestMTUOnASharedDevice(t *testing.T) {
	shared := func(t *testing.T, fallback bool) *rig {
		cfg := mtuConfig(t, remediate.ModeAuto)
		cfg.MTU.SharedDeviceFallback = fallback
		r := newRig(t, cfg)
		r.wg.more = map[string][]string{primaryDev: {"10.200.1.2", "10.200.1.3"}}
		r.pmtu.Store("10.200.1.3", 1300)
		r.start()
		return r
	}
	bad := remediate.PeerLabel(new(fakeWG).moreKey(primaryDev, 1).String(), "")
	synctest.Test(t, func(t *testing.T) {
		r := shared(t, false)
		r.run(5 * time.Minute)
		if m := r.routes.linkMTU(primaryDev); m != 1420 {
			t.Errorf("device MTU %d: the fallback lowered a device of 3 peers for one path", m)
		}
		s := r.suppressed("shared_device")
		if len(s) != 1 || len(r.taken()) != 0 || !strings.Contains(s[0].Reason, "all its 3 peers") {
			t.Errorf("audits %+v; want the held fallback said once, with the peer count, and nothing done", r.audits())
		}
	})
	synctest.Test(t, func(t *testing.T) {
		r := shared(t, true)
		lowest := 1420
		for range 300 { // 10 minutes: the owner's lower, full-MTU tries and lower again
			r.run(2 * time.Second)
			lowest = min(lowest, r.routes.linkMTU(primaryDev))
		}
		if lowest > 1300 || lowest < 1280 {
			t.Errorf("lowest device MTU %d, want within 20 bytes below the bad path's 1300 (no cascade)", lowest)
		}
		for _, a := range r.audits() {
			if a.Action != "" && !strings.Contains(a.Peer, bad) {
				t.Errorf("a peer whose path is fine decided %+v: its search was capped by the device, not a measurement", a)
			}
		}
		if len(r.taken()) == 0 {
			t.Error("the bad peer's fallback did nothing")
		}
	})
}
