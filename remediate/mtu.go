package remediate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
)

// The MTU policy makes inner packets fit the path the prober measured.
//
// Why per destination: lowering a whole device lowers every peer on it for
// the sake of one path, and it caps the prober's own DF probes at the new
// MTU, so the search could never see the path recover. A route MTU on the
// affected peer's routed prefixes (an owned route, one metric below the
// operator's, never covering the probed tunnel address) fixes exactly that
// peer's traffic and leaves the measurement free. The device MTU is the
// fallback when the peer has no routed prefix to carry it.

// MTUConfig is the `remediate.mtu:` section.
type MTUConfig struct {
	Enabled bool `yaml:"enabled"`
	// Devices are the WireGuard devices whose peers the policy may fit.
	Devices []string `yaml:"devices"`
	// Margin is subtracted from the measured path MTU (bytes).
	Margin int `yaml:"margin"`
	// Min is the lowest MTU set (default 1280, the IPv6 minimum; IPv6
	// prefixes never go below 1280).
	Min int `yaml:"min"`
	// Max is the highest MTU set (0 = the device's MTU when first seen):
	// reaching it removes the policy's change.
	Max int `yaml:"max"`
	// HoldDown: a higher measured MTU must hold this long before the MTU is
	// raised again.
	HoldDown time.Duration `yaml:"hold_down"`
	// BelowMin is what to do when the path MTU is below the prober's search
	// floor: "ignore" (default) or "min" (set Min, when Min is below the
	// floor that failed).
	BelowMin  string    `yaml:"below_min"`
	RateLimit RateLimit `yaml:"rate_limit"`
}

// DefaultMTUConfig is the section's defaults: off.
func DefaultMTUConfig() MTUConfig {
	return MTUConfig{Min: 1280, HoldDown: 10 * time.Minute, BelowMin: "ignore", RateLimit: RateLimit{Burst: 6, Per: time.Hour}}
}

func (c MTUConfig) validate(fe fieldFunc) {
	if c.Enabled && len(c.Devices) == 0 {
		fe("mtu.devices", "required when mtu.enabled: the WireGuard devices whose peers the policy may fit")
	}
	for i, d := range c.Devices {
		if d == "" || len(d) > 15 {
			fe(fmt.Sprintf("mtu.devices[%d]", i), "must be a device name of 1-15 bytes, got %q", d)
		}
	}
	if c.Min < 576 || c.Min > 9000 {
		fe("mtu.min", "must be 576..9000 (1280 is the IPv6 minimum), got %d", c.Min)
	}
	if c.Max != 0 && (c.Max < c.Min || c.Max > 65535) {
		fe("mtu.max", "must be 0 (the device's MTU) or min..65535, got %d", c.Max)
	}
	if c.Margin < 0 || c.Margin > 500 {
		fe("mtu.margin", "must be 0..500 bytes, got %d", c.Margin)
	}
	if c.HoldDown < 0 || c.HoldDown > 24*time.Hour {
		fe("mtu.hold_down", "must be 0..24h, got %s", c.HoldDown)
	}
	if c.BelowMin != "ignore" && c.BelowMin != "min" {
		fe("mtu.below_min", `must be "ignore" or "min", got %q`, c.BelowMin)
	}
	if c.RateLimit.Burst < 1 || c.RateLimit.Per <= 0 {
		fe("mtu.rate_limit", "want burst >= 1 and per > 0 (default 6 per 1h), got %+v", c.RateLimit)
	}
}

// Actions of the MTU policy.
const (
	ActionLowerMTU = "lower_mtu"
	ActionRaiseMTU = "raise_mtu"
)

// mtuState is what the policy remembers of one peer, persisted.
type mtuState struct {
	Device     string    `json:"device"`
	Peer       string    `json:"peer"` // public key
	Applied    int       `json:"applied"`
	Mechanism  string    `json:"mechanism,omitempty"` // route or device
	Routes     []Route   `json:"routes,omitempty"`    // ours, with Applied as their MTU
	Original   int       `json:"original_device_mtu,omitempty"`
	Max        int       `json:"max"` // the ceiling: mtu.max, or the device's MTU when first seen
	Since      time.Time `json:"since"`
	RaiseSince time.Time `json:"raise_since,omitzero"`
	railState
}

