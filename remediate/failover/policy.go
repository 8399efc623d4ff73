// Package failover is the failover policy: each group moves traffic from a
// primary to a backup path while the primary is down, and back once it has
// been up for hold_down. Route mode adds wgpulse's own routes for the
// group's prefixes via the backup device (and deletes them to return);
// endpoint mode swaps one peer's endpoint between two uplinks.
package failover

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// Name is the policy's name in audit lines, metrics and the state file.
const Name = "failover"

const (
	tickEvery = 100 * time.Millisecond // hold-down ends, damping decays, backoffs expire
	settleFor = 2 * time.Second        // after an endpoint swap: roaming may pull it back once
)

var actions = []string{ActionSwitchToBackup, ActionReturnToPrimary}

// Policy is the failover policy over its groups.
type Policy struct {
	groups []*group
	// retired are groups no longer configured whose routes (or endpoint)
	// are still ours in the kernel: handed back once the primary is up.
	retired []*group
	byKey   map[string]*group // probe target key -> group
	proto   int               // wgpulse's route protocol
	m       *metrics
}

var (
	_ remediate.Policy     = (*Policy)(nil)
	_ remediate.V1Migrator = (*Policy)(nil)
)

// New returns the policy for the configured groups.
func New(gs Groups) *Policy {
	p := &Policy{byKey: map[string]*group{}, m: newMetrics()}
	for _, gc := range gs {
		g := newGroup(gc)
		for _, t := range g.probeTargets() {
			p.byKey[t.Key()] = g
		}
		p.groups = append(p.groups, g)
	}
	return p
}

// group is one failover group at run time.
type group struct {
	cfg      Group // with defaults
	prefixes []netip.Prefix
	// targets are the paths' probe targets: route mode, each path's tunnel
	// target; endpoint mode, each path's underlay target.
	targets [2]prober.Target
	tunnel  prober.Target // endpoint mode: the target through the tunnel
	peer    wgtypes.Key   // endpoint mode
	eps     [2]netip.AddrPort
	st      groupState
	episode remediate.Episode
	health  [2]pathHealth // last exported
	last    remediate.Decision
	lastAt  time.Time
	lastRes string
	// settleUntil: after an endpoint swap, a roam back to the old endpoint
	// is re-asserted, not a conflict.
	conflict    string // the problems of the conflict episode in progress ("": none)
	settleUntil time.Time
}

func newGroup(gc Group) *group {
	g := &group{cfg: gc.withDefaults(), st: groupState{Active: Primary}}
	d := g.cfg
	probe := func(device string, target ProbeTarget) prober.Target {
		addr, port, _ := target.Parse() // validated
		return prober.Target{Device: device, Address: addr, TCPPort: port, Interval: d.Interval,
			Timeout: d.Timeout, Window: d.Window, Suspect: d.Suspect,
			Rule: prober.Rule{Losses: d.Losses, LossRatio: d.LossRatio, RTT: d.RTT}}
	}
	if g.endpoint() {
		g.peer, _ = wgtypes.ParseKey(gc.Peer)
		g.tunnel = probe(gc.Device, gc.Target)
		for i, p := range []Path{gc.Primary, gc.Backup} {
			g.targets[i] = probe(p.UnderlayDevice, ProbeTarget(p.UnderlayTarget))
			g.eps[i] = netip.MustParseAddrPort(p.Endpoint)
		}
		return g
	}
	for _, s := range gc.Prefixes {
		g.prefixes = append(g.prefixes, netip.MustParsePrefix(s))
	}
	for i, p := range []Path{gc.Primary, gc.Backup} {
		g.targets[i] = probe(p.Device, p.Target)
	}
	return g
}

func (g *group) endpoint() bool { return g.cfg.Mode == "endpoint" }

func (g *group) probeTargets() []prober.Target {
	if g.endpoint() {
		return []prober.Target{g.tunnel, g.targets[0], g.targets[1]}
	}
	return []prober.Target{g.targets[0], g.targets[1]}
}

func pathIndex(name string) int {
	if name == Backup {
		return 1
	}
	return 0
}

func other(path string) string { return map[string]string{Primary: Backup, Backup: Primary}[path] }

// sameChanges says whether a reloaded config of the group would own the
// same changes (routes, or the peer's endpoints).
func (g *group) sameChanges(ng Group) bool {
	return ng.Mode == g.cfg.Mode && slices.Equal(ng.Prefixes, g.cfg.Prefixes) && ng.Backup == g.cfg.Backup &&
		ng.Primary == g.cfg.Primary && ng.Device == g.cfg.Device && ng.Peer == g.cfg.Peer && ng.RouteMetric == g.cfg.RouteMetric
}

// Name implements remediate.Policy.
func (p *Policy) Name() string { return Name }

// Every implements remediate.Policy.
func (p *Policy) Every() time.Duration { return tickEvery }

// WantsResults implements remediate.Policy: the prober's verdicts do.
func (p *Policy) WantsResults() bool { return false }

