package remediate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
)

// Snapshots is the collector, as the remediator reads it.
type Snapshots interface {
	Subscribe(ctx context.Context) <-chan *collector.Snapshot
}

// Prober is the prober, as the remediator uses it: its targets' state
// changes and health, the registration of the policies' targets, and a fresh
// verdict after traffic moved to another path.
type Prober interface {
	SubscribeChanges(ctx context.Context) <-chan prober.StateChange
	HealthOf(key string) (prober.Health, bool)
	SetTargets(owner string, ts []prober.Target)
	ResetState(key string)
	ResearchPMTU(key string)
	Subscribe(ctx context.Context) <-chan prober.Result
}

// Options are the remediator's sources and transports.
type Options struct {
	Snapshots Snapshots
	Prober    Prober
	// Routes is the netlink handle of the route and link actuators. Read in
	// every mode (dry-run reports what auto would do from the same kernel
	// state), written only in auto.
	Routes RouteHandle
	// Peers is the wgctrl handle of the peer actuator (endpoints, keepalive).
	Peers PeerHandle
	// Firewall is the nftables transport of the MSS clamp (nil: the
	// kernel's, through google/nftables, opened when first used).
	Firewall FirewallHandle
	// Tracer makes a span of every decision; nil is a no-op.
	Tracer trace.TracerProvider
}

// TargetOwner is the remediator's name for its probe targets.
const TargetOwner = "remediate"

// reconcileEvery: our changes still there and in force?
const reconcileEvery = 2 * time.Second

// Remediator is the core: it runs each policy on its own goroutine and
// carries out their plans. Its methods are safe for concurrent use.
type Remediator struct {
	logger   *slog.Logger
	snaps    Snapshots
	prober   Prober
	routesH  RouteHandle
	peersH   PeerHandle
	firewall FirewallHandle
	metrics  *metrics
	audit    auditor
	wake     chan struct{}

	reload sync.Mutex // one ApplyConfig at a time
	saving sync.Mutex // one state file write at a time
	owners routeOwners
	budget budget

	// mu guards the fields below. It is never held while a policy runs:
	// a policy's lock may be taken before it, never after.
	mu        sync.Mutex
	cfg       Config
	workers   []*worker
	parts     map[string]json.RawMessage // each policy's part of the state file
	decisions map[string]DecisionStatus
	snap      *collector.Snapshot
	paused    bool
	pausedWhy string     // why it started paused (an unusable state file); "" once resumed
	epoch     uint64     // a new episode for every unit: bumped by pause and resume
	lock      *stateLock // held in auto
	started   bool
	lastSave  string // last error saving state, logged once
}

// worker runs one policy. Every call into the policy is made holding mu
// (but Describe and Collect: see Policy).
type worker struct {
	name    string
	mu      sync.Mutex
	p       Policy
	results atomic.Bool            // p.WantsResults(), as of the last reload
	current atomic.Pointer[Policy] // p, for a scrape
	status  atomic.Pointer[any]    // the last Status, for when the policy is busy

	in     sync.Mutex // guards inbox and decide; never held with mu
	inbox  []Signal
	decide bool
	kick   chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
}

// inboxLimit bounds what a stuck policy queues; the oldest signals go first.
const inboxLimit = 8192

// New validates cfg and returns a remediator running policies; Run starts it.
func New(cfg Config, policies []Policy, logger *slog.Logger, opts Options) (*Remediator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Snapshots == nil || opts.Prober == nil {
		return nil, errors.New("remediate: the collector and the prober are required")
	}
	tp := opts.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	m := newMetrics()
	r := &Remediator{
		logger: logger, snaps: opts.Snapshots, prober: opts.Prober, routesH: opts.Routes, peersH: opts.Peers, firewall: opts.Firewall,
		metrics: m, audit: auditor{logger: logger, metrics: m, tracer: tp.Tracer("github.com/wgpulse/wgpulse/remediate")},
		wake: make(chan struct{}, 1), cfg: cfg, parts: map[string]json.RawMessage{}, decisions: map[string]DecisionStatus{},
		budget: budget{cfg: cfg.Budget},
	}
	if r.firewall == nil {
		r.firewall = NewFirewall()
	}
	seen := map[string]bool{}
	for _, p := range policies {
		if seen[p.Name()] {
			return nil, fmt.Errorf("remediate: two policies named %q", p.Name())
		}
		seen[p.Name()] = true
		w := newWorker(p)
		r.workers = append(r.workers, w)
		p.Inherit(r.envLocked(w), nil)
	}
	m.setMode(cfg.Mode)
	m.budget.Set(float64(cfg.Budget.Changes))
	if cfg.Mode == ModeAuto {
		l, err := lockState(cfg.StateFile)
		if err != nil {
			return nil, fmt.Errorf("remediate: %w", err)
		}
		r.lock = l
	}
	return r, nil
}