type mtuUnit struct {
	st      mtuState
	name    string // the peer's friendly name
	audited string
	targets []string // the peer's probe target keys on the device
	v6      bool     // a prefix of the peer is IPv6: never below 1280
}

// peerKey is a per-peer policy's unit key: device/public key.
func peerKey(device, peer string) string { return device + "/" + peer }

// mtuMeasure is what the prober says of a peer's path MTU.
type mtuMeasure struct {
	known bool
	pmtu  int // largest inner IP packet that passes
	below int // with below: the floor that did not pass
}

// decideMTU is the MTU policy: (config, unit state, measurement, now) ->
// decision and the MTU wanted. It touches nothing.
func decideMTU(c MTUConfig, st mtuState, m mtuMeasure, v6 bool, now time.Time) (decision, int, time.Time) {
	d := decision{Policy: "mtu", Group: st.Device, Peer: st.Peer}
	raiseSince := st.RaiseSince
	if !m.known {
		return d, 0, raiseSince // unknown is never a reason to act
	}
	floor := c.Min
	if v6 {
		floor = max(floor, 1280)
	}
	pmtu, why := m.pmtu, fmt.Sprintf("path MTU measured %d", m.pmtu)
	if m.below > 0 {
		pmtu, why = floor, fmt.Sprintf("path MTU below the prober's floor %d (below_min: min)", m.below)
		if floor >= m.below {
			d.Action, d.Suppressed = ActionLowerMTU, SuppressBelowFloor
			d.Reason = fmt.Sprintf("path MTU below the prober's floor %d, and mtu.min %d is not below it: lower mtu.min (IPv4 allows 576) or fix the path", m.below, floor)
			return d, 0, raiseSince
		}
	}
	if pmtu-c.Margin < floor && m.below == 0 {
		d.Action, d.Suppressed = ActionLowerMTU, SuppressBelowFloor
		d.Reason = fmt.Sprintf("%s, margin %d: below mtu.min %d, so no MTU the policy may set makes packets fit: lower mtu.min (IPv4 allows 576; IPv6 needs 1280) or fix the path", why, c.Margin, floor)
		return d, 0, raiseSince
	}
	want := min(max(pmtu-c.Margin, floor), st.Max)
	effective := st.Max
	if st.Applied > 0 {
		effective = st.Applied
	}
	if st.Mechanism == "device" && pmtu >= st.Applied {
		// A lowered device caps the search at its own MTU: it cannot see the
		// path recover. After hold_down it tries the full MTU again and
		// searches at once; a path still bad is lowered again.
		want, why = st.Max, fmt.Sprintf("the lowered device MTU %d caps the search (it passes)", st.Applied)
	}
	d.From, d.To = fmt.Sprint(effective), fmt.Sprint(want)
	switch {
	case want < effective:
		d.Action, d.Escape = ActionLowerMTU, true // packets above it vanish: never damped
		d.Reason = fmt.Sprintf("%s: inner packets above it are lost; MTU %d (margin %d, floor %d)", why, want, c.Margin, floor)
		return d, want, time.Time{}
	case want > effective && st.Applied > 0:
		if raiseSince.IsZero() {
			raiseSince = now
		}
		d.Action = ActionRaiseMTU
		if held := now.Sub(raiseSince); held < c.HoldDown {
			d.Suppressed = SuppressHoldDown
			d.Reason = fmt.Sprintf("%s, above the MTU in force %d: waiting for hold_down %s before raising", why, effective, c.HoldDown)
		} else {
			d.Reason = fmt.Sprintf("%s for %s (hold_down %s): raising to %d", why, held.Round(time.Second), c.HoldDown, want)
		}
		return d, want, raiseSince
	}
	return decision{Policy: "mtu", Group: st.Device, Peer: st.Peer}, 0, time.Time{}
}