// Targets implements remediate.Policy.
func (p *Policy) Targets() []prober.Target {
	var ts []prober.Target
	for _, g := range p.all() {
		ts = append(ts, g.probeTargets()...)
	}
	return ts
}

// all are the configured groups, then the retired ones.
func (p *Policy) all() []*group { return append(slices.Clone(p.groups), p.retired...) }

func (p *Policy) index(g *group) {
	for _, t := range g.probeTargets() {
		p.byKey[t.Key()] = g
	}
}

// Observe implements remediate.Policy: a snapshot (handshakes) or a change
// of one of the groups' targets asks for a decision.
func (p *Policy) Observe(_ remediate.Env, s remediate.Signal) bool {
	switch {
	case s.Snapshot != nil:
		return true
	case s.Change != nil:
		return p.byKey[s.Change.Health.Target.Key()] != nil
	}
	return false
}

// Decide implements remediate.Policy: the endpoint groups' re-assertions
// after a roam back, then every group's decision.
func (p *Policy) Decide(env remediate.Env) []remediate.Plan {
	var plans []remediate.Plan
	if env.Mode == remediate.ModeAuto {
		for _, g := range p.groups {
			if pl, ok := p.settle(env, g); ok {
				plans = append(plans, pl)
			}
		}
	}
	for _, g := range p.all() {
		if g.st.Handback != "" {
			pl := p.handback(env, g, g.st.Handback, g.cfg.HoldDown)
			pl.Handback = true
			plans = append(plans, pl)
			continue
		}
		p.exportDamping(g, env.Now)
		plans = append(plans, p.evaluate(env, g))
	}
	return plans
}

// handback is the return of a group nothing maintains any more (why: an
// Undo* code): carried out once the primary is up (for hold, when nothing
// would fail over again) and routed, else suppressed, and the group keeps
// its routes, owned, until then.
func (p *Policy) handback(env remediate.Env, g *group, why string, hold time.Duration) remediate.Plan {
	d := remediate.Decision{Group: g.cfg.Name, Action: ActionReturnToPrimary, From: Backup, To: Primary, Code: why,
		Reason: remediate.UndoReason(why)}
	switch h := p.signals(env, g).primary; {
	case h.State != prober.StateUp:
		d.Suppressed = SuppressPrimaryNotUp
		d.Reason = fmt.Sprintf("%s; but the primary is %s (%s): returning would drop the traffic", d.Reason, h.State, h.Reason)
	case env.Now.Sub(h.Since) < hold:
		d.Suppressed = SuppressHoldDown
		d.Reason = fmt.Sprintf("%s; the primary is up since %s, waiting for hold_down %s", d.Reason, h.Since.Format(time.RFC3339), hold)
	default:
		p.preflight(env, g, &d)
	}
	if d.Suppressed != "" {
		d.Reason = fmt.Sprintf("kept on the backup: %s. wgpulse still owns the change (ip route show proto %d; the state file) and hands it back once the primary is up and routed", d.Reason, env.RouteProtocol)
	}
	var c remediate.Change = remediate.DelRoutes(p.inForce(g))
	if g.endpoint() {
		ep := g.eps[0]
		if orig, err := netip.ParseAddrPort(g.st.Original); err == nil {
			ep = orig
		}
		c = remediate.SetEndpoint{Device: g.cfg.Device, Peer: g.peer, Endpoint: ep}
	}
	return remediate.Plan{
		Decision: d, Unrailed: true, Episode: &g.episode, Changes: []remediate.Change{c},
		Commit: func(now time.Time) {
			g.st.Active, g.st.Since, g.st.Arrived, g.st.Routes, g.st.Handback = Primary, now, time.Time{}, nil, ""
			p.exportActive(g)
			if i := slices.Index(p.retired, g); i >= 0 { // handed back: the group is gone
				p.retired = slices.Delete(p.retired, i, i+1)
				for _, t := range g.probeTargets() {
					if p.byKey[t.Key()] == g {
						delete(p.byKey, t.Key())
					}
				}
				p.m.deleteGroup(g.cfg.Name)
				env.DropUnit(g.cfg.Name)
			}
		},
	}
}

// signals is both paths as the policy sees them. Route mode: each path's
// tunnel target. Endpoint mode: the path in use is the tunnel target (a
// fresh verdict since the last swap), the idle one its underlay target; a
// degraded tunnel is compared by its uplinks' underlay loss and RTT.
func (p *Policy) signals(env remediate.Env, g *group) groupSignals {
	if !g.endpoint() {
		return groupSignals{primary: targetHealth(env, g.targets[0], nil), backup: targetHealth(env, g.targets[1], nil)}
	}
	active := pathIndex(g.st.Active)
	var paths [2]pathHealth
	paths[1-active] = targetHealth(env, g.targets[1-active], nil)
	tunnel := targetHealth(env, g.tunnel, &g.peer)
	if tunnel.DownBy == prober.DownByLossRatio || tunnel.DownBy == prober.DownByRTT {
		under := targetHealth(env, g.targets[active], nil)
		tunnel.Loss, tunnel.RTT = under.Loss, under.RTT
	}
	paths[active] = tunnel
	return groupSignals{primary: paths[0], backup: paths[1]}
}

