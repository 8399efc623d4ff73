// Package mtu is the MTU policy: it makes inner packets fit the path the
// prober measured.
//
// Why per destination: lowering a whole device lowers every peer on it for
// the sake of one path, and it caps the prober's own DF probes at the new
// MTU, so the search could never see the path recover. A route MTU on the
// affected peer's routed prefixes (an owned route, one metric below the
// operator's, never covering the probed tunnel address) fixes exactly that
// peer's traffic and leaves the measurement free. The device MTU is the
// fallback when the peer has no routed prefix to carry it, and only on a
// device with that one peer unless shared_device_fallback says otherwise:
// the device MTU has one owner, and a search capped by it is not a new
// measurement of anyone's path, so one bad path cannot cascade.
package mtu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// Config is the `remediate.mtu:` section.
type Config struct {
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
	BelowMin string `yaml:"below_min"`
	// SharedDeviceFallback lets the whole-device fallback lower a device
	// with more than one peer (every peer's MTU, for one path); off by
	// default.
	SharedDeviceFallback bool                `yaml:"shared_device_fallback"`
	RateLimit            remediate.RateLimit `yaml:"rate_limit"`
}

// DefaultConfig is the section's defaults: off.
func DefaultConfig() Config {
	return Config{Min: 1280, HoldDown: 10 * time.Minute, BelowMin: "ignore", RateLimit: remediate.RateLimit{Burst: 6, Per: time.Hour}}
}

// Validate names the offending field ("mtu.devices[0]").
func (c Config) Validate(fe remediate.FieldFunc) {
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

// Why a wanted MTU change was not taken, besides the core's rails.
const (
	// The peer has no routed prefix of its own and its device has other
	// peers: the fallback would lower them all (shared_device_fallback).
	SuppressSharedDevice = "shared_device"
	// Another peer's fallback owns the device MTU.
	SuppressDeviceOwned = "device_owned"
)

// held is a change the policy will not make, with its reason code.
type held struct{ code, why string }

func (h *held) Error() string { return h.why }

// mtuState is what the policy remembers of one peer, persisted.
type mtuState struct {
	Device     string            `json:"device"`
	Peer       string            `json:"peer"` // public key
	Applied    int               `json:"applied"`
	Mechanism  string            `json:"mechanism,omitempty"` // route or device
	Routes     []remediate.Route `json:"routes,omitempty"`    // ours, with Applied as their MTU
	Original   int               `json:"original_device_mtu,omitempty"`
	Max        int               `json:"max"` // the ceiling: mtu.max, or the device's MTU when first seen
	Since      time.Time         `json:"since"`
	RaiseSince time.Time         `json:"raise_since,omitzero"`
	remediate.Rails
}

type mtuUnit struct {
	st      mtuState
	name    string // the peer's friendly name
	episode remediate.Episode
	targets []string // the peer's probe target keys on the device
	v6      bool     // a prefix of the peer is IPv6: never below 1280
}

// mtuMeasure is what the prober says of a peer's path MTU.
type mtuMeasure struct {
	known bool
	pmtu  int // largest inner IP packet that passes
	below int // with below: the floor that did not pass
}

// decideMTU is the MTU policy: (config, unit state, measurement, now) ->
// decision and the MTU wanted. It touches nothing.
func decideMTU(c Config, st mtuState, m mtuMeasure, v6 bool, now time.Time) (remediate.Decision, int, time.Time) {
	d := remediate.Decision{Group: st.Device, Peer: st.Peer}
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
			d.Action, d.Suppressed = ActionLowerMTU, remediate.SuppressBelowFloor
			d.Reason = fmt.Sprintf("path MTU below the prober's floor %d, and mtu.min %d is not below it: lower mtu.min (IPv4 allows 576) or fix the path", m.below, floor)
			return d, 0, raiseSince
		}
	}
	if pmtu-c.Margin < floor && m.below == 0 {
		d.Action, d.Suppressed = ActionLowerMTU, remediate.SuppressBelowFloor
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
		d.Action, d.Escape, d.Code = ActionLowerMTU, true, "path_mtu_measured" // packets above it vanish: never damped
		d.Reason = fmt.Sprintf("%s: inner packets above it are lost; MTU %d (margin %d, floor %d)", why, want, c.Margin, floor)
		return d, want, time.Time{}
	case want > effective && st.Applied > 0:
		if raiseSince.IsZero() {
			raiseSince = now
		}
		d.Action, d.Code = ActionRaiseMTU, "path_mtu_recovered"
		if held := now.Sub(raiseSince); held < c.HoldDown {
			d.Suppressed = remediate.SuppressHoldDown
			d.Reason = fmt.Sprintf("%s, above the MTU in force %d: waiting for hold_down %s before raising", why, effective, c.HoldDown)
		} else {
			d.Reason = fmt.Sprintf("%s for %s (hold_down %s): raising to %d", why, held.Round(time.Second), c.HoldDown, want)
		}
		return d, want, raiseSince
	}
	return remediate.Decision{Group: st.Device, Peer: st.Peer}, 0, time.Time{}
}

