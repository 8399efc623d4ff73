package prober

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/collector/stream"
)

// Target is one address probed through one WireGuard device, or, with no
// device, wherever the routing table sends it (an underlay target).
type Target struct {
	Device    string
	Address   netip.Addr
	PublicKey string        // the peer whose AllowedIPs hold Address ("" if none)
	Name      string        // target name (config) or the peer's friendly name
	Size      int           // ICMP payload bytes
	Interval  time.Duration // between probes
	DeviceMTU int           // upper bound of the path MTU search; 0 = unknown
	// Timeout overrides prober.timeout: a probe without reply after it is
	// lost (0 = prober.timeout).
	Timeout time.Duration
	// Window overrides prober.window for the loss ratio (0 = prober.window).
	Window time.Duration
	// Suspect, when set, sends an extra probe this long (or twice the
	// smoothed RTT, if longer) after the newest probe while it is
	// unanswered, until a reply comes or the target is down: a dead path is
	// confirmed in a fraction of the interval. Extra probes are not SLI
	// probes.
	Suspect time.Duration
	// Rule decides when the target is down (zero: 3 losses in a row).
	Rule Rule
	// TCPPort, when set, makes the probe a TCP connect to Address:TCPPort
	// through the device instead of an ICMP echo: a connection accepted or
	// refused (RST) is a reply, its connect time the RTT. No path MTU search.
	TCPPort uint16
}

// Key identifies a target: one address (and TCP port) on one device.
func (t Target) Key() string { return t.Device + "|" + t.Label() }

// Label is the target label of its series: the address, or address:port
// for a TCP target.
func (t Target) Label() string {
	if t.TCPPort != 0 {
		return netip.AddrPortFrom(t.Address, t.TCPPort).String()
	}
	return t.Address.String()
}

func (t Target) engineKey() engineKey { return engineKey{t.Device, t.Address.Is6(), t.TCPPort} }

// Result is the end of one probe: a reply within the timeout, or lost.
type Result struct {
	Target  Target
	Sent    time.Time
	Success bool
	RTT     time.Duration
	Extra   bool // an extra probe of a suspicion, not an SLI probe
}

// Health is the current view of one target, for the remediator.
type Health struct {
	Target Target
	// State is unknown until probes give a verdict, then up or down by the
	// target's Rule; Since is when it entered that state and Reason says why.
	State        State
	Since        time.Time
	Reason       string
	DownBy       string        // while down: DownByLosses, DownByLossRatio or DownByRTT
	Up           bool          // State == StateUp
	LostInARow   int           // probes lost since the newest answered one, in send order
	LossRatio    float64       // over the target's window
	RTT          time.Duration // of the last reply
	MedianRTT    time.Duration // of the last 8 SLI replies; 0 with fewer than 5
	Jitter       time.Duration // RFC 3550 A.8 estimate
	Probes       uint64
	Failures     uint64
	Late         uint64 // replies after their probe was counted lost
	Duplicates   uint64
	LastSuccess  time.Time
	PathMTU      int // largest inner IP packet known to pass; 0 = unknown
	PathMTUBelow int // with PMTUState below_min: the floor size that did not pass
	// PathMTUCeiling is what bounded the search: the device MTU, or a size
	// the local stack refused (EMSGSIZE) just above PathMTU. A PathMTU equal
	// to it passed everything the search could try, so the path MTU is that
	// or more (a capped search is not a measurement of the path).
	PathMTUCeiling int
	PMTUState      string // base, searching, search_complete, below_min, error, disabled
}

// StateChange is a target entering a new state (or a down target's reason
// changing). Health is the target's view at that moment.
type StateChange struct {
	Health Health
	From   State
}

// Options are the prober's transports; zero values use real sockets.
type Options struct {
	// Open returns an ICMP transport bound to device.
	Open func(device string, v6 bool) (Conn, error)
	// OpenTCP returns a TCP connect transport bound to device, to port.
	OpenTCP func(device string, v6 bool, port uint16) (Conn, error)
	// PMTUProbe sends one DF probe of an inner IP packet of size bytes.
	PMTUProbe PMTUProbeFunc
}

// OwnTargets is the owner name of the prober's own targets (auto-targets
// and prober.targets) in SetTargets. Targets of any other owner (the
// remediator's failover paths) take precedence for the same address.
const OwnTargets = ""