func newWorker(p Policy) *worker {
	w := &worker{name: p.Name(), kick: make(chan struct{}, 1)}
	w.set(p)
	return w
}

// set makes p the worker's policy. The caller holds w.mu (or owns w).
func (w *worker) set(p Policy) {
	w.p = p
	w.results.Store(p.WantsResults())
	w.current.Store(&p)
}

func (w *worker) policy() Policy { return *w.current.Load() }

// statusWait bounds how long GET /-/remediate waits for a busy policy (a
// step normally takes microseconds; a stuck kernel call may take forever).
const statusWait = time.Second

// lockStatus takes w.mu within statusWait.
func (w *worker) lockStatus() bool {
	for deadline := time.Now().Add(statusWait); ; time.Sleep(time.Millisecond) {
		if w.mu.TryLock() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// envLocked is what a policy knows now.
func (r *Remediator) envLocked(w *worker) Env {
	return Env{Now: time.Now(), Mode: r.cfg.Mode, RouteProtocol: r.cfg.RouteProtocol, Snapshot: r.snap,
		Kernel: r.actuatorsLocked(), Prober: r.prober, Logger: r.logger, metrics: r.metrics, policy: w.name}
}

func (r *Remediator) actuatorsLocked() actuators {
	return actuators{routes: routes{h: r.routesH, proto: r.cfg.RouteProtocol}, peers: peers{h: r.peersH}, prober: r.prober, firewall: r.firewall}
}

func (r *Remediator) env(w *worker) Env {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.envLocked(w)
}

// Describe implements prometheus.Collector.
func (r *Remediator) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range r.metrics.collectors() {
		c.Describe(ch)
	}
	for _, w := range r.workerList() {
		w.policy().Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (r *Remediator) Collect(ch chan<- prometheus.Metric) {
	for _, c := range r.metrics.collectors() {
		c.Collect(ch)
	}
	for _, w := range r.workerList() { // without the policy's lock: a scrape never waits for a slow kernel call
		w.policy().Collect(ch)
	}
}

func (r *Remediator) workerList() []*worker {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.workers)
}

// Run starts from the state file and the kernel, then feeds every signal
// to the policies until ctx ends; on a clean end with restore_on_exit it
// undoes their changes.
func (r *Remediator) Run(ctx context.Context) {
	r.start(ctx)
	// Subscriptions end with their own context, after the final restore.
	subCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	changes := r.prober.SubscribeChanges(subCtx)
	snaps := r.snaps.Subscribe(subCtx)
	// Probe results only while a policy wants them (a reload may change that).
	var results <-chan prober.Result
	stopResults := func() {}
	followResults := func() {
		on := false
		r.mu.Lock()
		for _, w := range r.workers {
			on = on || (w.results.Load() && r.cfg.Mode != ModeOff)
		}
		r.mu.Unlock()
		switch {
		case on && results == nil:
			var rctx context.Context
			rctx, stopResults = context.WithCancel(subCtx)
			results = r.prober.Subscribe(rctx)
		case !on && results != nil:
			stopResults()
			results = nil
		}
	}
	followResults()
	defer func() { stopResults() }()
	for {
		select {
		case <-ctx.Done():
			r.stop(context.WithoutCancel(ctx))
			return
		case c := <-changes:
			r.broadcast(Signal{Change: &c})
		case s := <-snaps:
			r.mu.Lock()
			r.snap = s
			r.mu.Unlock()
			r.broadcast(Signal{Snapshot: s})
		case res := <-results:
			r.broadcast(Signal{Result: &res})
		case <-r.wake:
			followResults()
		}
	}
}

// broadcast queues a signal for every policy (results only for those that
// want them). It never waits for a policy.
func (r *Remediator) broadcast(s Signal) {
	r.mu.Lock()
	ws := slices.Clone(r.workers)
	r.mu.Unlock()
	for _, w := range ws {
		if s.Result == nil || w.results.Load() {
			w.post(s, false)
		}
	}
}

func (w *worker) post(s Signal, decide bool) {
	w.in.Lock()
	if s != (Signal{}) {
		w.inbox = append(w.inbox, s)
		if len(w.inbox) > inboxLimit {
			w.inbox = slices.Delete(w.inbox, 0, len(w.inbox)-inboxLimit)
		}
	}
	w.decide = w.decide || decide
	w.in.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// poke asks the policy for a decision now (pause, resume, reload).
func (w *worker) poke() { w.post(Signal{}, true) }

func (w *worker) take() ([]Signal, bool) {
	w.in.Lock()
	defer w.in.Unlock()
	s, d := w.inbox, w.decide
	w.inbox, w.decide = nil, false
	return s, d
}

// work is one policy's goroutine.
func (r *Remediator) work(ctx context.Context, w *worker) {
	defer close(w.done)
	w.mu.Lock()
	every := w.p.Every()
	w.mu.Unlock()
	tick := time.NewTicker(every)
	defer tick.Stop()
	reconcile := time.NewTicker(reconcileEvery)
	defer reconcile.Stop()
	for {
		var now time.Duration
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
			sigs, decide := w.take()
			now = r.step(w, func(env Env) {
				for _, s := range sigs {
					decide = w.p.Observe(env, s) || decide
				}
				if decide {
					r.run(ctx, w, env, w.p.Decide(env))
				}
			})
		case <-tick.C:
			now = r.step(w, func(env Env) { r.run(ctx, w, env, w.p.Decide(env)) })
		case <-reconcile.C:
			now = r.step(w, func(env Env) {
				if env.Mode == ModeAuto {
					r.conflicts(ctx, w, env, w.p.Reconcile(env))
				}
			})
		}
		if now > 0 && now != every { // a reload changed the policy's cadence
			every = now
			tick.Reset(every)
		}
	}
}

// step runs f with the policy's lock held, once the remediator has started
// and while the mode is not off; it returns the policy's cadence.
func (r *Remediator) step(w *worker, f func(Env)) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	r.mu.Lock()
	env, started := r.envLocked(w), r.started
	r.mu.Unlock()
	if started && env.Mode != ModeOff {
		f(env)
	}
	return w.p.Every()
}

func (r *Remediator) run(ctx context.Context, w *worker, env Env, plans []Plan) {
	for _, p := range plans {
		_ = r.execute(ctx, w, env, p)
	}
}

// execute carries one plan through the rails, the actuators and the audit.
// The caller holds w.mu.
func (r *Remediator) execute(ctx context.Context, w *worker, env Env, p Plan) error {
	d := p.Decision
	d.Policy = w.name
	r.mu.Lock()
	paused, epoch := r.paused, r.epoch
	act := r.actuatorsLocked()
	r.mu.Unlock()
	if p.Quiet {
		if env.Mode != ModeAuto {
			return nil
		}
		if err := r.apply(w.name, act, p.Changes); err != nil {
			env.Logger.Warn("re-asserting a change of ours failed", "policy", w.name, "group", d.Group, "err", err)
			return err
		}
		if p.Commit != nil {
			p.Commit(env.Now)
		}
		env.Logger.Debug("re-asserted a change of ours", "policy", w.name, "group", d.Group, "reason", d.Reason)
		return nil
	}
	if p.Handback && paused && d.Suppressed == "" { // a hand-back is not the operator's: a pause holds it
		d.Suppressed, d.Reason = SuppressPaused, "remediation paused: "+d.Reason
	}
	p.Unrailed = p.Unrailed || p.Handback
	if !p.Unrailed && p.Rails != nil {
		applyRails(&d, p.Limits, *p.Rails, env.Now, paused)
		if p.Rails.Conflicts > 0 && d.Group != "" { // a unit that had a conflict: the lasting one ends by time
			r.metrics.lasting.WithLabelValues(w.name, d.Group).Set(b2f(p.Rails.Lasting(env.Now)))
		}
	}
	if p.Prepare != nil && d.Action != "" && d.Suppressed == "" {
		p.Changes = p.Prepare(&d)
	}
	if !p.Unrailed && d.Action != "" && d.Suppressed == "" {
		r.budget.take(&d, env.Now) // in dry-run too: it decides what auto would
		r.metrics.budget.Set(r.budget.remaining(env.Now))
	}
	switch {
	case d.Action == "":
		if p.Episode != nil {
			*p.Episode = Episode{}
		}
		return nil
	case d.Suppressed != "":
		if p.Episode != nil {
			if p.Episode.suppressed == d.Suppressed && p.Episode.epoch == epoch {
				return nil // this episode is audited already
			}
			*p.Episode = Episode{suppressed: d.Suppressed, epoch: epoch}
		}
		r.record(ctx, d, env.Mode, ResultSuppressed, time.Now(), nil)
		if p.After != nil {
			p.After(d, ResultSuppressed)
		}
		return nil
	}
	if p.Episode != nil {
		*p.Episode = Episode{}
	}
	start := time.Now()
	var err error
	result := ResultDryRun
	if env.Mode == ModeAuto || p.Handback {
		err = r.apply(w.name, act, p.Changes)
		result = resultOf(err)
	}
	if err != nil {
		if !p.Unrailed && p.Rails != nil {
			*p.Rails = backoff(*p.Rails, "a failed "+d.Action, env.Now)
			p.Rails.Failed = true
		}
		if p.Failed != nil {
			p.Failed(env.Now)
		}
	} else {
		if !p.Unrailed && p.Rails != nil {
			*p.Rails = spend(p.Limits, *p.Rails, env.Now)
		}
		if p.Commit != nil {
			p.Commit(env.Now)
		}
	}
	r.record(ctx, d, env.Mode, result, start, err)
	if p.After != nil {
		p.After(d, result)
	}
	r.publish(w)
	r.save()
	return err
}

// apply carries out a plan's changes in order, refusing any to a route
// another policy owns.
func (r *Remediator) apply(policy string, act actuators, cs []Change) error {
	if err := r.owners.check(policy, cs); err != nil {
		return err
	}
	for i, c := range cs {
		if err := c.apply(act); err != nil {
			r.owners.record(policy, cs[:i])
			return err
		}
	}
	r.owners.record(policy, cs)
	return nil
}

// record audits a decision and keeps it for the status.
func (r *Remediator) record(ctx context.Context, d Decision, mode Mode, result string, start time.Time, err error) {
	r.audit.record(ctx, d, mode, result, start, err)
	ds := DecisionStatus{Policy: d.Policy, Group: d.Group, Peer: d.Peer, At: time.Now(), Action: d.Action, From: d.From, To: d.To,
		Reason: d.Reason, Code: d.ReasonCode(), Result: result, Suppressed: d.Suppressed}
	r.mu.Lock()
	r.decisions[decisionKey(ds)] = ds
	r.mu.Unlock()
}

// conflicts counts, logs and backs off from what someone else changed.
func (r *Remediator) conflicts(ctx context.Context, w *worker, env Env, cs []Conflict) {
	for _, c := range cs {
		r.metrics.conflicts.WithLabelValues(c.Group).Inc()
		if c.Rails != nil {
			*c.Rails = conflicted(*c.Rails, c.Problem, env.Now)
			r.metrics.lasting.WithLabelValues(w.name, c.Group).Set(b2f(c.Rails.Lasting(env.Now)))
		}
		r.audit.conflict(ctx, w.name, c, env.Mode)
	}
	if len(cs) > 0 {
		r.publish(w)
		r.save()
	}
}

// start reads the state file, lets every policy adopt its part against the
// kernel, registers the policies' probe targets and starts their goroutines.
func (r *Remediator) start(ctx context.Context) {
	r.mu.Lock()
	r.started = true
	mode, file := r.cfg.Mode, r.cfg.StateFile
	ws := slices.Clone(r.workers)
	r.mu.Unlock()
	defer func() {
		for _, w := range ws {
			r.launch(ctx, w)
		}
	}()
	if mode == ModeOff {
		r.logger.Info("remediation off: no policy targets probed, nothing touched")
		r.warnLeftovers()
		return
	}
	policies := make([]Policy, len(ws))
	for i, w := range ws {
		policies[i] = w.p
	}
	now := time.Now()
	st, err := loadState(file, policies)
	why := ""
	if err != nil {
		r.metrics.stateErrs.Inc()
		kept := ""
		if errors.Is(err, errCorrupt) {
			kept = fmt.Sprintf(" (kept aside as %s)", setAside(file, now))
		}
		why = fmt.Sprintf("the state file was unusable at start: %v%s", err, kept)
		if mode == ModeAuto { // what it said (a pause, a change in force) is lost: a human looks first
			st.Paused = true
			r.metrics.stateUnusable.Set(1)
			r.logger.Error("starting paused: "+why+"; the kernel is the truth for what wgpulse changed, but a pause or a change "+
				"it recorded may be lost. Check `ip route show proto N` and the audit log, then resume (SIGUSR1)", "err", err)
		} else {
			r.logger.Error(why+"; starting from what the kernel shows", "err", err)
			why = ""
		}
	}
	r.mu.Lock()
	r.paused, r.pausedWhy, r.parts = st.Paused, why, st.Policies
	r.mu.Unlock()
	r.metrics.paused.Set(b2f(st.Paused))
	if st.Paused && why == "" {
		r.logger.Warn("remediation is paused (from the state file): SIGUSR1 (or POST /-/remediate/resume) resumes it")
	}
	for _, w := range ws {
		w.mu.Lock()
		env := r.env(w)
		plans, err := w.p.Start(env, st.Policies[w.name])
		if err != nil {
			r.metrics.stateErrs.Inc()
			r.logger.Error("the policy's part of the state file is unusable: it starts from what the kernel shows", "policy", w.name, "err", err)
		}
		if mode == ModeAuto {
			r.run(ctx, w, env, plans)
		}
		r.publish(w)
		w.mu.Unlock()
	}
	r.warnLeftovers()
	r.registerTargets()
	r.save()
	r.mu.Lock()
	proto := r.cfg.RouteProtocol
	r.mu.Unlock()
	r.logger.Info("remediation started", "mode", string(mode), "policies", len(ws), "state_file", file, "route_protocol", proto)
}

func (r *Remediator) launch(ctx context.Context, w *worker) {
	wctx, cancel := context.WithCancel(ctx)
	w.cancel, w.done = cancel, make(chan struct{})
	go r.work(wctx, w)
}

// warnLeftovers logs routes of our protocol that no policy owns: they are
// not touched (the remediator acts only on what its config names) and the
// log says how to remove them.
func (r *Remediator) warnLeftovers() {
	r.mu.Lock()
	act := r.actuatorsLocked()
	r.mu.Unlock()
	if act.routes.h == nil {
		return
	}
	known := map[Route]string{} // route -> the policy that would own it
	for _, w := range r.workerList() {
		w.mu.Lock()
		for _, rt := range w.p.Owned() {
			known[rt] = w.name
		}
		w.mu.Unlock()
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := act.routes.listProto(fam)
		if err != nil {
			return
		}
		for _, rt := range rs {
			if owner := known[rt]; owner != "" { // in the kernel since before this start: its owner's
				r.owners.record(owner, []Change{AddRoutes{rt}})
				continue
			}
			r.logger.Warn("a route of wgpulse's protocol that this config does not own: left alone; remove it by hand if it is stale",
				"route", rt.String(), "remove_with", fmt.Sprintf("ip route del %s dev %s metric %d proto %d", rt.Prefix, rt.Device, rt.Metric, rt.Protocol))
		}
	}
}

func (r *Remediator) registerTargets() {
	var ts []prober.Target
	if r.Mode() != ModeOff {
		for _, w := range r.workerList() {
			w.mu.Lock()
			ts = append(ts, w.p.Targets()...)
			w.mu.Unlock()
		}
	}
	r.prober.SetTargets(TargetOwner, ts)
}

// stop ends the policies' goroutines, undoes every change when
// restore_on_exit asks for it, then saves the state.
func (r *Remediator) stop(ctx context.Context) {
	ws := r.workerList()
	for _, w := range ws {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
	}
	r.mu.Lock()
	restore := r.cfg.Mode == ModeAuto && r.cfg.RestoreOnExit
	r.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		if restore {
			_ = r.undo(ctx, w, UndoRestoreOnExit, nil)
		}
		r.publish(w)
		w.mu.Unlock()
	}
	r.save()
	r.Close()
}

