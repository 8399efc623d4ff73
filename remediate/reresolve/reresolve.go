// Package reresolve is the re-resolve policy: it points a peer whose
// endpoint is a hostname at that name's current address when the tunnel
// stops handshaking.
//
// WireGuard resolves an endpoint's hostname once, when the peer is
// configured (wg-quick up, wg set, wg syncconf). A hub behind a dynamic
// address, or a cloud VM that got a new public IP, is unreachable from then
// on until someone reloads. wireguard-tools' contrib/reresolve-dns re-resolves
// from cron when the latest handshake is older than 135 s: a tunnel that
// carries traffic handshakes every 120 s (REKEY_AFTER_TIME), so a handshake
// older than 120 s plus three 5 s retries (REKEY_TIMEOUT) means the peer did
// not answer. This policy does the same from the collector's polls, and
// only while traffic was sent (an idle tunnel does not handshake, and is
// not down): it resolves the name with the system resolver, honours the
// answer's TTL, and tries each address of the answer in turn (an IPv6
// address whose path blackholes falls back to the IPv4 one after try_for).
// It never changes an endpoint while the handshake is fresh, and it leaves
// the endpoints of peers in an endpoint-mode failover group to that group.
package reresolve

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// Config is the `remediate.reresolve:` section.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// Devices are the WireGuard devices whose peers' endpoints the policy
	// may set.
	Devices []string `yaml:"devices"`
	// Endpoints are hostnames by public key (host:port), for peers not
	// configured from a wg-quick file of collector.peer_names_files (whose
	// `Endpoint = host:port` lines are read). An entry here wins.
	Endpoints map[string]string `yaml:"endpoints"`
	// StaleAfter: a handshake older than this, while traffic was sent since
	// it, is stale (default 135s, reresolve-dns.sh's).
	StaleAfter time.Duration `yaml:"stale_after"`
	// TryFor is how long one address gets to complete a handshake before
	// the next address of the answer is tried (default 15s: three of
	// WireGuard's 5 s handshake retries).
	TryFor    time.Duration       `yaml:"try_for"`
	RateLimit remediate.RateLimit `yaml:"rate_limit"`
}

// DefaultConfig is the section's defaults: off.
func DefaultConfig() Config {
	return Config{StaleAfter: 135 * time.Second, TryFor: 15 * time.Second, RateLimit: remediate.RateLimit{Burst: 12, Per: time.Hour}}
}

// minStale: below REKEY_AFTER_TIME plus one REKEY_TIMEOUT, a healthy
// tunnel's handshake is that old between two rekeys.
const minStale = 125 * time.Second

// Validate names the offending field ("reresolve.endpoints[<key>]").
func (c Config) Validate(fe remediate.FieldFunc) {
	if c.Enabled && len(c.Devices) == 0 {
		fe("reresolve.devices", "required when reresolve.enabled: the WireGuard devices whose peers' endpoints the policy may set")
	}
	for i, d := range c.Devices {
		if d == "" || len(d) > 15 {
			fe(fmt.Sprintf("reresolve.devices[%d]", i), "must be a device name of 1-15 bytes, got %q", d)
		}
	}
	for k, v := range c.Endpoints {
		f := fmt.Sprintf("reresolve.endpoints[%s]", k)
		if _, err := wgtypes.ParseKey(k); err != nil {
			fe("reresolve.endpoints", "a key of %d characters is not a base64 WireGuard public key", len(k))
			continue
		}
		if _, err := netip.ParseAddrPort(v); err == nil {
			fe(f, "%q is an address: there is nothing to resolve (set the endpoint with wg, or give a hostname)", v)
		} else if _, ok := collector.EndpointHost(v); !ok {
			fe(f, "want host:port with a port of 1-65535 (as in a wg-quick Endpoint line), got %q", v)
		}
	}
	if c.StaleAfter < minStale || c.StaleAfter > 24*time.Hour {
		fe("reresolve.stale_after", "must be %s..24h (a healthy tunnel's handshake is up to 120 s + 5 s old between rekeys; default 135s), got %s", minStale, c.StaleAfter)
	}
	if c.TryFor < 5*time.Second || c.TryFor > c.StaleAfter {
		fe("reresolve.try_for", "must be 5s (one handshake retry) .. stale_after, got %s", c.TryFor)
	}
	if c.RateLimit.Burst < 1 || c.RateLimit.Per <= 0 {
		fe("reresolve.rate_limit", "want burst >= 1 and per > 0 (default 12 per 1h), got %+v", c.RateLimit)
	}
}

// Name is the policy's name in audit lines, metrics and the state file.
const Name = "reresolve"