// Prober probes targets until its context ends.
type Prober struct {
	logger  *slog.Logger
	open    func(device string, v6 bool) (Conn, error)
	openTCP func(device string, v6 bool, port uint16) (Conn, error)
	metrics *metrics
	results *stream.Hub[Result]
	changes *stream.Hub[StateChange]

	mu        sync.Mutex // guards everything below
	cfg       Config
	sets      map[string][]Target // by owner
	unopened  int                 // targets asked for whose socket did not open (applyLocked retries them)
	overrides map[string]string   // target key -> owner that won over another, logged once
	targets   map[string]*target
	spare     *scrapeBufs // the last scrape's buffers, for the next one
	// errDevices are the devices whose error counter is exported.
	errDevices map[string]bool
	engines    map[engineKey]*engine
	sched      schedHeap
	openErrs   map[engineKey]string // last logged open error per engine
	staleAt    time.Time            // the last ifindex check of the bound sockets
	stretched  float64              // last interval stretch factor logged
	minAhead   time.Duration        // the smallest sendAhead of the targets
	wake       chan struct{}
	ids        sync.Map // echo IDs of this prober's engines: their replies are never stray

	pmtu *pmtuRunner
}

type engineKey struct {
	device  string
	v6      bool
	tcpPort uint16 // a TCP connect transport to this port; 0 = ICMP
}

// New returns a prober; call SetTargets and Run.
func New(cfg Config, logger *slog.Logger, opts Options) (*Prober, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := newMetrics(cfg)
	p := &Prober{
		logger:    logger,
		open:      opts.Open,
		openTCP:   opts.OpenTCP,
		metrics:   m,
		results:   stream.New[Result](stream.Policy{Limit: 4096, OnDrop: func(n int) { m.resultsDropped.Add(float64(n)) }}),
		changes:   stream.New[StateChange](stream.Policy{Key: func(v any) string { return v.(StateChange).Health.Target.Key() }}),
		cfg:       cfg,
		sets:      map[string][]Target{},
		overrides: map[string]string{},
		targets:   map[string]*target{},
		engines:   map[engineKey]*engine{},
		openErrs:  map[engineKey]string{},
		wake:      make(chan struct{}, 1),
		stretched: 1,
	}
	if p.open == nil {
		p.open = openSocket
	}
	if p.openTCP == nil {
		p.openTCP = openTCP
	}
	p.pmtu = newPMTURunner(p, opts.PMTUProbe)
	return p, nil
}

// ApplyConfig changes intervals, timeout, window and PMTU settings; targets
// already probed take them at once. Auto-targets follow at the next
// SetTargets of the prober's own targets.
func (p *Prober) ApplyConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	// The histogram's buckets are fixed for the life of its series.
	if !slices.Equal(cfg.RTTBuckets, p.cfg.RTTBuckets) {
		p.logger.Warn("prober.rtt_buckets changed: the new buckets take effect at the next restart", "running", p.cfg.RTTBuckets, "configured", cfg.RTTBuckets)
		cfg.RTTBuckets = p.cfg.RTTBuckets
	}
	if cfg.NativeHistograms != p.cfg.NativeHistograms {
		p.logger.Warn("prober.native_histograms changed: takes effect at the next restart", "running", p.cfg.NativeHistograms)
		cfg.NativeHistograms = p.cfg.NativeHistograms
	}
	enabled := cfg.PMTU.Enabled && !p.cfg.PMTU.Enabled
	p.cfg = cfg
	p.applyLocked()
	p.mu.Unlock()
	if enabled {
		p.pmtu.enable()
	}
	p.poke()
	return nil
}

// Config returns the configuration in force.
func (p *Prober) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

func (p *Prober) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Subscribe returns every finished probe from now on. A reader that falls
// more than 4,096 results behind loses the oldest (counted in
// wgpulse_prober_results_dropped_total) rather than slowing the prober. The
// channel closes when ctx ends.
func (p *Prober) Subscribe(ctx context.Context) <-chan Result {
	return p.results.Subscribe(ctx)
}

// SubscribeChanges returns every state change of every target from now on.
// It never blocks the prober; a reader that falls far behind still gets the
// newest change of every target. The channel closes when ctx ends.
func (p *Prober) SubscribeChanges(ctx context.Context) <-chan StateChange {
	return p.changes.Subscribe(ctx)
}

// ResetState starts a new verdict for the target with this key: its state
// is unknown until probes sent from now on say otherwise (the remediator
// calls it after moving the target's traffic to another path: the old
// verdict is about the old path), and the next probe goes out at once (it
// also tells a roaming peer where we are now). Probes sent before still
// count in the SLI.
func (p *Prober) ResetState(key string) {
	p.mu.Lock()
	defer p.poke()
	defer p.mu.Unlock()
	t := p.targets[key]
	if t == nil {
		return
	}
	now := time.Now()
	t.e.mu.Lock()
	t.resetState(now)
	t.e.mu.Unlock()
	t.next = now
	p.reschedule(t)
}