// targetHealth is a target as the policy sees it: the prober's verdict;
// with no verdict yet, a stale handshake of the target's peer on a fresh
// device read makes it down (the session cannot carry data).
func targetHealth(env remediate.Env, t prober.Target, peer *wgtypes.Key) pathHealth {
	var ph pathHealth
	if h, ok := env.Prober.HealthOf(t.Key()); ok {
		ph = pathHealth{State: h.State, Since: h.Since, Reason: h.Reason, DownBy: h.DownBy, Loss: h.LossRatio, RTT: h.MedianRTT}
	}
	if ph.State != prober.StateUnknown || env.Snapshot == nil || t.Device == "" {
		return ph
	}
	d, ok := env.Snapshot.Device(t.Device)
	if !ok || d.Stale {
		return ph // a failed read is unknown, never down
	}
	for _, p := range d.Peers {
		mine := peer != nil && p.PublicKey == peer.String()
		for _, a := range p.AllowedIPs {
			mine = mine || (peer == nil && a.Contains(t.Address))
		}
		if mine && p.Handshake == collector.HandshakeStale {
			return pathHealth{State: prober.StateDown, Since: p.HandshakeSince, DownBy: "handshake",
				Reason: fmt.Sprintf("no handshake for over %s: the session cannot carry data", collector.RejectAfterTime)}
		}
	}
	return ph
}

// evaluate is the plan of one group's decision.
func (p *Policy) evaluate(env remediate.Env, g *group) remediate.Plan {
	sig := p.signals(env, g)
	p.exportHealth(env, g, sig)
	d := decideFailover(g.cfg, g.st, sig, env.Now)
	plan := remediate.Plan{Decision: d, Rails: &g.st.Rails, Limits: remediate.Limits{Damping: g.cfg.Damping, Rate: g.cfg.RateLimit},
		Episode: &g.episode}
	if d.Action == "" || d.Suppressed != "" {
		plan.After = p.after(g, env.Now)
		return plan
	}
	if d.To == Backup {
		if why := p.planeDown(env); why != "" {
			plan.Suppressed, plan.Reason = SuppressProbePlaneDown, why+": "+plan.Reason
			plan.After = p.after(g, env.Now)
			return plan
		}
	}
	var routes []remediate.Route // route mode: what the switch adds or deletes
	var original string
	plan.Prepare = func(d *remediate.Decision) []remediate.Change { // the kernel reads: only once the rails let it through
		p.preflight(env, g, d)
		switch {
		case g.endpoint() || d.Suppressed != "":
		case d.To == Backup:
			var blocked string
			if routes, blocked = p.backupRoutes(env, g); blocked != "" {
				d.Suppressed, d.Reason = SuppressMetricTooHigh, blocked+": "+d.Reason
			}
		default:
			routes = p.inForce(g)
		}
		var cs []remediate.Change
		cs, original = p.switchChanges(env, g, d.To, routes)
		return cs
	}
	plan.Commit = func(now time.Time) {
		if !g.st.Arrived.IsZero() && now.Sub(g.st.Arrived) < g.cfg.HoldDown { // left a path it switched to less than hold_down ago
			p.m.flaps.WithLabelValues(g.cfg.Name).Inc()
		}
		g.st.Active, g.st.Since, g.st.Arrived = d.To, now, now
		g.conflict = "" // a change of ours ends the episode: a revert of it is the next
		if !g.endpoint() {
			g.st.Routes = nil
			if d.To == Backup {
				g.st.Routes = routes
			}
		}
		if g.endpoint() {
			if original != "" && env.Mode == remediate.ModeAuto {
				g.st.Original = original
			}
			g.settleUntil = now.Add(settleFor)
			env.Prober.ResetState(g.tunnel.Key()) // the old verdict is about the old path
			// The path left is judged by its underlay target from now on.
			// That target's verdict may predate the failure (a target slower
			// to notice than the tunnel, or one that lost fewer probes in a
			// row than its rule before the path healed): it must come from
			// probes sent after the switch, or hold_down would count time
			// the path was down.
			env.Prober.ResetState(g.targets[pathIndex(other(d.To))].Key())
		}
	}
	plan.After = p.after(g, env.Now)
	return plan
}

func (p *Policy) after(g *group, at time.Time) func(remediate.Decision, string) {
	return func(d remediate.Decision, result string) {
		g.last, g.lastAt, g.lastRes = d, at, result
		p.exportActive(g)
		p.exportDamping(g, at)
	}
}

// planeDown says why every failover target of the node failing at once is
// the probe plane's fault ("": it is not): at least three targets, none
// unknown, none answering its newest probe, at least one down.
func (p *Policy) planeDown(env remediate.Env) string {
	keys := map[string]bool{}
	for _, g := range p.groups {
		for _, t := range g.probeTargets() {
			keys[t.Key()] = true
		}
	}
	if len(keys) < 3 {
		return ""
	}
	down := 0
	for k := range keys {
		h, ok := env.Prober.HealthOf(k)
		switch {
		case !ok || h.State == prober.StateUnknown:
			return ""
		case h.State == prober.StateDown:
			down++
		case h.LostInARow == 0:
			return "" // answering: the plane works
		}
	}
	if down == 0 {
		return ""
	}
	return fmt.Sprintf("all %d failover targets of this node, backups and underlay targets included, are down or losing at once: the probe plane is broken (ICMP dropped by a host firewall, a lost capability), not the paths; unknown, node-wide", len(keys))
}

