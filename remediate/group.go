package remediate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
)

// group is one failover group at run time: route mode moves prefixes
// between two tunnel devices, endpoint mode swaps one peer's endpoint
// between two uplinks.
type group struct {
	cfg      FailoverGroup // with defaults
	prefixes []netip.Prefix
	// targets are the paths' probe targets: route mode, each path's tunnel
	// target; endpoint mode, each path's underlay target.
	targets [2]prober.Target
	tunnel  prober.Target // endpoint mode: the target through the tunnel
	peer    wgtypes.Key   // endpoint mode
	eps     [2]netip.AddrPort
	st      groupState
	audited string
	health  [2]pathHealth // last exported
	last    decision
	lastAt  time.Time
	lastRes string
	// conflicts in a row; settleUntil: after an endpoint swap, a roam back to
	// the old endpoint is re-asserted, not a conflict.
	conflicts   int
	settleUntil time.Time
}

func newGroup(gc FailoverGroup) *group {
	g := &group{cfg: gc.withDefaults(), st: groupState{Active: Primary}}
	d := g.cfg
	probe := func(device, addr string) prober.Target {
		return prober.Target{Device: device, Address: netip.MustParseAddr(addr), Interval: d.Interval,
			Timeout: d.Timeout, Window: d.Window, Suspect: d.Suspect,
			Rule: prober.Rule{Losses: d.Losses, LossRatio: d.LossRatio, RTT: d.RTT}}
	}
	if g.endpoint() {
		g.peer, _ = wgtypes.ParseKey(gc.Peer)
		g.tunnel = probe(gc.Device, gc.Target)
		for i, p := range []Path{gc.Primary, gc.Backup} {
			g.targets[i] = probe(p.UnderlayDevice, p.UnderlayTarget)
			g.eps[i] = netip.MustParseAddrPort(p.Endpoint)
		}
		return g
	}
	for _, s := range gc.Prefixes {
		g.prefixes = append(g.prefixes, mustPrefix(s))
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

// sameChanges says whether a reloaded config of the group would own the
// same changes (routes, or the peer's endpoints).
func (g *group) sameChanges(ng FailoverGroup) bool {
	return ng.Mode == g.cfg.Mode && slices.Equal(ng.Prefixes, g.cfg.Prefixes) && ng.Backup == g.cfg.Backup &&
		ng.Primary == g.cfg.Primary && ng.Device == g.cfg.Device && ng.Peer == g.cfg.Peer && ng.RouteMetric == g.cfg.RouteMetric
}

// signalsLocked is both paths as the policy sees them. Route mode: each
// path's tunnel target. Endpoint mode: the path in use is the tunnel target
// (a fresh verdict since the last swap), the idle one its underlay target;
// a degraded tunnel is compared by its uplinks' underlay loss and RTT.
func (r *Remediator) signalsLocked(g *group) groupSignals {
	if !g.endpoint() {
		return groupSignals{primary: r.targetHealthLocked(g.targets[0], nil), backup: r.targetHealthLocked(g.targets[1], nil)}
	}
	active := pathIndex(g.st.Active)
	var paths [2]pathHealth
	paths[1-active] = r.targetHealthLocked(g.targets[1-active], nil)
	tunnel := r.targetHealthLocked(g.tunnel, &g.peer)
	if tunnel.DownBy == prober.DownByLossRatio || tunnel.DownBy == prober.DownByRTT {
		under := r.targetHealthLocked(g.targets[active], nil)
		tunnel.Loss, tunnel.RTT = under.Loss, under.RTT
	}
	paths[active] = tunnel
	return groupSignals{primary: paths[0], backup: paths[1]}
}

// targetHealthLocked is a target as the policy sees it: the prober's
// verdict; with no verdict yet, a stale handshake of the target's peer on a
// fresh device read makes it down (the session cannot carry data).
func (r *Remediator) targetHealthLocked(t prober.Target, peer *wgtypes.Key) pathHealth {
	var ph pathHealth
	if h, ok := r.prober.HealthOf(t.Key()); ok {
		ph = pathHealth{State: h.State, Since: h.Since, Reason: h.Reason, DownBy: h.DownBy, Loss: h.LossRatio, RTT: h.MedianRTT}
	}
	if ph.State != prober.StateUnknown || r.snap == nil || t.Device == "" {
		return ph
	}
	d, ok := r.snap.Device(t.Device)
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

// evaluateLocked runs the failover policy for one group and carries out,
// suppresses or skips its decision.
func (r *Remediator) evaluateLocked(ctx context.Context, g *group, now time.Time) {
	if r.cfg.Mode == ModeOff || !r.started {
		return
	}
	sig := r.signalsLocked(g)
	r.exportHealthLocked(g, sig)
	d := decideFailover(g.cfg, g.st, sig, now)
	if d.Action != "" && d.Suppressed == "" {
		r.preflightLocked(g, &d)
	}
	p := r.newPlan(ctx, d, &g.st.railState, limits{g.cfg.Damping, g.cfg.RateLimit}, &g.audited, now)
	p.act = func() error { return r.switchLocked(g, d.To) }
	p.commit = func(now time.Time) {
		if !g.st.Arrived.IsZero() && now.Sub(g.st.Arrived) < g.cfg.HoldDown { // left a path it switched to less than hold_down ago
			r.metrics.flaps.WithLabelValues(g.cfg.Name).Inc()
		}
		g.st.Active, g.st.Since, g.st.Arrived = d.To, now, now
		g.conflicts = 0
		if g.endpoint() {
			g.settleUntil = now.Add(settleFor)
			r.prober.ResetState(g.tunnel.Key()) // the old verdict is about the old path
		}
	}
	p.after = func(d decision, result string) {
		g.last, g.lastAt, g.lastRes = d, now, result
		r.exportActiveLocked(g)
	}
	execute(p)
}

// preflightLocked suppresses an action that cannot work: a device or peer of
// the group missing, or (switching a route group to the backup) an operator
// route our route's metric would not beat. It only reads, in dry-run too.
func (r *Remediator) preflightLocked(g *group, d *decision) {
	if g.endpoint() {
		if _, _, err := r.peers.peer(g.cfg.Device, g.peer); err != nil {
			d.Suppressed = SuppressDeviceMissing
			d.Reason = fmt.Sprintf("%v (check remediate.failover %q): %s", err, g.cfg.Name, d.Reason)
		}
		return
	}
	dev := g.cfg.Backup.Device
	if d.To == Primary {
		dev = g.cfg.Primary.Device
	}
	if !r.routes.deviceExists(dev) {
		d.Suppressed = SuppressDeviceMissing
		d.Reason = fmt.Sprintf("device %s does not exist (check remediate.failover %q): %s", dev, g.cfg.Name, d.Reason)
		return
	}
	if d.To != Backup {
		return
	}
	for _, p := range g.prefixes {
		rs, err := r.routes.list(p)
		if err != nil {
			continue // the add will say what is wrong
		}
		for _, rt := range rs {
			if rt.Protocol != r.cfg.RouteProtocol && rt.Metric <= g.cfg.RouteMetric {
				d.Suppressed = SuppressMetricTooHigh
				d.Reason = fmt.Sprintf("route %s has a metric <= route_metric %d, so ours would not carry the traffic: lower route_metric: %s",
					rt, g.cfg.RouteMetric, d.Reason)
				return
			}
		}
	}
}

// switchLocked carries a switch out: our routes added or deleted, or the
// peer's endpoint set. Routes are added all or none.
func (r *Remediator) switchLocked(g *group, to string) error {
	if g.endpoint() {
		if g.st.Original == "" {
			if ep, _, err := r.peers.peer(g.cfg.Device, g.peer); err == nil && ep.IsValid() {
				g.st.Original = ep.String()
			}
		}
		return r.peers.setEndpoint(g.cfg.Device, g.peer, g.eps[pathIndex(to)])
	}
	if to == Backup {
		return r.addRoutes(r.ownRoutes(g))
	}
	return r.delRoutes(r.ownRoutes(g))
}

// restoreLocked undoes the group's change (on exit, or when its config
// goes away): routes deleted, or the original endpoint set back.
func (r *Remediator) restoreLocked(ctx context.Context, g *group, why string) error {
	if g.st.Active != Backup {
		return nil
	}
	start := time.Now()
	var err error
	if g.endpoint() {
		ep := g.eps[0]
		if orig, perr := netip.ParseAddrPort(g.st.Original); perr == nil {
			ep = orig
		}
		err = r.peers.setEndpoint(g.cfg.Device, g.peer, ep)
	} else {
		err = r.delRoutes(r.ownRoutes(g))
	}
	d := decision{Policy: "failover", Group: g.cfg.Name, Action: ActionReturnToPrimary, From: Backup, To: Primary, Reason: why}
	r.audit.record(ctx, d, r.cfg.Mode, resultOf(err), start, err)
	if err == nil {
		g.st.Active, g.st.Since, g.st.Arrived = Primary, time.Now(), time.Time{}
		r.exportActiveLocked(g)
	}
	return err
}

// adoptLocked sets a group's active path from what the kernel shows: route
// mode, our routes for all its prefixes mean the backup; endpoint mode, the
// peer's endpoint. The state file only says what we believed.
func (r *Remediator) adoptLocked(ctx context.Context, g *group, mode Mode, now time.Time) {
	believed := g.st.Active
	if g.endpoint() {
		ep, _, err := r.peers.peer(g.cfg.Device, g.peer)
		switch {
		case err != nil:
			r.logger.Warn("cannot read the group's peer at start: assuming the primary", "group", g.cfg.Name, "err", err)
			g.st.Active = Primary
		case ep == g.eps[1]:
			g.st.Active = Backup
		case ep == g.eps[0]:
			g.st.Active = Primary
		default:
			g.st.Active = Primary
			r.logger.Warn("the peer's endpoint is neither the primary's nor the backup's: left alone until a decision", "group", g.cfg.Name,
				"endpoint", ep.String(), "primary", g.eps[0].String(), "backup", g.eps[1].String())
		}
	} else {
		r.adoptRoutesLocked(ctx, g, mode)
	}
	if believed != g.st.Active && believed != "" {
		r.logger.Warn("the kernel disagrees with the state file; following the kernel", "group", g.cfg.Name,
			"state_file_active", believed, "kernel_active", g.st.Active)
	}
	if believed != g.st.Active || g.st.Since.IsZero() {
		g.st.Since, g.st.Arrived = now, time.Time{}
	}
}

func (r *Remediator) adoptRoutesLocked(ctx context.Context, g *group, mode Mode) {
	var have, missing []Route
	for _, p := range g.prefixes {
		want := r.ownRoute(g, p)
		rs, err := r.routes.list(p)
		if err != nil {
			r.logger.Error("cannot read routes at start: assuming the primary carries the group", "group", g.cfg.Name, "err", err)
			g.st.Active = Primary
			return
		}
		if slices.Contains(rs, want) {
			have = append(have, want)
		} else {
			missing = append(missing, want)
		}
	}
	switch {
	case len(have) == 0:
		g.st.Active = Primary
	case len(missing) == 0:
		g.st.Active = Backup
	default:
		g.st.Active = Backup
		if mode == ModeAuto { // a switch interrupted by a crash: finish it, so the group is in one state
			start := time.Now()
			err := r.addRoutes(missing)
			d := decision{Policy: "failover", Group: g.cfg.Name, Action: ActionSwitchToBackup, From: Backup, To: Backup,
				Reason: fmt.Sprintf("completing a switch interrupted before this start: %d of %d prefixes were on the backup", len(have), len(g.prefixes))}
			r.audit.record(ctx, d, mode, resultOf(err), start, err)
		}
	}
}

// settleLocked re-asserts a swapped endpoint that roaming pulled back to the
// old one: packets of the far side still on their way over the old uplink
// make WireGuard roam back once; the far side follows our next packet.
func (r *Remediator) settleLocked(ctx context.Context, now time.Time) {
	if r.cfg.Mode != ModeAuto {
		return
	}
	for _, g := range r.groups {
		if !g.endpoint() || now.After(g.settleUntil) {
			continue
		}
		active := pathIndex(g.st.Active)
		ep, _, err := r.peers.peer(g.cfg.Device, g.peer)
		if err != nil || ep != g.eps[1-active] {
			continue
		}
		if err := r.peers.setEndpoint(g.cfg.Device, g.peer, g.eps[active]); err != nil {
			r.logger.Warn("re-asserting the endpoint after a roam back failed", "group", g.cfg.Name, "err", err)
			continue
		}
		r.prober.ResetState(g.tunnel.Key())
		r.logger.Debug("the far side's packets on the old uplink roamed the peer back: endpoint set again", "group", g.cfg.Name,
			"endpoint", g.eps[active].String())
	}
}

// reconcileLocked checks that what we own is there and in force. Something
// else deleting or overriding it is a conflict: counted, logged, and backed
// off from, never fought.
func (r *Remediator) reconcileLocked(ctx context.Context, now time.Time) {
	if r.cfg.Mode != ModeAuto || !r.started {
		return
	}
	for _, g := range r.groups {
		var problems []string
		var nowActive string
		switch {
		case g.endpoint():
			if now.Before(g.settleUntil) {
				continue
			}
			ep, _, err := r.peers.peer(g.cfg.Device, g.peer)
			if err != nil {
				continue // device or peer gone: the next decision's preflight says so
			}
			if want := g.eps[pathIndex(g.st.Active)]; ep != want && g.st.Switches > 0 {
				problems = append(problems, fmt.Sprintf("the peer's endpoint is %s, not %s", ep, want))
				if ep == g.eps[1-pathIndex(g.st.Active)] {
					nowActive = map[string]string{Primary: Backup, Backup: Primary}[g.st.Active]
				}
			}
		case g.st.Active == Backup:
			gone := 0
			for _, p := range g.prefixes {
				want := r.ownRoute(g, p)
				rs, err := r.routes.list(p)
				if err != nil {
					r.logger.Warn("cannot read routes to check ours", "group", g.cfg.Name, "err", err)
					return
				}
				if !slices.Contains(rs, want) {
					gone++
					problems = append(problems, fmt.Sprintf("our route %s was deleted or replaced", want))
				}
				for _, rt := range rs {
					if rt != want && rt.Protocol != r.cfg.RouteProtocol && rt.Metric <= want.Metric {
						problems = append(problems, fmt.Sprintf("route %s overrides ours", rt))
					}
				}
			}
			if gone == len(g.prefixes) { // the kernel routes the group via the primary again
				nowActive = Primary
			}
		}
		if len(problems) == 0 {
			continue
		}
		g.conflicts++
		r.metrics.conflicts.WithLabelValues(g.cfg.Name).Inc()
		if nowActive != "" {
			g.st.Active, g.st.Since, g.st.Arrived = nowActive, now, time.Time{}
			r.exportActiveLocked(g)
		}
		g.st.railState = backoff(g.st.railState, "a conflict with another manager", now)
		r.logger.Warn("conflict: something else changed what wgpulse owns; backing off instead of fighting",
			"group", g.cfg.Name, "conflict", strings.Join(problems, "; "), "active", g.st.Active, "backoff", time.Duration(g.st.Backoff),
			"hint", "another manager (systemd-networkd without ManageForeignRoutes=no, NetworkManager, a routing daemon, wg set) may change what it did not make")
		r.saveLocked()
	}
}

func (r *Remediator) ownRoute(g *group, p netip.Prefix) Route {
	return Route{Prefix: p, Device: g.cfg.Backup.Device, Metric: g.cfg.RouteMetric, Protocol: r.cfg.RouteProtocol}
}

func (r *Remediator) ownRoutes(g *group) []Route {
	out := make([]Route, len(g.prefixes))
	for i, p := range g.prefixes {
		out[i] = r.ownRoute(g, p)
	}
	return out
}

// addRoutes adds all or none: on a failure the routes added so far are
// removed again.
func (r *Remediator) addRoutes(rs []Route) error {
	for i, rt := range rs {
		if err := r.routes.add(rt); err != nil {
			for _, done := range rs[:i] {
				if derr := r.routes.del(done); derr != nil {
					err = errors.Join(err, fmt.Errorf("undoing: %w", derr))
				}
			}
			return err
		}
	}
	return nil
}

func (r *Remediator) delRoutes(rs []Route) error {
	var errs []error
	for _, rt := range rs {
		errs = append(errs, r.routes.del(rt))
	}
	return errors.Join(errs...)
}

func (r *Remediator) exportHealthLocked(g *group, sig groupSignals) {
	for i, ph := range []pathHealth{sig.primary, sig.backup} {
		if ph.State == g.health[i].State && ph.Reason == g.health[i].Reason {
			continue
		}
		if ph.State != g.health[i].State {
			r.logger.Info("failover path health changed", "group", g.cfg.Name, "path", paths[i],
				"from", g.health[i].State.String(), "to", ph.State.String(), "reason", ph.Reason)
		}
		g.health[i] = ph
		r.metrics.healthy.WithLabelValues(g.cfg.Name, paths[i]).Set(b2f(ph.State == prober.StateUp))
		for _, s := range states {
			r.metrics.pathState.WithLabelValues(g.cfg.Name, paths[i], s).Set(b2f(s == ph.State.String()))
		}
	}
}

func (r *Remediator) exportActiveLocked(g *group) {
	for _, p := range paths {
		r.metrics.active.WithLabelValues(g.cfg.Name, p).Set(b2f(g.st.Active == p))
	}
}
