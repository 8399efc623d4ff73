package prober

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one address probed through one WireGuard device.
type Target struct {
	Device    string
	Address   netip.Addr
	PublicKey string        // the peer whose AllowedIPs hold Address ("" if none)
	Name      string        // target name (config) or the peer's friendly name
	Size      int           // ICMP payload bytes
	Interval  time.Duration // between probes
	DeviceMTU int           // upper bound of the path MTU search; 0 = unknown
}

// Key identifies a target: one address on one device.
func (t Target) Key() string { return t.Device + "|" + t.Address.String() }

// Result is the end of one SLI probe: a reply within the timeout, or lost.
type Result struct {
	Target  Target
	Sent    time.Time
	Success bool
	RTT     time.Duration
}

// Health is the current view of one target, for the remediator.
type Health struct {
	Target      Target
	Up          bool          // a reply among the last 3 finished probes
	LossRatio   float64       // over prober.window
	RTT         time.Duration // of the last reply
	Jitter      time.Duration // RFC 3550 A.8 estimate
	Probes      uint64
	Failures    uint64
	Late        uint64 // replies after their probe was counted lost
	Duplicates  uint64
	LastSuccess time.Time
	PathMTU     int    // largest inner IP packet known to pass; 0 = unknown
	PMTUState   string // base, searching, search_complete, error, disabled
}

// Options are the prober's transports; zero values use real sockets.
type Options struct {
	// Open returns an ICMP transport bound to device.
	Open func(device string, v6 bool) (conn, error)
	// PMTUProbe sends one DF probe of an inner IP packet of size bytes.
	PMTUProbe pmtuProbeFunc
}

// Prober probes targets until its context ends.
type Prober struct {
	logger  *slog.Logger
	open    func(device string, v6 bool) (conn, error)
	metrics *metrics

	mu        sync.Mutex // guards everything below
	cfg       Config
	targets   map[string]*target
	engines   map[engineKey]*engine
	sched     schedHeap
	openErrs  map[engineKey]string // last logged open error per engine
	stretched float64              // last interval stretch factor logged
	wake      chan struct{}
	subs      atomic.Pointer[[]chan Result] // copy on write: read under engine locks

	pmtu *pmtuRunner
}

type engineKey struct {
	device string
	v6     bool
}

// New returns a prober; call SetTargets and Run.
func New(cfg Config, logger *slog.Logger, opts Options) (*Prober, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Prober{
		logger:    logger,
		open:      opts.Open,
		metrics:   newMetrics(),
		cfg:       cfg,
		targets:   map[string]*target{},
		engines:   map[engineKey]*engine{},
		openErrs:  map[engineKey]string{},
		wake:      make(chan struct{}, 1),
		stretched: 1,
	}
	if p.open == nil {
		p.open = openSocket
	}
	p.pmtu = newPMTURunner(p, opts.PMTUProbe)
	return p, nil
}

// ApplyConfig changes intervals, timeout, window and PMTU settings.
// Targets follow at the next SetTargets.
func (p *Prober) ApplyConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
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

