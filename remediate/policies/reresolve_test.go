package policies_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
	"github.com/wgpulse/wgpulse/remediate/reresolve"
)

// fakeDNS is a fake of the resolver transport: records by host, each with
// a TTL, and the lookups it served.
type fakeDNS struct {
	mu      sync.Mutex
	records map[string]reresolve.Answer
	lookups int
}

func (f *fakeDNS) Resolve(_ context.Context, host string) (reresolve.Answer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	a, ok := f.records[host]
	if !ok {
		return reresolve.Answer{}, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

func (f *fakeDNS) set(host string, ttl time.Duration, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := reresolve.Answer{TTL: ttl}
	for _, s := range addrs {
		a.Addrs = append(a.Addrs, netip.MustParseAddr(s))
	}
	f.records[host] = a
}

func (f *fakeDNS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

const hubHost = "hub.example.net"

// hub simulates the far end of the rig's tunnel device: this node sends a
// packet every second; the peer answers only on its live addresses, where
// WireGuard handshakes at once after an endpoint change and every 120 s
// (REKEY_AFTER_TIME) after that.
type hub struct {
	mu      sync.Mutex
	live    map[netip.AddrPort]bool
	sending bool
}

func (h *hub) moveTo(eps ...netip.AddrPort) {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.live)
	for _, ep := range eps {
		h.live[ep] = true
	}
}

func reresolveRig(t *testing.T, mode remediate.Mode, mutate func(*reresolve.Config), groups ...failover.Group) (*rig, *fakeDNS, *hub) {
	cfg := config(t, mode, groups...)
	rc := reresolve.DefaultConfig()
	rc.Enabled, rc.Devices = true, []string{tunnelDev}
	rc.Endpoints = map[string]string{(&fakeWG{}).key(tunnelDev).String(): net.JoinHostPort(hubHost, "51821")}
	if mutate != nil {
		mutate(&rc)
	}
	cfg.Reresolve = rc
	r := newRig(t, cfg)
	dns := &fakeDNS{records: map[string]reresolve.Answer{}}
	dns.set(hubHost, 30*time.Second, uplink1.Addr().String())
	var owners map[string]string
	for _, g := range groups {
		owners = map[string]string{remediate.PeerKey(g.Device, g.Peer): g.Name}
	}
	r.extra = []remediate.Policy{reresolve.New(rc, dns, owners)}
	h := &hub{live: map[netip.AddrPort]bool{uplink1: true}, sending: true}
	r.t.Cleanup(func() { close(r.sim) })
	go func() {
		var was netip.AddrPort
		for {
			select {
			case <-r.sim:
				return
			case <-time.After(time.Second):
			}
			now := time.Now()
			h.mu.Lock()
			r.wg.mu.Lock()
			ep := r.wg.endpoint[tunnelDev]
			if h.sending {
				r.wg.tx[tunnelDev] += 96
			}
			if h.sending && h.live[ep] && (ep != was || now.Sub(r.wg.handshake[tunnelDev]) >= 120*time.Second) {
				r.wg.handshake[tunnelDev] = now
			}
			was = ep
			r.wg.mu.Unlock()
			h.mu.Unlock()
		}
	}()
	return r, dns, h
}

func (r *rig) handshakeAge() time.Duration {
	r.wg.mu.Lock()
	defer r.wg.mu.Unlock()
	return time.Since(r.wg.handshake[tunnelDev])
}

// The hub's address changes with its record: the tunnel handshakes again
// within stale_after plus the TTL plus a poll, with one audited change; in
// the ten minutes before, with the handshake fresh, there was no lookup
// and no change.
func TestReresolveFollowsTheRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeAuto, nil)
		r.start()
		r.run(10 * time.Minute)
		if n := dns.count(); n != 0 || len(r.wg.configured()) != 0 || len(r.audits()) != 0 {
			t.Fatalf("fresh handshakes for 10 min: %d lookups, writes %v, audits %+v; want none", n, r.wg.configured(), r.audits())
		}
		moved := netip.MustParseAddrPort("203.0.113.50:51821")
		h.moveTo(moved)
		dns.set(hubHost, 30*time.Second, moved.Addr().String())
		took := waitFor(t, 5*time.Minute, "a handshake on the new address", func() bool {
			return r.wg.endpointOf(tunnelDev) == moved && r.handshakeAge() < 2*time.Second
		})
		// The last handshake was up to 120 s before the move.
		if bound := 135*time.Second + 30*time.Second + 2*time.Second; took > bound {
			t.Errorf("handshaked again %s after the move, want <= %s (stale_after + TTL + a poll)", took, bound)
		}
		taken := r.taken()
		if len(taken) != 1 || taken[0].Action != reresolve.ActionSetEndpoint || taken[0].From != uplink1.String() || taken[0].To != moved.String() ||
			!strings.Contains(taken[0].Reason, hubHost) {
			t.Fatalf("audits %+v, want one set_endpoint %s -> %s naming the host", taken, uplink1, moved)
		}
		if v := r.metric("wgpulse_remediation_actions_total", map[string]string{"policy": "reresolve", "action": "set_endpoint", "result": remediate.ResultOK}); v != 1 {
			t.Errorf("actions_total = %v, want 1", v)
		}
		if v := r.metric("wgpulse_reresolve_lookups_total", map[string]string{"device": tunnelDev, "result": "ok"}); v < 1 {
			t.Errorf("lookups ok = %v, want >= 1", v)
		}
		spans := 0
		for _, s := range r.spans.Ended() {
			if s.Name() == "remediate.reresolve.decision" {
				spans++
			}
		}
		if spans != 1 {
			t.Errorf("%d remediate.reresolve.decision spans, want 1", spans)
		}
		// Fresh again: nothing more happens.
		before := dns.count()
		r.run(10 * time.Minute)
		if len(r.taken()) != 1 || dns.count() != before {
			t.Errorf("after the fix: audits %+v, %d more lookups; want none", r.taken(), dns.count()-before)
		}
	})
}

