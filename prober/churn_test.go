package prober_test

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

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
