package failover

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// Group moves traffic from a primary to a backup path while the
// primary is unhealthy. In route mode (the default) the paths are two tunnel
// devices and the group moves prefixes; in endpoint mode they are two
// underlay endpoints of one peer (dual WAN) and the group swaps the peer's
// endpoint. Zero overrides take the profile's values.
type Group struct {
	Name    string `yaml:"name"`
	Mode    string `yaml:"mode"` // route (default) or endpoint
	Profile string `yaml:"profile"`
	// Prefixes (route mode) are what the group moves.
	Prefixes []string `yaml:"prefixes"`
	// Device, Peer and Target (endpoint mode): the WireGuard device, the
	// peer's public key, and the address probed through the tunnel, whose
	// health is that of the path in use.
	Device  string      `yaml:"device"`
	Peer    string      `yaml:"peer"`
	Target  ProbeTarget `yaml:"target"`
	Primary Path        `yaml:"primary"`
	Backup  Path        `yaml:"backup"`

	Interval  time.Duration `yaml:"interval"`   // between probes of each path
	Timeout   time.Duration `yaml:"timeout"`    // a probe without reply after it is lost
	Suspect   time.Duration `yaml:"suspect"`    // extra probes while the newest is unanswered
	Losses    int           `yaml:"losses"`     // in a row: the path is down
	LossRatio float64       `yaml:"loss_ratio"` // over window: the path is down
	Window    time.Duration `yaml:"window"`
	RTT       time.Duration `yaml:"rtt"`       // median above it: the path is down (0 = off)
	HoldDown  time.Duration `yaml:"hold_down"` // the primary must be up this long before traffic returns
	// RouteMetric of the remediator's own routes; must be below the
	// operator's routes for the prefixes.
	RouteMetric int       `yaml:"route_metric"`
	Margin      Margin    `yaml:"margin"`
	Damping     Damping   `yaml:"damping"`
	RateLimit   RateLimit `yaml:"rate_limit"`
}

// Path is one side of a failover group.
type Path struct {
	// Route mode: the tunnel device and the address probed through it.
	Device string      `yaml:"device"`
	Target ProbeTarget `yaml:"target"`
	// Endpoint mode: the peer's endpoint over this uplink (ip:port), and an
	// address probed outside the tunnel (through UnderlayDevice, or where
	// the routing table sends it) whose health is the idle path's.
	Endpoint       string `yaml:"endpoint"`
	UnderlayTarget string `yaml:"underlay_target"`
	UnderlayDevice string `yaml:"underlay_device"`
}

// Margin: when the primary is down by loss ratio or RTT (degraded, not
// dead), the backup must be better by this much, so two similar paths never
// alternate.
type Margin struct {
	LossRatio float64       `yaml:"loss_ratio"` // absolute, 0.1 = 10 points
	RTT       time.Duration `yaml:"rtt"`
}

// Damping and RateLimit are the core's rails.
type (
	Damping   = remediate.Damping
	RateLimit = remediate.RateLimit
)

// Profile is a named set of detection settings.
type Profile struct {
	Interval, Timeout, Suspect, Window, RTT, HoldDown time.Duration
	Losses                                            int
	LossRatio                                         float64
}

// Profiles are the detection presets. See the README for the arithmetic:
// at 10% random loss each switches less than once a day (a run of Losses
// lost probes starts with probability 0.9 x 0.1^Losses per probe: 0.078 a
// day for both), while a dead path is found in about 2 s (default) or
// 0.45 s (fast), thanks to the suspect probes sent once a probe is overdue.
var Profiles = map[string]Profile{
	"default": {Interval: time.Second, Timeout: time.Second, Suspect: 200 * time.Millisecond, Losses: 6,
		LossRatio: 0.3, Window: time.Minute, HoldDown: 30 * time.Second},
	"fast": {Interval: 100 * time.Millisecond, Timeout: 250 * time.Millisecond, Suspect: 25 * time.Millisecond, Losses: 7,
		LossRatio: 0.3, Window: 10 * time.Second, HoldDown: 30 * time.Second},
}

