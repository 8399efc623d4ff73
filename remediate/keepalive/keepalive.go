// Package keepalive is the keepalive policy: it finds NAT mappings that expire between packets and
// sets PersistentKeepalive below their lifetime.
//
// Which side must act: a NAT creates and refreshes a mapping on outbound
// packets (RFC 4787 REQ-6 makes that mandatory); whether inbound packets
// refresh it too is up to the NAT (Linux conntrack and most home routers do;
// the RFC does not require it). So the peer behind the NAT can always keep
// its mapping alive; the public side only where inbound packets refresh it.
// But only the public side sees the symptoms: every packet the NATed side
// sends recreates its mapping, so to it nothing looks wrong, while the public
// side sees the peer's endpoint change after idle gaps and its packets to the
// peer fail after idle until the peer sends again. wgpulse therefore detects
// on the side that sees it, sets PersistentKeepalive there, and checks: when
// the symptoms go on, this side cannot fix it, and it says so (metric
// wgpulse_keepalive_nat_unfixable and a log line naming the keepalive the
// peer behind the NAT needs).
package keepalive

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// Config is the `remediate.keepalive:` section.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// Devices are the WireGuard devices whose peers the policy may tune.
	Devices []string `yaml:"devices"`
	// Min and Max bound the PersistentKeepalive it sets (default 10s-25s).
	Min time.Duration `yaml:"min"`
	Max time.Duration `yaml:"max"`
	// Symptoms needed before acting (rebinds after idle, probes failed
	// after idle and recovered once the peer sent): default 3.
	Symptoms int `yaml:"symptoms"`
	// RelaxAfter: this long without symptoms, the original keepalive comes
	// back (0 = never, the default).
	RelaxAfter time.Duration       `yaml:"relax_after"`
	RateLimit  remediate.RateLimit `yaml:"rate_limit"`
}

// DefaultConfig is the section's defaults: off.
func DefaultConfig() Config {
	return Config{Min: 10 * time.Second, Max: 25 * time.Second, Symptoms: 3, RateLimit: remediate.RateLimit{Burst: 6, Per: time.Hour}}
}

// Validate names the offending field ("keepalive.min").
func (c Config) Validate(fe remediate.FieldFunc) {
	if c.Enabled && len(c.Devices) == 0 {
		fe("keepalive.devices", "required when keepalive.enabled: the WireGuard devices whose peers the policy may tune")
	}
	for i, d := range c.Devices {
		if d == "" || len(d) > 15 {
			fe(fmt.Sprintf("keepalive.devices[%d]", i), "must be a device name of 1-15 bytes, got %q", d)
		}
	}
	if c.Min < time.Second || c.Min > c.Max || c.Max > time.Hour || c.Min%time.Second != 0 || c.Max%time.Second != 0 {
		fe("keepalive.min", "want whole seconds with 1s <= min <= max <= 1h (WireGuard's keepalive is in seconds; default 10s-25s), got %s-%s", c.Min, c.Max)
	}
	if c.Symptoms < 1 || c.Symptoms > 100 {
		fe("keepalive.symptoms", "must be 1..100, got %d", c.Symptoms)
	}
	if c.RelaxAfter < 0 {
		fe("keepalive.relax_after", "must not be negative (0 = never), got %s", c.RelaxAfter)
	}
	if c.RateLimit.Burst < 1 || c.RateLimit.Per <= 0 {
		fe("keepalive.rate_limit", "want burst >= 1 and per > 0 (default 6 per 1h), got %+v", c.RateLimit)
	}
}

// Actions of the keepalive policy.
const (
	ActionSetKeepalive   = "set_keepalive"
	ActionRelaxKeepalive = "relax_keepalive"
)

// kaState is what the policy remembers of one peer, persisted.
type kaState struct {
	Device    string        `json:"device"`
	Peer      string        `json:"peer"`
	Original  time.Duration `json:"original"` // the keepalive before the first change
	Applied   time.Duration `json:"applied"`  // 0 = none of ours in force
	Since     time.Time     `json:"since"`
	Estimate  time.Duration `json:"estimate,omitempty"`
	Unfixable bool          `json:"unfixable,omitempty"`
	remediate.Rails
}