// evaluateMTULocked runs the MTU policy for every peer of the devices in
// scope, from the latest snapshot and the prober's path MTU results.
func (r *Remediator) evaluateMTULocked(ctx context.Context, now time.Time) {
	c := r.cfg.MTU
	if r.cfg.Mode == ModeOff || !c.Enabled || !r.started || r.snap == nil {
		return
	}
	seen := map[string]bool{}
	for _, dev := range c.Devices {
		d, ok := r.snap.Device(dev)
		if !ok || d.Stale {
			continue // unknown: a failed read is never a reason to act
		}
		for _, p := range d.Peers {
			u := r.mtuUnitLocked(d, p)
			seen[peerKey(d.Name, p.PublicKey)] = true
			r.evaluateMTUUnitLocked(ctx, u, now)
		}
	}
	for k, u := range r.mtus { // peers gone from read devices, with no change of ours left
		if d, ok := r.snap.Device(u.st.Device); ok && !d.Stale && !seen[k] && u.st.Applied == 0 {
			delete(r.mtus, k)
		}
	}
}

func (r *Remediator) mtuUnitLocked(d *collector.Device, p collector.Peer) *mtuUnit {
	key := peerKey(d.Name, p.PublicKey)
	u := r.mtus[key]
	if u == nil {
		u = &mtuUnit{st: mtuState{Device: d.Name, Peer: p.PublicKey, Max: r.cfg.MTU.Max}}
		if u.st.Max == 0 {
			u.st.Max = d.MTU
		}
		r.mtus[key] = u
	}
	if u.st.Max == 0 {
		u.st.Max = d.MTU
	}
	u.name, u.targets, u.v6 = p.Name, nil, false
	for _, a := range p.AllowedIPs {
		u.v6 = u.v6 || a.Addr().Is6()
		if a.IsSingleIP() {
			u.targets = append(u.targets, prober.Target{Device: d.Name, Address: a.Addr()}.Key())
		}
	}
	return u
}

func (r *Remediator) measureLocked(u *mtuUnit) mtuMeasure {
	var m mtuMeasure
	for _, k := range u.targets {
		h, ok := r.prober.HealthOf(k)
		if !ok {
			continue
		}
		// While the prober searches again, its last result still stands.
		complete := h.PMTUState == "search_complete" || h.PMTUState == "searching"
		switch {
		case complete && h.PathMTU > 0:
			if !m.known || m.below > 0 || h.PathMTU < m.pmtu {
				m = mtuMeasure{known: true, pmtu: h.PathMTU}
			}
		case (h.PMTUState == "below_min" || complete) && h.PathMTUBelow > 0 && r.cfg.MTU.BelowMin == "min" && !m.known:
			m = mtuMeasure{known: true, below: h.PathMTUBelow}
		}
	}
	return m
}

func (r *Remediator) evaluateMTUUnitLocked(ctx context.Context, u *mtuUnit, now time.Time) {
	if u.st.Max == 0 {
		return // the device's MTU is not known (another namespace): nothing to fit against
	}
	d, want, raiseSince := decideMTU(r.cfg.MTU, u.st, r.measureLocked(u), u.v6, now)
	u.st.RaiseSince = raiseSince
	d.Peer = peerLabel(u.st.Peer, u.name)
	p := r.newPlan(ctx, d, &u.st.railState, limits{rate: r.cfg.MTU.RateLimit}, &u.audited, now)
	var next mtuState
	p.act = func() error {
		var err error
		next, err = r.applyMTU(u, want)
		return err
	}
	p.commit = func(now time.Time) {
		if r.cfg.Mode == ModeAuto {
			u.st.Applied, u.st.Mechanism, u.st.Routes, u.st.Original = next.Applied, next.Mechanism, next.Routes, next.Original
		} else { // dry-run: remember what auto would have in force
			u.st.Applied = want
			if want >= u.st.Max {
				u.st.Applied = 0
			}
		}
		u.st.Since, u.st.RaiseSince = now, time.Time{}
		r.exportMTULocked(u)
	}
	execute(p)
}