// ActionSetEndpoint is the policy's one action.
const ActionSetEndpoint = "set_endpoint"

// Why a wanted endpoint change was not made.
const (
	// SuppressUnresolvable: the name did not resolve (NXDOMAIN, timeout).
	SuppressUnresolvable = "unresolvable"
	// SuppressNoNewAddress: every address of the answer was tried (or is the
	// endpoint in use): nothing to do until the answer changes.
	SuppressNoNewAddress = "no_new_address"
)

var (
	actions = []string{ActionSetEndpoint}
	reasons = []string{SuppressUnresolvable, SuppressNoNewAddress}
)

const (
	lookupTimeout = 5 * time.Second
	// lookupWait is how long a tick waits for a lookup it started: a
	// resolver that answers at once is used at once, a slow one next tick.
	lookupWait = 50 * time.Millisecond
	// retryLookup is how long a failed lookup, or an answer without a TTL
	// (an /etc/hosts entry), is kept.
	retryLookup = 30 * time.Second
	// minTTL floors a DNS TTL, so a TTL of 0 does not mean a lookup a tick.
	minTTL = 5 * time.Second
)

// rrState is what the policy remembers of one peer, persisted.
type rrState struct {
	Device string `json:"device"`
	Peer   string `json:"peer"`
	Host   string `json:"host"`
	// Original is the endpoint before the policy's first change; Applied
	// the last one it set (the README's undo by hand uses both).
	Original netip.AddrPort `json:"original,omitzero"`
	Applied  netip.AddrPort `json:"applied,omitzero"`
	Since    time.Time      `json:"since,omitzero"`
	remediate.Rails
}

// unit is one peer whose endpoint is a hostname.
type unit struct {
	st      rrState
	name    string
	key     wgtypes.Key
	episode remediate.Episode

	polled    time.Time // the snapshot last read
	firstSeen time.Time
	tx        int64
	sentAt    time.Time // the last poll that saw bytes sent
	handshake time.Time
	endpoint  netip.AddrPort
	stale     bool

	answer    []netip.AddrPort // the last answer, with the host's port
	expires   time.Time        // when the answer (or a failed lookup) runs out
	lookupErr string
	tried     map[netip.AddrPort]time.Time // addresses tried in this stale episode
	inflight  chan lookupResult            // a lookup under way
	trying    time.Time                    // when the last change of ours was made
}

// Policy is the re-resolve policy over the peers of its devices.
type Policy struct {
	c       Config
	r       Resolver
	exclude map[string]string // device/public key -> the failover group that owns its endpoint
	said    map[string]bool   // excluded peers logged
	units   map[string]*unit
	saved   map[string]rrState // state file parts of peers not seen yet
	m       *metrics
}

var _ remediate.Policy = (*Policy)(nil)

// New returns the policy for its section; r nil is the system resolver.
// exclude are the peers (device/public key) whose endpoint another policy
// owns, with that owner's name.
func New(c Config, r Resolver, exclude map[string]string) *Policy {
	if r == nil {
		r = System{}
	}
	return &Policy{c: c, r: r, exclude: exclude, said: map[string]bool{}, units: map[string]*unit{}, saved: map[string]rrState{}, m: newMetrics()}
}

// Name implements remediate.Policy.
func (p *Policy) Name() string { return Name }

// Every implements remediate.Policy: the peers are looked at every second
// (a lookup only when one is due).
func (p *Policy) Every() time.Duration { return time.Second }

// Targets implements remediate.Policy: the handshake is the signal.
func (p *Policy) Targets() []prober.Target { return nil }

// WantsResults implements remediate.Policy.
func (p *Policy) WantsResults() bool { return false }

// Observe implements remediate.Policy: the policy reads the latest
// snapshot on its tick.
func (p *Policy) Observe(remediate.Env, remediate.Signal) bool { return false }

func (p *Policy) hostOf(pr collector.Peer) string {
	if h, ok := p.c.Endpoints[pr.PublicKey]; ok {
		return h
	}
	return pr.EndpointHost
}

// Decide implements remediate.Policy: every peer of its devices whose
// endpoint is a hostname.
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
			key := remediate.PeerKey(d.Name, pr.PublicKey)
			host := p.hostOf(pr)
			if host == "" {
				continue
			}
			if owner, ok := p.exclude[key]; ok {
				if !p.said[key] {
					env.Logger.Info("reresolve leaves this peer's endpoint to its endpoint failover group", "device", d.Name,
						"peer", remediate.PeerLabel(pr.PublicKey, pr.Name), "group", owner)
					p.said[key] = true
				}
				continue
			}
			u := p.unit(d, pr, host, env.Snapshot.Time)
			seen[key] = true
			plans = append(plans, p.evaluate(env, u))
		}
	}
	for k, u := range p.units { // peers gone from read devices (or without a hostname now)
		if d, ok := env.Snapshot.Device(u.st.Device); ok && !d.Stale && !seen[k] {
			p.unexport(u)
			delete(p.units, k)
		}
	}
	return plans
}