// The answer holds an IPv6 address whose path blackholes and the IPv4 one
// that works: the policy tries them in the resolver's order and settles on
// IPv4 after try_for.
func TestReresolveTriesEveryAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeAuto, nil)
		r.start()
		r.run(5 * time.Second)
		v6, v4 := netip.MustParseAddrPort("[2001:db8::50]:51821"), netip.MustParseAddrPort("203.0.113.50:51821")
		h.moveTo(v4)
		dns.set(hubHost, 30*time.Second, v6.Addr().String(), v4.Addr().String())
		took := waitFor(t, 5*time.Minute, "a handshake on IPv4", func() bool {
			return r.wg.endpointOf(tunnelDev) == v4 && r.handshakeAge() < 2*time.Second
		})
		if bound := 135*time.Second + 15*time.Second + 3*time.Second; took > bound {
			t.Errorf("on IPv4 after %s, want <= stale_after + try_for + 3s = %s", took, bound)
		}
		want := []string{"endpoint " + v6.String(), "endpoint " + v4.String()}
		if got := r.wg.configured(); !slices.Equal(got, want) {
			t.Fatalf("writes %v, want %v", got, want)
		}
	})
}

// An unresolvable name: one audited suppression and a warning naming the
// host, lookups counted as errors and retried every 30 s, and nothing
// written.
func TestReresolveUnresolvableName(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeAuto, func(c *reresolve.Config) {
			for k := range c.Endpoints {
				c.Endpoints[k] = "nowhere.example.net:51821"
			}
		})
		h.moveTo() // the old address stops answering too
		r.start()
		r.run(135*time.Second + 5*time.Minute)
		if w := r.wg.configured(); len(w) != 0 {
			t.Fatalf("writes %v, want none", w)
		}
		sup := r.suppressed(reresolve.SuppressUnresolvable)
		if len(sup) != 1 || !strings.Contains(sup[0].Reason, "nowhere.example.net") {
			t.Fatalf("suppressed audits %+v, want one naming the host", sup)
		}
		errs := r.metric("wgpulse_reresolve_lookups_total", map[string]string{"device": tunnelDev, "result": "error"})
		if errs < 9 || errs > 12 || float64(dns.count()) != errs {
			t.Errorf("%v failed lookups (%d in all) over 5 min, want 10-11 (one per 30 s)", errs, dns.count())
		}
		if !strings.Contains(r.logs.String(), `"msg":"reresolve: cannot resolve the peer's endpoint hostname: its endpoint stays"`) ||
			!strings.Contains(r.logs.String(), `"host":"nowhere.example.net"`) {
			t.Error("no warning naming the host")
		}
		if v := r.metric("wgpulse_reresolve_handshake_stale", map[string]string{"device": tunnelDev}); v != 1 {
			t.Errorf("handshake_stale = %v, want 1", v)
		}
	})
}

// An idle tunnel does not handshake and is not down: no lookup, however
// old the handshake.
func TestReresolveIdleTunnelIsNotStale(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeAuto, nil)
		h.mu.Lock()
		h.sending = false
		h.mu.Unlock()
		h.moveTo()
		r.start()
		r.run(15 * time.Minute)
		if dns.count() != 0 || len(r.audits()) != 0 {
			t.Fatalf("idle: %d lookups, audits %+v; want none", dns.count(), r.audits())
		}
	})
}

// The record still holds the dead address when the handshake goes stale:
// nothing to try (audited once); the record changes, and the policy
// re-resolves when the answer's TTL has run out, no sooner.
func TestReresolveWaitsForTheTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeAuto, nil)
		dns.set(hubHost, 100*time.Second, uplink1.Addr().String())
		h.moveTo()
		r.start()
		waitFor(t, 3*time.Minute, "a lookup", func() bool { return dns.count() == 1 })
		moved := netip.MustParseAddrPort("203.0.113.50:51821")
		h.moveTo(moved)
		dns.set(hubHost, 100*time.Second, moved.Addr().String())
		took := waitFor(t, 3*time.Minute, "the new address", func() bool { return r.wg.endpointOf(tunnelDev) == moved })
		if took < 95*time.Second || took > 102*time.Second {
			t.Errorf("set %s after the record changed, want when the 100 s TTL ran out", took)
		}
		if sup := r.suppressed(reresolve.SuppressNoNewAddress); len(sup) != 1 {
			t.Errorf("no_new_address audits %+v, want one", sup)
		}
	})
}