// ResearchPMTU starts a full path MTU search of the target now (after its
// device MTU changed, say).
func (p *Prober) ResearchPMTU(key string) {
	p.mu.Lock()
	t := p.targets[key]
	p.mu.Unlock()
	if t == nil {
		return
	}
	now := time.Now()
	t.e.mu.Lock()
	research := !t.pmtu.running
	if research {
		t.pmtu.state, t.pmtu.due = pmtuBase, now
	}
	t.e.mu.Unlock()
	if research {
		p.pmtu.wake(now) // not under e.mu: the runner takes its own lock first
	}
}

// HealthOf returns the view of the target with this key (Target.Key).
func (p *Prober) HealthOf(key string) (Health, bool) {
	p.mu.Lock()
	t := p.targets[key]
	p.mu.Unlock()
	if t == nil {
		return Health{}, false
	}
	return t.health(), true
}

// RTTQuantiles returns the median and 99th percentile RTT of the last 64
// replies of the target with this key (zeros with fewer than 5), for
// `wgpulse status`.
func (p *Prober) RTTQuantiles(key string) (p50, p99 time.Duration, ok bool) {
	p.mu.Lock()
	t := p.targets[key]
	p.mu.Unlock()
	if t == nil {
		return 0, 0, false
	}
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	q := t.rttQuantiles(len(t.rtts), 0.5, 0.99)
	return q[0], q[1], true
}

// Health returns the view of every target, sorted by key.
func (p *Prober) Health() []Health {
	p.mu.Lock()
	ts := make([]*target, 0, len(p.targets))
	for _, t := range p.targets {
		ts = append(ts, t)
	}
	p.mu.Unlock()
	out := make([]Health, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.health())
	}
	slices.SortFunc(out, func(a, b Health) int {
		if c := strings.Compare(a.Target.Device, b.Target.Device); c != 0 {
			return c
		}
		return a.Target.Address.Compare(b.Target.Address)
	})
	return out
}

// PeerPathMTU is the path MTU measured through one peer's target: the
// largest inner packet that passed, or, when even the search floor was lost
// (below_min), one byte under that floor.
type PeerPathMTU struct {
	Device, PublicKey string
	MTU               int
}

// PeerPathMTUs are the path MTUs measured so far through targets a peer
// holds, in no order: what the checks read of the prober on every poll.
// Health would copy every target's whole state for it (at 15,000 targets,
// 5 MB of garbage a poll).
func (p *Prober) PeerPathMTUs() []PeerPathMTU {
	p.mu.Lock()
	ts := slices.Collect(maps.Values(p.targets))
	p.mu.Unlock()
	var out []PeerPathMTU
	for _, t := range ts {
		t.e.mu.Lock()
		m := PeerPathMTU{Device: t.spec.Device, PublicKey: t.spec.PublicKey, MTU: t.pmtu.mtu}
		if t.pmtu.state == pmtuBelowMin && t.pmtu.below > 0 {
			m.MTU = t.pmtu.below - 1
		}
		t.e.mu.Unlock()
		if m.MTU > 0 && m.PublicKey != "" {
			out = append(out, m)
		}
	}
	return out
}

// SetTargets replaces the targets of one owner: OwnTargets for the
// auto-targets and prober.targets, another name for another component's
// (the remediator's failover paths). A target present in several sets is
// probed once, by the other owner's spec (its interval, timeout and rule),
// keeping the peer's name and key from the prober's own when it has none.
// Unchanged targets keep their state and counts; a changed spec (interval,
// rule, a renamed peer) is applied in place; new ones start at a phase
// spread over their interval.
func (p *Prober) SetTargets(owner string, ts []Target) {
	p.mu.Lock()
	if p.unopened == 0 && slices.Equal(p.sets[owner], ts) {
		// The same set again (the agent derives its own from every
		// snapshot): nothing to change, and merging every target again
		// allocated on each poll. A target whose socket did not open is
		// tried again by the next set, same or not.
		p.mu.Unlock()
		return
	}
	defer p.poke()
	defer p.mu.Unlock()
	if len(ts) == 0 {
		delete(p.sets, owner)
	} else {
		p.sets[owner] = slices.Clone(ts)
	}
	p.applyLocked()
}

