package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/wgpulse/wgpulse/alerts"
	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

// StatusPath serves the agent's view as JSON (`wgpulse status`).
const StatusPath = "/api/v1/status"

// How often the continuous checks reread what a poll does not: the routing
// table and the firewall. A peer with an endpoint is reported for never
// handshaking after neverGrace.
const (
	routesEvery   = 30 * time.Second
	firewallEvery = time.Minute
	neverGrace    = 2 * time.Minute
)

// Status is the agent's view of every device and peer, with the health word
// `wgpulse status` prints. Its JSON is stable: fields are added, never
// renamed or removed, and Version changes if that ever has to happen.
type Status struct {
	Version  int                `json:"version"`
	Time     time.Time          `json:"time"`
	Devices  []DeviceStatus     `json:"devices"`
	Problems []diagnose.Finding `json:"problems"`
}

// DeviceStatus is one device.
type DeviceStatus struct {
	Name       string       `json:"name"`
	PublicKey  string       `json:"public_key"`
	ListenPort int          `json:"listen_port"`
	MTU        int          `json:"mtu"`
	Stale      bool         `json:"stale"`
	Error      string       `json:"error,omitempty"`
	Peers      []PeerStatus `json:"peers"`
}

// PeerStatus is one peer. Handshake age is null when there never was one;
// rates are over the last poll interval.
type PeerStatus struct {
	PublicKey           string          `json:"public_key"`
	Name                string          `json:"name"`
	Endpoint            string          `json:"endpoint"`
	AllowedIPs          []string        `json:"allowed_ips"`
	HandshakeAgeSeconds *float64        `json:"handshake_age_seconds"`
	ReceiveBytesPerSec  float64         `json:"receive_bytes_per_second"`
	TransmitBytesPerSec float64         `json:"transmit_bytes_per_second"`
	KeepaliveSeconds    float64         `json:"persistent_keepalive_seconds"`
	EndpointChanges     uint64          `json:"endpoint_changes"`
	Probe               *ProbeStatus    `json:"probe"`
	Failover            *FailoverStatus `json:"failover"`
	Health              string          `json:"health"` // ok, degraded, down, never
	Reason              string          `json:"reason"`
}

// ProbeStatus is the prober's view of the peer's target.
type ProbeStatus struct {
	Target        string  `json:"target"`
	State         string  `json:"state"` // unknown, up, down
	LossRatio     float64 `json:"loss_ratio"`
	RTTP50Seconds float64 `json:"rtt_p50_seconds"`
	RTTP99Seconds float64 `json:"rtt_p99_seconds"`
	JitterSeconds float64 `json:"jitter_seconds"`
	PathMTU       int     `json:"path_mtu"` // 0 = unknown
}

// FailoverStatus is the failover group the peer's tunnel belongs to.
type FailoverStatus struct {
	Group  string `json:"group"`
	Path   string `json:"path"`   // primary or backup: this peer's role
	Active string `json:"active"` // the path carrying traffic
}

// statusComponent runs the diagnose checks on every poll, exports
// wgpulse_config_problem and serves the status API.
type statusComponent struct {
	col        *collector.Collector
	prober     *prober.Prober
	remediator *remediate.Remediator
	routes     diagnose.RouteHandle // nil: route checks are skipped
	firewall   func(context.Context) (*diagnose.Ruleset, error)
	logger     *slog.Logger
	problems   problemFamily
	address    *prometheus.GaugeVec // one per address of a WireGuard device
	covering   *prometheus.GaugeVec // one per prefix containing such an address

	mu        sync.Mutex
	thresh    alerts.Config                               // loss and RTT thresholds of "degraded"
	failover  []diagnose.FailoverGroup                    // the route groups the checks look at
	exported  map[*prometheus.GaugeVec]map[[4]string]bool // label sets set to 1
	rates     map[string][]byteRate                       // per device of last, aligned with its peers; nil entries: no earlier read
	last      *collector.Snapshot
	findings  []diagnose.Finding
	held      map[string]bool // findings logged as present, by identity
	routesAt  time.Time
	kernel    diagnose.Kernel
	routesErr error
	host      *diagnose.Host
	hostErr   error
	fwAt      time.Time
	ruleset   *diagnose.Ruleset
	fwErr     error
}