// Dry-run makes the same decisions, audited as dry-run, and writes nothing.
func TestReresolveDryRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, dns, h := reresolveRig(t, remediate.ModeDryRun, nil)
		moved := netip.MustParseAddrPort("203.0.113.50:51821")
		h.moveTo(moved)
		dns.set(hubHost, 30*time.Second, moved.Addr().String())
		r.start()
		r.run(200 * time.Second)
		taken := r.taken()
		if len(taken) != 1 || taken[0].Mode != "dry-run" || taken[0].To != moved.String() || len(r.wg.configured()) != 0 {
			t.Fatalf("dry-run: audits %+v, writes %v; want one dry-run set_endpoint and no write", taken, r.wg.configured())
		}
	})
}

// A peer whose endpoint an endpoint failover group moves is the group's:
// the policy never resolves or sets it.
func TestReresolveLeavesFailoverPeersAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := dualWAN(&rig{wg: &fakeWG{}}, "fast")
		r, dns, h := reresolveRig(t, remediate.ModeAuto, nil, g)
		h.moveTo()
		r.start()
		r.run(5 * time.Minute)
		if dns.count() != 0 || slices.ContainsFunc(r.audits(), func(a auditLine) bool { return a.Action == reresolve.ActionSetEndpoint }) {
			t.Fatalf("%d lookups, audits %+v: want the group's peer left alone", dns.count(), r.audits())
		}
		if !strings.Contains(r.logs.String(), "reresolve leaves this peer's endpoint to its endpoint failover group") {
			t.Error("no log line saying so")
		}
	})
}

// Each bad field is named.
func TestReresolveConfigErrors(t *testing.T) {
	key := (&fakeWG{}).key(tunnelDev).String()
	for _, tc := range []struct {
		mutate func(*reresolve.Config)
		want   string
	}{
		{func(c *reresolve.Config) { c.Devices = nil }, "reresolve.devices: required"},
		{func(c *reresolve.Config) { c.Endpoints = map[string]string{key: "198.51.100.1:51820"} }, "is an address: there is nothing to resolve"},
		{func(c *reresolve.Config) { c.Endpoints = map[string]string{key: "hub.example.net"} }, "reresolve.endpoints[" + key + "]: want host:port"},
		{func(c *reresolve.Config) { c.Endpoints = map[string]string{"c2VjcmV0": "hub.example.net:1"} }, "not a base64 WireGuard public key"},
		{func(c *reresolve.Config) { c.StaleAfter = time.Minute }, "reresolve.stale_after: must be 2m5s..24h"},
		{func(c *reresolve.Config) { c.TryFor = time.Second }, "reresolve.try_for"},
	} {
		cfg := policies.DefaultConfig()
		cfg.Reresolve.Enabled, cfg.Reresolve.Devices = true, []string{"wg0"}
		tc.mutate(&cfg.Reresolve)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one containing %q", err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("the error repeats the bad key: %v", err)
		}
	}
}

// Unknown is not down: while the device cannot be read the policy does
// nothing. Once it can, what the kernel says counts: a handshake an hour
// old while bytes go out is stale as soon as two polls show the sending;
// a peer that never handshaked waits stale_after from when it was first
// seen (a restart or a fresh device is not a stale handshake).
func TestReresolveUnknownIsNotDown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		lastHS   time.Duration // before the start; 0: never
		min, max time.Duration // from the first good read to the change
	}{{"a handshake an hour old", time.Hour, time.Second, 5 * time.Second}, {"never handshaked", 0, 135 * time.Second, 140 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r, dns, h := reresolveRig(t, remediate.ModeAuto, nil)
				moved := netip.MustParseAddrPort("203.0.113.50:51821")
				h.moveTo(moved)
				dns.set(hubHost, 30*time.Second, moved.Addr().String())
				r.wg.mu.Lock()
				r.wg.fail[tunnelDev] = true
				r.wg.handshake[tunnelDev] = time.Time{}
				if tc.lastHS > 0 {
					r.wg.handshake[tunnelDev] = time.Now().Add(-tc.lastHS)
				}
				r.wg.mu.Unlock()
				r.start()
				r.run(10 * time.Minute)
				if dns.count() != 0 || len(r.wg.configured()) != 0 {
					t.Fatalf("device unreadable for 10 min: %d lookups, writes %v; want none", dns.count(), r.wg.configured())
				}
				r.wg.mu.Lock()
				r.wg.fail[tunnelDev] = false
				r.wg.mu.Unlock()
				took := waitFor(t, 5*time.Minute, "the new address", func() bool { return r.wg.endpointOf(tunnelDev) == moved })
				if took < tc.min || took > tc.max {
					t.Errorf("set %s after the device became readable, want %s..%s", took, tc.min, tc.max)
				}
			})
		})
	}
}