func (p *Policy) unit(d *collector.Device, pr collector.Peer, host string, at time.Time) *unit {
	key := remediate.PeerKey(d.Name, pr.PublicKey)
	u := p.units[key]
	if u == nil {
		k, _ := wgtypes.ParseKey(pr.PublicKey)
		u = &unit{st: rrState{Device: d.Name, Peer: pr.PublicKey}, key: k, firstSeen: at, tx: pr.TransmitBytes, tried: map[netip.AddrPort]time.Time{}}
		if st, ok := p.saved[key]; ok { // the rails and the original endpoint survive a restart
			u.st = st
			delete(p.saved, key)
		}
		p.units[key] = u
	}
	if u.name != pr.Name || u.st.Host != host {
		p.unexport(u)
		if u.st.Host != host {
			u.answer, u.expires, u.lookupErr = nil, time.Time{}, ""
		}
		u.name, u.st.Host = pr.Name, host
		p.export(u)
	}
	if at.After(u.polled) {
		if pr.TransmitBytes > u.tx {
			u.sentAt = at
		}
		u.polled, u.tx, u.handshake, u.endpoint = at, pr.TransmitBytes, pr.LastHandshake, pr.Endpoint
	}
	return u
}

// isStale: the handshake is older than stale_after (or there was none
// since the peer was first seen that long ago) while traffic was sent
// after it, recently. Before a poll saw bytes sent, the peer is unknown,
// and unknown is not down.
func (p *Policy) isStale(u *unit, now time.Time) bool {
	since := u.handshake
	if since.IsZero() {
		since = u.firstSeen
	}
	if now.Sub(since) < p.c.StaleAfter {
		return false
	}
	return !u.sentAt.IsZero() && u.sentAt.After(u.handshake) && now.Sub(u.sentAt) < p.c.StaleAfter
}

// evaluate is the policy for one peer at env.Now: a plan to set the next
// untried address of the name, or a suppressed one saying why not, or
// nothing while the handshake is fresh.
func (p *Policy) evaluate(env remediate.Env, u *unit) remediate.Plan {
	now := env.Now
	d := remediate.Decision{Group: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name)}
	plan := remediate.Plan{Decision: d, Rails: &u.st.Rails, Limits: remediate.Limits{Rate: p.c.RateLimit}, Episode: &u.episode}
	stale := p.isStale(u, now)
	if stale != u.stale {
		u.stale = stale
		p.export(u)
	}
	if !stale {
		clear(u.tried) // the episode is over: every address may be tried again next time
		u.trying = time.Time{}
		return plan
	}
	if !u.trying.IsZero() && now.Sub(u.trying) < p.c.TryFor {
		return plan // the address set last gets its chance to handshake
	}
	// A lookup runs on its own goroutine (a resolver that times out holds
	// it for lookupTimeout): the policy's other peers go on meanwhile, and
	// this one waits for the answer.
	if u.inflight == nil && !now.Before(u.expires) { // no answer yet, or its TTL (a failed lookup's retry) ran out
		u.inflight = p.startLookup(u.st.Host)
	}
	if u.inflight != nil {
		select {
		case res := <-u.inflight:
			u.inflight = nil
			p.record(env, u, res.ans, res.err)
		case <-time.After(lookupWait):
			return plan
		}
	}
	age := "never handshaked"
	if !u.handshake.IsZero() {
		age = fmt.Sprintf("handshake %s old", now.Sub(u.handshake).Round(time.Second))
	}
	d.Action, d.From, d.Code = ActionSetEndpoint, u.endpoint.String(), "handshake_stale"
	if u.lookupErr != "" {
		d.Suppressed = SuppressUnresolvable
		d.Reason = fmt.Sprintf("%s while sending, but %s does not resolve (%s): the endpoint stays; fix the name or its DNS (retried in %s)",
			age, u.st.Host, u.lookupErr, u.expires.Sub(now).Round(time.Second))
		plan.Decision = d
		return plan
	}
	if u.endpoint.IsValid() && slices.Contains(u.answer, u.endpoint) {
		if _, ok := u.tried[u.endpoint]; !ok {
			u.tried[u.endpoint] = now // in use and stale: it was tried
		}
	}
	var next netip.AddrPort
	for _, a := range u.answer {
		if at, ok := u.tried[a]; a != u.endpoint && (!ok || now.Sub(at) >= p.c.StaleAfter) {
			next = a
			break
		}
	}
	if !next.IsValid() {
		d.Suppressed = SuppressNoNewAddress
		d.Reason = fmt.Sprintf("%s while sending; %s resolves to %s, each tried or in use: nothing to try until the answer changes (TTL ends in %s)",
			age, u.st.Host, addrList(u.answer), u.expires.Sub(now).Round(time.Second))
		plan.Decision = d
		return plan
	}
	d.To = next.String()
	d.Reason = fmt.Sprintf("%s while sending: %s resolves to %s; trying %s", age, u.st.Host, addrList(u.answer), next)
	plan.Decision = d
	plan.Changes = []remediate.Change{remediate.SetEndpoint{Device: u.st.Device, Peer: u.key, Endpoint: next}}
	was := u.endpoint
	plan.Commit = func(now time.Time) { // in dry-run too: the policy walks the answer as it would in auto
		if !u.st.Original.IsValid() {
			u.st.Original = was
		}
		u.st.Applied, u.st.Since = next, now
		u.tried[next], u.trying = now, now
	}
	plan.Failed = func(now time.Time) { u.tried[next] = now }
	return plan
}