func newStatusComponent(a *Agent, cfg Config) *statusComponent {
	fw := a.opts.Firewall
	if fw == nil {
		fw = diagnose.ReadFirewall
	}
	return &statusComponent{
		col: a.collector, prober: a.prober, remediator: a.remediator, routes: a.opts.Checks, firewall: fw,
		logger: a.logger.With("component", "checks"), thresh: cfg.Alerts, failover: failoverGroups(cfg), held: map[string]bool{},
		address: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "wgpulse", Name: "device_address_info",
			Help: "One series per address of a WireGuard device (with its prefix length).",
		}, []string{"device", "public_key", "address", "family"}),
		covering: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "wgpulse", Name: "device_address_prefix_info",
			Help: "One series per prefix that contains an address of a WireGuard device (IPv4: every length; IPv6: /0 and every fourth length), so a rule can test whether the far end's AllowedIPs cover it.",
		}, []string{"device", "public_key", "address", "prefix"}),
	}
}

func (c *statusComponent) Run(ctx context.Context) {
	for s := range c.col.Subscribe(ctx) {
		c.evaluate(ctx, s)
	}
}

func (c *statusComponent) ApplyConfig(_ context.Context, cfg Config) error {
	c.mu.Lock()
	c.thresh, c.failover = cfg.Alerts, failoverGroups(cfg)
	c.mu.Unlock()
	return nil
}

// failoverGroups are the route-mode failover groups of a config, for the
// checks (their backups must carry their prefixes).
func failoverGroups(cfg Config) []diagnose.FailoverGroup {
	var out []diagnose.FailoverGroup
	for _, g := range cfg.Remediate.Failover {
		if g.Mode == "endpoint" {
			continue
		}
		fg := diagnose.FailoverGroup{Name: g.Name, Primary: g.Primary.Device, Backup: g.Backup.Device}
		for _, s := range g.Prefixes {
			if p, err := netip.ParsePrefix(s); err == nil {
				fg.Prefixes = append(fg.Prefixes, p)
			}
		}
		out = append(out, fg)
	}
	return out
}

func (c *statusComponent) Register(r *registrar) {
	r.collectors = append(r.collectors, c.address, c.covering)
	r.gatherers = append(r.gatherers, &c.problems)
	r.route(StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(c.Status(time.Now()))
	})
	r.links = append(r.links, web.LandingLinks{Address: StatusPath, Text: "Status", Description: "devices, peers, health and problems (JSON; wgpulse status)"})
}

// node assembles what the checks read from a snapshot, the cached routes
// and firewall, and the prober's path MTUs.
func (c *statusComponent) node(ctx context.Context, s *collector.Snapshot) diagnose.Node {
	now := s.Time
	if c.routes != nil && now.Sub(c.routesAt) >= routesEvery {
		c.routesAt = now
		before := c.routesErr
		if c.kernel, c.routesErr = diagnose.ReadKernel(c.routes); c.routesErr != nil && (before == nil || before.Error() != c.routesErr.Error()) {
			c.logger.Warn("cannot read the routing table; route checks skipped", "err", c.routesErr)
		}
		c.exportAddresses(s)
		if hh, ok := c.routes.(diagnose.HostHandle); ok {
			before := c.hostErr
			h, err := diagnose.ReadHost(hh, "/proc/sys")
			c.host, c.hostErr = &h, err
			if err != nil && (before == nil || before.Error() != err.Error()) {
				c.logger.Warn("cannot read every host setting (rp_filter, forwarding, ip rules, qdiscs); those checks see zero values", "err", err)
			}
		}
	}
	if now.Sub(c.fwAt) >= firewallEvery {
		c.fwAt = now
		c.ruleset, c.fwErr = c.firewall(ctx)
	}
	n := diagnose.Node{Now: now, NeverGrace: neverGrace, Routes: c.kernel.Routes, LinkMTU: c.kernel.LinkMTU, Addrs: c.kernel.Addrs,
		Firewall: c.ruleset, FirewallErr: c.fwErr, PathMTU: peerPathMTUs(c.prober.PeerPathMTUs()), Errors: map[string]error{}, Failover: c.failover, Host: c.host,
		Previous: c.findings}
	for _, d := range s.Devices {
		if !d.Stale {
			n.Devices = append(n.Devices, d)
		}
	}
	for name, err := range s.Errors {
		if name != "" {
			n.Errors[name] = err
		}
	}
	return n
}