// applyLocked makes the probed targets what the sets and the configuration
// say. Called with p.mu held.
func (p *Prober) applyLocked() {
	now := time.Now()
	want, order := p.mergeLocked()
	var ownRate, otherRate float64 // probes per second asked for
	for k, t := range want {
		if t.Size == 0 {
			t.Size = p.cfg.Size
		}
		if t.Interval == 0 {
			t.Interval = p.cfg.Interval
		}
		want[k] = t
		if order[k] == OwnTargets {
			ownRate += float64(time.Second) / float64(t.Interval)
		} else {
			otherRate += float64(time.Second) / float64(t.Interval)
		}
	}
	// Only the prober's own targets are stretched: another component's
	// (failover paths) asked for their interval on purpose. Whole multiples
	// only: a factor that moved with every new peer would reset every
	// target's loss window each time.
	stretch := 1.0
	if budget := max(p.cfg.MaxRate-otherRate, p.cfg.MaxRate/10); p.cfg.MaxRate > 0 && ownRate > budget {
		stretch = math.Ceil(ownRate / budget)
		for k, t := range want {
			if order[k] == OwnTargets {
				t.Interval *= time.Duration(stretch)
				want[k] = t
			}
		}
	}
	if stretch != p.stretched {
		p.stretched = stretch
		if stretch > 1 {
			p.logger.Info("more probes asked for than prober.max_rate allows: every auto-target interval is stretched", "targets", len(want),
				"asked_per_second", ownRate+otherRate, "max_rate", p.cfg.MaxRate, "factor", stretch)
		}
	}
	// Every device probed through has its error counter from the start, so
	// increase() sees the first failure.
	devices := map[string]bool{}
	for _, t := range want {
		if !devices[t.Device] {
			devices[t.Device] = true
			p.metrics.errors.WithLabelValues(t.Device)
		}
	}
	for d := range p.errDevices {
		if !devices[d] {
			p.metrics.errors.DeleteLabelValues(d)
		}
	}
	p.errDevices = devices
	for k, t := range p.targets {
		if nt, ok := want[k]; !ok {
			p.removeLocked(t)
		} else {
			t.setSpec(nt, p.cfg.Window, p.cfg.Timeout, p.metrics)
			p.reschedule(t) // the interval sets how early it may be sent
		}
	}
	p.unopened = 0
	for k, spec := range want {
		if _, ok := p.targets[k]; ok {
			continue
		}
		ek := spec.engineKey()
		e := p.engines[ek]
		if e == nil {
			var err error
			e, err = p.openEngine(ek)
			if err != nil {
				p.unopened++
				continue
			}
		}
		t := newTarget(spec, e, p.metrics, p.cfg.Window, p.cfg.Timeout, now)
		t.next = now.Add(phase(k, spec.Interval))
		t.setDue()
		p.targets[k] = t
		e.targets++
		heap.Push(&p.sched, t)
		p.pmtu.add(t)
	}
	p.minAhead = 0
	for _, t := range p.targets {
		if a := sendAhead(t.spec.Interval); p.minAhead == 0 || a < p.minAhead {
			p.minAhead = a
		}
	}
	p.metrics.targets.Set(float64(len(p.targets)))
}

// mergeLocked joins the owners' sets: by key, the spec to probe and the
// owner it came from.
func (p *Prober) mergeLocked() (map[string]Target, map[string]string) {
	want := map[string]Target{}
	from := map[string]string{}
	owners := slices.Sorted(maps.Keys(p.sets)) // OwnTargets ("") first
	for _, owner := range owners {
		for _, t := range p.sets[owner] {
			k := t.Key()
			prev, seen := want[k]
			switch {
			case !seen:
			case from[k] == OwnTargets: // another owner's spec wins, with the peer's labels
				if t.PublicKey == "" {
					t.PublicKey = prev.PublicKey
				}
				if t.Name == "" {
					t.Name = prev.Name
				}
				if t.DeviceMTU == 0 {
					t.DeviceMTU = prev.DeviceMTU
				}
			default:
				if p.overrides[k] != from[k] {
					p.overrides[k] = from[k]
					p.logger.Warn("two components register the same probe target; the first keeps it", "target", k, "kept", from[k], "ignored", owner)
				}
				continue
			}
			want[k], from[k] = t, owner
		}
	}
	return want, from
}

func phase(key string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}

func (p *Prober) removeLocked(t *target) {
	t.e.mu.Lock()
	t.removed = true
	t.e.mu.Unlock()
	delete(p.targets, t.spec.Key())
	if t.heapIndex >= 0 {
		heap.Remove(&p.sched, t.heapIndex)
	}
	t.deleteSeries()
	p.pmtu.remove(t)
	t.e.targets--
	if t.e.targets == 0 {
		ek := t.spec.engineKey()
		delete(p.engines, ek)
		t.e.close()
	}
}

// dial opens the transport of an engine: a TCP connect transport for a TCP
// port, an ICMP socket otherwise (at first, and when it is reopened).
func (p *Prober) dial(ek engineKey) (Conn, error) {
	if ek.tcpPort != 0 {
		return p.openTCP(ek.device, ek.v6, ek.tcpPort)
	}
	return p.open(ek.device, ek.v6)
}