// Name is the policy's name in audit lines, metrics and the state file.
const Name = "mtu"

var (
	actions = []string{ActionLowerMTU, ActionRaiseMTU}
	reasons = []string{remediate.SuppressBelowFloor, remediate.SuppressHoldDown, SuppressSharedDevice, SuppressDeviceOwned}
)

// Policy is the MTU policy over the peers of its devices.
type Policy struct {
	c     Config
	units map[string]*mtuUnit // device/public key -> unit
	// foreign are changes of ours in the state file that the config no
	// longer covers: kept in the state file, left alone.
	foreign map[string]mtuState
	proto   int
	m       *prometheus.GaugeVec
}

var (
	_ remediate.Policy     = (*Policy)(nil)
	_ remediate.V1Migrator = (*Policy)(nil)
)

// New returns the policy for its section.
func New(c Config) *Policy {
	return &Policy{c: c, units: map[string]*mtuUnit{}, foreign: map[string]mtuState{}, m: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wgpulse_remediation_mtu_bytes",
		Help: "The MTU the MTU policy put in force for a peer (route: on its routed prefixes; device: the whole device); absent when none.",
	}, []string{"device", "public_key", "name", "mechanism"})}
}

// Name implements remediate.Policy.
func (p *Policy) Name() string { return Name }

// Every implements remediate.Policy: the peers are looked at every second.
func (p *Policy) Every() time.Duration { return time.Second }

// Targets implements remediate.Policy: the prober's own targets (a
// peer's tunnel address) carry the path MTU.
func (p *Policy) Targets() []prober.Target { return nil }

// WantsResults implements remediate.Policy.
func (p *Policy) WantsResults() bool { return false }

// Observe implements remediate.Policy: the policy decides on its tick.
func (p *Policy) Observe(remediate.Env, remediate.Signal) bool { return false }

func (p *Policy) inScope(device string) bool {
	return p.c.Enabled && slices.Contains(p.c.Devices, device)
}

// Decide implements remediate.Policy: every peer of the devices in scope,
// from the latest snapshot and the prober's path MTU results.
func (p *Policy) Decide(env remediate.Env) []remediate.Plan {
	if !p.c.Enabled || env.Snapshot == nil {
		return nil
	}
	var plans []remediate.Plan
	seen := map[string]bool{}
	for _, dev := range p.c.Devices {
		d, ok := env.Snapshot.Device(dev)
		if !ok || d.Stale {
			continue // unknown: a failed read is never a reason to act
		}
		for _, pr := range d.Peers {
			u := p.unit(d, pr)
			seen[remediate.PeerKey(d.Name, pr.PublicKey)] = true
			if u.st.Max == 0 {
				continue // the device's MTU is not known (another namespace): nothing to fit against
			}
			plans = append(plans, p.evaluate(env, u))
		}
	}
	for k, u := range p.units { // peers gone from read devices, with no change of ours left
		if d, ok := env.Snapshot.Device(u.st.Device); ok && !d.Stale && !seen[k] && u.st.Applied == 0 {
			delete(p.units, k)
		}
	}
	return plans
}