// preflight suppresses an action that cannot work: a device or peer of the
// group missing, or (switching a route group to the backup) an operator
// route our route's metric would not beat. It only reads, in dry-run too.
func (p *Policy) preflight(env remediate.Env, g *group, d *remediate.Decision) {
	if g.endpoint() {
		if _, _, err := env.Kernel.Peer(g.cfg.Device, g.peer); err != nil {
			d.Suppressed = SuppressDeviceMissing
			d.Reason = fmt.Sprintf("%v (check remediate.failover %q): %s", err, g.cfg.Name, d.Reason)
		}
		return
	}
	dev := g.cfg.Backup.Device
	if d.To == Primary {
		dev = g.cfg.Primary.Device
	}
	if !env.Kernel.LinkExists(dev) {
		d.Suppressed = SuppressDeviceMissing
		d.Reason = fmt.Sprintf("device %s does not exist (check remediate.failover %q): %s", dev, g.cfg.Name, d.Reason)
		return
	}
	var why string
	if d.To == Primary {
		d.Suppressed, why = SuppressNoPrimaryRoute, p.primaryRouted(env, g)
	} else if d.Suppressed, why = SuppressBackupNotAllowed, p.backupAllows(env, g); why == "" {
		if d.Suppressed, why = SuppressEndpointInPrefix, p.endpointInPrefix(env, g); why == "" {
			d.Suppressed, why = SuppressLookupElsewhere, p.lookupElsewhere(env, g)
		}
	}
	if why == "" {
		d.Suppressed = ""
		return
	}
	d.Reason = why + ": " + d.Reason
}

// lookupElsewhere says why the group's prefixes are not where its config
// says ("": they are): the main table routes them via the primary, yet a
// route lookup of a sample address leaves by a device that is neither the
// primary nor the backup (a policy rule, a VRF or a more specific route
// sends it there), so a route of ours would not move that traffic. With
// the primary's routes gone (wg-quick down: the lookup falls to a default
// route) it is no reason to stay; a failed lookup says nothing.
func (p *Policy) lookupElsewhere(env remediate.Env, g *group) string {
	for _, pf := range g.prefixes {
		sample := pf.Addr()
		if !pf.IsSingleIP() {
			sample = sample.Next()
		}
		dev, err := env.Kernel.Lookup(sample)
		if err != nil || dev == "" || dev == g.cfg.Primary.Device || dev == g.cfg.Backup.Device || p.primaryRouted(env, g) != "" {
			continue
		}
		return fmt.Sprintf("the kernel sends %s (in %s) via %s, neither the primary %s nor the backup %s: a policy rule, a VRF or a more specific route takes it elsewhere, so a route of ours would not carry it",
			sample, pf, dev, g.cfg.Primary.Device, g.cfg.Backup.Device)
	}
	return ""
}

// primaryRouted says why a return would leave a prefix with no route via
// the primary ("": none): no route of another manager through the primary
// device covers it (the tunnel's own routes went with `wg-quick down`).
func (p *Policy) primaryRouted(env remediate.Env, g *group) string {
	var via [2][]remediate.Route // IPv4, IPv6
	for _, pf := range g.prefixes {
		fam := b2i(pf.Addr().Is6())
		if via[fam] == nil {
			rs, err := env.Kernel.RoutesVia(g.cfg.Primary.Device, pf.Addr().Is6())
			if err != nil {
				return fmt.Sprintf("cannot read the routes via the primary %s (%v): staying on the backup", g.cfg.Primary.Device, err)
			}
			via[fam] = append(rs, remediate.Route{}) // read, even if empty
		}
		if !slices.ContainsFunc(via[fam], func(r remediate.Route) bool {
			return r.Prefix.IsValid() && r.Protocol != env.RouteProtocol && r.Prefix.Bits() <= pf.Bits() && r.Prefix.Contains(pf.Addr())
		}) {
			return fmt.Sprintf("no route via the primary %s carries %s (its tunnel's routes are gone: wg-quick down?): a return would leave it unrouted, staying on the backup",
				g.cfg.Primary.Device, pf)
		}
	}
	return ""
}

