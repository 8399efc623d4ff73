package policies_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// The primary uplink dies: the peer's endpoint moves to the second uplink
// (one setting, UpdateOnly); when the uplink's underlay target has been up
// for hold_down it moves back, and the tunnel confirms the return.
func TestEndpointFailoverAndReturn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, policies.Config{})
		var down1, down2 atomic.Bool
		r.wan(&down1, &down2)
		g := dualWAN(r, "fast")
		g.HoldDown = 10 * time.Second
		r.cfg = config(t, remediate.ModeAuto, g)
		r.start()
		r.run(3 * time.Second)
		if len(r.audits()) != 0 || r.wg.endpointOf(tunnelDev) != uplink1 {
			t.Fatalf("healthy uplinks: audits %+v, endpoint %s", r.audits(), r.wg.endpointOf(tunnelDev))
		}
		down1.Store(true)
		took := waitFor(t, 2*time.Second, "endpoint on uplink 2", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		if took > 550*time.Millisecond {
			t.Errorf("swapped %s after the uplink died, want <= 550ms (fast profile)", took)
		}
		a := r.taken()
		if len(a) != 1 || a[0].Action != "switch_to_backup" || a[0].Result != "ok" {
			t.Fatalf("audits %+v", a)
		}
		r.run(2 * time.Second)
		st := r.status().Groups[0]
		if st.Paths["backup"].State != "up" || st.Active != "backup" {
			t.Fatalf("after the swap the tunnel must be up through uplink 2: %+v", st)
		}
		if w := r.wg.configured(); len(w) != 1 || w[0] != "endpoint "+uplink2.String() {
			t.Errorf("peer changes %v, want exactly one endpoint change", w)
		}
		down1.Store(false)
		r.run(5 * time.Second)
		if r.wg.endpointOf(tunnelDev) != uplink2 {
			t.Fatal("returned before hold_down")
		}
		waitFor(t, 10*time.Second, "return to uplink 1", func() bool { return r.wg.endpointOf(tunnelDev) == uplink1 })
		r.run(2 * time.Second)
		if st := r.status().Groups[0]; st.Active != "primary" || st.Paths["primary"].State != "up" {
			t.Errorf("the tunnel did not confirm the return: %+v", st)
		}
		if f := r.metric("wgpulse_failover_flaps_total", nil); f != 0 {
			t.Errorf("%v flaps counted for a clean failover and return", f)
		}
	})
}

// A return the tunnel does not confirm (the uplink answers pings but the
// tunnel over it does not work) goes back to the backup, counted as a flap.
func TestEndpointUnconfirmedReturnIsAFlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down1, tunnelBroken atomic.Bool
		r, _ := splitWAN(t, 5*time.Second, &down1, &tunnelBroken)
		r.run(2 * time.Second)
		down1.Store(true)
		tunnelBroken.Store(true) // stays broken after the uplink is back
		waitFor(t, 2*time.Second, "swap to uplink 2", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		down1.Store(false)
		waitFor(t, 10*time.Second, "return to uplink 1", func() bool { return r.wg.endpointOf(tunnelDev) == uplink1 })
		waitFor(t, 2*time.Second, "back to uplink 2", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		if f := r.metric("wgpulse_failover_flaps_total", nil); f != 1 {
			t.Errorf("flaps %v, want the unconfirmed return counted once", f)
		}
	})
}

// Packets of the far side still on the old uplink make WireGuard roam back
// once after a swap: the remediator sets the endpoint again, and that is not
// a conflict. Later, something else moving the endpoint is one.
func TestEndpointRoamBackAndConflict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, policies.Config{})
		var down1, down2 atomic.Bool
		r.wan(&down1, &down2)
		r.cfg = config(t, remediate.ModeAuto, dualWAN(r, "fast"))
		r.start()
		r.run(2 * time.Second)
		down1.Store(true)
		waitFor(t, 2*time.Second, "swap", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		r.wg.setEndpoint(tunnelDev, uplink1) // roamed back by an in-flight packet
		waitFor(t, time.Second, "re-asserted", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		r.run(5 * time.Second)
		if c := r.metric("wgpulse_remediation_conflicts_total", nil); c != 0 {
			t.Fatalf("a roam back while settling counted as %v conflicts", c)
		}
		r.wg.setEndpoint(tunnelDev, uplink1) // someone else (wg set) moves it after the settle window
		r.run(3 * time.Second)
		if c := r.metric("wgpulse_remediation_conflicts_total", nil); c != 1 || !strings.Contains(r.logs.String(), "the peer's endpoint is 198.18.1.1:51821, not 198.19.1.1:51821") {
			t.Fatalf("conflicts %v; want one, logged with both endpoints", c)
		}
		// The kernel's endpoint (uplink 1) is the dead one: the group took it
		// as the truth, then escaped from it at once, backoff or not.
		if st := r.status().Groups[0]; st.Active != "backup" || st.BackoffUntil == nil || st.Conflicts != 1 || r.wg.endpointOf(tunnelDev) != uplink2 {
			t.Errorf("after the conflict: active %s, backoff %v, conflicts %d, endpoint %s; want the escape to uplink 2 at once", st.Active, st.BackoffUntil, st.Conflicts, r.wg.endpointOf(tunnelDev))
		}
	})
}

