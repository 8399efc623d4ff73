// Package mss is the MSS clamp policy: on a gateway that forwards into a
// tunnel, it keeps the MSS of forwarded TCP SYN and SYN-ACK segments at or
// below what the tunnel carries.
//
// Why: the MTU policy lowers the route MTU on the node itself, and the node's
// own TCP follows it. Hosts behind the gateway do not: their segments are
// sized for their LAN (MSS 1460), so a path that drops large packets without
// an ICMP error (a black hole) stays one for them. Clamping the MSS in the
// handshakes they make through the gateway sizes their segments for the
// tunnel instead. The MTU in force is the lowest of the device's MTU, the
// route MTUs on routes through it (the MTU policy's), and the path MTUs the
// prober measured to its peers; the clamp is that minus 40 bytes (IPv4 and
// TCP headers) or 60 (IPv6). The rules live in wgpulse's own nftables table
// (inet wgpulse), written with google/nftables; the kernel only ever lowers
// an MSS, so a smaller one is left alone.
package mss

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// Config is the `remediate.mss:` section.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// Devices are the tunnel devices whose forwarded TCP is clamped.
	Devices   []string            `yaml:"devices"`
	RateLimit remediate.RateLimit `yaml:"rate_limit"`
}

// DefaultConfig is the section's defaults: off.
func DefaultConfig() Config {
	return Config{RateLimit: remediate.RateLimit{Burst: 6, Per: time.Hour}}
}

// Validate names the offending field ("mss.devices[0]").
func (c Config) Validate(fe remediate.FieldFunc) {
	if c.Enabled && len(c.Devices) == 0 {
		fe("mss.devices", "required when mss.enabled: the tunnel devices whose forwarded TCP is clamped")
	}
	for i, d := range c.Devices {
		if d == "" || len(d) > 15 {
			fe(fmt.Sprintf("mss.devices[%d]", i), "must be a device name of 1-15 bytes, got %q", d)
		}
	}
	if c.RateLimit.Burst < 1 || c.RateLimit.Per <= 0 {
		fe("mss.rate_limit", "want burst >= 1 and per > 0 (default 6 per 1h), got %+v", c.RateLimit)
	}
}

// Name is the policy's name in audit lines, metrics and the state file.
const Name = "mss"

// Actions of the MSS policy.
const (
	ActionSetClamp    = "set_mss_clamp"
	ActionRemoveClamp = "remove_mss_clamp"
)

var (
	actions = []string{ActionSetClamp, ActionRemoveClamp}
	reasons = []string{}
)

// Header bytes between an IP packet's size and its TCP payload.
const (
	hdr4 = 20 + 20
	hdr6 = 40 + 20
	// The smallest clamps: RFC 879's default MSS (576-40), and IPv6's
	// minimum MTU less its headers.
	min4 = 536
	min6 = 1220
	// belowFloor is the MTU assumed of a path that passes less than the
	// prober's search floor.
	belowFloor = 576
)

// unitState is what the policy remembers of one device, persisted.
type unitState struct {
	Device  string             `json:"device"`
	Applied remediate.MSSClamp `json:"applied"` // zero: no clamp of ours
	MTU     int                `json:"mtu,omitempty"`
	Why     string             `json:"why,omitempty"`
	Since   time.Time          `json:"since,omitzero"`
	remediate.Rails
}

type unit struct {
	st      unitState
	episode remediate.Episode
}

// Policy is the MSS clamp policy over its devices.
type Policy struct {
	c     Config
	units map[string]*unit
	// foreign are clamps of ours in the state file for devices the config
	// no longer names, until they are removed.
	foreign map[string]unitState
	m       *prometheus.GaugeVec
}

var _ remediate.Policy = (*Policy)(nil)

// New returns the policy for its section.
func New(c Config) *Policy {
	return &Policy{c: c, units: map[string]*unit{}, foreign: map[string]unitState{}, m: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wgpulse_remediation_mss_clamp_bytes",
		Help: "The TCP MSS the MSS policy clamps forwarded SYNs to through a device (nftables table inet wgpulse), by family; absent when none.",
	}, []string{"device", "family"})}
}

// Name implements remediate.Policy.
func (p *Policy) Name() string { return Name }

// Every implements remediate.Policy.
func (p *Policy) Every() time.Duration { return 2 * time.Second }

// Targets implements remediate.Policy: the prober's own targets carry the
// path MTU.
func (p *Policy) Targets() []prober.Target { return nil }

// WantsResults implements remediate.Policy.
func (p *Policy) WantsResults() bool { return false }

// Observe implements remediate.Policy: the policy reads on its tick.
func (p *Policy) Observe(remediate.Env, remediate.Signal) bool { return false }

func (p *Policy) unit(dev string) *unit {
	u := p.units[dev]
	if u == nil {
		u = &unit{st: unitState{Device: dev}}
		p.units[dev] = u
	}
	return u
}