// backupAllows says why the backup's peers would drop a prefix ("": they
// allow every one). A device the last poll did not read is not held against it.
func (p *Policy) backupAllows(env remediate.Env, g *group) string {
	if env.Snapshot == nil {
		return ""
	}
	d, ok := env.Snapshot.Device(g.cfg.Backup.Device)
	if !ok || d.Stale {
		return ""
	}
	for _, pf := range g.prefixes {
		allowed := false
		for _, pr := range d.Peers {
			allowed = allowed || slices.ContainsFunc(pr.AllowedIPs, func(a netip.Prefix) bool { return a.Bits() <= pf.Bits() && a.Contains(pf.Addr()) })
		}
		if !allowed {
			return fmt.Sprintf("no peer of the backup %s allows %s in its AllowedIPs: WireGuard would drop what is routed to it (add %s to the far end's peer AllowedIPs on %s)",
				g.cfg.Backup.Device, pf, pf, g.cfg.Backup.Device)
		}
	}
	return ""
}

// endpointInPrefix says why routing the prefixes into the backup would
// loop ("": it would not): a peer's endpoint on the backup device inside one.
func (p *Policy) endpointInPrefix(env remediate.Env, g *group) string {
	if env.Snapshot == nil {
		return ""
	}
	d, ok := env.Snapshot.Device(g.cfg.Backup.Device)
	if !ok {
		return ""
	}
	for _, pr := range d.Peers {
		for _, pf := range g.prefixes {
			if pr.Endpoint.IsValid() && pf.Contains(pr.Endpoint.Addr()) {
				return fmt.Sprintf("prefix %s of group %q holds the endpoint %s of the backup's peer %s: routing it into the tunnel would send the tunnel's own packets into itself; take the endpoint out of remediate.failover prefixes",
					pf, g.cfg.Name, pr.Endpoint, remediate.PeerLabel(pr.PublicKey, pr.Name))
			}
		}
	}
	return ""
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// backupRoutes are the routes a switch to the backup adds, one shape per
// prefix; blocked says why they would not carry the traffic.
func (p *Policy) backupRoutes(env remediate.Env, g *group) ([]remediate.Route, string) {
	var out []remediate.Route
	for _, pf := range g.prefixes {
		rs, blocked := p.shape(env, g, pf)
		if blocked != "" {
			return nil, blocked
		}
		out = append(out, rs...)
	}
	return out, ""
}

// switchChanges is what a switch to path `to` writes: routes (ours) added
// (all or none) or deleted, or the peer's endpoint set. In auto, an endpoint
// group's first switch also reads the endpoint it replaces (restored on exit).
func (p *Policy) switchChanges(env remediate.Env, g *group, to string, routes []remediate.Route) ([]remediate.Change, string) {
	if g.endpoint() {
		original := ""
		if g.st.Original == "" && env.Mode == remediate.ModeAuto {
			if ep, _, err := env.Kernel.Peer(g.cfg.Device, g.peer); err == nil && ep.IsValid() {
				original = ep.String()
			}
		}
		return []remediate.Change{remediate.SetEndpoint{Device: g.cfg.Device, Peer: g.peer, Endpoint: g.eps[pathIndex(to)]}}, original
	}
	if to == Backup {
		return []remediate.Change{remediate.AddRoutes(routes)}, ""
	}
	return []remediate.Change{remediate.DelRoutes(routes)}, ""
}

// settle re-asserts a swapped endpoint that roaming pulled back to the old
// one: packets of the far side still on their way over the old uplink make
// WireGuard roam back once; the far side follows our next packet.
func (p *Policy) settle(env remediate.Env, g *group) (remediate.Plan, bool) {
	if !g.endpoint() || env.Now.After(g.settleUntil) {
		return remediate.Plan{}, false
	}
	active := pathIndex(g.st.Active)
	ep, _, err := env.Kernel.Peer(g.cfg.Device, g.peer)
	if err != nil || ep != g.eps[1-active] {
		return remediate.Plan{}, false
	}
	return remediate.Plan{
		Decision: remediate.Decision{Group: g.cfg.Name, Action: "reassert_endpoint", To: g.eps[active].String(),
			Reason: "the far side's packets on the old uplink roamed the peer back: endpoint set again"},
		Quiet:   true,
		Changes: []remediate.Change{remediate.SetEndpoint{Device: g.cfg.Device, Peer: g.peer, Endpoint: g.eps[active]}},
		Commit:  func(time.Time) { env.Prober.ResetState(g.tunnel.Key()) },
	}, true
}

// Reconcile implements remediate.Policy: what we own is there and in
// force. Something else deleting or overriding it is a conflict.
func (p *Policy) Reconcile(env remediate.Env) []remediate.Conflict {
	var out []remediate.Conflict
	for _, g := range p.groups {
		var problems []string
		var nowActive string
		switch {
		case g.endpoint():
			if env.Now.Before(g.settleUntil) {
				continue
			}
			ep, _, err := env.Kernel.Peer(g.cfg.Device, g.peer)
			if err != nil {
				continue // device or peer gone: the next decision's preflight says so
			}
			if want := g.eps[pathIndex(g.st.Active)]; ep != want && g.st.Switches > 0 {
				problems = append(problems, fmt.Sprintf("the peer's endpoint is %s, not %s", ep, want))
				if ep == g.eps[1-pathIndex(g.st.Active)] {
					nowActive = other(g.st.Active)
				}
			}
		case g.st.Active == Backup:
			ours := p.inForce(g)
			gone := 0
			for _, want := range ours {
				rs, err := env.Kernel.Routes(want.Prefix)
				if err != nil {
					env.Logger.Warn("cannot read routes to check ours", "group", g.cfg.Name, "err", err)
					return out
				}
				if !slices.Contains(rs, want) {
					gone++
					problems = append(problems, fmt.Sprintf("our route %s was deleted or replaced", want))
				}
				for _, rt := range rs {
					if rt != want && rt.Protocol != env.RouteProtocol && rt.Metric <= want.Metric {
						problems = append(problems, fmt.Sprintf("route %s overrides ours", rt))
					}
				}
			}
			if gone == len(ours) { // the kernel routes the group via the primary again
				nowActive = Primary
			} else if len(problems) == 0 {
				problems = p.overridden(env, g, ours)
			}
		}
		why := strings.Join(problems, "; ")
		if why == g.conflict { // "" ends an episode; the same problems are the same episode
			continue // counted, audited and backed off from once: re-arming every check would freeze the group
		}
		if g.conflict = why; why == "" {
			continue
		}
		if nowActive != "" {
			g.st.Active, g.st.Since, g.st.Arrived = nowActive, env.Now, time.Time{}
			if nowActive == Primary {
				g.st.Routes = nil
			}
			p.exportActive(g)
		}
		out = append(out, remediate.Conflict{Group: g.cfg.Name, Problem: why, Rails: &g.st.Rails,
			Attrs: []any{"active", g.st.Active,
				"hint", "another manager (systemd-networkd without ManageForeignRoutes=no, NetworkManager, a routing daemon, wg set) may change what it did not make"}})
	}
	return out
}

// overridden says what keeps our routes, all in the table, from carrying
// the traffic: a route lookup of a sample address (rules, VRFs and more
// specific routes included) that leaves by another device, or a more
// specific route of another manager via the primary inside one of ours. A
// failed read says nothing.
func (p *Policy) overridden(env remediate.Env, g *group, ours []remediate.Route) []string {
	var problems []string
	var via [2][]remediate.Route
	for _, want := range ours {
		sample := want.Prefix.Addr()
		if !want.Prefix.IsSingleIP() {
			sample = sample.Next()
		}
		if dev, err := env.Kernel.Lookup(sample); err == nil && dev != want.Device {
			if dev == "" {
				dev = "no device (unreachable, blackhole)"
			}
			problems = append(problems, fmt.Sprintf("the kernel sends %s (in our %s) via %s, not %s: a policy rule (ip rule), a VRF or a more specific route wins over ours",
				sample, want.Prefix, dev, want.Device))
		}
		fam := b2i(sample.Is6())
		if via[fam] == nil {
			rs, err := env.Kernel.RoutesVia(g.cfg.Primary.Device, sample.Is6())
			if err != nil {
				continue
			}
			via[fam] = append(rs, remediate.Route{})
		}
		for _, rt := range via[fam] {
			if rt.Prefix.IsValid() && rt.Protocol != env.RouteProtocol && rt.Prefix.Bits() > want.Prefix.Bits() && want.Prefix.Contains(rt.Prefix.Addr()) {
				problems = append(problems, fmt.Sprintf("route %s is more specific than our %s: that part of the prefix stays on the primary", rt, want.Prefix))
			}
		}
	}
	return problems
}

// Undo implements remediate.Policy: the groups on the backup that next does
// not configure the same way (all of them when next is nil) are handed
// back: returned to the primary if it is up and routed, else kept, owned
// and said so, and handed back later (Decide). A new route protocol
// returns them all: the routes change owner.
func (p *Policy) Undo(env remediate.Env, why string, next remediate.Policy) []remediate.Plan {
	keep := map[string]Group{}
	if n, ok := next.(*Policy); ok {
		for _, g := range n.groups {
			keep[g.cfg.Name] = g.cfg
		}
	}
	var plans []remediate.Plan
	for _, g := range p.all() {
		if ng, kept := keep[g.cfg.Name]; g.st.Active != Backup || (kept && g.sameChanges(ng)) {
			continue
		}
		pl := p.handback(env, g, why, 0)
		if why == remediate.UndoProtocol {
			pl.Suppressed, pl.Reason = "", remediate.UndoReason(why)
		}
		if pl.Suppressed != "" {
			g.st.Handback = why
		}
		plans = append(plans, pl)
	}
	return plans
}

// Inherit implements remediate.Policy: groups keep their state by name.
func (p *Policy) Inherit(env remediate.Env, prev remediate.Policy) {
	p.proto = env.RouteProtocol
	if old, ok := prev.(*Policy); ok {
		p.m = old.m
		prevs := map[string]*group{}
		for _, g := range old.all() {
			prevs[g.cfg.Name] = g
		}
		for _, g := range p.groups {
			if og, ok := prevs[g.cfg.Name]; ok {
				g.st, g.episode = og.st, og.episode
				delete(prevs, g.cfg.Name)
			}
		}
		for name, og := range prevs {
			if og.st.Handback != "" { // still ours in the kernel: handed back later
				p.retired = append(p.retired, og)
				p.index(og)
				continue
			}
			p.m.deleteGroup(name)
			env.DropUnit(name)
		}
	}
	for _, g := range p.groups {
		if env.Mode == remediate.ModeAuto { // configured and in auto: maintained again
			g.st.Handback = ""
		}
	}
	for _, g := range p.groups {
		env.InitUnit(g.cfg.Name, actions, suppressReasons)
		p.m.initGroup(g.cfg.Name)
		p.exportActive(g)
		p.exportDamping(g, env.Now)
	}
}

// state is the policy's part of the state file.
type state struct {
	Groups map[string]groupState `json:"groups"`
	// Routes are the routes the groups on the backup own, for a human
	// reading the file: `ip route del PREFIX dev DEVICE metric METRIC proto
	// PROTOCOL` undoes one.
	Routes []ownedRoute `json:"owned_routes"`
}

type ownedRoute struct {
	Group string `json:"group"`
	remediate.Route
}

// State implements remediate.Policy.
func (p *Policy) State() any {
	st := state{Groups: map[string]groupState{}, Routes: []ownedRoute{}}
	for _, g := range p.all() {
		gs := g.st
		if gs.Active == Backup {
			c := g.cfg
			gs.Config = &c
		}
		st.Groups[g.cfg.Name] = gs
		if g.st.Active == Backup && !g.endpoint() {
			for _, rt := range p.inForce(g) {
				st.Routes = append(st.Routes, ownedRoute{Group: g.cfg.Name, Route: rt})
			}
		}
	}
	return st
}

// MigrateV1 implements remediate.V1Migrator: version 1 kept the groups and
// owned routes at the top level.
func (p *Policy) MigrateV1(v1 map[string]json.RawMessage) (json.RawMessage, error) {
	var st state
	if raw, ok := v1["groups"]; ok {
		if err := json.Unmarshal(raw, &st.Groups); err != nil {
			return nil, fmt.Errorf("groups: %w", err)
		}
	}
	if raw, ok := v1["owned_routes"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &st.Routes); err != nil {
			return nil, fmt.Errorf("owned_routes: %w", err)
		}
	}
	if st.Groups == nil {
		return nil, nil
	}
	return json.Marshal(st)
}

