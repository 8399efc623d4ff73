package remediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
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
	// Routes is the netlink handle of the route actuator. Read in every mode
	// (dry-run reports what auto would do from the same kernel state), written
	// only in auto.
	Routes RouteHandle
	// Peers is the wgctrl handle of the peer actuator (endpoints, keepalive).
	Peers PeerHandle
	// Tracer makes a span of every decision; nil is a no-op.
	Tracer trace.TracerProvider
}

// TargetOwner is the remediator's name for its probe targets.
const TargetOwner = "remediate"

const (
	tickEvery      = 100 * time.Millisecond // hold-down ends, damping decays, backoffs expire
	reconcileEvery = 2 * time.Second        // our changes still there and in force?
	settleFor      = 2 * time.Second        // after an endpoint swap: roaming may pull it back once
	perPeerEvery   = time.Second            // the per-peer policies (MTU) look at their peers
)

// Remediator runs the policies. Its methods are safe for concurrent use.
type Remediator struct {
	logger  *slog.Logger
	snaps   Snapshots
	prober  Prober
	routes  routes
	peers   peers
	metrics *metrics
	audit   auditor
	wake    chan struct{}

	mu         sync.Mutex // guards everything below
	cfg        Config
	groups     []*group
	byKey      map[string]*group   // target key -> group
	mtus       map[string]*mtuUnit // device/public key -> the MTU policy's unit
	kas        map[string]*kaUnit  // device/public key -> the keepalive policy's unit
	kaByTarget map[string]*kaUnit  // probe target key -> its peer's keepalive unit
	snap       *collector.Snapshot
	paused     bool
	started    bool
	lastSave   string // last error saving state, logged once
}

// New validates cfg and returns a remediator; Run starts it.
func New(cfg Config, logger *slog.Logger, opts Options) (*Remediator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Snapshots == nil || opts.Prober == nil {
		return nil, errors.New("remediate: the collector and the prober are required")
	}
	if cfg.Mode != ModeOff {
		for _, g := range cfg.Failover {
			switch {
			case g.Mode == "endpoint" && opts.Peers == nil:
				return nil, errors.New("remediate: no wgctrl handle: endpoint failover needs CAP_NET_ADMIN (or set remediate.mode: off)")
			case g.Mode != "endpoint" && opts.Routes == nil:
				return nil, errors.New("remediate: no netlink handle: route failover needs CAP_NET_ADMIN (or set remediate.mode: off)")
			}
		}
	}
	tp := opts.Tracer
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	m := newMetrics()
	r := &Remediator{
		logger:  logger,
		snaps:   opts.Snapshots,
		prober:  opts.Prober,
		routes:  routes{h: opts.Routes, proto: cfg.RouteProtocol},
		peers:   peers{h: opts.Peers},
		metrics: m,
		audit:   auditor{logger: logger, metrics: m, tracer: tp.Tracer("github.com/wgpulse/wgpulse/remediate")},
		wake:    make(chan struct{}, 1),
		cfg:     cfg,
		mtus:    map[string]*mtuUnit{},
		kas:     map[string]*kaUnit{}, kaByTarget: map[string]*kaUnit{},
	}
	r.setGroupsLocked(cfg)
	m.setMode(cfg.Mode)
	return r, nil
}

// initPoliciesLocked creates the per-peer policies' counters at zero.
func (r *Remediator) initPoliciesLocked() {
	if r.cfg.MTU.Enabled {
		for _, d := range r.cfg.MTU.Devices {
			r.metrics.initPolicy("mtu", d, []string{ActionLowerMTU, ActionRaiseMTU}, r.cfg.Mode)
		}
	}
	if r.cfg.Keepalive.Enabled {
		for _, d := range r.cfg.Keepalive.Devices {
			r.metrics.initPolicy("keepalive", d, []string{ActionSetKeepalive, ActionRelaxKeepalive}, r.cfg.Mode)
		}
	}
}

func (r *Remediator) setGroupsLocked(cfg Config) {
	r.groups, r.byKey = nil, map[string]*group{}
	r.metrics.policies.Reset()
	for _, gc := range cfg.Failover {
		g := newGroup(gc)
		for _, t := range g.probeTargets() {
			r.byKey[t.Key()] = g
		}
		r.groups = append(r.groups, g)
		r.metrics.initGroup(g.cfg.Name, cfg.Mode)
	}
	r.initPoliciesLocked()
}

// Describe implements prometheus.Collector.
func (r *Remediator) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range r.metrics.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (r *Remediator) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	now := time.Now()
	for _, g := range r.groups {
		r.metrics.penalty.WithLabelValues(g.cfg.Name).Set(penalty(g.cfg.Damping, g.st.railState, now))
		r.metrics.damped.WithLabelValues(g.cfg.Name).Set(b2f(damped(g.cfg.Damping, g.st.railState, now)))
	}
	r.mu.Unlock()
	for _, c := range r.metrics.collectors() {
		c.Collect(ch)
	}
}