// natEstimate brackets a NAT mapping's lifetime from idle gaps: a packet
// that got through after gap g proves the lifetime is longer than g; a
// mapping found expired after gap g proves it is shorter. When the two
// disagree (a kept gap at or above an expired one), the expiry wins: it is
// seen (the endpoint changed), while a kept gap can be traffic of the peer
// we did not see in time, and a keepalive too short costs packets where one
// too long costs the tunnel.
type natEstimate struct {
	lower, upper time.Duration   // 0 = no sample; lower < upper
	keptGaps     []time.Duration // the recent gaps that kept the mapping
	samples      int
}

// maxKeptGaps bounds the kept gaps remembered for the bracket's lower end.
const maxKeptGaps = 32

func (e *natEstimate) kept(gap time.Duration) {
	e.keptGaps = append(e.keptGaps, gap)
	if len(e.keptGaps) > maxKeptGaps {
		e.keptGaps = append(e.keptGaps[:0], e.keptGaps[1:]...)
	}
	e.samples++
	e.bound()
}

func (e *natEstimate) expired(gap time.Duration) {
	if e.upper == 0 || gap < e.upper {
		e.upper = gap
	}
	e.samples++
	e.bound()
}

// bound sets the lower end: the longest kept gap below the upper end.
func (e *natEstimate) bound() {
	e.lower = 0
	for _, g := range e.keptGaps {
		if g > e.lower && (e.upper == 0 || g < e.upper) {
			e.lower = g
		}
	}
}

// lifetime is the estimate: the middle of the bracket, or its upper end
// when that is all that is known (or the samples disagree).
func (e natEstimate) lifetime() time.Duration {
	switch {
	case e.upper == 0:
		return 0
	case e.lower == 0 || e.lower >= e.upper:
		return e.upper
	}
	return (e.lower + e.upper) / 2
}

// kaUnit is one peer the policy watches.
type kaUnit struct {
	st      kaState
	name    string
	key     wgtypes.Key
	targets []string // the peer's probe target keys
	episode remediate.Episode

	est            natEstimate
	alive          []span    // recent traffic known to have crossed the mapping
	polled         time.Time // the previous poll
	rx             int64
	changes        uint64
	seen           bool
	failed         []idleProbe // probes lost after idle, waiting for a rebind to confirm an expiry
	pendingKept    []reply     // probes answered after idle, waiting for a poll to rule out a rebind
	debug          func(msg string, args ...any)
	symptoms       int // since the last change of ours (or the start)
	lastSymptom    time.Time
	current        time.Duration // the peer's keepalive as last read
	unfixableSaid  bool
	symptomsAtSet  int
	reasonsSampled []string
}

type idleProbe struct {
	sent time.Time
	gap  time.Duration
}

type reply struct{ sent, at time.Time }

// minIdle: a gap shorter than this says nothing about a NAT (poll jitter,
// a lost packet).
const minIdle = 2 * time.Second

// span is when traffic crossed the mapping, as well as it is known: a
// reply to our probe exactly; received bytes only to within the poll that
// saw them (after the previous poll, by this one).
type span struct{ from, to time.Time }

// lastAliveBefore is the newest traffic known to have crossed the mapping
// before t. A gap that kept the mapping is measured from its end (the
// shortest the gap can have been), one that expired it from its start (the
// longest): each claim holds whenever in the span the traffic was.
func (u *kaUnit) lastAliveBefore(t time.Time) (span, bool) {
	for i := len(u.alive) - 1; i >= 0; i-- {
		if u.alive[i].to.Before(t) {
			return u.alive[i], true
		}
	}
	return span{}, false
}

func (u *kaUnit) sawAlive(from, to time.Time) {
	sp := span{from, to}
	i, _ := slices.BinarySearchFunc(u.alive, sp, func(a, b span) int { return a.to.Compare(b.to) })
	u.alive = slices.Insert(u.alive, i, sp)
	// Only the newest traffic before a probe matters, and results come at
	// most a timeout out of order: a few entries do.
	if len(u.alive) > 16 {
		u.alive = append(u.alive[:0], u.alive[len(u.alive)-16:]...)
	}
}

// note logs one piece of NAT evidence at debug level: what the estimate
// is made of.
func (u *kaUnit) note(kind string, gap time.Duration, args ...any) {
	if u.debug != nil {
		u.debug("keepalive: NAT evidence", append([]any{"device", u.st.Device, "peer", remediate.PeerLabel(u.st.Peer, u.name), "kind", kind, "gap", gap.Round(time.Millisecond)}, args...)...)
	}
}

