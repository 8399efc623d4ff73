package prober

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// target is one probed address with its accounting. Its stats are guarded by
// its engine's mutex (the scheduler and the receiver both finish probes).
type target struct {
	spec      Target
	e         *engine
	next      time.Time // guarded by Prober.mu
	heapIndex int       // guarded by Prober.mu
	removed   bool
	window    time.Duration

	// stats, guarded by e.mu
	probes, failures uint64
	lateN, dupN      uint64
	outcomes         []outcome // ring over the loss window
	head, n          int
	lost             int // lost among the window's outcomes
	last3            uint8
	sent             uint64     // probes sent: numbers them for jitter pairs
	jitter           float64    // seconds
	recent           []finished // by probe number modulo len: neighbours for jitter
	lastRTT          time.Duration
	lastSuccess      time.Time
	sendErrLogged    string

	pmtu pmtuView // guarded by e.mu

	m targetMetrics
}

// finished is one recent probe, by its number, for RFC 3550 pairs.
type finished struct {
	n   uint64
	ok  bool
	rtt time.Duration
}

// outcome is one finished probe in the loss window: its Unix nanoseconds
// shifted left by one, with the lowest bit set when it was lost.
type outcome int64

func mkOutcome(at time.Time, lost bool) outcome {
	return outcome(at.UnixNano()<<1 | int64(b2u(lost)))
}

func (o outcome) lost() bool           { return o&1 == 1 }
func (o outcome) before(ns int64) bool { return int64(o)>>1 < ns }

type targetMetrics struct {
	labels []string
	rtt    prometheus.Observer
}

func newTarget(spec Target, e *engine, m *metrics, window, timeout time.Duration) *target {
	labels := []string{spec.Device, spec.PublicKey, spec.Name, spec.Address.String()}
	t := &target{spec: spec, e: e, heapIndex: -1, m: targetMetrics{
		labels: labels,
		rtt:    m.rtt.WithLabelValues(labels...),
	}}
	t.size(window, timeout)
	t.pmtu.state = pmtuBase
	return t
}

// size (re)allocates the loss window and the jitter neighbours for the
// target's interval, prober.window and prober.timeout. A changed loss window
// starts empty.
func (t *target) size(window, timeout time.Duration) {
	if n := int(window/t.spec.Interval) + 2; n != len(t.outcomes) || window != t.window {
		t.outcomes, t.window = make([]outcome, n), window
		t.head, t.n, t.lost = 0, 0, 0
	}
	// Neighbours can finish up to a timeout apart: keep that many probes.
	if n := min(max(int(timeout/t.spec.Interval)+2, 4), 1024); n > len(t.recent) {
		t.recent = make([]finished, n) // jitter pairs resume with the next probes
	}
}

// setSpec takes in-place changes of the target (interval, size, device MTU)
// and of the configuration (window, timeout). Called with Prober.mu.
func (t *target) setSpec(s Target, window, timeout time.Duration) {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	t.spec.Interval, t.spec.Size, t.spec.DeviceMTU = s.Interval, s.Size, s.DeviceMTU
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
	t.probes++
	t.last3 = t.last3<<1 | b2u(ok)
	t.pairJitter(finished{n: s.n, ok: ok, rtt: rtt})
	if ok {
		t.m.rtt.Observe(rtt.Seconds())
		t.lastRTT, t.lastSuccess = rtt, at
	} else {
		t.failures++
	}
	t.record(mkOutcome(at, !ok))
	e.p.publish(Result{Target: t.spec, Sent: s.sent, Success: ok, RTT: rtt})
}

// pairJitter applies RFC 3550 A.8, J += (|D| - J)/16, with D the difference
// of the RTTs of consecutive probes in send order. Probes finish out of order
// (a loss is known only at its timeout, after later replies), so a probe is
// paired with both neighbours as soon as each of them is known; a pair with
// a loss is skipped.
func (t *target) pairJitter(f finished) {
	size := uint64(len(t.recent))
	t.recent[f.n%size] = f
	if !f.ok {
		return
	}
	for _, nb := range []uint64{f.n - 1, f.n + 1} {
		o := t.recent[nb%size]
		if o.n != nb || !o.ok || nb == 0 {
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

// isUp: a reply among the last three finished probes (BFD-like detect
// multiplier 3), so one lost probe does not flap the target.
func (t *target) isUp() bool {
	mask := uint8(0b111)
	if t.probes < 3 {
		mask = uint8(1)<<t.probes - 1
	}
	return t.last3&mask != 0
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
	t.e.p.logger.Warn("probe not sent; counted as failed", "device", t.spec.Device, "target", t.spec.Address, "err", err)
}

func (t *target) health() Health {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	return Health{
		Target: t.spec, Up: t.probes > 0 && t.isUp(), LossRatio: t.lossRatio(),
		RTT: t.lastRTT, Jitter: time.Duration(t.jitter * float64(time.Second)),
		Probes: t.probes, Failures: t.failures, Late: t.lateN, Duplicates: t.dupN, LastSuccess: t.lastSuccess,
		PathMTU: t.pmtu.mtu, PMTUState: t.pmtu.state.String(),
	}
}

func (t *target) deleteSeries() {
	t.e.p.metrics.rtt.DeleteLabelValues(t.m.labels...)
}