// publish takes the policy's part of the state file. The caller holds w.mu.
func (r *Remediator) publish(w *worker) {
	b, err := json.Marshal(w.p.State())
	if err != nil {
		r.logger.Error("cannot encode the policy's state", "policy", w.name, "err", err)
		return
	}
	r.mu.Lock()
	r.parts[w.name] = b
	r.mu.Unlock()
}

// save writes the state file (not in dry-run or off: they touch nothing,
// their own file included) from the parts the policies published; a part
// whose policy is not running is kept as it is.
func (r *Remediator) save() {
	r.saving.Lock()
	defer r.saving.Unlock()
	r.mu.Lock()
	if r.cfg.Mode != ModeAuto || !r.started {
		r.mu.Unlock()
		return
	}
	st := persisted{Written: time.Now().UTC(), Paused: r.paused, Policies: maps.Clone(r.parts)}
	file := r.cfg.StateFile
	r.mu.Unlock()
	err := saveState(file, st)
	msg := ""
	if err != nil {
		msg = err.Error()
		r.metrics.stateErrs.Inc()
	}
	r.mu.Lock()
	last := r.lastSave
	r.lastSave = msg
	r.mu.Unlock()
	if msg != last {
		if err != nil {
			r.logger.Error("cannot write the state file: a restart may not remember damping or pause (routes are found in the kernel anyway)", "err", err)
		} else if last != "" {
			r.logger.Info("state file writable again", "file", file)
		}
	}
}