func (u *kaUnit) symptom(at time.Time, why string) {
	u.symptoms++
	u.lastSymptom = at
	u.reasonsSampled = append(u.reasonsSampled, why)
	if len(u.reasonsSampled) > 3 {
		u.reasonsSampled = u.reasonsSampled[1:]
	}
}

// observeResult takes one probe of the peer: answered after an idle gap it
// proves the mapping outlived the gap; lost after one it may have expired
// (a following rebind confirms it).
func (u *kaUnit) observeResult(res prober.Result) {
	last, ok := u.lastAliveBefore(res.Sent)
	gap := res.Sent.Sub(last.to)
	if res.Success {
		// After an idle gap, the peer's own packet may have made a new
		// mapping just before our probe crossed it, and the poll that shows
		// the rebind comes later: the reply waits for that poll
		// (observeSnapshot) before it counts as a kept gap or as traffic.
		if ok && gap >= minIdle && len(u.pendingKept) < maxKeptGaps {
			u.pendingKept = append(u.pendingKept, reply{res.Sent, res.Sent.Add(res.RTT)})
			return
		}
		u.sawAlive(res.Sent.Add(res.RTT), res.Sent.Add(res.RTT))
		u.failed = u.failed[:0] // a loss the peer answered after is not an expiry
		return
	}
	if gap := res.Sent.Sub(last.from); ok && gap >= minIdle {
		u.failed = append(u.failed, idleProbe{res.Sent, gap})
		u.note("lost after idle", gap, "sent", res.Sent)
	}
}

// observeSnapshot takes one poll of the peer: received bytes are traffic
// that crossed the mapping; an endpoint change after an idle gap is a
// mapping that expired and was recreated by the peer's next packet.
func (u *kaUnit) observeSnapshot(p collector.Peer, at time.Time) {
	// A poll that started before our last change, or at the same instant
	// (it may have read the device first), still shows the old value.
	if at.After(u.st.Since) {
		u.current = p.PersistentKeepalive
	}
	if !u.seen {
		// The first poll says nothing about when traffic last crossed,
		// except the handshake.
		u.seen, u.rx, u.changes, u.polled = true, p.ReceiveBytes, p.EndpointChanges, at
		if !p.LastHandshake.IsZero() && p.LastHandshake.Before(at) {
			u.sawAlive(p.LastHandshake, p.LastHandshake)
		}
		u.pendingKept = u.pendingKept[:0] // no earlier poll to rule out a rebind
		return
	}
	changed := p.EndpointChanges > u.changes
	// Replies this poll can judge (it read the peer after them), oldest
	// first: without a rebind each proves its gap; with one, it may have
	// crossed the peer's new mapping, which says nothing about the old.
	slices.SortFunc(u.pendingKept, func(a, b reply) int { return a.sent.Compare(b.sent) })
	var judged []reply
	pending := u.pendingKept[:0]
	for _, r := range u.pendingKept {
		if !at.After(r.at) {
			pending = append(pending, r) // the poll may have read the peer before the reply
			continue
		}
		judged = append(judged, r)
		if changed {
			continue
		}
		if last, ok := u.lastAliveBefore(r.sent); ok && r.sent.Sub(last.to) >= minIdle {
			u.est.kept(r.sent.Sub(last.to))
			u.note("kept", r.sent.Sub(last.to), "sent", r.sent, "last_traffic_by", last.to)
		}
		u.sawAlive(r.at, r.at)
		u.failed = u.failed[:0] // a loss the peer answered after is not an expiry
	}
	u.pendingKept = pending
	if changed {
		if last, ok := u.lastAliveBefore(at); ok {
			// The peer's packet that rebound came by this poll: the mapping
			// expired within this poll minus the earliest the traffic before
			// can have been.
			if gap := at.Sub(last.from); gap >= minIdle {
				u.est.expired(gap)
				u.note("expired (rebind)", gap, "poll", at, "last_traffic_from", last.from)
				for _, f := range u.failed { // the losses before it were the expired mapping
					u.est.expired(f.gap)
					u.note("expired (lost, then rebind)", f.gap, "sent", f.sent)
				}
				why := fmt.Sprintf("endpoint changed after %s idle", gap.Round(time.Second))
				if len(u.failed) > 0 {
					why += fmt.Sprintf(", %d probes lost after idle until the peer sent again", len(u.failed))
				}
				u.symptom(at, why)
			}
		}
		u.failed = u.failed[:0]
		for _, r := range judged { // traffic, once the rebind's gap is taken from what came before it
			u.sawAlive(r.at, r.at)
		}
	}
	if p.ReceiveBytes > u.rx {
		u.sawAlive(u.polled, at)
	}
	u.rx, u.changes, u.polled = p.ReceiveBytes, p.EndpointChanges, at
}