// Start implements remediate.Policy: each group's active path comes from
// what the kernel shows; the state file only says what we believed.
func (p *Policy) Start(env remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	var st state
	var err error
	if saved != nil {
		if err = json.Unmarshal(saved, &st); err == nil {
			for name, g := range st.Groups {
				if g.Active != Primary && g.Active != Backup {
					err = fmt.Errorf("group %q has active path %q", name, g.Active)
				}
			}
		}
		if err != nil {
			st = state{}
		}
	}
	var plans []remediate.Plan
	for _, g := range p.groups {
		if s, ok := st.Groups[g.cfg.Name]; ok {
			g.st = s
			delete(st.Groups, g.cfg.Name)
		}
		g.st.Config = nil
		plans = append(plans, p.adopt(env, g)...)
		if g.st.Handback = ""; env.Mode != remediate.ModeAuto && g.st.Active == Backup {
			g.st.Handback = remediate.UndoLeaveAuto // our routes, and nothing maintains them
		}
		p.exportActive(g)
		p.exportDamping(g, env.Now)
	}
	for name, s := range st.Groups { // saved, not configured: handed back if still in the kernel
		if s.Active != Backup {
			continue
		}
		g, verr := retiredGroup(name, s)
		if verr != nil {
			env.Logger.Warn("a group of the state file on the backup that the config no longer has, and whose saved config is unusable: "+
				"its routes are left alone; remove them by hand (ip route show proto N)", "group", name, "err", verr)
			continue
		}
		p.adopt(env, g) // what the kernel has; an interrupted switch of a group that is going is not completed
		if g.st.Active != Backup {
			continue // nothing of ours left in the kernel
		}
		if g.st.Handback == "" {
			g.st.Handback = remediate.UndoOutOfScope
		}
		p.retired = append(p.retired, g)
		p.index(g)
		env.InitUnit(name, actions, suppressReasons)
		p.m.initGroup(name)
		p.exportActive(g)
	}
	return plans, err
}