// A clean exit with restore_on_exit hands the endpoint back once the
// primary uplink is up again, and keeps it on the backup while the primary
// is down (returning would drop the traffic), saying so.
func TestEndpointRestoreOnExit(t *testing.T) {
	for _, healed := range []bool{true, false} {
		t.Run(map[bool]string{true: "primary up", false: "primary down"}[healed], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newRig(t, policies.Config{})
				var down1, down2 atomic.Bool
				r.wan(&down1, &down2)
				r.cfg = config(t, remediate.ModeAuto, dualWAN(r, "fast"))
				r.cfg.RestoreOnExit = true
				r.start()
				r.run(2 * time.Second)
				down1.Store(true)
				waitFor(t, 2*time.Second, "swap", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
				want := uplink2
				if healed {
					down1.Store(false)
					want = uplink1
				}
				waitFor(t, 2*time.Second, "a verdict on the primary after the swap", func() bool {
					st := r.status().Groups[0].Paths["primary"].State
					return st == map[bool]string{true: "up", false: "down"}[healed]
				})
				r.stop()
				if ep := r.wg.endpointOf(tunnelDev); ep != want {
					t.Errorf("after a clean exit the endpoint is %s, want %s", ep, want)
				}
				if s := r.suppressed("primary_not_up"); !healed && (len(s) != 1 || !strings.Contains(s[0].Reason, "kept on the backup")) {
					t.Errorf("exit with the primary down: suppressed %+v, want one 'kept on the backup'", s)
				}
			})
		})
	}
}