// withDefaults returns g with the profile's values where g sets none.
func (g Group) withDefaults() Group {
	if g.Profile == "" {
		g.Profile = "default"
	}
	p := Profiles[g.Profile]
	set := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	set(&g.Interval, p.Interval)
	set(&g.Timeout, p.Timeout)
	set(&g.Suspect, p.Suspect)
	set(&g.Window, p.Window)
	set(&g.HoldDown, p.HoldDown)
	if g.Losses == 0 {
		g.Losses = p.Losses
	}
	if g.LossRatio == 0 {
		g.LossRatio = p.LossRatio
	}
	if g.RouteMetric == 0 {
		g.RouteMetric = 10
	}
	if g.Margin == (Margin{}) {
		g.Margin = Margin{LossRatio: 0.1, RTT: 10 * time.Millisecond}
	}
	if g.Damping == (Damping{}) {
		g.Damping = Damping{Penalty: 1000, Suppress: 2000, Reuse: 750, HalfLife: 15 * time.Minute}
	}
	if g.RateLimit == (RateLimit{}) {
		g.RateLimit = RateLimit{Burst: 10, Per: time.Hour}
	}
	return g
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// Groups is the `remediate.failover:` list.
type Groups []Group

// Validate names the offending field ("failover[0].backup.device").
func (gs Groups) Validate(fe remediate.FieldFunc) {
	names := map[string]bool{}
	prefixes := map[netip.Prefix]string{}
	targets := map[string]string{}
	for i, g := range gs {
		f := func(s string) string { return fmt.Sprintf("failover[%d].%s", i, s) }
		switch {
		case !nameRE.MatchString(g.Name):
			fe(f("name"), "must be 1-63 characters a-z, 0-9, '.', '_' or '-', got %q", g.Name)
		case names[g.Name]:
			fe(f("name"), "%q is used by another group", g.Name)
		}
		names[g.Name] = true
		if _, ok := Profiles[g.Profile]; !ok && g.Profile != "" {
			fe(f("profile"), `must be "default" or "fast", got %q`, g.Profile)
		}
		switch g.Mode {
		case "", "route":
			validateRouteGroup(g, f, fe, prefixes, targets)
		case "endpoint":
			validateEndpointGroup(g, f, fe, targets)
		default:
			fe(f("mode"), `must be "route" (move prefixes between two tunnels) or "endpoint" (swap one peer's endpoint), got %q`, g.Mode)
		}
		durations := []struct {
			name     string
			v        time.Duration
			min, max time.Duration
		}{
			{"interval", g.Interval, 10 * time.Millisecond, time.Minute},
			{"timeout", g.Timeout, time.Millisecond, time.Minute},
			{"suspect", g.Suspect, 5 * time.Millisecond, time.Minute},
			{"window", g.Window, time.Second, 24 * time.Hour},
			{"rtt", g.RTT, 0, time.Minute},
			{"hold_down", g.HoldDown, 0, 24 * time.Hour},
		}
		for _, d := range durations {
			if d.v != 0 && (d.v < d.min || d.v > d.max) {
				fe(f(d.name), "must be %s..%s, got %s", d.min, d.max, d.v)
			}
		}
		if g.Losses < 0 || g.Losses > 100 {
			fe(f("losses"), "must be 1..100, got %d", g.Losses)
		}
		if g.LossRatio < 0 || g.LossRatio >= 1 {
			fe(f("loss_ratio"), "must be between 0 and 1 (0.3 = 30%%), got %v", g.LossRatio)
		}
		if g.RouteMetric < 0 {
			fe(f("route_metric"), "must not be negative, got %d", g.RouteMetric)
		}
		d := g.withDefaults()
		if d.Window < d.Interval {
			fe(f("window"), "must be at least the probe interval %s, got %s", d.Interval, d.Window)
		}
		if dm := d.Damping; dm.Penalty <= 0 || dm.Reuse <= 0 || dm.Suppress <= dm.Reuse || dm.HalfLife <= 0 {
			fe(f("damping"), "want penalty > 0, suppress > reuse > 0 and half_life > 0 (BGP: 1000, 2000, 750, 15m), got %+v", g.Damping)
		}
		if rl := d.RateLimit; rl.Burst < 1 || rl.Per <= 0 {
			fe(f("rate_limit"), "want burst >= 1 and per > 0 (default 10 per 1h), got %+v", g.RateLimit)
		}
		if d.Margin.LossRatio < 0 || d.Margin.LossRatio >= 1 || d.Margin.RTT < 0 {
			fe(f("margin"), "want loss_ratio in [0,1) and rtt >= 0, got %+v", g.Margin)
		}
	}
	// A prefix moved into a tunnel must not hold an endpoint the config
	// names: the tunnel's own packets would be routed into it. (Endpoints
	// only WireGuard knows are checked at run time and by diagnose.)
	for p, owner := range prefixes {
		for i, g := range gs {
			for _, side := range []struct {
				name string
				p    Path
			}{{"primary", g.Primary}, {"backup", g.Backup}} {
				if ep, err := netip.ParseAddrPort(side.p.Endpoint); err == nil && p.Contains(ep.Addr()) {
					fe(fmt.Sprintf("failover[%d].%s.endpoint", i, side.name), "%s lies inside prefix %s of group %q: routing that prefix into a tunnel would send the tunnel's own packets into itself; take the address out of the group's prefixes",
						ep, p, owner)
				}
			}
		}
	}
}

func validateRouteGroup(g Group, f func(string) string, fe remediate.FieldFunc, prefixes map[netip.Prefix]string, targets map[string]string) {
	if len(g.Prefixes) == 0 {
		fe(f("prefixes"), "at least one prefix is required: what the group moves to the backup")
	}
	for j, s := range g.Prefixes {
		pf := f(fmt.Sprintf("prefixes[%d]", j))
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			fe(pf, "%q is not a prefix such as 10.50.0.0/16", s)
		case p.Masked() != p:
			fe(pf, "%q has host bits set: did you mean %s?", s, p.Masked())
		case prefixes[p] != "":
			fe(pf, "%s is also moved by group %q: a prefix belongs to one group", p, prefixes[p])
		default:
			prefixes[p] = g.Name
		}
	}
	for _, x := range []struct {
		field, value, why string
	}{{"device", g.Device, "route mode"}, {"peer", g.Peer, "route mode"}, {"target", string(g.Target), "route mode"},
		{"primary.endpoint", g.Primary.Endpoint, "route mode"}, {"backup.endpoint", g.Backup.Endpoint, "route mode"}} {
		if x.value != "" {
			fe(f(x.field), "is for mode: endpoint; in %s each path names its own device and target", x.why)
		}
	}
	for _, side := range []struct {
		name string
		p    Path
	}{{"primary", g.Primary}, {"backup", g.Backup}} {
		switch d := side.p.Device; {
		case d == "":
			fe(f(side.name+".device"), "required: the WireGuard device of the %s tunnel", side.name)
		case len(d) > 15:
			fe(f(side.name+".device"), "device name %q is longer than 15 bytes (IFNAMSIZ)", d)
		}
		checkTarget(fe, f(side.name+".target"), side.p.Device, side.p.Target, g.Name, targets)
	}
	if g.Primary.Device != "" && g.Primary.Device == g.Backup.Device {
		fe(f("backup.device"), "is the primary's device %q too: failover needs a second tunnel (or mode: endpoint)", g.Primary.Device)
	}
}