// Run starts from the state file and the kernel, then decides on every
// signal until ctx ends; on a clean end with restore_on_exit it undoes its
// changes.
func (r *Remediator) Run(ctx context.Context) {
	r.mu.Lock()
	r.startLocked(ctx)
	r.mu.Unlock()
	// Subscriptions end with their own context, after the final restore.
	subCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	changes := r.prober.SubscribeChanges(subCtx)
	snaps := r.snaps.Subscribe(subCtx)
	// Only the keepalive policy reads every probe result: subscribed while
	// it is enabled (a reload may switch it on or off).
	var results <-chan prober.Result
	stopResults := func() {}
	followKeepalive := func() {
		r.mu.Lock()
		on := r.cfg.Keepalive.Enabled && r.cfg.Mode != ModeOff
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
	followKeepalive()
	defer func() { stopResults() }()
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	reconcile := time.NewTicker(reconcileEvery)
	defer reconcile.Stop()
	perPeer := time.NewTicker(perPeerEvery)
	defer perPeer.Stop()
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.stopLocked(context.WithoutCancel(ctx))
			r.mu.Unlock()
			return
		case c := <-changes:
			r.mu.Lock()
			if g := r.byKey[c.Health.Target.Key()]; g != nil {
				r.evaluateLocked(ctx, g, time.Now())
			}
			r.mu.Unlock()
		case s := <-snaps:
			r.mu.Lock()
			r.snap = s
			r.observeKeepaliveLocked(s)
			r.evaluateAllLocked(ctx)
			r.mu.Unlock()
		case res := <-results:
			r.mu.Lock()
			r.observeResultLocked(res)
			r.mu.Unlock()
		case <-tick.C:
			r.mu.Lock()
			r.settleLocked(ctx, time.Now())
			r.evaluateAllLocked(ctx)
			r.mu.Unlock()
		case <-reconcile.C:
			r.mu.Lock()
			r.reconcileLocked(ctx, time.Now())
			if r.cfg.Mode == ModeAuto {
				r.reconcileMTULocked(time.Now())
				r.reconcileKeepaliveLocked(time.Now())
			}
			r.mu.Unlock()
		case <-perPeer.C:
			r.mu.Lock()
			r.evaluateMTULocked(ctx, time.Now())
			r.evaluateKeepaliveLocked(ctx, time.Now())
			r.mu.Unlock()
		case <-r.wake:
			followKeepalive()
			r.mu.Lock()
			r.evaluateAllLocked(ctx)
			r.mu.Unlock()
		}
	}
}

func (r *Remediator) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// startLocked reads the state file, reconciles it with the kernel, and
// registers the policies' probe targets.
func (r *Remediator) startLocked(ctx context.Context) {
	r.started = true
	mode := r.cfg.Mode
	if mode == ModeOff {
		r.logger.Info("remediation off: no failover paths probed, nothing touched")
		r.warnLeftoversLocked()
		return
	}
	now := time.Now()
	st, err := loadState(r.cfg.StateFile)
	if errors.Is(err, errCorrupt) {
		r.metrics.stateErrs.Inc()
		aside, aerr := setAside(r.cfg.StateFile, now)
		r.logger.Error("state file unusable: kept aside, starting from what the kernel shows", "err", err, "kept_as", aside, "rename_err", aerr)
	} else if err != nil {
		r.metrics.stateErrs.Inc()
		r.logger.Error("cannot read the state file: starting from what the kernel shows", "err", err)
	}
	r.paused = st.Paused
	r.metrics.paused.Set(b2f(r.paused))
	if r.paused {
		r.logger.Warn("remediation is paused (from the state file): POST /-/remediate/resume or SIGUSR1 resumes it")
	}
	for _, g := range r.groups {
		if saved, ok := st.Groups[g.cfg.Name]; ok {
			g.st = saved
		}
		r.adoptLocked(ctx, g, mode, now)
		r.exportActiveLocked(g)
	}
	if mode == ModeAuto {
		r.adoptMTULocked(st.MTU)
		r.adoptKeepaliveLocked(st.Keepalive)
	}
	r.warnLeftoversLocked()
	r.registerTargetsLocked()
	r.saveLocked()
	r.logger.Info("remediation started", "mode", string(mode), "groups", len(r.groups), "state_file", r.cfg.StateFile,
		"route_protocol", r.cfg.RouteProtocol)
}