// Subscribe returns a channel of every finished probe. A reader that falls
// behind loses results (counted in wgpulse_prober_results_dropped_total)
// rather than slowing the prober.
func (p *Prober) Subscribe(buffer int) <-chan Result {
	ch := make(chan Result, buffer)
	p.mu.Lock()
	defer p.mu.Unlock()
	var subs []chan Result
	if old := p.subs.Load(); old != nil {
		subs = slices.Clone(*old)
	}
	subs = append(subs, ch)
	p.subs.Store(&subs)
	return ch
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

// SetTargets replaces the set of targets. Unchanged targets keep their
// state; new ones start at a phase spread over their interval.
func (p *Prober) SetTargets(ts []Target) {
	p.mu.Lock()
	defer p.poke()
	defer p.mu.Unlock()
	now := time.Now()
	want := make(map[string]Target, len(ts))
	var rate float64 // probes per second asked for
	for _, t := range ts {
		if t.Size == 0 {
			t.Size = p.cfg.Size
		}
		if t.Interval == 0 {
			t.Interval = p.cfg.Interval
		}
		rate += float64(time.Second) / float64(t.Interval)
		want[t.Key()] = t
	}
	// Whole multiples only: a factor that moved with every new peer would
	// reset every target's loss window each time.
	stretch := 1.0
	if p.cfg.MaxRate > 0 && rate > p.cfg.MaxRate {
		stretch = math.Ceil(rate / p.cfg.MaxRate)
		for k, t := range want {
			t.Interval *= time.Duration(stretch)
			want[k] = t
		}
	}
	if stretch != p.stretched {
		p.stretched = stretch
		if stretch > 1 {
			p.logger.Info("more probes asked for than prober.max_rate allows: every interval is stretched", "targets", len(want),
				"asked_per_second", rate, "max_rate", p.cfg.MaxRate, "factor", stretch)
		}
	}
	for k, t := range p.targets {
		if nt, ok := want[k]; !ok || nt.PublicKey != t.spec.PublicKey || nt.Name != t.spec.Name {
			p.removeLocked(t)
		} else {
			t.setSpec(nt, p.cfg.Window, p.cfg.Timeout) // interval, size, device MTU, window may change in place
		}
	}
	for k, spec := range want {
		if _, ok := p.targets[k]; ok {
			continue
		}
		ek := engineKey{spec.Device, spec.Address.Is6()}
		e := p.engines[ek]
		if e == nil {
			var err error
			e, err = p.openEngine(ek)
			if err != nil {
				continue
			}
		}
		t := newTarget(spec, e, p.metrics, p.cfg.Window, p.cfg.Timeout)
		t.next = now.Add(phase(k, spec.Interval))
		p.targets[k] = t
		e.targets++
		heap.Push(&p.sched, t)
		p.pmtu.add(t)
	}
	p.metrics.targets.Set(float64(len(p.targets)))
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
		ek := engineKey{t.spec.Device, t.spec.Address.Is6()}
		delete(p.engines, ek)
		t.e.close()
	}
}

func (p *Prober) openEngine(ek engineKey) (*engine, error) {
	c, err := p.open(ek.device, ek.v6)
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
	e := newEngine(c, p)
	p.engines[ek] = e
	go e.receive()
	return e, nil
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
	timeout := p.cfg.Timeout
	next := now.Add(time.Hour)
	for _, e := range p.engines {
		if d := e.expire(now, timeout); !d.IsZero() && d.Before(next) {
			next = d
		}
	}
	for p.sched.Len() > 0 {
		t := p.sched[0]
		if t.next.After(now) {
			if t.next.Before(next) {
				next = t.next
			}
			break
		}
		t.e.sendProbe(t, now)
		t.next = t.next.Add(t.spec.Interval)
		if t.next.Before(now) { // fell behind (e.g. a long GC pause): do not burst
			t.next = now.Add(t.spec.Interval)
		}
		heap.Fix(&p.sched, 0)
		if d := now.Add(timeout); d.Before(next) {
			next = d
		}
	}
	return max(next.Sub(now), 0)
}

func (p *Prober) publish(r Result) {
	subs := p.subs.Load()
	if subs == nil {
		return
	}
	for _, ch := range *subs {
		select {
		case ch <- r:
		default:
			p.metrics.resultsDropped.Inc()
		}
	}
}

// schedHeap orders targets by their next send time.
type schedHeap []*target

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}
func (h *schedHeap) Push(x any) {
	t := x.(*target)
	t.heapIndex = len(*h)
	*h = append(*h, t)
}
func (h *schedHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.heapIndex = -1
	*h = old[:len(old)-1]
	return t
}