// decideKeepalive is the keepalive policy: (config, unit, now) -> decision
// and the keepalive wanted. It touches nothing.
func decideKeepalive(c Config, u *kaUnit, now time.Time) (remediate.Decision, time.Duration) {
	d := remediate.Decision{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name)}
	est := u.est.lifetime()
	current := u.current
	quietSince := u.st.Since
	if u.lastSymptom.After(quietSince) {
		quietSince = u.lastSymptom
	}
	if u.st.Applied > 0 && c.RelaxAfter > 0 && u.symptoms == 0 && now.Sub(quietSince) >= c.RelaxAfter {
		d.Action, d.From, d.To, d.Code = ActionRelaxKeepalive, current.String(), u.st.Original.String(), "relax_after"
		d.Reason = fmt.Sprintf("no NAT expiry seen for %s (relax_after): back to the original keepalive", c.RelaxAfter)
		return d, u.st.Original
	}
	if u.symptoms < c.Symptoms || est == 0 {
		return d, 0 // no symptoms, or not enough to say: peers without symptoms are left alone
	}
	want := keepaliveFor(est)
	// The estimate is the middle of the bracket and can lie above the true
	// lifetime; the longest idle gap that kept the mapping cannot. A kept
	// gap shorter than keepalive.min says little: the floor caps then.
	if limit := max(u.est.lower.Truncate(time.Second), c.Min); u.est.lower > 0 && limit < want {
		want = limit
	}
	// With no idle gap known to have kept the mapping, the lifetime is only
	// known to be below the gap that expired: 80% of that was seen to land on
	// the lifetime itself (expired after 6.3 s idle, true 5 s: 5 s set), so
	// half of it, no lower than the floor, until a kept gap says more.
	if half := max((u.est.upper / 2).Truncate(time.Second), c.Min); u.est.lower == 0 && half < want {
		want = half
	}
	d.From = current.String()
	bracket := fmt.Sprintf("NAT mapping lifetime ~%s (idle gaps kept up to %s, expired from %s; %d symptoms, last: %s)",
		est.Round(100*time.Millisecond), u.est.lower.Round(100*time.Millisecond), u.est.upper.Round(100*time.Millisecond), u.symptoms, u.reasonsSampled[len(u.reasonsSampled)-1])
	switch {
	case want < c.Min:
		d.Action, d.Suppressed, d.To = ActionSetKeepalive, remediate.SuppressBelowFloor, want.String()
		d.Reason = fmt.Sprintf("%s needs a keepalive of %s, below keepalive.min %s: lower it, or set PersistentKeepalive = %d on the peer behind the NAT", bracket, want, c.Min, int(want.Seconds()))
		return d, 0
	case current > 0 && current <= want:
		return remediate.Decision{Group: u.st.Device, Peer: d.Peer}, 0 // already below it: symptoms there are not ours to fix
	}
	want = min(want, c.Max)
	d.Action, d.To, d.Escape, d.Code = ActionSetKeepalive, want.String(), true, "nat_expiry"
	d.Reason = fmt.Sprintf("%s: PersistentKeepalive %s", bracket, want)
	return d, want
}

// keepaliveFor is the keepalive for a mapping lifetime: 80% of it, in whole
// seconds (WireGuard's unit), so a packet crosses well before it expires.
func keepaliveFor(lifetime time.Duration) time.Duration {
	return time.Duration(math.Floor(0.8*lifetime.Seconds())) * time.Second
}

// Name is the policy's name in audit lines, metrics and the state file.
const Name = "keepalive"

var (
	actions = []string{ActionSetKeepalive, ActionRelaxKeepalive}
	reasons = []string{remediate.SuppressBelowFloor}
)

// Policy is the keepalive policy over the peers of its devices.
type Policy struct {
	c        Config
	units    map[string]*kaUnit // device/public key -> unit
	byTarget map[string]*kaUnit // probe target key -> its peer's unit
	// foreign are changes of ours in the state file that the config no
	// longer covers, until they are undone.
	foreign map[string]kaState
	m       *metrics
	debug   func(msg string, args ...any) // the logger's, once Observe has seen an Env
}