// warnLeftoversLocked logs routes of our protocol that no route group
// owns: they are not touched (the remediator acts only on what its config
// names) and the log says how to remove them.
func (r *Remediator) warnLeftoversLocked() {
	if r.routes.h == nil {
		return
	}
	known := map[Route]bool{}
	for _, g := range r.groups {
		if g.endpoint() {
			continue
		}
		for _, rt := range r.ownRoutes(g) {
			known[rt] = true
		}
	}
	for _, rt := range mtuRoutesOf(r.mtus) {
		known[rt] = true
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := r.routes.listProto(fam)
		if err != nil {
			return
		}
		for _, rt := range rs {
			if !known[rt] {
				r.logger.Warn("a route of wgpulse's protocol that this config does not own: left alone; remove it by hand if it is stale",
					"route", rt.String(), "remove_with", fmt.Sprintf("ip route del %s dev %s metric %d proto %d", rt.Prefix, rt.Device, rt.Metric, rt.Protocol))
			}
		}
	}
}

func (r *Remediator) registerTargetsLocked() {
	var ts []prober.Target
	if r.cfg.Mode != ModeOff {
		for _, g := range r.groups {
			ts = append(ts, g.probeTargets()...)
		}
	}
	r.prober.SetTargets(TargetOwner, ts)
}

// stopLocked undoes every change when restore_on_exit asks for it, then
// saves the state.
func (r *Remediator) stopLocked(ctx context.Context) {
	if r.cfg.Mode == ModeAuto && r.cfg.RestoreOnExit {
		for _, g := range r.groups {
			r.restoreLocked(ctx, g, "restore_on_exit: undoing every change on a clean exit")
		}
		r.restoreMTULocked(ctx, "restore_on_exit: undoing every change on a clean exit", nil)
		r.restoreKeepaliveLocked(ctx, "restore_on_exit: undoing every change on a clean exit", nil)
	}
	r.saveLocked()
}

func (r *Remediator) evaluateAllLocked(ctx context.Context) {
	now := time.Now()
	for _, g := range r.groups {
		r.evaluateLocked(ctx, g, now)
	}
}

// plan is a decision with what carrying it out means. The executor is the
// same for every policy: rails, then the action in auto (nothing in dry-run),
// then the audit.
type plan struct {
	d       decision
	rails   *railState
	limits  limits
	audited *string                         // the unit's last audited suppression
	act     func() error                    // auto only
	commit  func(now time.Time)             // after success in auto, and in dry-run
	failed  func(now time.Time)             // after a failure (auto)
	after   func(d decision, result string) // status and metrics, whatever the result
	ctx     context.Context
	now     time.Time
	mode    Mode
	paused  bool
	save    func()
	auditor auditor
}

// execute runs a plan through the rails and carries it out.
func execute(p plan) {
	applyRails(&p.d, p.limits, *p.rails, p.now, p.paused)
	switch {
	case p.d.Action == "":
		*p.audited = ""
		return
	case p.d.Suppressed != "":
		if *p.audited == p.d.Suppressed {
			return // this episode is audited already
		}
		*p.audited = p.d.Suppressed
		p.auditor.record(p.ctx, p.d, p.mode, ResultSuppressed, time.Now(), nil)
		if p.after != nil {
			p.after(p.d, ResultSuppressed)
		}
		return
	}
	*p.audited = ""
	start := time.Now()
	var err error
	result := ResultDryRun
	if p.mode == ModeAuto {
		err = p.act()
		result = resultOf(err)
	}
	if err != nil {
		*p.rails = backoff(*p.rails, "a failed "+p.d.Action, p.now)
		if p.failed != nil {
			p.failed(p.now)
		}
	} else {
		*p.rails = spend(p.limits, *p.rails, p.now)
		p.commit(p.now)
	}
	p.auditor.record(p.ctx, p.d, p.mode, result, start, err)
	if p.after != nil {
		p.after(p.d, result)
	}
	p.save()
}

func (r *Remediator) newPlan(ctx context.Context, d decision, rs *railState, l limits, audited *string, now time.Time) plan {
	return plan{d: d, rails: rs, limits: l, audited: audited, ctx: ctx, now: now, mode: r.cfg.Mode, paused: r.paused,
		save: r.saveLocked, auditor: r.audit}
}