// inForce is the MTU of the device's traffic and what set it, or 0 when
// the device cannot be read (unknown is no reason to change anything).
func inForce(env remediate.Env, dev string) (int, string) {
	mtu, err := env.Kernel.LinkMTU(dev)
	if err != nil || mtu <= 0 {
		return 0, ""
	}
	why := fmt.Sprintf("device MTU %d", mtu)
	for _, v6 := range []bool{false, true} {
		rs, err := env.Kernel.RoutesVia(dev, v6)
		if err != nil {
			continue
		}
		for _, r := range rs {
			if r.MTU > 0 && r.MTU < mtu {
				mtu, why = r.MTU, fmt.Sprintf("route MTU %d on %s", r.MTU, r.Prefix)
			}
		}
	}
	if env.Snapshot != nil && env.Prober != nil {
		if d, ok := env.Snapshot.Device(dev); ok {
			for _, pr := range d.Peers {
				for _, a := range pr.AllowedIPs {
					if !a.IsSingleIP() {
						continue
					}
					h, ok := env.Prober.HealthOf(prober.Target{Device: dev, Address: a.Addr()}.Key())
					switch {
					case !ok:
					case h.PMTUState == "below_min" && h.PathMTUBelow > 0 && belowFloor < mtu:
						// Less than the search floor passes, how much less is
						// unknown: RFC 879's 576 crosses any IPv4 path.
						mtu, why = belowFloor, fmt.Sprintf("path MTU below the search floor %d to %s (lower prober.pmtu.min to measure it)", h.PathMTUBelow, a.Addr())
					case h.PathMTU > 0 && h.PathMTU < mtu:
						mtu, why = h.PathMTU, fmt.Sprintf("path MTU %d measured to %s", h.PathMTU, a.Addr())
					}
				}
			}
		}
	}
	return mtu, why
}

func clampFor(dev string, mtu int) remediate.MSSClamp {
	return remediate.MSSClamp{Device: dev, V4: max(mtu-hdr4, min4), V6: max(mtu-hdr6, min6)}
}

func clampString(c remediate.MSSClamp) string {
	if c.V4 == 0 {
		return "none"
	}
	return fmt.Sprintf("%d/%d", c.V4, c.V6)
}

// all is the table's content with dev's clamp set to c (zero: removed).
func (p *Policy) all(dev string, c remediate.MSSClamp) []remediate.MSSClamp {
	var out []remediate.MSSClamp
	for d, u := range p.units {
		if d != dev && u.st.Applied.V4 != 0 {
			out = append(out, u.st.Applied)
		}
	}
	for d, f := range p.foreign {
		if d != dev && f.Applied.V4 != 0 {
			out = append(out, f.Applied)
		}
	}
	if c.V4 != 0 {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b remediate.MSSClamp) int { return strings.Compare(a.Device, b.Device) })
	return out
}

// Decide implements remediate.Policy: each device's clamp follows the MTU
// in force.
func (p *Policy) Decide(env remediate.Env) []remediate.Plan {
	if !p.c.Enabled {
		return nil
	}
	var plans []remediate.Plan
	for _, dev := range p.c.Devices {
		u := p.unit(dev)
		mtu, why := inForce(env, dev)
		d := remediate.Decision{Group: dev}
		plan := remediate.Plan{Decision: d, Rails: &u.st.Rails, Limits: remediate.Limits{Rate: p.c.RateLimit}, Episode: &u.episode}
		if mtu == 0 {
			plans = append(plans, plan) // unknown: the clamp in force stays
			continue
		}
		want := clampFor(dev, mtu)
		if want == u.st.Applied {
			plans = append(plans, plan)
			continue
		}
		d.Action, d.From, d.To, d.Code = ActionSetClamp, clampString(u.st.Applied), clampString(want), "mtu_in_force"
		d.Reason = fmt.Sprintf("%s through %s: the MSS of forwarded TCP SYNs is clamped to %d (IPv4) and %d (IPv6), so hosts behind this gateway size their segments for the tunnel",
			why, dev, want.V4, want.V6)
		plan.Decision = d
		// The table holds every device's clamp: its content is worked out
		// when the plan runs, after the plans before it committed.
		plan.Prepare = func(*remediate.Decision) []remediate.Change {
			return []remediate.Change{remediate.SetMSSClamps(p.all(dev, want))}
		}
		plan.Commit = func(now time.Time) {
			u.st.Applied, u.st.MTU, u.st.Why, u.st.Since = want, mtu, why, now
			p.export(u)
		}
		plans = append(plans, plan)
	}
	return plans
}

// Reconcile implements remediate.Policy: our table changed by someone else
// (deleted, a clamp gone) is a conflict; the policy puts it back after the
// backoff.
func (p *Policy) Reconcile(env remediate.Env) []remediate.Conflict {
	if !slices.ContainsFunc(slices.Collect(maps.Values(p.units)), func(u *unit) bool { return u.st.Applied.V4 != 0 }) {
		return nil // nothing of ours to check: nftables is not read
	}
	have, err := env.Kernel.MSSClamps()
	if err != nil {
		return nil // unknown is not a conflict
	}
	var out []remediate.Conflict
	for _, u := range p.units {
		if u.st.Applied.V4 == 0 || slices.Contains(have, u.st.Applied) {
			continue
		}
		out = append(out, remediate.Conflict{Group: u.st.Device, Rails: &u.st.Rails,
			Problem: fmt.Sprintf("the MSS clamp %s of %s is not in nftables table inet %s any more", clampString(u.st.Applied), u.st.Device, remediate.MSSTable)})
		u.st.Applied = remediate.MSSClamp{}
		p.export(u)
	}
	return out
}

