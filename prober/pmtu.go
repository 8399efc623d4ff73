package prober

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"
	"time"

	probing "github.com/prometheus-community/pro-bing"
)

// Path MTU search, RFC 8899 style: DF probes of growing inner packet size
// through the tunnel, from prober.pmtu.min up to the device MTU, binary
// search to within 20 bytes, up to MAX_PROBES tries per size, one probe at a
// time per target and at least pmtuGap apart. A confirmed PMTU is re-probed
// every prober.pmtu.confirm; when it stops passing while small probes still do (a
// black hole), the search starts again at once. A full search repeats every
// prober.pmtu.interval. PMTU probes are not SLI probes: they never count in
// wgpulse_probes_total or wgpulse_probe_failures_total.

type pmtuState uint8

const (
	pmtuDisabled pmtuState = iota
	pmtuBase
	pmtuSearching
	pmtuComplete
	pmtuError
	pmtuBelowMin // the path passes less than prober.pmtu.min: a value below the search floor
)

func (s pmtuState) String() string { return pmtuStateNames[s] }

const (
	pmtuResolution = 20 // stop when the bracket is this narrow (s2n-quic)
	pmtuGap        = 200 * time.Millisecond
	pmtuRetry      = time.Minute // after an error or while the path is down
	pmtuIdle       = time.Hour   // with prober.pmtu.enabled false; enabling wakes every target (enable)
	pmtuWorkers    = 4
)

// pmtuView is a target's search state, guarded by its engine's mutex.
type pmtuView struct {
	state    pmtuState
	mtu      int
	below    int // with pmtuBelowMin: the floor size that did not pass
	ceiling  int // what bounded the last full search: the device MTU, or a size the local stack refused
	due      time.Time
	research time.Time // next full search
	running  bool
}

// PMTUProbeFunc sends one DF echo request whose IP packet is ipSize bytes
// and reports whether a reply came within timeout, and whether the local
// stack refused it as too big (EMSGSIZE).
type PMTUProbeFunc func(ctx context.Context, t Target, ipSize int, timeout time.Duration, privileged bool) (passed, tooBig bool, err error)

type pmtuRunner struct {
	p     *Prober
	probe PMTUProbeFunc
	mu    sync.Mutex
	set   map[*target]bool
	// next: no target that is not running is due before it; a finished
	// step and add lower it. The runner scans its targets only from then
	// on, not on every tick (1,000 targets, four times a second, with
	// nothing due while prober.pmtu is off).
	next time.Time
}

func newPMTURunner(p *Prober, probe PMTUProbeFunc) *pmtuRunner {
	if probe == nil {
		probe = proBingProbe
	}
	return &pmtuRunner{p: p, probe: probe, set: map[*target]bool{}}
}

func (r *pmtuRunner) add(t *target) {
	if t.spec.TCPPort != 0 {
		return // a TCP connect says nothing of packet sizes
	}
	t.pmtu.due = time.Now().Add(3*t.spec.Interval + phase(t.spec.Key(), 5*time.Second)) // let the SLI see the path first
	r.mu.Lock()
	r.set[t] = true
	r.lowerLocked(t.pmtu.due)
	r.mu.Unlock()
}

// wake makes the runner look at its targets at due (ResearchPMTU set a
// target's due to it).
func (r *pmtuRunner) wake(due time.Time) {
	r.mu.Lock()
	r.lowerLocked(due)
	r.mu.Unlock()
}

func (r *pmtuRunner) lowerLocked(due time.Time) {
	if due.Before(r.next) {
		r.next = due
	}
}

// enable runs when prober.pmtu.enabled turns true: every target that was
// idle because it was off (due an hour later) becomes due within 5 s.
func (r *pmtuRunner) enable() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for t := range r.set {
		t.e.mu.Lock()
		if !t.pmtu.running && t.pmtu.state == pmtuDisabled {
			t.pmtu.due = now.Add(phase(t.spec.Key(), 5*time.Second))
			r.lowerLocked(t.pmtu.due)
		}
		t.e.mu.Unlock()
	}
}

func (r *pmtuRunner) remove(t *target) {
	r.mu.Lock()
	delete(r.set, t)
	r.mu.Unlock()
}