// applyMTU puts want in force for the peer (want >= Max removes the
// policy's change) and returns the unit's new state.
func (r *Remediator) applyMTU(u *mtuUnit, want int) (mtuState, error) {
	st := u.st
	if want >= st.Max {
		return r.undoMTU(u)
	}
	if st.Mechanism != "device" {
		desired, err := r.mtuRoutes(u, want)
		if err != nil {
			return st, err
		}
		if len(desired) > 0 {
			for _, rt := range desired {
				op := r.routes.add
				if slices.ContainsFunc(st.Routes, func(o Route) bool { return o.Prefix == rt.Prefix && o.Metric == rt.Metric }) {
					op = r.routes.replace // ours already: change its MTU in place
				}
				if err := op(rt); err != nil {
					return st, err
				}
			}
			for _, old := range st.Routes {
				if !slices.ContainsFunc(desired, func(n Route) bool { return n.Prefix == old.Prefix && n.Metric == old.Metric }) {
					if err := r.routes.del(old); err != nil {
						return st, err
					}
				}
			}
			st.Applied, st.Mechanism, st.Routes = want, "route", desired
			return st, nil
		}
	}
	// The fallback: the whole device. Routes of ours left from before (the
	// operator's routes they sat below are gone) go first.
	for _, old := range st.Routes {
		if err := r.routes.del(old); err != nil {
			return st, err
		}
	}
	st.Routes = nil
	if st.Original == 0 {
		cur, err := r.routes.linkMTU(st.Device)
		if err != nil {
			return st, err
		}
		st.Original = cur
	}
	if err := r.routes.setLinkMTU(st.Device, want); err != nil {
		return st, err
	}
	for _, k := range u.targets {
		r.prober.ResearchPMTU(k) // the search's ceiling moved with the device
	}
	st.Applied, st.Mechanism, st.Routes = want, "device", nil
	return st, nil
}

// undoMTU removes the policy's change of a peer.
func (r *Remediator) undoMTU(u *mtuUnit) (mtuState, error) {
	st := u.st
	switch st.Mechanism {
	case "route":
		var errs []error
		for _, rt := range st.Routes {
			errs = append(errs, r.routes.del(rt))
		}
		if err := errors.Join(errs...); err != nil {
			return st, err
		}
	case "device":
		if err := r.routes.setLinkMTU(st.Device, st.Original); err != nil {
			return st, err
		}
		for _, k := range u.targets {
			r.prober.ResearchPMTU(k)
		}
	}
	st.Applied, st.Mechanism, st.Routes, st.Original = 0, "", nil, 0
	return st, nil
}

// mtuRoutes returns the routes that carry want for the peer: for every
// operator route on the device to a prefix inside the peer's AllowedIPs that
// does not cover its probed tunnel address (the search must stay free), an
// owned route one metric below it with the MTU set.
func (r *Remediator) mtuRoutes(u *mtuUnit, want int) ([]Route, error) {
	d, ok := r.snap.Device(u.st.Device)
	if !ok {
		return nil, fmt.Errorf("device %s: %w", u.st.Device, ErrNoDevice)
	}
	var allowed []netip.Prefix
	var probed []netip.Addr
	for _, p := range d.Peers {
		if p.PublicKey == u.st.Peer {
			allowed = p.AllowedIPs
			for _, a := range p.AllowedIPs {
				if a.IsSingleIP() {
					probed = append(probed, a.Addr())
				}
			}
		}
	}
	var out []Route
	for _, a := range allowed {
		if a.IsSingleIP() {
			continue
		}
		rs, err := r.routes.list(a)
		if err != nil {
			return nil, err
		}
		for _, rt := range rs {
			if rt.Device != u.st.Device || rt.Protocol == r.cfg.RouteProtocol || rt.Metric < 1 ||
				slices.ContainsFunc(probed, rt.Prefix.Contains) {
				continue
			}
			mine := Route{Prefix: rt.Prefix, Device: rt.Device, Metric: rt.Metric - 1, Protocol: r.cfg.RouteProtocol, MTU: want}
			if slices.ContainsFunc(rs, func(o Route) bool { return o.Metric == mine.Metric && o.Protocol != r.cfg.RouteProtocol }) {
				continue // that metric is the operator's: no room below their route
			}
			if !slices.ContainsFunc(out, func(o Route) bool { return o.Prefix == mine.Prefix }) {
				out = append(out, mine)
			}
		}
	}
	return out, nil
}