// Close releases the state file's lock of a remediator that is not
// running (Run releases it when it ends). Idempotent.
func (r *Remediator) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lock.release()
	r.lock = nil
}

// Pause stops every action (decisions are still made, audited as
// suppressed); Resume lets them through again. who says who asked.
func (r *Remediator) Pause(who string) { r.setPaused(true, who) }

// Resume undoes Pause.
func (r *Remediator) Resume(who string) { r.setPaused(false, who) }

// TogglePause pauses a running remediator and resumes a paused one (SIGUSR1).
func (r *Remediator) TogglePause(who string) { r.setPaused(!r.Paused(), who) }

func (r *Remediator) setPaused(p bool, who string) {
	r.mu.Lock()
	if r.paused == p {
		r.mu.Unlock()
		return
	}
	r.paused = p
	if !p {
		r.pausedWhy = ""
		r.metrics.stateUnusable.Set(0)
	}
	r.epoch++ // a new episode: a still-wanted action is audited again
	ws := slices.Clone(r.workers)
	r.mu.Unlock()
	r.metrics.paused.Set(b2f(p))
	verb := map[bool]string{true: "paused", false: "resumed"}[p]
	r.logger.Warn("remediation "+verb, "by", who)
	r.save()
	for _, w := range ws {
		w.poke()
	}
}