type lookupResult struct {
	ans Answer
	err error
}

// startLookup resolves hostport's host on a goroutine of its own (bounded
// by lookupTimeout); the result comes on the channel.
func (p *Policy) startLookup(hostport string) chan lookupResult {
	host, _, _ := net.SplitHostPort(hostport)
	ch := make(chan lookupResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		defer cancel()
		ans, err := p.r.Resolve(ctx, host)
		ch <- lookupResult{ans, err}
	}()
	return ch
}

// record takes one lookup's result into the unit and its metrics.
func (p *Policy) record(env remediate.Env, u *unit, ans Answer, err error) {
	host, port, _ := net.SplitHostPort(u.st.Host)
	pn, _ := netip.ParseAddrPort("0.0.0.0:" + port)
	now := env.Now
	peer := remediate.PeerLabel(u.st.Peer, u.name)
	switch {
	case err != nil:
		u.lookupErr, u.expires = lookupError(err), now.Add(retryLookup)
		p.count(u, "error")
		env.Logger.Warn("reresolve: cannot resolve the peer's endpoint hostname: its endpoint stays", "device", u.st.Device, "peer", peer,
			"host", host, "err", err, "retry_in", retryLookup)
		return
	case len(ans.Addrs) == 0:
		u.lookupErr, u.expires = "no address", now.Add(retryLookup)
		p.count(u, "empty")
		env.Logger.Warn("reresolve: the peer's endpoint hostname has no A or AAAA record: its endpoint stays", "device", u.st.Device, "peer", peer, "host", host)
		return
	}
	ttl := ans.TTL
	if ttl == 0 {
		ttl = retryLookup
	}
	ttl = max(ttl, minTTL)
	answer := make([]netip.AddrPort, 0, len(ans.Addrs))
	for _, a := range ans.Addrs {
		answer = append(answer, netip.AddrPortFrom(a, pn.Port()))
	}
	changed := !slices.Equal(answer, u.answer)
	u.answer, u.expires, u.lookupErr = answer, now.Add(ttl), ""
	p.count(u, "ok")
	p.m.addresses.With(p.labels(u)).Set(float64(len(answer)))
	env.Logger.Info("reresolve: resolved the peer's endpoint hostname", "device", u.st.Device, "peer", peer, "host", host,
		"addresses", addrList(answer), "ttl", ttl, "changed", changed)
}

func addrList(as []netip.AddrPort) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// Reconcile implements remediate.Policy: an endpoint is WireGuard's to
// roam, so a different one is not a conflict.
func (p *Policy) Reconcile(remediate.Env) []remediate.Conflict { return nil }

// Undo implements remediate.Policy: nothing. The endpoint the policy set is
// the address the peer's own hostname resolves to, what `wg-quick up`
// would set; putting the old one back would point the peer at the address
// that stopped answering. The original is in the state file and the audit
// line (README: undo by hand).
func (p *Policy) Undo(remediate.Env, string, remediate.Policy) []remediate.Plan { return nil }

// Start implements remediate.Policy: the saved rails and original
// endpoints wait for their peers' first poll.
func (p *Policy) Start(_ remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	if saved == nil {
		return nil, nil
	}
	var units map[string]rrState
	if err := json.Unmarshal(saved, &units); err != nil {
		return nil, err
	}
	for k, st := range units {
		if _, err := wgtypes.ParseKey(st.Peer); err == nil {
			p.saved[k] = st
		}
	}
	return nil, nil
}

