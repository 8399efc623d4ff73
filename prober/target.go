package prober

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// target is one probed address with its accounting. Its stats are guarded by
// its engine's mutex (the scheduler and the receiver both finish probes).
type target struct {
	spec      Target
	e         *engine
	next      time.Time // next regular probe; guarded by Prober.mu
	suspectAt time.Time // next suspicion check (zero = none); guarded by Prober.mu
	dueAt     time.Time // see due; guarded by Prober.mu
	heapIndex int       // guarded by Prober.mu
	removed   bool
	window    time.Duration
	timeout   time.Duration // effective: spec.Timeout or prober.timeout

	// stats, guarded by e.mu
	probes, failures uint64 // SLI probes only (extras excluded)
	lateN, dupN      uint64
	outcomes         []outcome // ring over the loss window (SLI probes)
	head, n          int
	lost             int        // lost among the window's outcomes
	sent             uint64     // probes sent (SLI and extra): numbers them in send order
	jitter           float64    // seconds
	recent           []finished // by probe number modulo len: neighbours for jitter, runs of losses
	lastRTT          time.Duration
	srtt             time.Duration // smoothed RTT (RFC 6298 weights), for the suspicion delay
	lastSuccess      time.Time
	sendErrLogged    string
	lastOKn          uint64     // highest probe number answered (0 = none)
	run              int        // lost probes numbered after lastOKn: the trailing run of losses in send order
	extras           int        // extra probes sent since the newest answered one
	resetN           uint64     // probes numbered up to this were sent before ResetState: SLI only
	rtts             [64]uint32 // the last replies' RTTs in µs, a ring at nrtt
	nrtt             int
	state            State
	since            time.Time
	reason           string
	downKind         downKind

	pmtu pmtuView // guarded by e.mu

	m targetMetrics // guarded by e.mu
}

// finished is one recent probe, by its number, for RFC 3550 pairs and runs
// of losses.
type finished struct {
	n     uint64
	ok    bool
	extra bool
	rtt   time.Duration
}

// outcome is one finished probe in the loss window: its Unix nanoseconds
// shifted left by one, with the lowest bit set when it was lost.
type outcome int64

func mkOutcome(at time.Time, lost bool) outcome {
	return outcome(at.UnixNano()<<1 | int64(b2u(lost)))
}

func (o outcome) lost() bool           { return o&1 == 1 }
func (o outcome) before(ns int64) bool { return int64(o)>>1 < ns }

// targetMetrics are the target's series: its labels and its RTT histogram,
// new when the target is relabelled.
type targetMetrics struct {
	labels []string            // replaced, never modified: a scrape may hold the old slice
	rtt    prometheus.Observer // the histogram child with native buckets (prober.native_histograms); else nil
	hist   rttHist             // the classic histogram otherwise
}

// rttHist is a classic histogram of answered probes' RTTs in seconds, over
// the prober's rttBuckets, exposed as client_golang exposes its histogram.
type rttHist struct {
	counts  []uint64 // by bucket, not cumulative: counts[i] holds (upper[i-1], upper[i]]
	count   uint64   // every sample, the +Inf bucket's cumulative count
	sum     float64
	created time.Time
}

func (h *rttHist) observe(v float64, upper []float64) {
	if i, _ := slices.BinarySearch(upper, v); i < len(h.counts) { // the first bound >= v
		h.counts[i]++
	}
	h.count++
	h.sum += v
}

func newTargetMetrics(spec Target, m *metrics, now time.Time) targetMetrics {
	labels := []string{spec.Device, spec.PublicKey, spec.Name, spec.Label()}
	if m.rtt != nil {
		return targetMetrics{labels: labels, rtt: m.rtt.WithLabelValues(labels...)}
	}
	return targetMetrics{labels: labels, hist: rttHist{counts: make([]uint64, len(m.rttBuckets)), created: now}}
}

// scrapeView is what a scrape reads of one target, under one lock.
type scrapeView struct {
	labels                       []string // device, public_key, name, target
	probes, failures, late, dups uint64
	jitter                       time.Duration
	state                        State
	lossRatio                    float64 // with detail only
	pathMTU, below               int
	pmtuState                    pmtuState
	count                        uint64 // the classic RTT histogram's (its buckets go to the caller's cum)
	sum                          float64
	created                      time.Time
}