var (
	_ remediate.Policy     = (*Policy)(nil)
	_ remediate.V1Migrator = (*Policy)(nil)
)

// New returns the policy for its section.
func New(c Config) *Policy {
	return &Policy{c: c, units: map[string]*kaUnit{}, byTarget: map[string]*kaUnit{}, foreign: map[string]kaState{}, m: newMetrics()}
}

// Name implements remediate.Policy.
func (p *Policy) Name() string { return Name }

// Every implements remediate.Policy: the peers are looked at every second.
func (p *Policy) Every() time.Duration { return time.Second }

// Targets implements remediate.Policy: the prober's own targets (a peer's
// tunnel address) carry the idle gaps.
func (p *Policy) Targets() []prober.Target { return nil }

// WantsResults implements remediate.Policy: every probe of a watched peer
// is a sample of its NAT mapping.
func (p *Policy) WantsResults() bool { return p.c.Enabled }

func (p *Policy) inScope(device string) bool {
	return p.c.Enabled && slices.Contains(p.c.Devices, device)
}

// Observe implements remediate.Policy: snapshots and probe results feed
// the NAT estimate; the policy decides on its tick.
func (p *Policy) Observe(env remediate.Env, s remediate.Signal) bool {
	if !p.c.Enabled {
		return false
	}
	if env.Logger != nil {
		p.debug = env.Logger.Debug
	}
	switch {
	case s.Snapshot != nil:
		p.observeSnapshot(s.Snapshot)
	case s.Result != nil:
		if u := p.byTarget[s.Result.Target.Key()]; u != nil {
			u.debug = p.debug
			u.observeResult(*s.Result)
		}
	}
	return false
}

func (p *Policy) observeSnapshot(s *collector.Snapshot) {
	seen := map[string]bool{}
	for _, dev := range p.c.Devices {
		d, ok := s.Device(dev)
		if !ok || d.Stale {
			continue
		}
		for _, pr := range d.Peers {
			u := p.unit(d, pr)
			seen[remediate.PeerKey(d.Name, pr.PublicKey)] = true
			u.debug = p.debug
			u.observeSnapshot(pr, s.Time)
		}
	}
	for k, u := range p.units { // peers gone from read devices, with no change of ours left
		if d, ok := s.Device(u.st.Device); ok && !d.Stale && !seen[k] && u.st.Applied == 0 {
			for _, t := range u.targets {
				delete(p.byTarget, t)
			}
			delete(p.units, k)
		}
	}
}

func (p *Policy) unit(d *collector.Device, pr collector.Peer) *kaUnit {
	key := remediate.PeerKey(d.Name, pr.PublicKey)
	u := p.units[key]
	if u == nil {
		k, _ := wgtypes.ParseKey(pr.PublicKey)
		u = &kaUnit{st: kaState{Device: d.Name, Peer: pr.PublicKey, Original: pr.PersistentKeepalive}, key: k}
		p.units[key] = u
	}
	if u.name != pr.Name { // named by the snapshot (an adopted unit has no name yet)
		p.unexport(u)
		u.name = pr.Name
		p.export(u)
	}
	if u.targets == nil { // new, or adopted from the state file
		for _, a := range pr.AllowedIPs {
			if a.IsSingleIP() {
				t := prober.Target{Device: d.Name, Address: a.Addr()}.Key()
				u.targets = append(u.targets, t)
				p.byTarget[t] = u
			}
		}
	}
	return u
}

// Decide implements remediate.Policy: every peer the policy watches.
func (p *Policy) Decide(env remediate.Env) []remediate.Plan {
	if !p.c.Enabled {
		return nil
	}
	var plans []remediate.Plan
	for _, u := range p.units {
		p.checkFixed(env, u)
		d, want := decideKeepalive(p.c, u, env.Now)
		plan := remediate.Plan{Decision: d, Rails: &u.st.Rails, Limits: remediate.Limits{Rate: p.c.RateLimit}, Episode: &u.episode,
			Changes: []remediate.Change{remediate.SetKeepalive{Device: u.st.Device, Peer: u.key, Keepalive: want}}}
		plan.Commit = func(now time.Time) {
			if d.Action == ActionRelaxKeepalive {
				u.st.Applied = 0
			} else {
				u.st.Applied = want
			}
			u.st.Since, u.st.Estimate = now, u.est.lifetime()
			u.current = want
			u.symptomsAtSet, u.symptoms = u.symptoms, 0
			p.export(u)
		}
		plans = append(plans, plan)
	}
	return plans
}