func validateEndpointGroup(g Group, f func(string) string, fe remediate.FieldFunc, targets map[string]string) {
	switch d := g.Device; {
	case d == "":
		fe(f("device"), "required in endpoint mode: the WireGuard device whose peer's endpoint is swapped")
	case len(d) > 15:
		fe(f("device"), "device name %q is longer than 15 bytes (IFNAMSIZ)", d)
	}
	if _, err := wgtypes.ParseKey(g.Peer); err != nil {
		fe(f("peer"), "a value of %d characters is not a base64 WireGuard public key of 44 characters", len(g.Peer)) // never echoed: it might be a private key
	}
	checkTarget(fe, f("target"), g.Device, g.Target, g.Name, targets)
	if len(g.Prefixes) > 0 {
		fe(f("prefixes"), "endpoint mode moves no prefix: the tunnel and its routes stay, only the peer's endpoint changes")
	}
	for _, side := range []struct {
		name string
		p    Path
	}{{"primary", g.Primary}, {"backup", g.Backup}} {
		if side.p.Device != "" || side.p.Target != "" {
			fe(f(side.name+".device"), "is for route mode; in endpoint mode a path has endpoint, underlay_target and underlay_device")
		}
		if ap, err := netip.ParseAddrPort(side.p.Endpoint); err != nil || ap.Port() == 0 {
			fe(f(side.name+".endpoint"), "%q is not an IP:port such as 198.18.1.1:51820 (names are not resolved)", side.p.Endpoint)
		}
		if d := side.p.UnderlayDevice; len(d) > 15 {
			fe(f(side.name+".underlay_device"), "device name %q is longer than 15 bytes (IFNAMSIZ)", d)
		}
		if _, port, err := ProbeTarget(side.p.UnderlayTarget).Parse(); err == nil && port != 0 {
			fe(f(side.name+".underlay_target"), "is an address probed with ICMP outside the tunnel, not a TCP target")
			continue
		}
		checkTarget(fe, f(side.name+".underlay_target"), side.p.UnderlayDevice, ProbeTarget(side.p.UnderlayTarget), g.Name, targets)
	}
	if g.Primary.Endpoint != "" && g.Primary.Endpoint == g.Backup.Endpoint {
		fe(f("backup.endpoint"), "is the primary's endpoint %s too: endpoint failover needs a second uplink", g.Primary.Endpoint)
	}
}