func TestConfigValidate(t *testing.T) {
	key := "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
	endpoint := func(mod func(*failover.Group)) policies.Config {
		g := failover.Group{Name: "wan", Mode: "endpoint", Device: "wg0", Peer: key, Target: "10.200.1.1",
			Primary: failover.Path{Endpoint: "198.18.1.1:51821", UnderlayTarget: "198.18.1.1"},
			Backup:  failover.Path{Endpoint: "198.19.1.1:51821", UnderlayTarget: "198.19.1.1"}}
		mod(&g)
		c := policies.DefaultConfig()
		c.Failover = []failover.Group{g}
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  policies.Config
		want string
	}{
		{"endpoint ok", endpoint(func(*failover.Group) {}), ""},
		{"endpoint: a private key is never echoed", endpoint(func(g *failover.Group) { g.Peer = "c2VjcmV0c2VjcmV0" }), "failover[0].peer: a value of 16 characters"},
		{"endpoint: a name, not an address", endpoint(func(g *failover.Group) { g.Backup.Endpoint = "isp2.example:51821" }), `failover[0].backup.endpoint: "isp2.example:51821" is not an IP:port`},
		{"endpoint: the same uplink twice", endpoint(func(g *failover.Group) { g.Backup.Endpoint = g.Primary.Endpoint }), "failover[0].backup.endpoint: is the primary's endpoint"},
		{"endpoint: prefixes", endpoint(func(g *failover.Group) { g.Prefixes = []string{"10.0.0.0/8"} }), "failover[0].prefixes: endpoint mode moves no prefix"},
		{"endpoint: no underlay target", endpoint(func(g *failover.Group) { g.Backup.UnderlayTarget = "" }), "failover[0].backup.underlay_target"},
		{"route: endpoint fields", policies.Config{Config: remediate.Config{Mode: remediate.ModeAuto, StateFile: "/x", RouteProtocol: 117}, Failover: []failover.Group{{Name: "g",
			Prefixes: []string{"10.0.0.0/8"}, Device: "wg0", Primary: failover.Path{Device: "a", Target: "10.1.1.1"}, Backup: failover.Path{Device: "b", Target: "10.1.1.2"}}}},
			"failover[0].device: is for mode: endpoint"},
		{"unknown mode", endpoint(func(g *failover.Group) { g.Mode = "bgp" }), `failover[0].mode: must be "route"`},
		{"a route group's prefix holds an endpoint group's endpoint", func() policies.Config {
			c := endpoint(func(*failover.Group) {})
			c.Failover = append(c.Failover, failover.Group{Name: "lans", Prefixes: []string{"198.19.0.0/16"},
				Primary: failover.Path{Device: "wg-a", Target: "10.9.0.1"}, Backup: failover.Path{Device: "wg-b", Target: "10.9.0.2"}})
			return c
		}(), `failover[0].backup.endpoint: 198.19.1.1:51821 lies inside prefix 198.19.0.0/16 of group "lans"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
				t.Fatalf("the error echoes the key: %v", err)
			}
		})
	}
}

// The uplink's underlay target notices the failure a moment after the
// tunnel does (here 300 ms): its "up since" predates the failure, and must
// not count toward hold_down. No return while the uplink is down, no flap.
func TestEndpointHoldDownCountsFromTheSwitch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down1, underlayDown atomic.Bool
		r, _ := splitWAN(t, 2*time.Second, &underlayDown, &down1)
		r.run(5 * time.Second)
		down1.Store(true)                                                         // the tunnel over uplink 1 dies first...
		time.AfterFunc(300*time.Millisecond, func() { underlayDown.Store(true) }) // ...its underlay target a moment later
		waitFor(t, 2*time.Second, "swap", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		r.run(10 * time.Second)
		if ep := r.wg.endpointOf(tunnelDev); ep != uplink2 {
			t.Fatalf("returned to %s while uplink 1 is down", ep)
		}
		if a := r.taken(); len(a) != 1 {
			t.Errorf("decisions %+v, want the one switch", a)
		}
	})
}

// The uplink's underlay target loses probes from the switch on, but fewer
// in a row than its rule needs before the uplink heals (under emulation a
// slow prober sees a short outage so): its "up" never ends, yet it says
// nothing of the uplink after the failure. Hold_down counts from the first
// reply to a probe sent after the switch, so the return comes hold_down
// after the heal, not after the switch (the likely cause of a VM run of the
// lab returning 100 ms after the heal).
func TestEndpointHoldDownNeedsAVerdictAfterTheSwitch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var down1, underlayDown atomic.Bool
		r, g := splitWAN(t, 5*time.Second, &underlayDown, &down1)
		r.run(5 * time.Second)
		down1.Store(true)                                                         // the tunnel over uplink 1 dies...
		time.AfterFunc(200*time.Millisecond, func() { underlayDown.Store(true) }) // ...its underlay target loses probes later
		waitFor(t, 2*time.Second, "swap", func() bool { return r.wg.endpointOf(tunnelDev) == uplink2 })
		r.run(100 * time.Millisecond)
		down1.Store(false) // the uplink heals before 7 of its probes are lost in a row (its rule)
		underlayDown.Store(false)
		heal := time.Now()
		if st := r.status().Groups[0]; st.Paths["primary"].State == "down" {
			t.Fatalf("the underlay target went down: the test needs it to miss the outage; %+v", st.Paths["primary"])
		}
		waitFor(t, 15*time.Second, "return to uplink 1", func() bool { return r.wg.endpointOf(tunnelDev) == uplink1 })
		if back := time.Since(heal); back < g.HoldDown {
			t.Errorf("returned %s after the heal, before hold_down %s: an up from before the switch counted", back, g.HoldDown)
		}
		if a := r.taken(); len(a) != 2 {
			t.Errorf("decisions %+v, want the switch and the return", a)
		}
	})
}

// splitWAN is a started rig on a dual-WAN group with holdDown whose uplink
// 1 drops its underlay target's probes while underlay1 is set, and the
// tunnel's over it while tunnel1 is set: the tunnel can die alone, or
// before its underlay target notices.
func splitWAN(t *testing.T, holdDown time.Duration, underlay1, tunnel1 *atomic.Bool) (*rig, failover.Group) {
	r := newRig(t, policies.Config{})
	var down2 atomic.Bool
	r.wan(underlay1, &down2)
	wan := r.faults[tunnelTarget]
	r.fault(tunnelTarget, func(n int) probertest.Reply {
		if tunnel1.Load() && r.wg.endpointOf(tunnelDev) == uplink1 {
			return dead(n)
		}
		return wan(n)
	})
	g := dualWAN(r, "fast")
	g.HoldDown = holdDown
	r.cfg = config(t, remediate.ModeAuto, g)
	r.start()
	return r, g
}