func (p *Policy) unit(d *collector.Device, pr collector.Peer) *mtuUnit {
	key := remediate.PeerKey(d.Name, pr.PublicKey)
	u := p.units[key]
	if u == nil {
		u = &mtuUnit{st: mtuState{Device: d.Name, Peer: pr.PublicKey, Max: p.c.Max}}
		p.units[key] = u
	}
	if u.st.Max == 0 {
		u.st.Max = d.MTU
	}
	u.name, u.targets, u.v6 = pr.Name, nil, false
	for _, a := range pr.AllowedIPs {
		u.v6 = u.v6 || a.Addr().Is6()
		if a.IsSingleIP() {
			u.targets = append(u.targets, prober.Target{Device: d.Name, Address: a.Addr()}.Key())
		}
	}
	return u
}

func (p *Policy) measure(env remediate.Env, u *mtuUnit) mtuMeasure {
	var m mtuMeasure
	for _, k := range u.targets {
		h, ok := env.Prober.HealthOf(k)
		if !ok {
			continue
		}
		// While the prober searches again, its last result still stands.
		complete := h.PMTUState == "search_complete" || h.PMTUState == "searching"
		// A search bounded by a device MTU below the full one passed all it
		// could try. With the cap ours (this peer's fallback), it passes what
		// is in force, and the decision knows the cap hides the path; any
		// other cap (another peer's fallback, ours since raised) says nothing
		// of this path: unknown.
		if capped := h.PathMTUCeiling > 0 && h.PathMTU >= h.PathMTUCeiling && h.PathMTUCeiling < u.st.Max; complete && capped {
			if u.st.Mechanism == "device" && u.st.Applied > 0 && (!m.known || m.below > 0 || u.st.Applied < m.pmtu) {
				m = mtuMeasure{known: true, pmtu: u.st.Applied}
			}
			continue
		}
		switch {
		case complete && h.PathMTU > 0:
			if !m.known || m.below > 0 || h.PathMTU < m.pmtu {
				m = mtuMeasure{known: true, pmtu: h.PathMTU}
			}
		case (h.PMTUState == "below_min" || complete) && h.PathMTUBelow > 0 && p.c.BelowMin == "min" && !m.known:
			m = mtuMeasure{known: true, below: h.PathMTUBelow}
		}
	}
	return m
}

func (p *Policy) evaluate(env remediate.Env, u *mtuUnit) remediate.Plan {
	d, want, raiseSince := decideMTU(p.c, u.st, p.measure(env, u), u.v6, env.Now)
	u.st.RaiseSince = raiseSince
	d.Peer = remediate.PeerLabel(u.st.Peer, u.name)
	plan := remediate.Plan{Decision: d, Rails: &u.st.Rails, Limits: remediate.Limits{Rate: p.c.RateLimit}, Episode: &u.episode}
	if d.Action == "" || d.Suppressed != "" {
		return plan
	}
	var next mtuState
	plan.Prepare = func(d *remediate.Decision) []remediate.Change { // the route reads: only once the rails let it through
		changes, st, err := p.changes(env, u, want)
		var h *held
		switch next = st; {
		case errors.As(err, &h):
			d.Suppressed, d.Reason = h.code, h.why+": "+d.Reason
			return nil
		case err != nil:
			changes = []remediate.Change{remediate.Failure{Err: err}}
		}
		return changes
	}
	plan.Commit = func(now time.Time) {
		if env.Mode == remediate.ModeAuto {
			u.st.Applied, u.st.Mechanism, u.st.Routes, u.st.Original = next.Applied, next.Mechanism, next.Routes, next.Original
		} else { // dry-run: remember what auto would have in force
			u.st.Applied = want
			if want >= u.st.Max {
				u.st.Applied = 0
			}
		}
		u.st.Since, u.st.RaiseSince = now, time.Time{}
		p.export(u)
	}
	return plan
}