// Undo implements remediate.Policy: the clamps of devices next does not
// cover are removed (the table goes with the last one).
func (p *Policy) Undo(_ remediate.Env, why string, next remediate.Policy) []remediate.Plan {
	n, _ := next.(*Policy)
	code, reason := why, remediate.UndoReason(why)
	var plans []remediate.Plan
	for dev, u := range p.units {
		if u.st.Applied.V4 == 0 || (n != nil && n.inScope(dev)) {
			continue
		}
		plans = append(plans, remediate.Plan{
			Decision: remediate.Decision{Group: dev, Action: ActionRemoveClamp, From: clampString(u.st.Applied), To: "none", Reason: reason, Code: code},
			Unrailed: true, Prepare: func(*remediate.Decision) []remediate.Change {
				return []remediate.Change{remediate.SetMSSClamps(p.all(dev, remediate.MSSClamp{}))}
			},
			Commit: func(time.Time) {
				u.st.Applied = remediate.MSSClamp{}
				p.export(u)
			},
		})
	}
	return plans
}

func (p *Policy) inScope(dev string) bool { return p.c.Enabled && slices.Contains(p.c.Devices, dev) }

// Start implements remediate.Policy (auto only): the saved clamps still in
// the table are adopted; those of devices the config no longer covers are
// removed, audited.
func (p *Policy) Start(env remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	if env.Mode != remediate.ModeAuto || saved == nil {
		return nil, nil
	}
	var units map[string]unitState
	if err := json.Unmarshal(saved, &units); err != nil {
		return nil, err
	}
	have, err := env.Kernel.MSSClamps()
	if err != nil {
		env.Logger.Warn("cannot read nftables table inet "+remediate.MSSTable+" to adopt the saved MSS clamps: kept as saved", "err", err)
	}
	var plans []remediate.Plan
	for dev, st := range units {
		if st.Applied.V4 == 0 {
			continue
		}
		if err == nil && !slices.Contains(have, st.Applied) {
			env.Logger.Warn("an MSS clamp in the state file is not in nftables any more: forgotten", "device", dev, "clamp", clampString(st.Applied))
			continue
		}
		if !p.inScope(dev) {
			p.foreign[dev] = st
			plans = append(plans, remediate.Plan{
				Decision: remediate.Decision{Group: dev, Action: ActionRemoveClamp, From: clampString(st.Applied), To: "none",
					Reason: remediate.UndoReason(remediate.UndoOutOfScope), Code: remediate.UndoOutOfScope},
				Unrailed: true, Prepare: func(*remediate.Decision) []remediate.Change {
					return []remediate.Change{remediate.SetMSSClamps(p.all(dev, remediate.MSSClamp{}))}
				},
				Commit: func(time.Time) { delete(p.foreign, dev) },
			})
			continue
		}
		u := p.unit(dev)
		u.st = st
		p.export(u)
	}
	return plans, nil
}

// Inherit implements remediate.Policy.
func (p *Policy) Inherit(env remediate.Env, prev remediate.Policy) {
	var was []string
	if old, ok := prev.(*Policy); ok {
		p.units, p.foreign, p.m = old.units, old.foreign, old.m
		was = old.devices()
	}
	env.FollowUnits(was, p.devices(), actions, reasons)
}

func (p *Policy) devices() []string {
	if !p.c.Enabled {
		return nil
	}
	return p.c.Devices
}

// State implements remediate.Policy.
func (p *Policy) State() any {
	st := map[string]unitState{}
	for d, u := range p.units {
		if u.st.Applied.V4 != 0 || u.st.Switches > 0 {
			st[d] = u.st
		}
	}
	for d, f := range p.foreign {
		st[d] = f
	}
	return st
}

// Owned implements remediate.Policy: no route.
func (p *Policy) Owned() []remediate.Route { return nil }

// Status implements remediate.Policy: the clamps are in the metrics.
func (p *Policy) Status(time.Time) any { return nil }

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) { p.m.Describe(ch) }

// Collect implements prometheus.Collector.
func (p *Policy) Collect(ch chan<- prometheus.Metric) { p.m.Collect(ch) }

func (p *Policy) export(u *unit) {
	for fam, v := range map[string]int{"ipv4": u.st.Applied.V4, "ipv6": u.st.Applied.V6} {
		if v > 0 {
			p.m.WithLabelValues(u.st.Device, fam).Set(float64(v))
		} else {
			p.m.DeleteLabelValues(u.st.Device, fam)
		}
	}
}