// scrapeView reads the target for a scrape; cum receives the classic RTT
// histogram's cumulative bucket counts.
func (t *target) scrapeView(cum []uint64, detail bool) scrapeView {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	h := &t.m.hist
	v := scrapeView{
		labels: t.m.labels, probes: t.probes, failures: t.failures, late: t.lateN, dups: t.dupN,
		jitter: time.Duration(t.jitter * float64(time.Second)), state: t.state, pathMTU: t.pmtu.mtu, below: t.pmtu.below,
		pmtuState: t.pmtu.state, count: h.count, sum: h.sum, created: h.created,
	}
	if detail {
		v.lossRatio = t.lossRatio()
	}
	var c uint64
	for i, n := range h.counts {
		c += n
		cum[i] = c
	}
	return v
}

func newTarget(spec Target, e *engine, m *metrics, window, timeout time.Duration, now time.Time) *target {
	t := &target{spec: spec, e: e, heapIndex: -1, m: newTargetMetrics(spec, m, now), since: now}
	t.size(window, timeout)
	t.pmtu.state = pmtuBase
	return t
}

// size (re)allocates the loss window and the recent probes for the target's
// interval, window and timeout. A changed loss window starts empty.
func (t *target) size(window, timeout time.Duration) {
	if t.spec.Window > 0 {
		window = t.spec.Window
	}
	if t.spec.Timeout > 0 {
		timeout = t.spec.Timeout
	}
	t.timeout = timeout
	if n := int(window/t.spec.Interval) + 2; n != len(t.outcomes) || window != t.window {
		t.outcomes, t.window = make([]outcome, n), window
		t.head, t.n, t.lost = 0, 0, 0
	}
	// Probes can finish up to a timeout apart: keep that many, counting the
	// extra probes of a suspicion.
	every := t.spec.Interval
	if t.spec.Suspect > 0 && t.spec.Suspect < every {
		every = t.spec.Suspect
	}
	if n := min(max(int(timeout/every)+2, 4), 1024); n > len(t.recent) {
		recent := make([]finished, n)
		for _, f := range t.recent {
			if f.n != 0 {
				recent[f.n%uint64(n)] = f
			}
		}
		t.recent = recent
	}
}

// setSpec takes in-place changes of the target (interval, size, device MTU,
// timeout, window, rule, suspicion, and its peer's name or key) and of the
// configuration (window, timeout). Its state and counts stay. Called with
// Prober.mu.
func (t *target) setSpec(s Target, window, timeout time.Duration, m *metrics) {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	if s.Name != t.spec.Name || s.PublicKey != t.spec.PublicKey {
		if m.rtt != nil {
			m.rtt.DeleteLabelValues(t.m.labels...) // relabelled: a renamed peer (SIGHUP) is the same target
		}
		t.m = newTargetMetrics(s, m, time.Now())
	}
	t.spec = s
	t.size(window, timeout)
}

// finish ends a probe exactly once: the slot leaves the in-flight state here
// and nowhere else. Called with e.mu held.
func (t *target) finish(e *engine, s *slot, ok bool, rtt time.Duration, at time.Time) {
	if ok {
		s.state = slotAnswered
	} else {
		s.state = slotLost
	}
	if t.removed {
		return
	}
	t.pairJitter(finished{n: s.n, ok: ok, extra: s.extra, rtt: rtt})
	fresh := s.n > t.resetN // sent after the last ResetState: counts in the state
	if ok {
		t.lastRTT, t.lastSuccess = rtt, at
		if t.srtt == 0 {
			t.srtt = rtt
		} else {
			t.srtt += (rtt - t.srtt) / 8
		}
		if s.n > t.lastOKn && fresh {
			t.lastOKn = s.n
			t.run = t.lostAfter(s.n)
			t.extras = 0
		}
	} else if s.n > t.lastOKn && fresh {
		t.run++
	}
	if !s.extra { // extra probes of a suspicion never count in the SLI
		t.probes++
		if ok {
			if t.m.rtt != nil {
				t.m.rtt.Observe(rtt.Seconds())
			} else {
				t.m.hist.observe(rtt.Seconds(), t.e.p.metrics.rttBuckets)
			}
			t.rtts[t.nrtt%len(t.rtts)] = uint32(min(rtt.Microseconds(), math.MaxUint32))
			t.nrtt++
		} else {
			t.failures++
		}
		t.record(mkOutcome(at, !ok))
	}
	if fresh {
		t.evaluate(at)
	}
	e.p.publish(Result{Target: t.spec, Sent: s.sent, Success: ok, RTT: rtt, Extra: s.extra})
}

// lostAfter counts the lost probes numbered after n among those finished.
func (t *target) lostAfter(n uint64) int {
	size := uint64(len(t.recent))
	lost := 0
	for m := n + 1; m <= t.sent && m-n <= size; m++ {
		if f := t.recent[m%size]; f.n == m && !f.ok {
			lost++
		}
	}
	return lost
}