// changes are the writes that put want in force for the peer (want >= Max
// removes the policy's change), with the unit's state after them.
func (p *Policy) changes(env remediate.Env, u *mtuUnit, want int) ([]remediate.Change, mtuState, error) {
	st := u.st
	if want >= st.Max {
		cs, next := p.undoChanges(u)
		return cs, next, nil
	}
	if st.Mechanism != "device" {
		desired, err := p.routes(env, u, want)
		if err != nil {
			return nil, st, err
		}
		if len(desired) > 0 {
			var cs []remediate.Change
			for _, rt := range desired {
				if slices.ContainsFunc(st.Routes, func(o remediate.Route) bool { return o.Prefix == rt.Prefix && o.Metric == rt.Metric }) {
					cs = append(cs, remediate.ReplaceRoute(rt)) // ours already: change its MTU in place
				} else {
					cs = append(cs, remediate.AddRoutes{rt})
				}
			}
			for _, old := range st.Routes {
				if !slices.ContainsFunc(desired, func(n remediate.Route) bool { return n.Prefix == old.Prefix && n.Metric == old.Metric }) {
					cs = append(cs, remediate.DelRoutes{old})
				}
			}
			st.Applied, st.Mechanism, st.Routes = want, "route", desired
			return cs, st, nil
		}
	}
	// The fallback: the whole device, with one owner, and on a shared
	// device only when the config says so.
	if st.Mechanism != "device" {
		if err := p.mayOwnDevice(env, u); err != nil {
			return nil, st, err
		}
	}
	// Routes of ours left from before (the operator's routes they sat below
	// are gone) go first.
	var cs []remediate.Change
	if len(st.Routes) > 0 {
		cs = append(cs, remediate.DelRoutes(st.Routes))
	}
	if st.Original == 0 {
		cur, err := env.Kernel.LinkMTU(st.Device)
		if err != nil {
			return nil, st, err
		}
		st.Original = cur
	}
	// The search's ceiling moves with the device.
	cs = append(cs, remediate.SetLinkMTU{Device: st.Device, MTU: want}, remediate.ResearchPMTU(u.targets))
	st.Applied, st.Mechanism, st.Routes = want, "device", nil
	return cs, st, nil
}

// mayOwnDevice says why u may not take the device MTU (nil: it may).
func (p *Policy) mayOwnDevice(env remediate.Env, u *mtuUnit) error {
	for _, o := range p.units {
		if o != u && o.st.Device == u.st.Device && o.st.Mechanism == "device" && o.st.Applied > 0 {
			return &held{SuppressDeviceOwned, fmt.Sprintf("the MTU of %s is already lowered to %d for peer %s, its one owner", u.st.Device, o.st.Applied, remediate.PeerLabel(o.st.Peer, o.name))}
		}
	}
	if d, ok := env.Snapshot.Device(u.st.Device); ok && len(d.Peers) > 1 && !p.c.SharedDeviceFallback {
		return &held{SuppressSharedDevice, fmt.Sprintf("peer %s has no routed prefix of its own to carry a route MTU, and lowering %s would lower all its %d peers for one path: "+
			"route the peer's prefixes via %s (a route MTU then fixes only them), set the MTU on the far side, or set remediate.mtu.shared_device_fallback: true",
			remediate.PeerLabel(u.st.Peer, u.name), u.st.Device, len(d.Peers), u.st.Device)}
	}
	return nil
}

// undoChanges remove the policy's change of a peer.
func (p *Policy) undoChanges(u *mtuUnit) ([]remediate.Change, mtuState) {
	st := u.st
	var cs []remediate.Change
	switch st.Mechanism {
	case "route":
		cs = append(cs, remediate.DelRoutes(st.Routes))
	case "device":
		cs = append(cs, remediate.SetLinkMTU{Device: st.Device, MTU: st.Original}, remediate.ResearchPMTU(u.targets))
	}
	st.Applied, st.Mechanism, st.Routes, st.Original = 0, "", nil, 0
	return cs, st
}