// ProbeTarget is what a path probes: an address (an ICMP echo), or an
// address and a TCP port (a TCP connect, for paths that can pass ICMP and
// drop TCP). YAML: `target: 10.200.1.1`, or `target: {address: 10.200.1.1,
// tcp_port: 22}` (the shorthand `10.200.1.1:22` works too). It holds the
// address, or address:port.
type ProbeTarget string

// UnmarshalYAML implements yaml.Unmarshaler: a scalar, or a mapping of
// address and tcp_port (any other key is an error naming it).
func (t *ProbeTarget) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*t = ProbeTarget(n.Value)
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a target is an address or {address, tcp_port}", n.Line)
	}
	var addr, port string
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch k, v := n.Content[i].Value, n.Content[i+1].Value; k {
		case "address":
			addr = v
		case "tcp_port":
			port = v
		default:
			return fmt.Errorf("line %d: unknown field %q in a target: want address and tcp_port", n.Content[i].Line, k)
		}
	}
	if port == "" {
		*t = ProbeTarget(addr)
		return nil
	}
	*t = ProbeTarget(net.JoinHostPort(addr, port))
	return nil
}

// Parse returns the address and the TCP port (0: ICMP).
func (t ProbeTarget) Parse() (netip.Addr, uint16, error) {
	if ap, err := netip.ParseAddrPort(string(t)); err == nil {
		if ap.Port() == 0 {
			return netip.Addr{}, 0, errors.New("tcp_port must be 1-65535")
		}
		return ap.Addr().Unmap(), ap.Port(), nil
	}
	if host, port, err := net.SplitHostPort(string(t)); err == nil {
		if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
			return netip.Addr{}, 0, fmt.Errorf("tcp_port %q must be 1-65535", port)
		}
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address", host)
	}
	a, err := netip.ParseAddr(string(t))
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address", string(t))
	}
	return a, 0, nil
}

// checkTarget validates a probe target and that no other path probes it.
func checkTarget(fe remediate.FieldFunc, field, device string, target ProbeTarget, group string, targets map[string]string) {
	a, port, err := target.Parse()
	if err != nil {
		fe(field, "%v: the address probed for this path (or {address, tcp_port} for a TCP connect)", err)
		return
	}
	key := prober.Target{Device: device, Address: a, TCPPort: port}.Key()
	if other, ok := targets[key]; ok {
		fe(field, "%s (via %q) is already probed for %s: each path needs its own target", target, device, other)
	}
	targets[key] = fmt.Sprintf("group %q", group)
}