// checkFixed: symptoms that go on with our keepalive in force mean this
// side cannot fix the NAT (it does not refresh mappings on inbound
// packets); say so once, with what the peer behind the NAT needs.
func (p *Policy) checkFixed(env remediate.Env, u *kaUnit) {
	fixable := !(u.st.Applied > 0 && u.symptoms >= p.c.Symptoms && u.current == u.st.Applied)
	if fixable == !u.st.Unfixable {
		return
	}
	u.st.Unfixable = !fixable
	p.export(u)
	if u.st.Unfixable && !u.unfixableSaid {
		u.unfixableSaid = true
		need := max(keepaliveFor(u.est.lifetime()), time.Second)
		env.Logger.Warn("NAT mapping expiry goes on with PersistentKeepalive set on this side: this NAT does not refresh mappings on inbound packets, so only the peer behind it can keep them alive",
			"device", u.st.Device, "peer", remediate.PeerLabel(u.st.Peer, u.name), "keepalive_here", u.st.Applied, "nat_lifetime_estimate", u.est.lifetime(),
			"fix", fmt.Sprintf("set PersistentKeepalive = %d on the peer behind the NAT", int(need.Seconds())))
	}
}

// Reconcile implements remediate.Policy: a keepalive of ours that someone
// changed is a conflict.
func (p *Policy) Reconcile(remediate.Env) []remediate.Conflict {
	var out []remediate.Conflict
	for _, u := range p.units {
		if u.st.Applied == 0 || !u.seen || u.current == u.st.Applied {
			continue
		}
		out = append(out, remediate.Conflict{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name), Rails: &u.st.Rails,
			Problem: fmt.Sprintf("PersistentKeepalive is %s, not the %s we set", u.current, u.st.Applied)})
		u.st.Applied = 0
		p.export(u)
	}
	return out
}

// Undo implements remediate.Policy: every changed peer on a device next
// does not cover gets its original keepalive back.
func (p *Policy) Undo(_ remediate.Env, why string, next remediate.Policy) []remediate.Plan {
	n, _ := next.(*Policy)
	code, why := why, remediate.UndoReason(why)
	var plans []remediate.Plan
	for _, u := range p.units {
		if u.st.Applied == 0 || (n != nil && n.inScope(u.st.Device)) {
			continue
		}
		plans = append(plans, remediate.Plan{
			Decision: remediate.Decision{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name), Action: ActionRelaxKeepalive,
				From: u.st.Applied.String(), To: u.st.Original.String(), Reason: why, Code: code},
			Unrailed: true, Changes: []remediate.Change{remediate.SetKeepalive{Device: u.st.Device, Peer: u.key, Keepalive: u.st.Original}},
			Commit: func(time.Time) {
				u.st.Applied = 0
				p.export(u)
			},
		})
	}
	return plans
}

// Start implements remediate.Policy (auto only): the saved changes still
// in force are kept; those the config no longer covers are undone,
// audited, their part kept in the state file until they are.
func (p *Policy) Start(env remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	if env.Mode != remediate.ModeAuto || saved == nil {
		return nil, nil
	}
	var units map[string]kaState
	if err := json.Unmarshal(saved, &units); err != nil {
		return nil, err
	}
	var plans []remediate.Plan
	for key, st := range units {
		if st.Applied == 0 {
			continue
		}
		k, err := wgtypes.ParseKey(st.Peer)
		if err != nil {
			continue
		}
		_, cur, err := env.Kernel.Peer(st.Device, k)
		switch {
		case errors.Is(err, remediate.ErrNoDevice) || errors.Is(err, remediate.ErrNoPeer) || (err == nil && cur != st.Applied):
			env.Logger.Warn("a keepalive change in the state file is not in force any more: forgotten",
				"device", st.Device, "peer", st.Peer, "set", st.Applied, "original", st.Original)
			continue
		case err != nil: // unknown is not a change: the belief stands until a read works
			env.Logger.Warn("cannot read the peer to check a keepalive change of the state file: kept as saved", "device", st.Device, "peer", st.Peer, "err", err)
			cur = st.Applied
		}
		if !p.inScope(st.Device) {
			p.foreign[key] = st
			plans = append(plans, remediate.Plan{
				Decision: remediate.Decision{Group: st.Device, Peer: remediate.PeerLabel(st.Peer, ""), Action: ActionRelaxKeepalive,
					From: st.Applied.String(), To: st.Original.String(), Reason: remediate.UndoReason(remediate.UndoOutOfScope), Code: remediate.UndoOutOfScope},
				Unrailed: true, Changes: []remediate.Change{remediate.SetKeepalive{Device: st.Device, Peer: k, Keepalive: st.Original}},
				Commit: func(time.Time) { delete(p.foreign, key) },
			})
			continue
		}
		u := &kaUnit{st: st, key: k, current: cur} // as read now: a poll older than st.Since would not say
		p.units[key] = u
		p.export(u)
	}
	return plans, nil
}