func (p *Prober) openEngine(ek engineKey) (*engine, error) {
	c, err := p.dial(ek)
	if err != nil {
		if p.openErrs[ek] != err.Error() {
			p.openErrs[ek] = err.Error()
			p.logger.Error("cannot probe through device; its targets are skipped until it can be opened", "device", ek.device, "ipv6", ek.v6, "err", err)
		}
		p.metrics.errors.WithLabelValues(ek.device).Inc()
		return nil, err
	}
	if p.openErrs[ek] != "" {
		p.logger.Info("probing through device again", "device", ek.device)
	}
	delete(p.openErrs, ek)
	e := newEngine(c, p, ek)
	if e.id != 0 {
		p.ids.Store(e.id, e)
	}
	p.engines[ek] = e
	go e.receive(c)
	return e, nil
}

// staleEvery is how often bound sockets check their device's ifindex.
const staleEvery = time.Second

// repair finds sockets whose device is gone or was recreated, makes their
// targets unknown (never down: it is our socket, not the path), and
// reopens them every second until the device is back. Called with p.mu held.
func (p *Prober) repair(now time.Time) {
	check := now.Sub(p.staleAt) >= staleEvery
	if check {
		p.staleAt = now
	}
	for ek, e := range p.engines {
		e.mu.Lock()
		if !e.broken && check && !e.unbound {
			if s, ok := e.c.(staler); ok && s.Stale() {
				e.broken = true
				p.logger.Warn("the device of a probe socket is gone or was recreated (a new ifindex): reopening it; its targets are unknown meanwhile", "device", ek.device)
			}
		}
		broken, fresh := e.broken, e.broken && !e.reset
		e.reset = e.reset || fresh
		e.mu.Unlock()
		if !broken {
			continue
		}
		targets := p.targetsOf(e)
		if fresh {
			for _, t := range targets {
				e.mu.Lock()
				t.resetState(now) // what was in flight on the old socket does not count
				e.mu.Unlock()
			}
		}
		if now.Before(e.retryAt) {
			continue
		}
		c, err := p.dial(ek)
		if err != nil {
			e.retryAt = now.Add(staleEvery)
			if p.openErrs[ek] != err.Error() {
				p.openErrs[ek] = err.Error()
				p.logger.Warn("cannot reopen the probe socket of a device yet; retrying every second, its targets unknown", "device", ek.device, "err", err)
			}
			continue
		}
		delete(p.openErrs, ek)
		e.swap(c)
		p.logger.Info("probing through device again: its probe socket was reopened", "device", ek.device)
		for _, t := range targets {
			t.next = now // probe at once: a verdict within a few intervals
			p.reschedule(t)
		}
	}
}

func (p *Prober) targetsOf(e *engine) []*target {
	var out []*target
	for _, t := range p.targets {
		if t.e == e {
			out = append(out, t)
		}
	}
	return out
}

// Run sends probes and expires unanswered ones until ctx ends, then closes
// every socket.
func (p *Prober) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { p.pmtu.run(ctx) })
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := p.step(time.Now())
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			p.mu.Lock()
			for k, e := range p.engines {
				e.close()
				delete(p.engines, k)
			}
			p.mu.Unlock()
			wg.Wait()
			return
		case <-timer.C:
		case <-p.wake:
		}
	}
}

// step sends every due probe and expires every overdue one; it returns how
// long to sleep until the next event.
func (p *Prober) step(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.repair(now)
	next := now.Add(time.Hour)
	if len(p.engines) > 0 {
		next = now.Add(staleEvery) // repair's next look
	}
	for _, e := range p.engines {
		if d := e.expire(now); !d.IsZero() && d.Before(next) {
			next = d
		}
	}
	for p.sched.Len() > 0 {
		t := p.sched[0].t
		if due := t.due(); due.After(now) {
			// A regular probe may wait for the others that fall due within
			// the batch window: the one wake-up sends them all, none late
			// (every target's window is at least minAhead). A suspicion
			// check at the top is woken for exactly.
			if t.suspectAt.IsZero() || !t.suspectAt.Equal(due) {
				due = due.Add(p.minAhead)
			}
			if due.Before(next) {
				next = due
			}
			break
		}
		if !t.sendFrom().After(now) {
			t.e.sendProbe(t, now, false)
			t.next = t.next.Add(t.spec.Interval)
			if t.next.Before(now) { // fell behind (e.g. a long GC pause): do not burst
				t.next = now.Add(t.spec.Interval)
			}
			t.suspectAt = time.Time{}
			if t.spec.Suspect > 0 {
				_, delay := t.suspicious()
				t.suspectAt = now.Add(delay)
			}
		} else if ok, delay := t.suspicious(); ok { // the newest probe is overdue: confirm now
			t.e.sendProbe(t, now, true)
			t.suspectAt = now.Add(delay)
		} else {
			t.suspectAt = time.Time{}
		}
		p.reschedule(t)
		if d := now.Add(t.timeout); d.Before(next) {
			next = d
		}
	}
	return max(next.Sub(now), 0)
}