// engine is one shared socket. Probes of all its targets are told apart by
// sequence number (a ring of slots) and a payload that carries the engine's
// nonce and the slot's generation, so a stray, late or foreign reply can
// never be credited to the wrong probe or target.
type engine struct {
	c       conn
	p       *Prober
	id      uint16
	nonce   uint64
	targets int // guarded by Prober.mu

	mu     sync.Mutex // guards the slots, seq, oldest and every target's stats
	seq    uint16
	slots  []slot // len is a power of two
	oldest uint16 // seq of the oldest slot that may still be in flight
	closed bool
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
	t     *target
	n     uint64 // the target's probe number, for jitter pairs
	sent  time.Time
}

// The slot ring starts small and doubles whenever a new probe would land on
// a probe still in flight (rate × timeout outgrew it), up to the 16-bit
// sequence space. Only beyond that is a live probe ended early, as lost.
const (
	initialRing = 1024
	maxRing     = 1 << 16
)

func newEngine(c conn, p *Prober) *engine {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &engine{c: c, p: p, id: c.echoID(), nonce: binary.BigEndian.Uint64(b[:]), slots: make([]slot, initialRing)}
}

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
	e.mu.Unlock()
	_ = e.c.close()
}

const payloadHeader = 12 // nonce (8) + slot generation (4)

func (e *engine) sendProbe(t *target, now time.Time) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
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
	t.sent++
	*s = slot{seq: seq, gen: gen, state: slotInFlight, t: t, n: t.sent, sent: now}
	e.mu.Unlock()

	payload := make([]byte, max(t.spec.Size, payloadHeader))
	binary.BigEndian.PutUint64(payload[0:8], e.nonce)
	binary.BigEndian.PutUint32(payload[8:12], gen)
	sent := time.Now()
	err := e.c.send(t.spec.Address, e.id, seq, payload)

	e.mu.Lock()
	defer e.mu.Unlock()
	s = &e.slots[int(seq)&(len(e.slots)-1)] // the ring may have grown meanwhile
	if s.seq != seq || s.gen != gen || s.state != slotInFlight {
		return
	}
	if err != nil {
		// Did not leave this host: the tunnel cannot carry it, so it counts
		// as a failed probe, now rather than after the timeout.
		t.sendErr(err)
		s.t.finish(e, s, false, 0, sent)
		return
	}
	s.sent = sent
}

// expire ends every in-flight probe older than timeout, oldest first, and
// returns the deadline of the oldest probe still in flight (zero if none).
func (e *engine) expire(now time.Time, timeout time.Duration) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.oldest != e.seq {
		s := &e.slots[int(e.oldest)&(len(e.slots)-1)]
		if s.seq == e.oldest && s.state == slotInFlight {
			deadline := s.sent.Add(timeout)
			if deadline.After(now) {
				return deadline
			}
			s.t.finish(e, s, false, 0, now)
		}
		e.oldest++
	}
	return time.Time{}
}

// receive reads replies until the socket closes.
func (e *engine) receive() {
	buf := make([]byte, 65536)
	var lastErr string
	for {
		r, err := e.c.recv(buf)
		if err != nil {
			e.mu.Lock()
			closed := e.closed
			e.mu.Unlock()
			if closed || errors.Is(err, errClosed) {
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
		e.handle(r)
	}
}

var errClosed = errors.New("transport closed")

func (e *engine) handle(r reply) {
	if (e.id != 0 && r.id != e.id) || len(r.payload) < payloadHeader || binary.BigEndian.Uint64(r.payload[0:8]) != e.nonce {
		e.p.metrics.stray.Inc()
		return // someone else's echo reply
	}
	gen := binary.BigEndian.Uint32(r.payload[8:12])
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &e.slots[int(r.seq)&(len(e.slots)-1)]
	if s.seq != r.seq || s.gen != gen || s.t == nil || s.t.spec.Address != r.src {
		e.p.metrics.stray.Inc() // a slot reused since, or a reply from the wrong address
		return
	}
	switch s.state {
	case slotInFlight:
		s.t.finish(e, s, true, r.at.Sub(s.sent), r.at)
	case slotAnswered:
		s.t.duplicate()
	case slotLost:
		s.t.late()
	}
}