// Paused reports whether remediation is paused.
func (r *Remediator) Paused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paused
}

// Mode is the mode in force.
func (r *Remediator) Mode() Mode {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg.Mode
}

// Status returns the current state.
func (r *Remediator) Status() Status {
	now := time.Now()
	r.mu.Lock()
	s := Status{Mode: r.cfg.Mode, Paused: r.paused, PausedReason: r.pausedWhy, RouteProtocol: r.cfg.RouteProtocol,
		Decisions: slices.Collect(maps.Values(r.decisions)), Policies: map[string]any{}}
	ws := slices.Clone(r.workers)
	r.mu.Unlock()
	slices.SortFunc(s.Decisions, func(a, b DecisionStatus) int { return cmp.Compare(decisionKey(a), decisionKey(b)) })
	if s.Decisions == nil {
		s.Decisions = []DecisionStatus{}
	}
	for _, w := range ws {
		if !w.lockStatus() { // its last status, and say so
			if last := w.status.Load(); last != nil {
				s.Policies[w.name] = *last
			}
			s.Busy = append(s.Busy, w.name)
			continue
		}
		st := w.p.Status(now)
		w.status.Store(&st)
		w.mu.Unlock()
		s.Policies[w.name] = st
	}
	return s
}

// ApplyConfig takes a reloaded configuration and the policies built from
// it: the same policies by name (a reload changes their configs, not which
// exist). In auto, each running policy first undoes the changes its
// successor will not own (all of them when the route protocol changes); a
// failure keeps the running configuration. Then each successor inherits its
// predecessor's state. No policy decides while this runs.
func (r *Remediator) ApplyConfig(ctx context.Context, cfg Config, policies []Policy) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r.reload.Lock()
	defer r.reload.Unlock()
	ws := r.workerList()
	if len(policies) != len(ws) {
		return fmt.Errorf("remediate: a reload brings %d policies, %d run", len(policies), len(ws))
	}
	for i, p := range policies {
		if p.Name() != ws[i].name {
			return fmt.Errorf("remediate: a reload brings policy %q where %q runs", p.Name(), ws[i].name)
		}
	}
	for _, w := range ws { // in list order: the only place that holds two
		w.mu.Lock()
	}
	defer func() {
		for _, w := range ws {
			w.mu.Unlock()
		}
	}()
	r.mu.Lock()
	prev := r.cfg
	r.mu.Unlock()
	var lock *stateLock // a new lock this reload takes: the state file changed, or auto begins
	if cfg.Mode == ModeAuto && (prev.Mode != ModeAuto || cfg.StateFile != prev.StateFile) {
		l, err := lockState(cfg.StateFile)
		if err != nil {
			return fmt.Errorf("remediate: %w (the running configuration stays)", err)
		}
		lock = l
	}
	if prev.Mode == ModeAuto {
		for i, w := range ws {
			why, successor := UndoReload, policies[i]
			switch {
			case cfg.RouteProtocol != prev.RouteProtocol:
				why, successor = UndoProtocol, nil // every route of ours changes owner
			case cfg.Mode != ModeAuto:
				why, successor = UndoLeaveAuto, nil // nothing will maintain what is in force
			}
			if err := r.undo(ctx, w, why, successor); err != nil {
				lock.release()
				return fmt.Errorf("undoing the changes of policy %s before the reload: %w (the running configuration stays)", w.name, err)
			}
		}
	}
	if cfg.Mode != prev.Mode {
		r.logger.Warn("remediation mode changed", "from", string(prev.Mode), "to", string(cfg.Mode))
	}
	r.budget.mu.Lock()
	r.budget.cfg = cfg.Budget
	r.budget.mu.Unlock()
	r.mu.Lock()
	r.cfg = cfg
	started := r.started
	switch {
	case lock != nil:
		r.lock.release()
		r.lock = lock
	case cfg.Mode != ModeAuto:
		r.lock.release()
		r.lock = nil
	}
	r.mu.Unlock()
	r.metrics.setMode(cfg.Mode)
	var targets []prober.Target
	for i, w := range ws {
		policies[i].Inherit(r.env(w), w.p)
		w.set(policies[i])
		targets = append(targets, w.p.Targets()...)
		r.publish(w)
	}
	if started {
		if cfg.Mode == ModeOff {
			targets = nil
		}
		r.prober.SetTargets(TargetOwner, targets)
		r.save()
	}
	for _, w := range ws {
		w.poke()
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// undo runs the plans that undo what successor will not own (nil: every
// change), why being an Undo* code. The caller holds w.mu.
func (r *Remediator) undo(ctx context.Context, w *worker, why string, successor Policy) error {
	env := r.env(w)
	var errs []error
	for _, p := range w.p.Undo(env, why, successor) {
		p.Unrailed = true
		errs = append(errs, r.execute(ctx, w, env, p))
	}
	return errors.Join(errs...)
}

func resultOf(err error) string {
	if err != nil {
		return ResultError
	}
	return ResultOK
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