// due is when the scheduler must next look at t: its next probe (up to
// sendAhead early), or its next suspicion check if sooner. Kept in dueAt by
// setDue (through reschedule, which also places t in the heap) whenever
// next, suspectAt or the interval change.
func (t *target) due() time.Time { return t.dueAt }

func (t *target) setDue() {
	t.dueAt = t.sendFrom()
	if !t.suspectAt.IsZero() && t.suspectAt.Before(t.dueAt) {
		t.dueAt = t.suspectAt
	}
}

// sendFrom is the earliest a regular probe may leave.
func (t *target) sendFrom() time.Time { return t.next.Add(-sendAhead(t.spec.Interval)) }

// sendAhead is how early a regular probe may go out, so that the probes due
// within a few milliseconds leave in one wake-up of the scheduler: 1,000
// targets at 1 s would otherwise wake it (and, through their replies, the
// receiver) a thousand times a second. A probe's interval is kept (the next
// one is due an interval after this one was due, not after it left); only
// its phase moves, by at most 10 ms or a twentieth of the interval. The RTT
// is timed from when it left. Timeouts keep their exact times; a suspicion
// check that falls inside a batch window may run up to that window late.
func sendAhead(interval time.Duration) time.Duration {
	return min(10*time.Millisecond, interval/20)
}

func (p *Prober) publish(r Result) { p.results.Publish(r) }

// reschedule recomputes when the scheduler must next look at t and moves t
// to its place in the schedule. Called with p.mu held.
func (p *Prober) reschedule(t *target) {
	t.setDue()
	if t.heapIndex >= 0 {
		p.sched[t.heapIndex].due = t.dueAt
		heap.Fix(&p.sched, t.heapIndex)
	}
}

// schedHeap orders targets by their due time, which each entry holds
// beside the target: the heap compares ~20 times per send, and reading it
// through the pointer missed the cache (5 % of the agent's CPU at 1,000
// targets).
type schedHeap []schedEntry

type schedEntry struct {
	due time.Time // the target's dueAt when it was last placed
	t   *target
}

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].t.heapIndex, h[j].t.heapIndex = i, j
}
func (h *schedHeap) Push(x any) {
	t := x.(*target)
	t.heapIndex = len(*h)
	*h = append(*h, schedEntry{t.dueAt, t})
}
func (h *schedHeap) Pop() any {
	old := *h
	t := old[len(old)-1].t
	old[len(old)-1] = schedEntry{}
	t.heapIndex = -1
	*h = old[:len(old)-1]
	return t
}

// engine is one shared socket. Probes of all its targets are told apart by
// sequence number (a ring of slots) and a payload that carries the engine's
// nonce and the slot's generation, so a stray, late or foreign reply can
// never be credited to the wrong probe or target.
type engine struct {
	c       Conn // guarded by mu: swapped when the device is recreated
	p       *Prober
	key     engineKey
	unbound bool   // no device: sees every echo reply of the host
	id      uint16 // guarded by mu, with c
	nonce   uint64
	targets int       // guarded by Prober.mu
	payload []byte    // guarded by Prober.mu: the send buffer
	retryAt time.Time // guarded by Prober.mu: the next reopen of a broken socket
	// broken: the device the socket is bound to is gone (deleted, or
	// recreated with a new ifindex). Nothing is sent until it is reopened;
	// its targets are unknown meanwhile, never down. reset: they were reset.
	broken, reset bool

	// settling: until then, or the first send that succeeds, a send that
	// finds the device not set up is void (settleGrace). Guarded by mu.
	settling     time.Time
	settleLogged bool

	mu     sync.Mutex // guards the slots, seq, queues and every target's stats
	seq    uint16
	slots  []slot // len is a power of two
	queues map[time.Duration]*deadlineQueue
	closed bool
}

// deadlineQueue holds the in-flight probes of one timeout in send order, so
// their deadlines are in order too: expiry looks only at the front.
type deadlineQueue struct {
	timeout time.Duration
	items   []queued
	head    int
}

type queued struct {
	seq uint16
	gen uint32
}

func (q *deadlineQueue) push(it queued) { q.items = append(q.items, it) }

func (q *deadlineQueue) pop() {
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head >= 1024 && 2*q.head >= len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
}

