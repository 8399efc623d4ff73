package prober_test

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// A device deleted and recreated under the same name (wg-quick down/up,
// systemctl restart wg-quick@wg1, a restarted wireguard-go): its socket is
// bound to the old index and every send fails with ENODEV. That is our
// socket, not the path: the targets go unknown, never down, and are probed
// again within two intervals of the device's return. A fast failover
// target (7 losses at 100 ms would be down in under a second) and an auto
// target (1 s) alike.
func TestRecreatedDeviceIsProbedAgainAndNeverDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		fast := tgt("10.0.0.1")
		fast.Interval, fast.Timeout, fast.Suspect, fast.Rule = 100*time.Millisecond, 250*time.Millisecond, 25*time.Millisecond, prober.Rule{Losses: 7, LossRatio: 0.3}
		auto := tgt("10.0.0.2")
		p, cancel := startProber(t, fn, "test", fast, auto)
		defer cancel()
		changes := p.SubscribeChanges(t.Context())
		time.Sleep(5 * time.Second)
		synctest.Wait()
		for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
			if h := health(t, p, a); h.State != prober.StateUp {
				t.Fatalf("%s before the churn: %s", a, h.State)
			}
		}
		for range len(changes) {
			<-changes
		}

		fn.DeleteDevice("wg0")
		time.Sleep(10 * time.Second) // deleted for 10 s: far beyond both rules
		synctest.Wait()
		for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
			if h := health(t, p, a); h.State != prober.StateUnknown {
				t.Errorf("%s while its device is gone: %s (%s), want unknown", a, h.State, h.Reason)
			}
		}
		fn.RecreateDevice("wg0")
		back := time.Now()
		for _, tc := range []struct {
			addr     string
			interval time.Duration
		}{{"10.0.0.1", fast.Interval}, {"10.0.0.2", time.Second}} {
			for health(t, p, tc.addr).State != prober.StateUp {
				if time.Since(back) > time.Second+2*tc.interval { // the reopen, once a second, then two intervals
					t.Fatalf("%s not up %s after its device came back: %+v", tc.addr, time.Since(back), health(t, p, tc.addr))
				}
				time.Sleep(10 * time.Millisecond)
				synctest.Wait()
			}
		}
	drain:
		for {
			select {
			case c := <-changes:
				if c.Health.State == prober.StateDown {
					t.Errorf("%s went down while only its device was recreated: %s", c.Health.Target.Address, c.Health.Reason)
				}
			default:
				break drain
			}
		}
	})
}

// wg-quick creates the link first and adds its address and routes after, so
// a socket reopened on the new device sends into "network is unreachable"
// for a moment (seen on kernel WireGuard: one such send, then 7 quick
// losses, and the backup went down for 130 ms). Until the first send
// succeeds (at most 5 s) such a send is void: unknown, never down. A device
// left without its address beyond that is down as before.
func TestRecreatedDeviceNotSetUpYetIsNotDown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    time.Duration // how long sends find no route after the device is back
		wantDown bool
	}{{"set up in 3 s", 3 * time.Second, false}, {"never set up", time.Minute, true}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var notUntil time.Time
				fn := probertest.New(func(string, netip.Addr, int) probertest.Reply {
					if time.Now().Before(notUntil) {
						return probertest.Reply{Err: unix.ENETUNREACH}
					}
					return probertest.Reply{Delay: time.Millisecond}
				})
				fast := tgt("10.0.0.1")
				fast.Interval, fast.Timeout, fast.Suspect, fast.Rule = 100*time.Millisecond, 250*time.Millisecond, 25*time.Millisecond, prober.Rule{Losses: 7, LossRatio: 0.3}
				p, cancel := startProber(t, fn, "test", fast)
				defer cancel()
				time.Sleep(5 * time.Second)
				synctest.Wait()
				if h := health(t, p, "10.0.0.1"); h.State != prober.StateUp {
					t.Fatalf("before the churn: %s", h.State)
				}
				fn.DeleteDevice("wg0")
				time.Sleep(2 * time.Second)
				notUntil = time.Now().Add(tc.setup)
				fn.RecreateDevice("wg0")
				var down bool
				var when time.Duration
				start := time.Now()
				for range 120 { // 12 s, looked at every 100 ms
					time.Sleep(100 * time.Millisecond)
					synctest.Wait()
					if !down && health(t, p, "10.0.0.1").State == prober.StateDown {
						down, when = true, time.Since(start)
					}
				}
				h := health(t, p, "10.0.0.1")
				switch {
				case !tc.wantDown && (down || h.State != prober.StateUp):
					t.Errorf("device set up %s after its return: down %v (at %s), now %s (%s); want never down, up again", tc.setup, down, when, h.State, h.Reason)
				case tc.wantDown && (h.State != prober.StateDown || when < 5*time.Second):
					t.Errorf("device without its address for a minute: now %s (%s), down at %s; want down once the 5 s grace is over", h.State, h.Reason, when)
				}
			})
		})
	}
}