// retiredGroup rebuilds a group the config no longer has from its saved
// config, checked like the config was.
func retiredGroup(name string, s groupState) (*group, error) {
	if s.Config == nil || s.Config.Name != name {
		return nil, errors.New("no saved config (written by an older release)")
	}
	var errs []error
	Groups{*s.Config}.Validate(remediate.Fields(&errs))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g := newGroup(*s.Config)
	g.st, g.st.Config = s, nil
	return g, nil
}

func (p *Policy) adopt(env remediate.Env, g *group) []remediate.Plan {
	believed := g.st.Active
	var plans []remediate.Plan
	if g.endpoint() {
		ep, _, err := env.Kernel.Peer(g.cfg.Device, g.peer)
		switch {
		case err != nil:
			env.Logger.Warn("cannot read the group's peer at start: assuming the primary", "group", g.cfg.Name, "err", err)
			g.st.Active = Primary
		case ep == g.eps[1]:
			g.st.Active = Backup
		case ep == g.eps[0]:
			g.st.Active = Primary
		default:
			g.st.Active = Primary
			env.Logger.Warn("the peer's endpoint is neither the primary's nor the backup's: left alone until a decision", "group", g.cfg.Name,
				"endpoint", ep.String(), "primary", g.eps[0].String(), "backup", g.eps[1].String())
		}
	} else {
		plans = p.adoptRoutes(env, g)
	}
	if believed != g.st.Active && believed != "" {
		env.Logger.Warn("the kernel disagrees with the state file; following the kernel", "group", g.cfg.Name,
			"state_file_active", believed, "kernel_active", g.st.Active)
	}
	if believed != g.st.Active || g.st.Since.IsZero() {
		g.st.Since, g.st.Arrived = env.Now, time.Time{}
	}
	return plans
}