type slotState uint8

const (
	slotFree slotState = iota
	slotInFlight
	slotAnswered
	slotLost
)

type slot struct {
	seq   uint16
	gen   uint32
	state slotState
	extra bool // an extra probe of a suspicion
	t     *target
	n     uint64 // the target's probe number, in send order
	sent  time.Time
}

// The slot ring starts small and doubles whenever a new probe would land on
// a probe still in flight (rate × timeout outgrew it), up to the 16-bit
// sequence space. Only beyond that is a live probe ended early, as lost.
const (
	initialRing = 1024
	maxRing     = 1 << 16
)

func newEngine(c Conn, p *Prober, key engineKey) *engine {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &engine{c: c, p: p, key: key, unbound: key.device == "", id: c.EchoID(), nonce: binary.BigEndian.Uint64(b[:]),
		slots: make([]slot, initialRing), queues: map[time.Duration]*deadlineQueue{}, settling: time.Now().Add(settleGrace)}
}

// swap puts a reopened socket in place of a broken one: same slots and
// targets, a new receiver. Probes in flight on the old socket are void.
func (e *engine) swap(c Conn) {
	e.mu.Lock()
	old, oldID := e.c, e.id
	e.c, e.id, e.broken, e.reset, e.settling = c, c.EchoID(), false, false, time.Now().Add(settleGrace)
	e.mu.Unlock()
	if oldID != 0 {
		e.p.ids.CompareAndDelete(oldID, e)
	}
	if c.EchoID() != 0 {
		e.p.ids.Store(c.EchoID(), e)
	}
	_ = old.Close()
	go e.receive(c)
}

// deviceGone says a send failed because the socket's device is gone: our
// socket's fault, not the path's.
func deviceGone(err error) bool { return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) }

// settleGrace is how long after a socket opens (or reopens on a recreated
// device) a send that finds the device not set up yet is void rather than
// a lost probe: wg-quick creates the link first and adds its address, MTU,
// up state and routes after (under emulation, a second or more), and
// systemd may start the agent in between. Until the first send succeeds.
const settleGrace = 5 * time.Second

// notSetUp says a send failed because this host has no address or route
// for it on the device yet.
func notSetUp(err error) bool {
	return errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EHOSTUNREACH)
}

// staler is a transport that can tell its device was recreated (a new
// ifindex under the same name) although sends still fail only later.
type staler interface{ Stale() bool }

// grow doubles the ring. The live slots span at most len(slots) consecutive
// sequence numbers, so they land in distinct slots of the larger ring.
// Called with e.mu held.
func (e *engine) grow() {
	slots := make([]slot, 2*len(e.slots))
	for _, s := range e.slots {
		if s.t != nil {
			slots[int(s.seq)&(len(slots)-1)] = s
		}
	}
	e.slots = slots
}

func (e *engine) close() {
	e.mu.Lock()
	e.closed = true
	c, id := e.c, e.id
	e.mu.Unlock()
	e.p.ids.CompareAndDelete(id, e)
	_ = c.Close()
}

const payloadHeader = 12 // nonce (8) + slot generation (4)