// pairJitter applies RFC 3550 A.8, J += (|D| - J)/16, with D the difference
// of the RTTs of consecutive probes in send order. Probes finish out of order
// (a loss is known only at its timeout, after later replies), so a probe is
// paired with both neighbours as soon as each of them is known; a pair with
// a loss or an extra probe is skipped.
func (t *target) pairJitter(f finished) {
	size := uint64(len(t.recent))
	t.recent[f.n%size] = f
	if !f.ok || f.extra {
		return
	}
	for _, nb := range []uint64{f.n - 1, f.n + 1} {
		o := t.recent[nb%size]
		if o.n != nb || !o.ok || o.extra || nb == 0 {
			continue
		}
		d := (f.rtt - o.rtt).Seconds()
		if d < 0 {
			d = -d
		}
		t.jitter += (d - t.jitter) / 16
	}
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// State is a target's health: unknown until probes say otherwise.
type State uint8

const (
	// StateUnknown: no verdict yet (a fresh or re-added target). Never a
	// reason to act.
	StateUnknown State = iota
	// StateUp: answering, and no rule of the target says it is down.
	StateUp
	// StateDown: a rule of the target holds (losses in a row, loss ratio,
	// median RTT).
	StateDown
)

func (s State) String() string { return [...]string{"unknown", "up", "down"}[s] }

// Rule decides when a target is down. Zero fields are the defaults.
type Rule struct {
	// Losses in a row, in send order, that make the target down (default 3).
	Losses int
	// LossRatio over the target's window above which it is down (0 = off).
	// Judged only once the window holds half the probes it can.
	LossRatio float64
	// RTT: the median of the last 8 replies above it makes the target down
	// (0 = off). Judged from 5 replies on.
	RTT time.Duration
}

func (r Rule) losses() int {
	if r.Losses <= 0 {
		return 3
	}
	return r.Losses
}

type downKind uint8

const (
	notDown downKind = iota
	downLosses
	downRatio
	downRTT
)

// What made a target down (Health.DownBy).
const (
	DownByLosses    = "losses"     // lost in a row: the path is dead
	DownByLossRatio = "loss_ratio" // degraded
	DownByRTT       = "rtt"        // degraded
)

func (k downKind) String() string {
	return [...]string{"", DownByLosses, DownByLossRatio, DownByRTT}[k]
}

// evaluate updates the target's state after a finished probe and publishes
// a change. Called with e.mu held.
func (t *target) evaluate(at time.Time) {
	kind := notDown
	r := t.spec.Rule
	var median time.Duration
	switch {
	case t.run >= r.losses():
		kind = downLosses
	case r.LossRatio > 0 && t.ruleLossRatio() > r.LossRatio:
		kind = downRatio
	case r.RTT > 0:
		if median = t.medianRTT(); median > r.RTT {
			kind = downRTT
		}
	}
	next := t.state
	switch {
	case kind != notDown:
		next = StateDown
	case t.lastOKn > t.resetN:
		next = StateUp
	}
	if next == t.state && kind == t.downKind {
		return
	}
	from := t.state
	t.downKind = kind
	switch kind {
	case downLosses:
		t.reason = fmt.Sprintf("%d probes lost in a row (rule: %d)", t.run, r.losses())
	case downRatio:
		t.reason = fmt.Sprintf("%.0f%% of probes lost over %s (rule: above %.0f%%)", 100*t.ruleLossRatio(), t.window, 100*r.LossRatio)
		if slots := t.windowSlots(); t.n < slots {
			t.reason += fmt.Sprintf("; %d lost of the %d probes the window holds, %d sent so far", t.lost, slots, t.n)
		}
	case downRTT:
		t.reason = fmt.Sprintf("median RTT %s (rule: above %s)", median.Round(100*time.Microsecond), r.RTT)
	default:
		t.reason = "answering"
	}
	if next != from {
		t.state, t.since = next, at
	}
	t.e.p.changes.Publish(StateChange{Health: t.healthLocked(), From: from})
}

// windowSlots is how many outcomes the loss window holds when full: one
// per interval over it, at least 5.
func (t *target) windowSlots() int {
	return max(int(t.window/t.spec.Interval), 5)
}

// ruleLossRatio is the loss ratio the loss-ratio rule judges: the window's
// losses over what the window holds when full, so a young window (a new
// target, a failover's reset) counts the probes it has not seen yet as
// answered. An outage weighs what it would weigh in a full window: a
// target answering again after one is judged as it would be later, and
// never goes up and then down again as more outcomes arrive (judged on
// lost/n, a 17 s outage in the first 20 s of a 1m window reads 90%). A
// young lossy path is down once its losses alone pass the ratio.
func (t *target) ruleLossRatio() float64 {
	return float64(t.lost) / float64(max(t.n, t.windowSlots()))
}

// medianRTT is the median of the last 8 SLI replies; 0 with fewer than 5.
func (t *target) medianRTT() time.Duration {
	q := t.rttQuantiles(8, 0.5)
	return q[0]
}

// rttQuantiles returns quantiles of the last n replies' RTTs (at most 64);
// zeros with fewer than 5 replies.
func (t *target) rttQuantiles(n int, qs ...float64) []time.Duration {
	out := make([]time.Duration, len(qs))
	n = min(t.nrtt, n, len(t.rtts))
	if n < 5 {
		return out
	}
	s := make([]uint32, n)
	for i := range n {
		s[i] = t.rtts[(t.nrtt-1-i)%len(t.rtts)]
	}
	slices.Sort(s)
	for i, q := range qs {
		out[i] = time.Duration(s[min(int(q*float64(n)), n-1)]) * time.Microsecond
	}
	return out
}

// record adds an outcome and drops those older than the window.
func (t *target) record(o outcome) {
	if t.n == len(t.outcomes) { // full: overwrite the oldest
		if t.outcomes[t.head].lost() {
			t.lost--
		}
		t.head = (t.head + 1) % len(t.outcomes)
		t.n--
	}
	t.outcomes[(t.head+t.n)%len(t.outcomes)] = o
	t.n++
	if o.lost() {
		t.lost++
	}
	cutoff := int64(o)>>1 - int64(t.window)
	for t.n > 0 && t.outcomes[t.head].before(cutoff) {
		if t.outcomes[t.head].lost() {
			t.lost--
		}
		t.head = (t.head + 1) % len(t.outcomes)
		t.n--
	}
}

func (t *target) lossRatio() float64 {
	if t.n == 0 {
		return 0
	}
	return float64(t.lost) / float64(t.n)
}

func (t *target) duplicate() { t.dupN++ }

func (t *target) late() { t.lateN++ }

// sendErr logs a send failure once per distinct error. Called with e.mu held.
func (t *target) sendErr(err error) {
	if t.sendErrLogged == err.Error() {
		return
	}
	t.sendErrLogged = err.Error()
	t.e.p.logger.Warn("probe not sent; counted as failed", "device", t.spec.Device, "target", t.spec.Label(), "err", err)
}

// suspicious reports whether an extra probe is due: the newest probe is
// unanswered, the target is not already down, and fewer extra probes are out
// than the rule needs for a verdict (Losses-1 after the first loss). It also
// returns the delay before the next check.
func (t *target) suspicious() (bool, time.Duration) {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	due := t.lastOKn < t.sent && t.state != StateDown && t.extras < t.spec.Rule.losses()-1
	return due, max(t.spec.Suspect, 2*t.srtt)
}

// resetState starts a new verdict: unknown until probes sent from now on say
// otherwise. Called with e.mu held.
func (t *target) resetState(now time.Time) {
	from := t.state
	t.resetN, t.run, t.extras = t.sent, 0, 0
	t.state, t.since, t.reason, t.downKind = StateUnknown, now, "reset: no verdict yet on the new path", notDown
	t.outcomes, t.head, t.n, t.lost = make([]outcome, len(t.outcomes)), 0, 0, 0
	t.nrtt = 0
	t.e.p.changes.Publish(StateChange{Health: t.healthLocked(), From: from})
}

func (t *target) health() Health {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	return t.healthLocked()
}

func (t *target) healthLocked() Health {
	return Health{
		Target: t.spec, State: t.state, Since: t.since, Reason: t.reason, DownBy: t.downKind.String(), Up: t.state == StateUp,
		LossRatio: t.lossRatio(), RTT: t.lastRTT, MedianRTT: t.medianRTT(), Jitter: time.Duration(t.jitter * float64(time.Second)),
		Probes: t.probes, Failures: t.failures, Late: t.lateN, Duplicates: t.dupN, LastSuccess: t.lastSuccess,
		LostInARow: t.run, PathMTU: t.pmtu.mtu, PathMTUBelow: t.pmtu.below, PathMTUCeiling: t.pmtu.ceiling, PMTUState: t.pmtu.state.String(),
	}
}

func (t *target) deleteSeries() {
	if rtt := t.e.p.metrics.rtt; rtt != nil {
		t.e.mu.Lock()
		labels := t.m.labels
		t.e.mu.Unlock()
		rtt.DeleteLabelValues(labels...)
	}
}