// adoptRoutes: our routes (either shape) for all the group's prefixes
// mean the backup; for some of them, a switch a crash interrupted, finished
// so the group is in one state.
func (p *Policy) adoptRoutes(env remediate.Env, g *group) []remediate.Plan {
	var have, missing []remediate.Route
	onBackup := 0
	for _, pf := range g.prefixes {
		h, m, err := p.adoptPrefix(env, g, pf)
		if err != nil { // unknown is not a change: what the state file says stands until a read works
			if g.st.Active != Backup {
				g.st.Active, g.st.Routes = Primary, nil
			}
			env.Logger.Error("cannot read routes at start: keeping what the state file says; the 2 s check confirms it once reads work",
				"group", g.cfg.Name, "active", g.st.Active, "err", err)
			return nil
		}
		if len(h) == 0 {
			if rs, blocked := p.shape(env, g, pf); blocked == "" {
				m = rs
			}
		} else {
			onBackup++
		}
		have, missing = append(have, h...), append(missing, m...)
	}
	switch {
	case onBackup == 0:
		g.st.Active, g.st.Routes = Primary, nil
	case len(missing) == 0:
		g.st.Active, g.st.Routes = Backup, have
	default:
		g.st.Active, g.st.Routes = Backup, have
		return []remediate.Plan{{
			Decision: remediate.Decision{Group: g.cfg.Name, Action: ActionSwitchToBackup, From: Backup, To: Backup, Code: "interrupted_switch",
				Reason: fmt.Sprintf("completing a switch interrupted before this start: %d of %d prefixes were on the backup", onBackup, len(g.prefixes))},
			Unrailed: true, Changes: []remediate.Change{remediate.AddRoutes(missing)},
			Commit: func(time.Time) { g.st.Routes = append(slices.Clone(have), missing...) },
		}}
	}
	return nil
}

// Owned implements remediate.Policy: every route group's routes, either
// shape, in force or not.
func (p *Policy) Owned() []remediate.Route {
	var out []remediate.Route
	for _, g := range p.all() {
		for _, pf := range g.prefixes {
			out = append(append(out, p.exact(g, pf)...), p.halves(g, pf)...)
		}
	}
	return out
}

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range p.m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector: the vectors only (the damping
// gauges follow the decay on every decision tick).
func (p *Policy) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.m.collectors() {
		c.Collect(ch)
	}
}

// exportDamping sets the damping gauges to the penalty decayed to now.
func (p *Policy) exportDamping(g *group, now time.Time) {
	p.m.penalty.WithLabelValues(g.cfg.Name).Set(remediate.Penalty(g.cfg.Damping, g.st.Rails, now))
	p.m.damped.WithLabelValues(g.cfg.Name).Set(b2f(remediate.Damped(g.cfg.Damping, g.st.Rails, now)))
}

func (p *Policy) exportHealth(env remediate.Env, g *group, sig groupSignals) {
	for i, ph := range []pathHealth{sig.primary, sig.backup} {
		if ph.State == g.health[i].State && ph.Reason == g.health[i].Reason {
			continue
		}
		if ph.State != g.health[i].State {
			env.Logger.Info("failover path health changed", "group", g.cfg.Name, "path", paths[i],
				"from", g.health[i].State.String(), "to", ph.State.String(), "reason", ph.Reason)
		}
		g.health[i] = ph
		p.m.healthy.WithLabelValues(g.cfg.Name, paths[i]).Set(b2f(ph.State == prober.StateUp))
		for _, s := range states {
			p.m.pathState.WithLabelValues(g.cfg.Name, paths[i], s).Set(b2f(s == ph.State.String()))
		}
	}
}

func (p *Policy) exportActive(g *group) {
	for _, path := range paths {
		p.m.active.WithLabelValues(g.cfg.Name, path).Set(b2f(g.st.Active == path))
	}
}

var errNotFailover = errors.New("not the failover policy")

// StatusOf returns the failover part of a remediator's status.
func StatusOf(s remediate.Status) (Status, error) {
	st, ok := s.Policies[Name].(Status)
	if !ok {
		return Status{}, errNotFailover
	}
	return st, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