// saveLocked writes the state file (not in dry-run or off: they touch
// nothing, their own file included).
func (r *Remediator) saveLocked() {
	if r.cfg.Mode != ModeAuto {
		return
	}
	st := persisted{Written: time.Now().UTC(), Paused: r.paused, Groups: map[string]groupState{}, MTU: map[string]mtuState{}}
	for k, u := range r.mtus {
		if u.st.Applied > 0 || u.st.Switches > 0 {
			st.MTU[k] = u.st
		}
	}
	st.Keepalive = map[string]kaState{}
	for k, u := range r.kas {
		if u.st.Applied > 0 || u.st.Switches > 0 {
			st.Keepalive[k] = u.st
		}
	}
	for _, g := range r.groups {
		st.Groups[g.cfg.Name] = g.st
		if g.st.Active == Backup && !g.endpoint() {
			for _, rt := range r.ownRoutes(g) {
				st.Routes = append(st.Routes, ownedRoute{Group: g.cfg.Name, Route: rt})
			}
		}
	}
	err := saveState(r.cfg.StateFile, st)
	msg := ""
	if err != nil {
		msg = err.Error()
		r.metrics.stateErrs.Inc()
	}
	if msg != r.lastSave {
		if err != nil {
			r.logger.Error("cannot write the state file: a restart may not remember damping or pause (routes are found in the kernel anyway)", "err", err)
		} else if r.lastSave != "" {
			r.logger.Info("state file writable again", "file", r.cfg.StateFile)
		}
	}
	r.lastSave = msg
}

// Pause stops every action (decisions are still made, audited as
// suppressed); Resume lets them through again. who says who asked.
func (r *Remediator) Pause(who string) { r.setPaused(true, who) }

// Resume undoes Pause.
func (r *Remediator) Resume(who string) { r.setPaused(false, who) }

// TogglePause pauses a running remediator and resumes a paused one (SIGUSR1).
func (r *Remediator) TogglePause(who string) {
	r.mu.Lock()
	p := r.paused
	r.mu.Unlock()
	r.setPaused(!p, who)
}

func (r *Remediator) setPaused(p bool, who string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused == p {
		return
	}
	r.paused = p
	r.metrics.paused.Set(b2f(p))
	verb := map[bool]string{true: "paused", false: "resumed"}[p]
	r.logger.Warn("remediation "+verb, "by", who)
	for _, g := range r.groups {
		g.audited = "" // a new episode: a still-wanted action is audited again
	}
	for _, u := range r.mtus {
		u.audited = ""
	}
	for _, u := range r.kas {
		u.audited = ""
	}
	r.saveLocked()
	r.poke()
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

// ApplyConfig takes a reloaded configuration. Groups keep their state by
// name; a group removed, or whose paths changed, while on the backup first
// returns to the primary (its changes are ours to undo).
func (r *Remediator) ApplyConfig(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := map[string]FailoverGroup{}
	for _, g := range cfg.Failover {
		next[g.Name] = g
	}
	old := map[string]groupState{}
	for _, g := range r.groups {
		ng, kept := next[g.cfg.Name]
		same := kept && g.sameChanges(ng.withDefaults()) && cfg.RouteProtocol == r.cfg.RouteProtocol
		if !same && r.cfg.Mode == ModeAuto {
			if err := r.restoreLocked(ctx, g, "the group was removed or its paths changed on reload: undoing its change"); err != nil {
				return fmt.Errorf("undoing the change of group %q before the reload: %w (the running configuration stays)", g.cfg.Name, err)
			}
		}
		if kept {
			old[g.cfg.Name] = g.st
		} else {
			r.metrics.deleteGroup(g.cfg.Name)
		}
	}
	if r.cfg.Mode == ModeAuto {
		inScope := func(u *mtuUnit) bool { return cfg.MTU.Enabled && slices.Contains(cfg.MTU.Devices, u.st.Device) }
		if err := r.restoreMTULocked(ctx, "the MTU policy no longer covers this device after a reload: undoing its change", inScope); err != nil {
			return fmt.Errorf("undoing MTU changes before the reload: %w (the running configuration stays)", err)
		}
		kaInScope := func(u *kaUnit) bool {
			return cfg.Keepalive.Enabled && slices.Contains(cfg.Keepalive.Devices, u.st.Device)
		}
		r.restoreKeepaliveLocked(ctx, "the keepalive policy no longer covers this device after a reload: undoing its change", kaInScope)
	}
	if cfg.Mode != r.cfg.Mode {
		r.logger.Warn("remediation mode changed", "from", string(r.cfg.Mode), "to", string(cfg.Mode))
	}
	r.cfg = cfg
	r.routes.proto = cfg.RouteProtocol
	r.metrics.setMode(cfg.Mode)
	r.setGroupsLocked(cfg)
	for _, g := range r.groups {
		if st, ok := old[g.cfg.Name]; ok {
			g.st = st
		}
		r.exportActiveLocked(g)
	}
	if r.started {
		r.registerTargetsLocked()
		r.saveLocked()
	}
	r.poke()
	return nil
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

// mustPrefix parses a validated prefix.
func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