// routes returns the routes that carry want for the peer: for every
// operator route on the device to a prefix inside the peer's AllowedIPs that
// does not cover its probed tunnel address (the search must stay free), an
// owned route one metric below it with the MTU set.
func (p *Policy) routes(env remediate.Env, u *mtuUnit, want int) ([]remediate.Route, error) {
	d, ok := env.Snapshot.Device(u.st.Device)
	if !ok {
		return nil, fmt.Errorf("device %s: %w", u.st.Device, remediate.ErrNoDevice)
	}
	var allowed []netip.Prefix
	var probed []netip.Addr
	for _, pr := range d.Peers {
		if pr.PublicKey == u.st.Peer {
			allowed = pr.AllowedIPs
			for _, a := range pr.AllowedIPs {
				if a.IsSingleIP() {
					probed = append(probed, a.Addr())
				}
			}
		}
	}
	var out []remediate.Route
	for _, a := range allowed {
		if a.IsSingleIP() {
			continue
		}
		rs, err := env.Kernel.Routes(a)
		if err != nil {
			return nil, err
		}
		for _, rt := range rs {
			if rt.Device != u.st.Device || rt.Protocol == env.RouteProtocol || rt.Metric < 1 ||
				slices.ContainsFunc(probed, rt.Prefix.Contains) {
				continue
			}
			mine := remediate.Route{Prefix: rt.Prefix, Device: rt.Device, Metric: rt.Metric - 1, Protocol: env.RouteProtocol, MTU: want}
			if slices.ContainsFunc(rs, func(o remediate.Route) bool { return o.Metric == mine.Metric && o.Protocol != env.RouteProtocol }) {
				continue // that metric is the operator's: no room below their route
			}
			if !slices.ContainsFunc(out, func(o remediate.Route) bool { return o.Prefix == mine.Prefix }) {
				out = append(out, mine)
			}
		}
	}
	return out, nil
}

// Reconcile implements remediate.Policy: the policy's changes still in force.
func (p *Policy) Reconcile(env remediate.Env) []remediate.Conflict {
	var out []remediate.Conflict
	for _, u := range p.units {
		if u.st.Applied == 0 {
			continue
		}
		var problem string
		switch u.st.Mechanism {
		case "route":
			for _, rt := range u.st.Routes {
				rs, err := env.Kernel.Routes(rt.Prefix)
				if err != nil {
					return out
				}
				if !slices.Contains(rs, rt) {
					problem = fmt.Sprintf("our route %s was deleted or changed", rt)
				}
			}
		case "device":
			if cur, err := env.Kernel.LinkMTU(u.st.Device); err == nil && cur != u.st.Applied {
				problem = fmt.Sprintf("the MTU of %s is %d, not the %d we set", u.st.Device, cur, u.st.Applied)
			}
		}
		if problem == "" {
			continue
		}
		u.st.Applied, u.st.Mechanism, u.st.Routes = 0, "", nil // not ours any more
		p.export(u)
		out = append(out, remediate.Conflict{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name), Problem: problem, Rails: &u.st.Rails})
	}
	return out
}

// Start implements remediate.Policy (auto only): the saved changes the
// kernel still shows are kept; those the config no longer covers are
// undone, audited, their part kept in the state file until they are.
func (p *Policy) Start(env remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	if env.Mode != remediate.ModeAuto || saved == nil {
		return nil, nil
	}
	var units map[string]mtuState
	if err := json.Unmarshal(saved, &units); err != nil {
		return nil, err
	}
	var plans []remediate.Plan
	for key, st := range units {
		if st.Applied > 0 {
			switch in, err := inKernel(env, st); {
			case err != nil: // unknown is not a change: the belief stands; the 2 s check confirms it
				env.Logger.Warn("cannot read the kernel to check an MTU change of the state file: kept as saved", "device", st.Device, "peer", st.Peer, "err", err)
			case !in:
				env.Logger.Warn("an MTU change in the state file is not in the kernel any more: forgotten", "device", st.Device, "peer", st.Peer)
				st.Applied, st.Mechanism, st.Routes = 0, "", nil
			}
		}
		if !p.inScope(st.Device) {
			if st.Applied > 0 {
				p.foreign[key] = st
				plans = append(plans, p.undoForeign(key, st))
			}
			continue
		}
		u := &mtuUnit{st: st}
		p.units[key] = u
		p.export(u)
	}
	return plans, nil
}