// reconcileMTULocked checks that the policy's changes are still in force.
func (r *Remediator) reconcileMTULocked(now time.Time) {
	for _, u := range r.mtus {
		if u.st.Applied == 0 {
			continue
		}
		var problem string
		switch u.st.Mechanism {
		case "route":
			for _, rt := range u.st.Routes {
				rs, err := r.routes.list(rt.Prefix)
				if err != nil {
					return
				}
				if !slices.Contains(rs, rt) {
					problem = fmt.Sprintf("our route %s was deleted or changed", rt)
				}
			}
		case "device":
			if cur, err := r.routes.linkMTU(u.st.Device); err == nil && cur != u.st.Applied {
				problem = fmt.Sprintf("the MTU of %s is %d, not the %d we set", u.st.Device, cur, u.st.Applied)
			}
		}
		if problem == "" {
			continue
		}
		r.metrics.conflicts.WithLabelValues(u.st.Device).Inc()
		u.st.railState = backoff(u.st.railState, "a conflict with another manager", now)
		u.st.Applied, u.st.Mechanism, u.st.Routes = 0, "", nil // not ours any more
		r.exportMTULocked(u)
		r.logger.Warn("conflict: something else changed an MTU wgpulse set; backing off instead of fighting",
			"policy", "mtu", "device", u.st.Device, "peer", peerLabel(u.st.Peer, u.name), "conflict", problem, "backoff", time.Duration(u.st.Backoff))
		r.saveLocked()
	}
}

// adoptMTULocked keeps the saved changes the kernel still shows.
func (r *Remediator) adoptMTULocked(saved map[string]mtuState) {
	for key, st := range saved {
		if !slices.Contains(r.cfg.MTU.Devices, st.Device) || !r.cfg.MTU.Enabled {
			if st.Applied > 0 {
				r.logger.Warn("an MTU change of wgpulse outside the MTU policy's scope: left alone; remove it by hand",
					"device", st.Device, "peer", st.Peer, "mechanism", st.Mechanism, "routes", fmt.Sprint(st.Routes), "original_device_mtu", st.Original)
			}
			continue
		}
		u := &mtuUnit{st: st}
		ok := true
		switch st.Mechanism {
		case "route":
			for _, rt := range st.Routes {
				rs, err := r.routes.list(rt.Prefix)
				ok = ok && err == nil && slices.Contains(rs, rt)
			}
		case "device":
			cur, err := r.routes.linkMTU(st.Device)
			ok = err == nil && cur == st.Applied
		}
		if st.Applied > 0 && !ok {
			r.logger.Warn("an MTU change in the state file is not in the kernel any more: forgotten", "device", st.Device, "peer", st.Peer)
			u.st.Applied, u.st.Mechanism, u.st.Routes = 0, "", nil
		}
		r.mtus[key] = u
		r.exportMTULocked(u)
	}
}

// restoreMTULocked undoes every MTU change (restore_on_exit, or the policy
// switched off on reload).
func (r *Remediator) restoreMTULocked(ctx context.Context, why string, keep func(*mtuUnit) bool) error {
	var errs []error
	for _, u := range r.mtus {
		if u.st.Applied == 0 || (keep != nil && keep(u)) {
			continue
		}
		start := time.Now()
		next, err := r.undoMTU(u)
		d := decision{Policy: "mtu", Group: u.st.Device, Peer: peerLabel(u.st.Peer, u.name), Action: ActionRaiseMTU,
			From: fmt.Sprint(u.st.Applied), To: fmt.Sprint(u.st.Max), Reason: why}
		r.audit.record(ctx, d, r.cfg.Mode, resultOf(err), start, err)
		if err == nil {
			u.st.Applied, u.st.Mechanism, u.st.Routes, u.st.Original = next.Applied, next.Mechanism, next.Routes, next.Original
			r.exportMTULocked(u)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (r *Remediator) exportMTULocked(u *mtuUnit) {
	l := prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer, "name": u.name}
	r.metrics.mtu.DeletePartialMatch(prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer})
	if u.st.Applied > 0 {
		l["mechanism"] = u.st.Mechanism
		r.metrics.mtu.With(l).Set(float64(u.st.Applied))
	}
}

// peerLabel names a peer in audit lines: its friendly name and key.
func peerLabel(key, name string) string {
	if name == "" {
		return key
	}
	return name + " (" + key + ")"
}

func mtuRoutesOf(units map[string]*mtuUnit) []Route {
	var out []Route
	for _, u := range units {
		out = append(out, u.st.Routes...)
	}
	slices.SortFunc(out, func(a, b Route) int { return strings.Compare(a.String(), b.String()) })
	return out
}
