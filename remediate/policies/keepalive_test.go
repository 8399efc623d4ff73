package policies_test

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
)

// nat is a NAT in front of the peer of the rig's primary device: a mapping
// of lifetime T that the peer's packets create and refresh; ours get
// through while it lives, and refresh it when inboundRefresh.
type nat struct {
	mu             sync.Mutex
	t              time.Duration
	last           time.Time
	inboundRefresh bool
	port           uint16
	rebinds        int
}

func (n *nat) alive(now time.Time) bool { return !n.last.IsZero() && now.Sub(n.last) <= n.t }

// fromPeer: the peer sends; an expired mapping is recreated on a new port.
func (n *nat) fromPeer(r *rig, now time.Time) {
	if !n.alive(now) {
		n.port++
		n.rebinds++
		r.wg.setEndpoint(primaryDev, netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), n.port))
	}
	n.last = now
	r.wg.mu.Lock()
	r.wg.rx[primaryDev] += 32
	r.wg.mu.Unlock()
}

// toPeer: we send; it gets through only while the mapping lives.
func (n *nat) toPeer(now time.Time) bool {
	if !n.alive(now) {
		return false
	}
	if n.inboundRefresh {
		n.last = now
	}
	return true
}

// natRig is the public side of a NAT with a 5 s mapping lifetime: this node
// probes the peer every 7 s, the peer sends a keepalive every 25 s (wg(8)'s
// suggestion), nothing else flows; the keepalive this node's policy sets is
// sent while the link is idle.
func natRig(t *testing.T, mode remediate.Mode, inboundRefresh bool) (*rig, *nat) {
	cfg := config(t, mode)
	cfg.Keepalive.Enabled, cfg.Keepalive.Devices = true, []string{primaryDev, backupDev}
	cfg.Keepalive.Min, cfg.Keepalive.Symptoms = 2*time.Second, 2
	r := newRig(t, cfg)
	r.proberInterval = 7 * time.Second
	n := &nat{t: 5 * time.Second, inboundRefresh: inboundRefresh, port: 40000}
	var lastSent time.Time
	r.fault(primaryTarget, func(int) probertest.Reply {
		n.mu.Lock()
		defer n.mu.Unlock()
		now := time.Now()
		lastSent = now
		if !n.toPeer(now) {
			return probertest.Reply{Drop: true}
		}
		n.fromPeer(r, now) // the reply
		return probertest.Reply{Delay: 20 * time.Millisecond}
	})
	r.wg.setEndpoint(primaryDev, netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), n.port))
	n.last = time.Now()
	r.t.Cleanup(func() { close(r.sim) })
	go func() { // the peer's keepalive, and ours once set
		for tick := 0; ; tick++ {
			select {
			case <-r.sim:
				return
			case <-time.After(100 * time.Millisecond):
			}
			now := time.Now()
			n.mu.Lock()
			if tick%250 == 0 {
				n.fromPeer(r, now)
			}
			r.wg.mu.Lock()
			ka := r.wg.keepalive[primaryDev]
			r.wg.mu.Unlock()
			if ka > 0 && now.Sub(lastSent) >= ka {
				lastSent = now
				n.toPeer(now)
			}
			n.mu.Unlock()
		}
	}()
	return r, n
}

// A NAT that refreshes on inbound packets: the public side sees rebinds and
// lost probes after idle gaps, estimates the lifetime within 30%, sets a
// keepalive below it, and the symptoms stop. The other peer (no symptoms)
// keeps its settings.
func TestKeepaliveFixesTheNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, n := natRig(t, remediate.ModeAuto, true)
		r.start()
		start := time.Now()
		waitFor(t, 2*time.Minute, "a keepalive set", func() bool {
			r.wg.mu.Lock()
			defer r.wg.mu.Unlock()
			return r.wg.keepalive[primaryDev] > 0
		})
		r.wg.mu.Lock()
		ka := r.wg.keepalive[primaryDev]
		r.wg.mu.Unlock()
		est := r.metric("wgpulse_keepalive_nat_timeout_estimate_seconds", map[string]string{"device": primaryDev})
		t.Logf("after %s: keepalive %s, lifetime estimate %.1fs (true 5s)", time.Since(start).Round(time.Second), ka, est)
		if ka >= 5*time.Second || ka < 2*time.Second {
			t.Errorf("keepalive %s, want below the 5 s lifetime and within bounds", ka)
		}
		if est < 3.5 || est > 6.5 {
			t.Errorf("estimate %.1fs, want within 30%% of 5s", est)
		}
		a := r.taken()
		if len(a) != 1 || a[0].Action != "set_keepalive" || !strings.Contains(a[0].Reason, "NAT mapping lifetime") {
			t.Fatalf("audits %+v", a)
		}
		n.mu.Lock()
		before := n.rebinds
		n.mu.Unlock()
		r.run(2 * time.Minute)
		n.mu.Lock()
		after := n.rebinds
		n.mu.Unlock()
		if after > before+1 { // at most the one rebind that recreates the mapping the keepalive then holds
			t.Errorf("%d rebinds in the 2 minutes after the keepalive was set, want none (or the first)", after-before)
		}
		if r.metric("wgpulse_keepalive_nat_unfixable", map[string]string{"device": primaryDev}) != 0 {
			t.Error("a NAT the keepalive fixed is reported unfixable")
		}
		r.wg.mu.Lock()
		other := r.wg.keepalive[backupDev]
		r.wg.mu.Unlock()
		if other != 0 {
			t.Errorf("the peer without symptoms got keepalive %s", other)
		}
	})
}

// A NAT that refreshes only on the peer's packets: this side's keepalive
// cannot help; the policy says so in a metric and the log, naming what the
// peer behind the NAT needs.
func TestKeepaliveUnfixableFromThisSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _ := natRig(t, remediate.ModeAuto, false)
		r.start()
		waitFor(t, 6*time.Minute, "reported unfixable", func() bool {
			return strings.Contains(r.logs.String(), "only the peer behind it can keep them alive")
		})
		if r.metric("wgpulse_keepalive_nat_unfixable", map[string]string{"device": primaryDev}) != 1 {
			t.Error("wgpulse_keepalive_nat_unfixable not 1")
		}
		if !strings.Contains(r.logs.String(), "on the peer behind the NAT") {
			t.Error("the log does not say what the peer behind the NAT must set")
		}
	})
}

func TestKeepaliveDryRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, _ := natRig(t, remediate.ModeDryRun, true)
		r.start()
		r.run(2 * time.Minute)
		a := r.taken()
		if len(a) == 0 || a[0].Action != "set_keepalive" || a[0].Result != "dry_run" || len(r.wg.configured()) != 0 {
			t.Fatalf("dry-run: audits %+v, peer changes %v; want the decision and nothing changed", a, r.wg.configured())
		}
	})
}