// peerPathMTUs keys the measured path MTUs by peer (diagnose.PeerKey). A
// peer probed at two addresses (its /32 and /128) has the smaller of the
// two, whatever order they come in: larger packets are lost on that path.
func peerPathMTUs(ms []prober.PeerPathMTU) map[string]int {
	out := make(map[string]int, len(ms))
	for _, m := range ms {
		k := diagnose.PeerKey(m.Device, m.PublicKey)
		if old, ok := out[k]; !ok || m.MTU < old {
			out[k] = m.MTU
		}
	}
	return out
}

// exportAddresses exports each WireGuard device's addresses and the
// prefixes containing them, for the cross-node AllowedIPs rule.
func (c *statusComponent) exportAddresses(s *collector.Snapshot) {
	address, covering := map[[4]string]bool{}, map[[4]string]bool{}
	for _, d := range s.Devices {
		for _, a := range c.kernel.Addrs[d.Name] {
			ip := a.Addr()
			if !ip.IsGlobalUnicast() {
				continue // link-local (the kernel gives every tun one): never a tunnel address
			}
			family := "IPv4"
			if ip.Is6() {
				family = "IPv6"
			}
			address[[4]string{d.Name, d.PublicKey, ip.String(), family}] = true
			for _, bits := range coveringLengths(ip.Is6()) {
				p, _ := ip.Prefix(bits)
				covering[[4]string{d.Name, d.PublicKey, ip.String(), p.String()}] = true
			}
		}
	}
	c.setOnes(c.address, address)
	c.setOnes(c.covering, covering)
}

// setOnes makes exactly these label sets of g read 1: new ones are set,
// gone ones deleted, so a scrape never sees the set empty in between (as
// it could after a Reset).
func (c *statusComponent) setOnes(g *prometheus.GaugeVec, want map[[4]string]bool) {
	if c.exported == nil {
		c.exported = map[*prometheus.GaugeVec]map[[4]string]bool{}
	}
	for k := range c.exported[g] {
		if !want[k] {
			g.DeleteLabelValues(k[:]...)
		}
	}
	for k := range want {
		g.WithLabelValues(k[:]...).Set(1)
	}
	c.exported[g] = want
}

// coveringLengths are the prefix lengths exported per address: every one
// for IPv4 (33 series), /0 and every fourth for IPv6 (33 series), which
// are the lengths AllowedIPs use in practice.
func coveringLengths(v6 bool) []int {
	var out []int
	if !v6 {
		for b := range 33 {
			out = append(out, b)
		}
		return out
	}
	for b := 0; b <= 128; b += 4 {
		out = append(out, b)
	}
	return out
}

func (c *statusComponent) evaluate(ctx context.Context, s *collector.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs := diagnose.Check(c.node(ctx, s))
	c.rates = peerRates(c.last, s)
	c.last, c.findings = s, fs
	now := map[string]bool{}
	for _, f := range fs {
		if f.Severity == diagnose.Info {
			continue
		}
		if strings.HasPrefix(f.Check, "handshake_") {
			continue // logged as connection events (handshake_lost), not once more here
		}
		id := f.Check + "|" + f.Device + "|" + f.Object
		now[id] = true
		if !c.held[id] {
			c.logger.Warn("configuration problem", "check", f.Check, "severity", f.Severity.String(), "device", f.Device,
				"object", f.Object, "evidence", f.Evidence, "fix", f.Fix)
		}
	}
	for id := range c.held {
		if !now[id] {
			c.logger.Info("configuration problem gone", "problem", id)
		}
	}
	c.held = now
	c.problems.set(fs)
}