func (r *pmtuRunner) run(ctx context.Context) {
	work := make(chan *target)
	var wg sync.WaitGroup
	for range pmtuWorkers {
		wg.Go(func() {
			for t := range work {
				r.step(ctx, t)
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		r.mu.Lock()
		if now.Before(r.next) {
			r.mu.Unlock()
			continue
		}
		var due []*target
		next := now.Add(pmtuIdle)
		for t := range r.set {
			t.e.mu.Lock()
			switch {
			case t.pmtu.running: // its step lowers next when it ends
			case !t.pmtu.due.After(now):
				t.pmtu.running = true
				due = append(due, t)
			case t.pmtu.due.Before(next):
				next = t.pmtu.due
			}
			t.e.mu.Unlock()
		}
		r.next = next
		r.mu.Unlock()
		for _, t := range due {
			select {
			case work <- t:
			case <-ctx.Done():
				return
			}
		}
	}
}

// step does one unit of work for a target: a full search, or a confirmation
// of its current PMTU.
func (r *pmtuRunner) step(ctx context.Context, t *target) {
	cfg := r.p.Config()
	t.e.mu.Lock()
	view, spec, up, loss := t.pmtu, t.spec, t.state == StateUp, t.lossRatio()
	t.e.mu.Unlock()
	privileged := t.e.c.Privileged()
	now := time.Now()
	next := view
	switch {
	case !cfg.PMTU.Enabled:
		next.state, next.mtu, next.due = pmtuDisabled, 0, now.Add(pmtuIdle)
	case !up:
		// A dead path says nothing about its MTU: wait for it to answer.
		next.due = now.Add(10 * time.Second)
	case view.state == pmtuComplete && now.Before(view.research):
		if ok, _ := r.try(ctx, spec, view.mtu, loss, privileged, cfg.Timeout); ok || ctx.Err() != nil {
			next.due = now.Add(cfg.PMTU.Confirm)
			break
		}
		r.p.logger.Info("path MTU no longer passes: black hole, searching again", "device", spec.Device, "target", spec.Address, "pmtu", view.mtu)
		next.state, next.due = pmtuBase, now
	default:
		searching := view
		searching.state, searching.running = pmtuSearching, true // still ours: not dispatched again
		r.publish(t, searching)
		mtu, ceiling, err := r.search(ctx, spec, cfg, loss, privileged)
		if ctx.Err() != nil {
			break
		}
		now = time.Now()
		var below *belowMinError
		switch {
		case errors.As(err, &below):
			if view.state != pmtuBelowMin {
				r.p.logger.Warn("path MTU below the search floor: probes of prober.pmtu.min bytes do not pass while small probes do",
					"device", spec.Device, "target", spec.Address, "floor", below.floor)
			}
			next.state, next.mtu, next.below, next.due = pmtuBelowMin, 0, below.floor, now.Add(pmtuRetry)
		case err != nil:
			next.state, next.mtu, next.below, next.due = pmtuError, 0, 0, now.Add(pmtuRetry)
			r.p.logger.Warn("path MTU search failed", "device", spec.Device, "target", spec.Address, "err", err)
		default:
			next.state, next.mtu, next.below, next.due, next.research = pmtuComplete, mtu, 0, now.Add(cfg.PMTU.Confirm), now.Add(cfg.PMTU.Interval)
			next.ceiling = ceiling
		}
	}
	next.running = false
	r.publish(t, next)
	if next.state == pmtuDisabled && r.p.Config().PMTU.Enabled {
		// Enabled while this step ran: enable() skipped the running target,
		// and the check comes after publish, so one of the two wakes it.
		t.e.mu.Lock()
		if !t.pmtu.running && t.pmtu.state == pmtuDisabled {
			t.pmtu.due = now
		}
		next.due = t.pmtu.due
		t.e.mu.Unlock()
	}
	r.mu.Lock()
	r.lowerLocked(next.due)
	r.mu.Unlock()
}

func (r *pmtuRunner) publish(t *target, v pmtuView) {
	t.e.mu.Lock()
	defer t.e.mu.Unlock()
	t.pmtu = v
}

// belowMinError: probes of the search floor do not pass while small probes
// do, so the path MTU is below prober.pmtu.min.
type belowMinError struct{ floor int }

func (e *belowMinError) Error() string {
	return fmt.Sprintf("probes of %d bytes (prober.pmtu.min) do not pass while small probes do: the path MTU is below the search floor", e.floor)
}

// search brackets the PMTU between a size known to pass (lo) and one known
// to fail (bad), halving until they are within pmtuResolution bytes.
// The ceiling is what bounded it: the device MTU, or the size the local
// stack refused (EMSGSIZE) just above the result.
func (r *pmtuRunner) search(ctx context.Context, t Target, cfg Config, loss float64, privileged bool) (mtu, ceiling int, err error) {
	lo := cfg.PMTU.Min
	if t.Address.Is6() {
		lo = max(lo, 1280)
	}
	hi := t.DeviceMTU
	if hi <= 0 {
		hi = 1500
	}
	lo = min(lo, hi)
	ok, tooBig := r.try(ctx, t, lo, loss, privileged, cfg.Timeout)
	if !ok {
		if tooBig {
			return 0, 0, errors.New("the local stack refuses DF packets of prober.pmtu.min bytes (EMSGSIZE): lower prober.pmtu.min")
		}
		return 0, 0, &belowMinError{lo}
	}
	ok, tooBig = r.try(ctx, t, hi, loss, privileged, cfg.Timeout)
	if ok {
		return hi, hi, nil
	}
	bad, local := hi, tooBig
	for bad-lo > pmtuResolution && ctx.Err() == nil {
		mid := (lo + bad) / 2
		if ok, tooBig = r.try(ctx, t, mid, loss, privileged, cfg.Timeout); ok {
			lo = mid
		} else {
			bad, local = mid, tooBig // EMSGSIZE caps the same way, without retries
		}
	}
	if local { // the local stack refused the size just above: the device's MTU bounded the search, not the path
		return lo, lo, ctx.Err()
	}
	return lo, hi, ctx.Err()
}

// try probes one size up to maxProbes times; it stops at the first reply or
// at EMSGSIZE.
func (r *pmtuRunner) try(ctx context.Context, t Target, size int, loss float64, privileged bool, timeout time.Duration) (ok, tooBig bool) {
	for i := range maxProbes(loss) {
		if i > 0 {
			select {
			case <-ctx.Done():
				return false, false
			case <-time.After(pmtuGap):
			}
		}
		passed, tooBig, err := r.probe(ctx, t, size, timeout, privileged)
		if passed {
			return true, false
		}
		if tooBig {
			return false, true
		}
		if err != nil && ctx.Err() == nil {
			r.p.logger.Debug("PMTU probe error", "target", t.Address, "size", size, "err", err)
		}
	}
	return false, false
}

// maxProbes is RFC 8899's MAX_PROBES (3), raised on a lossy path so that a
// size that passes is wrongly failed with probability below 0.1%.
func maxProbes(loss float64) int {
	if loss <= 0 {
		return 3
	}
	if loss >= 0.5 {
		return 10
	}
	return min(max(int(math.Ceil(math.Log(0.001)/math.Log(loss))), 3), 10)
}

// proBingProbe sends one DF probe with pro-bing. Count=1 makes its run-wide
// Timeout a per-probe timeout.
func proBingProbe(ctx context.Context, t Target, ipSize int, timeout time.Duration, privileged bool) (bool, bool, error) {
	overhead := 28 // IPv4 + ICMP headers
	network := "ip4"
	if t.Address.Is6() {
		overhead, network = 48, "ip6"
	}
	p := probing.New(t.Address.String())
	p.SetNetwork(network)
	p.SetPrivileged(privileged)
	p.SetLogger(probing.NoopLogger{})
	p.InterfaceName = t.Device
	p.SetDoNotFragment(true)
	p.Size = ipSize - overhead
	p.Count = 1
	p.Timeout = timeout
	p.RecordRtts = false
	var sendErr error
	p.OnSendError = func(_ *probing.Packet, err error) { sendErr = err }
	err := p.RunWithContext(ctx)
	if err == nil {
		err = sendErr
	}
	if errors.Is(err, syscall.EMSGSIZE) {
		return false, true, nil
	}
	return p.Statistics().PacketsRecv > 0, false, err
}