func (e *engine) sendProbe(t *target, now time.Time, extra bool) {
	e.mu.Lock()
	if e.closed || e.broken {
		e.mu.Unlock()
		return // a broken socket sends nothing and counts nothing: its targets are unknown
	}
	c, id := e.c, e.id
	seq := e.seq
	e.seq++
	s := &e.slots[int(seq)&(len(e.slots)-1)]
	for s.state == slotInFlight && len(e.slots) < maxRing {
		e.grow()
		s = &e.slots[int(seq)&(len(e.slots)-1)]
	}
	if s.state == slotInFlight { // 65,536 probes in flight: end the oldest as lost, honestly
		s.t.finish(e, s, false, 0, now)
	}
	gen := s.gen + 1
	// The payload is built in the engine's buffer: sends come only from
	// the scheduler, under Prober.mu.
	payload := slices.Grow(e.payload[:0], max(t.spec.Size, payloadHeader))[:max(t.spec.Size, payloadHeader)]
	clear(payload[payloadHeader:])
	e.payload = payload
	binary.BigEndian.PutUint64(payload[0:8], e.nonce)
	binary.BigEndian.PutUint32(payload[8:12], gen)
	t.sent++
	// The slot holds the send time before the send: the reply can be read
	// and credited before Send returns (on loopback, or a fast path, the
	// kernel queues it inside sendto), and the RTT is timed from here, not
	// from the start of the scheduler's batch (now).
	sent := time.Now()
	*s = slot{seq: seq, gen: gen, state: slotInFlight, extra: extra, t: t, n: t.sent, sent: sent}
	if extra {
		t.extras++
	}
	q := e.queues[t.timeout]
	if q == nil {
		q = &deadlineQueue{timeout: t.timeout}
		e.queues[t.timeout] = q
	}
	q.push(queued{seq, gen})
	e.mu.Unlock()

	err := c.Send(t.spec.Address, id, seq, payload)

	e.mu.Lock()
	defer e.mu.Unlock()
	s = &e.slots[int(seq)&(len(e.slots)-1)] // the ring may have grown meanwhile
	if s.seq != seq || s.gen != gen || s.state != slotInFlight {
		return
	}
	if err != nil && deviceGone(err) && !e.unbound {
		// The device this socket is bound to is gone: that says nothing of
		// the path. The probe is void and the socket is reopened.
		s.state = slotLost
		if !e.broken {
			e.broken = true
			e.p.logger.Warn("the device of an ICMP socket is gone (deleted, or recreated with a new ifindex): reopening it; its targets are unknown meanwhile",
				"device", t.spec.Device, "err", err)
		}
		return
	}
	if err != nil && notSetUp(err) && !e.unbound && sent.Before(e.settling) {
		// A fresh socket on a device still being set up: void, so its
		// targets stay unknown rather than go down for our own start.
		s.state = slotLost
		if !e.settleLogged {
			e.settleLogged = true
			e.p.logger.Info("device not set up yet (no address or route): probes through it are void, its targets unknown, until a send succeeds or for 5 s",
				"device", t.spec.Device, "err", err)
		}
		return
	}
	if err == nil {
		e.settling, e.settleLogged = time.Time{}, false
	}
	if err != nil {
		// Did not leave this host: the tunnel cannot carry it, so it counts
		// as a failed probe, now rather than after the timeout.
		t.sendErr(err)
		s.t.finish(e, s, false, 0, sent)
	}
}

// expire ends every in-flight probe past its target's timeout, oldest first,
// and returns the earliest deadline still pending (zero if none).
func (e *engine) expire(now time.Time) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	var next time.Time
	for timeout, q := range e.queues {
		for q.head < len(q.items) {
			it := q.items[q.head]
			s := &e.slots[int(it.seq)&(len(e.slots)-1)]
			if s.seq != it.seq || s.gen != it.gen || s.state != slotInFlight {
				q.pop() // answered, or its slot reused since
				continue
			}
			deadline := s.sent.Add(q.timeout)
			if deadline.After(now) {
				if next.IsZero() || deadline.Before(next) {
					next = deadline
				}
				break
			}
			s.t.finish(e, s, false, 0, now)
			q.pop()
		}
		if q.head == len(q.items) {
			delete(e.queues, timeout)
		}
	}
	return next
}

// receive reads replies from c until it closes or is swapped out.
func (e *engine) receive(c Conn) {
	buf := make([]byte, 65536)
	id := c.EchoID()
	var lastErr string
	for {
		r, err := c.Recv(buf)
		if err != nil {
			e.mu.Lock()
			gone := e.closed || e.c != c
			e.mu.Unlock()
			if gone || errors.Is(err, ErrClosed) {
				return
			}
			if err.Error() != lastErr { // once per kind of error, not per read
				lastErr = err.Error()
				e.p.logger.Warn("reading ICMP replies; retrying", "err", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		lastErr = ""
		e.handle(r, id)
	}
}

// ErrClosed is what a closed transport's Recv returns.
var ErrClosed = errors.New("transport closed")

// handle credits a reply that arrived on a socket whose echo ID is id.
func (e *engine) handle(r Reply, id uint16) {
	if id != 0 && r.ID != id {
		if _, sibling := e.p.ids.Load(r.ID); sibling || e.unbound {
			return // another engine's reply (an unbound socket sees every one of the host): not ours, not stray
		}
	}
	if (id != 0 && r.ID != id) || len(r.Payload) < payloadHeader || binary.BigEndian.Uint64(r.Payload[0:8]) != e.nonce {
		e.p.metrics.stray.Inc()
		return // someone else's echo reply
	}
	gen := binary.BigEndian.Uint32(r.Payload[8:12])
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &e.slots[int(r.Seq)&(len(e.slots)-1)]
	if s.seq != r.Seq || s.gen != gen || s.t == nil || s.t.spec.Address != r.Src {
		e.p.metrics.stray.Inc() // a slot reused since, or a reply from the wrong address
		return
	}
	switch s.state {
	case slotInFlight:
		s.t.finish(e, s, true, r.At.Sub(s.sent), r.At)
	case slotAnswered:
		s.t.duplicate()
	case slotLost:
		s.t.late()
	}
}
