package failover

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/wgpulse/wgpulse/remediate"
)

// A route group moves a prefix to the backup with a route of its own via the
// backup device, in one of two shapes:
//
//   - exact: the prefix itself at route_metric. It wins while every other
//     route for the prefix has a higher metric (an operator's metric 100).
//   - halves: the prefix's two halves at route_metric. They win by longest
//     match over any route for the prefix itself, whatever its metric:
//     wg-quick's `Table = auto` routes have metric 0 (IPv4), and nothing is
//     below 0. Also the MTU policy's route for the prefix on the primary.
//
// The shape is chosen per prefix at the switch, from what the kernel shows,
// and kept in the group's state; `ip route show proto N` lists both shapes,
// and deleting them (or `ip route flush proto N`) returns the traffic.

func (p *Policy) exact(g *group, pf netip.Prefix) []remediate.Route {
	return []remediate.Route{{Prefix: pf, Device: g.cfg.Backup.Device, Metric: g.cfg.RouteMetric, Protocol: p.proto}}
}

// halves are the two prefixes one bit longer that cover pf; nil for a
// single address.
func (p *Policy) halves(g *group, pf netip.Prefix) []remediate.Route {
	if pf.IsSingleIP() {
		return nil
	}
	bits := pf.Bits() + 1
	b := pf.Addr().AsSlice()
	b[pf.Bits()/8] |= 0x80 >> (pf.Bits() % 8)
	upper, _ := netip.AddrFromSlice(b)
	var out []remediate.Route
	for _, a := range []netip.Addr{pf.Addr(), upper} {
		out = append(out, remediate.Route{Prefix: netip.PrefixFrom(a, bits), Device: g.cfg.Backup.Device, Metric: g.cfg.RouteMetric, Protocol: p.proto})
	}
	return out
}

// beaten returns a route for rt's prefix that would carry its traffic
// instead of rt: another route with a metric at or below it.
func beaten(rt remediate.Route, rs []remediate.Route) (remediate.Route, bool) {
	for _, o := range rs {
		if o != rt && o.Metric <= rt.Metric {
			return o, true
		}
	}
	return remediate.Route{}, false
}

// shape picks the routes that move pf to the backup: exact when nothing
// beats it, else the halves. blocked says why neither would carry the
// traffic. A failed read picks exact: the add then says what is wrong.
func (p *Policy) shape(env remediate.Env, g *group, pf netip.Prefix) (rs []remediate.Route, blocked string) {
	exact := p.exact(g, pf)
	have, err := env.Kernel.Routes(pf)
	if err != nil {
		return exact, ""
	}
	o, lost := beaten(exact[0], have)
	if !lost {
		return exact, ""
	}
	halves := p.halves(g, pf)
	if halves == nil {
		return nil, fmt.Sprintf("route %s has a metric <= route_metric %d and %s is a single address (no more specific route can win): lower route_metric",
			o, g.cfg.RouteMetric, pf)
	}
	for _, h := range halves {
		hs, err := env.Kernel.Routes(h.Prefix)
		if err != nil {
			continue
		}
		if o, lost := beaten(h, hs); lost {
			return nil, fmt.Sprintf("route %s has a metric <= route_metric %d, so ours would not carry the traffic: lower route_metric", o, g.cfg.RouteMetric)
		}
	}
	return halves, ""
}

// inForce are the group's routes while it is on the backup: as recorded,
// or (a state file from before the shapes) the exact ones.
func (p *Policy) inForce(g *group) []remediate.Route {
	if len(g.st.Routes) > 0 {
		return g.st.Routes
	}
	var out []remediate.Route
	for _, pf := range g.prefixes {
		out = append(out, p.exact(g, pf)...)
	}
	return out
}

// adoptPrefix finds pf's routes of ours in the kernel: the exact route, or
// both halves (have), or one half (have the one, missing the other).
func (p *Policy) adoptPrefix(env remediate.Env, g *group, pf netip.Prefix) (have, missing []remediate.Route, err error) {
	rs, err := env.Kernel.Routes(pf)
	if err != nil {
		return nil, nil, err
	}
	if exact := p.exact(g, pf); slices.Contains(rs, exact[0]) {
		return exact, nil, nil
	}
	for _, h := range p.halves(g, pf) {
		hs, err := env.Kernel.Routes(h.Prefix)
		if err != nil {
			return nil, nil, err
		}
		if slices.Contains(hs, h) {
			have = append(have, h)
		} else {
			missing = append(missing, h)
		}
	}
	if len(have) == 0 {
		return nil, nil, nil // none of ours: the prefix is on the primary
	}
	return have, missing, nil
}