// Status builds the status document from the latest snapshot.
func (c *statusComponent) Status(now time.Time) Status {
	c.mu.Lock()
	rates, last, findings, thresh := c.rates, c.last, c.findings, c.thresh
	c.mu.Unlock()
	st := Status{Version: 1, Time: now, Devices: []DeviceStatus{}, Problems: slices.Clone(findings)}
	if st.Problems == nil {
		st.Problems = []diagnose.Finding{}
	}
	if last == nil {
		return st
	}
	var groups []failover.GroupStatus
	if c.remediator != nil {
		if st, err := failover.StatusOf(c.remediator.Status()); err == nil {
			groups = st.Groups
		}
	}
	health := map[string]prober.Health{}
	for _, h := range c.prober.Health() {
		if h.Target.PublicKey != "" {
			health[diagnose.PeerKey(h.Target.Device, h.Target.PublicKey)] = h
		}
	}
	problems := map[string]bool{}
	for _, f := range findings {
		if f.Severity > diagnose.Info && f.PublicKey != "" {
			problems[diagnose.PeerKey(f.Device, f.PublicKey)+"|"+f.Check] = true
		}
	}
	for _, d := range last.Devices {
		ds := DeviceStatus{Name: d.Name, PublicKey: d.PublicKey, ListenPort: d.ListenPort, MTU: d.MTU, Stale: d.Stale, Peers: []PeerStatus{}}
		if err := last.Errors[d.Name]; err != nil {
			ds.Error = err.Error()
		}
		devRates := rates[d.Name]
		for j, p := range d.Peers {
			ps := PeerStatus{PublicKey: p.PublicKey, Name: p.Name, AllowedIPs: []string{}, KeepaliveSeconds: p.PersistentKeepalive.Seconds(), EndpointChanges: p.EndpointChanges}
			if p.Endpoint.IsValid() {
				ps.Endpoint = p.Endpoint.String()
			}
			for _, a := range p.AllowedIPs {
				ps.AllowedIPs = append(ps.AllowedIPs, a.String())
			}
			if age, ok := p.HandshakeAge(now); ok {
				secs := age.Seconds()
				ps.HandshakeAgeSeconds = &secs
			}
			if j < len(devRates) && devRates[j].known {
				ps.ReceiveBytesPerSec, ps.TransmitBytesPerSec = devRates[j].rx, devRates[j].tx
			}
			key := diagnose.PeerKey(d.Name, p.PublicKey)
			if h, ok := health[key]; ok {
				p50, p99, _ := c.prober.RTTQuantiles(h.Target.Key())
				ps.Probe = &ProbeStatus{Target: h.Target.Address.String(), State: h.State.String(), LossRatio: h.LossRatio,
					RTTP50Seconds: p50.Seconds(), RTTP99Seconds: p99.Seconds(), JitterSeconds: h.Jitter.Seconds(), PathMTU: h.PathMTU}
			}
			ps.Failover = failoverOf(groups, d.Name, p)
			ps.Health, ps.Reason = healthWord(d, p, ps, thresh, problems, key, now)
			ds.Peers = append(ds.Peers, ps)
		}
		st.Devices = append(st.Devices, ds)
	}
	return st
}

// failoverOf finds the group whose path runs through this peer: a route
// group's path on its device with a target the peer allows, or an
// endpoint group on its device and peer.
func failoverOf(groups []failover.GroupStatus, device string, p collector.Peer) *FailoverStatus {
	for _, g := range groups {
		if g.Mode == "endpoint" {
			if g.Device == device && g.Peer == p.PublicKey {
				return &FailoverStatus{Group: g.Name, Path: g.Active, Active: g.Active}
			}
			continue
		}
		for _, role := range []string{"primary", "backup"} {
			path := g.Paths[role]
			t, err := netip.ParseAddr(path.Target)
			if path.Device != device || err != nil {
				continue
			}
			for _, a := range p.AllowedIPs {
				if a.Contains(t) {
					return &FailoverStatus{Group: g.Name, Path: role, Active: g.Active}
				}
			}
		}
	}
	return nil
}