// inKernel says whether a saved change is still what the kernel has.
func inKernel(env remediate.Env, st mtuState) (bool, error) {
	switch st.Mechanism {
	case "route":
		for _, rt := range st.Routes {
			rs, err := env.Kernel.Routes(rt.Prefix)
			if err != nil || !slices.Contains(rs, rt) {
				return false, err
			}
		}
	case "device":
		cur, err := env.Kernel.LinkMTU(st.Device)
		if errors.Is(err, remediate.ErrNoDevice) {
			return false, nil // the device went, and the MTU we set with it
		}
		return err == nil && cur == st.Applied, err
	}
	return true, nil
}

// undoForeign undoes a change of ours the config no longer covers; it stays
// in the state file (and owned) until that is done.
func (p *Policy) undoForeign(key string, st mtuState) remediate.Plan {
	cs, _ := p.undoChanges(&mtuUnit{st: st})
	to := "the operator's route"
	if st.Mechanism == "device" {
		to = fmt.Sprint(st.Original)
	}
	return remediate.Plan{
		Decision: remediate.Decision{Group: st.Device, Peer: remediate.PeerLabel(st.Peer, ""), Action: ActionRaiseMTU,
			From: fmt.Sprint(st.Applied), To: to, Reason: remediate.UndoReason(remediate.UndoOutOfScope), Code: remediate.UndoOutOfScope},
		Unrailed: true, Changes: cs,
		Commit: func(time.Time) { delete(p.foreign, key) },
	}
}

// Undo implements remediate.Policy: the changes on devices next does not
// cover (every change when next is nil).
func (p *Policy) Undo(_ remediate.Env, why string, next remediate.Policy) []remediate.Plan {
	n, _ := next.(*Policy)
	code, why := why, remediate.UndoReason(why)
	var plans []remediate.Plan
	for _, u := range p.units {
		if u.st.Applied == 0 || (n != nil && n.inScope(u.st.Device)) {
			continue
		}
		cs, st := p.undoChanges(u)
		plans = append(plans, remediate.Plan{
			Decision: remediate.Decision{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name), Action: ActionRaiseMTU,
				From: fmt.Sprint(u.st.Applied), To: fmt.Sprint(u.st.Max), Reason: why, Code: code},
			Unrailed: true, Changes: cs,
			Commit: func(time.Time) {
				u.st.Applied, u.st.Mechanism, u.st.Routes, u.st.Original = st.Applied, st.Mechanism, st.Routes, st.Original
				p.export(u)
			},
		})
	}
	return plans
}

// Inherit implements remediate.Policy: the peers keep their state.
func (p *Policy) Inherit(env remediate.Env, prev remediate.Policy) {
	p.proto = env.RouteProtocol
	var was []string
	if old, ok := prev.(*Policy); ok {
		p.units, p.foreign, p.m = old.units, old.foreign, old.m
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

// State implements remediate.Policy: the peers with a change or a history,
// by device/public key.
func (p *Policy) State() any {
	st := map[string]mtuState{}
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
// under "mtu".
func (p *Policy) MigrateV1(v1 map[string]json.RawMessage) (json.RawMessage, error) {
	return v1["mtu"], nil
}

// Owned implements remediate.Policy.
func (p *Policy) Owned() []remediate.Route {
	var out []remediate.Route
	for _, u := range p.units {
		out = append(out, u.st.Routes...)
	}
	for _, f := range p.foreign {
		out = append(out, f.Routes...)
	}
	return out
}

// Status implements remediate.Policy: the MTU in force is in the metrics.
func (p *Policy) Status(time.Time) any { return nil }

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) { p.m.Describe(ch) }

// Collect implements prometheus.Collector.
func (p *Policy) Collect(ch chan<- prometheus.Metric) { p.m.Collect(ch) }

func (p *Policy) export(u *mtuUnit) {
	l := prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer, "name": u.name}
	p.m.DeletePartialMatch(prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer})
	if u.st.Applied > 0 {
		l["mechanism"] = u.st.Mechanism
		p.m.With(l).Set(float64(u.st.Applied))
	}
}