// Inherit implements remediate.Policy: the peers keep their state and
// estimates.
func (p *Policy) Inherit(env remediate.Env, prev remediate.Policy) {
	var was []string
	if old, ok := prev.(*Policy); ok {
		p.units, p.byTarget, p.foreign, p.m = old.units, old.byTarget, old.foreign, old.m
		was = old.devices()
	}
	env.FollowUnits(was, p.devices(), actions, reasons)
}

// devices are the devices the policy covers (none while it is off).
func (p *Policy) devices() []string {
	if !p.c.Enabled {
		return nil
	}
	return p.c.Devices
}

// State implements remediate.Policy: the peers with a change or a history.
func (p *Policy) State() any {
	st := map[string]kaState{}
	for k, u := range p.units {
		if u.st.Applied > 0 || u.st.Switches > 0 {
			st[k] = u.st
		}
	}
	for k, f := range p.foreign {
		st[k] = f
	}
	return st
}

// MigrateV1 implements remediate.V1Migrator: version 1 kept the peers
// under "keepalive".
func (p *Policy) MigrateV1(v1 map[string]json.RawMessage) (json.RawMessage, error) {
	return v1["keepalive"], nil
}

// Owned implements remediate.Policy: the policy owns no route.
func (p *Policy) Owned() []remediate.Route { return nil }

// Status implements remediate.Policy: the keepalive in force and the NAT
// estimates are in the metrics.
func (p *Policy) Status(time.Time) any { return nil }

type metrics struct {
	keepalive, natEstimate, natUnfixable *prometheus.GaugeVec
}

func newMetrics() *metrics {
	return &metrics{
		keepalive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_keepalive_seconds",
			Help: "The PersistentKeepalive the keepalive policy set for a peer; absent when none.",
		}, []string{"device", "public_key", "name"}),
		natEstimate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_keepalive_nat_timeout_estimate_seconds",
			Help: "Estimated lifetime of the NAT mapping between this node and the peer, from idle gaps (present once a mapping was seen expiring).",
		}, []string{"device", "public_key", "name"}),
		natUnfixable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_keepalive_nat_unfixable",
			Help: "1 when NAT mapping expiry goes on with PersistentKeepalive set on this side: the peer behind the NAT must set it.",
		}, []string{"device", "public_key", "name"}),
	}
}

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range []*prometheus.GaugeVec{p.m.keepalive, p.m.natEstimate, p.m.natUnfixable} {
		v.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (p *Policy) Collect(ch chan<- prometheus.Metric) {
	for _, v := range []*prometheus.GaugeVec{p.m.keepalive, p.m.natEstimate, p.m.natUnfixable} {
		v.Collect(ch)
	}
}

func (p *Policy) export(u *kaUnit) {
	l := prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer, "name": u.name}
	if u.st.Applied > 0 {
		p.m.keepalive.With(l).Set(u.st.Applied.Seconds())
	} else {
		p.m.keepalive.Delete(l)
	}
	if est := u.est.lifetime(); est > 0 {
		p.m.natEstimate.With(l).Set(est.Seconds())
		p.m.natUnfixable.With(l).Set(b2f(u.st.Unfixable))
	}
}

func (p *Policy) unexport(u *kaUnit) {
	l := prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer, "name": u.name}
	for _, v := range []*prometheus.GaugeVec{p.m.keepalive, p.m.natEstimate, p.m.natUnfixable} {
		v.Delete(l)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