// healthWord is one word and its reason: never (no handshake yet), down (no
// session or the probe is down), degraded (loss or RTT over the alert
// thresholds, the path MTU below the device's, the backup carrying this
// primary's traffic, a configuration problem), else ok.
func healthWord(d collector.Device, p collector.Peer, ps PeerStatus, th alerts.Config, problems map[string]bool, key string, now time.Time) (string, string) {
	switch {
	case p.Handshake == collector.HandshakeNever && p.Endpoint.IsValid():
		return "never", "no handshake yet, endpoint " + p.Endpoint.String()
	case p.Handshake == collector.HandshakeNever:
		return "never", "no handshake yet and no endpoint: waiting for the peer"
	case p.Handshake == collector.HandshakeStale:
		return "down", fmt.Sprintf("last handshake %s ago (> 180 s)", now.Sub(p.LastHandshake).Round(time.Second))
	case ps.Probe != nil && ps.Probe.State == "down":
		return "down", "probe of " + ps.Probe.Target + " down"
	}
	var why []string
	if pr := ps.Probe; pr != nil {
		if pr.LossRatio > th.LossRatio {
			why = append(why, fmt.Sprintf("loss %.0f%%", 100*pr.LossRatio))
		}
		if pr.RTTP99Seconds > th.RTTP99.Seconds() {
			why = append(why, fmt.Sprintf("RTT p99 %s", seconds(pr.RTTP99Seconds)))
		}
		if pr.PathMTU > 0 && d.MTU > pr.PathMTU {
			why = append(why, fmt.Sprintf("path MTU %d < device MTU %d", pr.PathMTU, d.MTU))
		}
	}
	if f := ps.Failover; f != nil && f.Path == "primary" && f.Active == "backup" {
		why = append(why, "traffic on the backup path")
	}
	for check := range problems {
		if rest, ok := strings.CutPrefix(check, key+"|"); ok {
			why = append(why, "problem: "+rest)
		}
	}
	if len(why) > 0 {
		slices.Sort(why)
		return "degraded", strings.Join(why, ", ")
	}
	if ps.Probe != nil && ps.Probe.RTTP50Seconds > 0 {
		return "ok", fmt.Sprintf("handshake %s ago, RTT p50 %s", seconds(*ps.HandshakeAgeSeconds), seconds(ps.Probe.RTTP50Seconds))
	}
	return "ok", fmt.Sprintf("handshake %s ago", seconds(*ps.HandshakeAgeSeconds))
}

// byteRate is a peer's receive and transmit rate between two polls.
type byteRate struct {
	rx, tx float64
	known  bool // the peer was in the earlier poll
}

// peerRates are the byte rates of every peer of cur since prev, per device
// and aligned with cur's peers: a compact record, so the status keeps one
// snapshot, not two (2.8 MB each at 10,000 peers), and finds each peer's
// earlier counters in a map, not by a scan per peer.
func peerRates(prev, cur *collector.Snapshot) map[string][]byteRate {
	if prev == nil || !cur.Time.After(prev.Time) {
		return nil
	}
	dt := cur.Time.Sub(prev.Time).Seconds()
	out := make(map[string][]byteRate, len(cur.Devices))
	for _, d := range cur.Devices {
		before, ok := prev.Device(d.Name)
		if !ok {
			continue
		}
		index := make(map[string]int, len(before.Peers))
		for j := range before.Peers {
			index[before.Peers[j].PublicKey] = j
		}
		rs := make([]byteRate, len(d.Peers))
		for j := range d.Peers {
			p := &d.Peers[j]
			if k, ok := index[p.PublicKey]; ok {
				bp := &before.Peers[k]
				rs[j] = byteRate{rx: max(0, float64(p.ReceiveBytes-bp.ReceiveBytes)/dt), tx: max(0, float64(p.TransmitBytes-bp.TransmitBytes)/dt), known: true}
			}
		}
		out[d.Name] = rs
	}
	return out
}

func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Second:
		return d.Round(time.Second).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