// Inherit implements remediate.Policy: the peers keep their state.
func (p *Policy) Inherit(env remediate.Env, prev remediate.Policy) {
	var was []string
	if old, ok := prev.(*Policy); ok {
		p.units, p.saved, p.m = old.units, old.saved, old.m
		was = old.devices()
		for k, u := range p.units {
			if !slices.Contains(p.devices(), u.st.Device) {
				p.unexport(u)
				delete(p.units, k)
			}
		}
	}
	env.FollowUnits(was, p.devices(), actions, reasons)
}

func (p *Policy) devices() []string {
	if !p.c.Enabled {
		return nil
	}
	return p.c.Devices
}

// State implements remediate.Policy: the peers with a change or a history.
func (p *Policy) State() any {
	st := map[string]rrState{}
	for k, s := range p.saved {
		st[k] = s
	}
	for k, u := range p.units {
		if u.st.Applied.IsValid() || u.st.Switches > 0 {
			st[k] = u.st
		}
	}
	return st
}

// Owned implements remediate.Policy: the policy owns no route.
func (p *Policy) Owned() []remediate.Route { return nil }

// peerStatus is one peer in GET /-/remediate.
type peerStatus struct {
	Device    string    `json:"device"`
	Peer      string    `json:"peer"`
	Host      string    `json:"host"`
	Endpoint  string    `json:"endpoint"`
	Stale     bool      `json:"stale"`
	Answer    []string  `json:"answer,omitempty"`
	Expires   time.Time `json:"answer_expires,omitzero"`
	LookupErr string    `json:"lookup_error,omitempty"`
}

// Status implements remediate.Policy: each peer's name, answer and
// staleness under "reresolve".
func (p *Policy) Status(time.Time) any {
	if !p.c.Enabled {
		return nil
	}
	out := []peerStatus{}
	for _, u := range p.units {
		ps := peerStatus{Device: u.st.Device, Peer: remediate.PeerLabel(u.st.Peer, u.name), Host: u.st.Host, Stale: u.stale,
			Expires: u.expires, LookupErr: u.lookupErr}
		if u.endpoint.IsValid() {
			ps.Endpoint = u.endpoint.String()
		}
		for _, a := range u.answer {
			ps.Answer = append(ps.Answer, a.String())
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b peerStatus) int { return strings.Compare(a.Device+a.Peer, b.Device+b.Peer) })
	return map[string]any{"reresolve": out}
}

type metrics struct {
	lookups   *prometheus.CounterVec
	stale     *prometheus.GaugeVec
	addresses *prometheus.GaugeVec
	info      *prometheus.GaugeVec
}

func newMetrics() *metrics {
	labels := []string{"device", "public_key", "name"}
	return &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_reresolve_lookups_total",
			Help: "Lookups of a peer's endpoint hostname by result: ok, error (NXDOMAIN, timeout: the log line says), empty (no A or AAAA record).",
		}, append(labels, "result")),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_reresolve_handshake_stale",
			Help: "1 while the peer's handshake is older than reresolve.stale_after and traffic was sent: the policy re-resolves its hostname.",
		}, labels),
		addresses: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_reresolve_answer_addresses",
			Help: "Addresses (A and AAAA) in the last answer for the peer's endpoint hostname.",
		}, labels),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_reresolve_peer_info",
			Help: "A peer whose endpoint the re-resolve policy follows, with its hostname (host:port); always 1.",
		}, append(labels, "host")),
	}
}

func (m *metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.lookups, m.stale, m.addresses, m.info}
}

// Describe implements prometheus.Collector.
func (p *Policy) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range p.m.all() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (p *Policy) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.m.all() {
		c.Collect(ch)
	}
}

func (p *Policy) labels(u *unit) prometheus.Labels {
	return prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer, "name": u.name}
}

func (p *Policy) count(u *unit, result string) {
	l := p.labels(u)
	l["result"] = result
	p.m.lookups.With(l).Inc()
}

func (p *Policy) export(u *unit) {
	l := p.labels(u)
	p.m.stale.With(l).Set(b2f(u.stale))
	for _, r := range []string{"ok", "error", "empty"} {
		l["result"] = r
		p.m.lookups.With(l).Add(0)
	}
	delete(l, "result")
	l["host"] = u.st.Host
	p.m.info.With(l).Set(1)
}

func (p *Policy) unexport(u *unit) {
	l := prometheus.Labels{"device": u.st.Device, "public_key": u.st.Peer}
	for _, c := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{p.m.lookups, p.m.stale, p.m.addresses, p.m.info} {
		c.DeletePartialMatch(l)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
