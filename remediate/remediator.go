package remediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
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
// changes and health, and the registration of the failover paths' targets.
type Prober interface {
	SubscribeChanges(ctx context.Context) <-chan prober.StateChange
	HealthOf(key string) (prober.Health, bool)
	SetTargets(owner string, ts []prober.Target)
}

// Options are the remediator's sources and transports.
type Options struct {
	Snapshots Snapshots
	Prober    Prober
	// Routes is the netlink handle of the route actuator. Read in every mode
	// (dry-run reports what auto would do from the same kernel state), written
	// only in auto.
	Routes RouteHandle
	// Tracer makes a span of every decision; nil is a no-op.
	Tracer trace.TracerProvider
}

// TargetOwner is the remediator's name for its probe targets.
const TargetOwner = "remediate"

const (
	tickEvery      = 100 * time.Millisecond // hold-down ends, damping decays, backoffs expire
	reconcileEvery = 2 * time.Second        // our routes still there and in force?
)

// Remediator runs the policies. Its methods are safe for concurrent use.
type Remediator struct {
	logger  *slog.Logger
	snaps   Snapshots
	prober  Prober
	routes  routes
	metrics *metrics
	audit   auditor
	wake    chan struct{}

	mu       sync.Mutex // guards everything below
	cfg      Config
	groups   []*group
	byKey    map[string]*group // target key -> group
	snap     *collector.Snapshot
	paused   bool
	started  bool
	lastSave string // last error saving state, logged once
}

type group struct {
	cfg       FailoverGroup // with defaults
	prefixes  []netip.Prefix
	targets   [2]prober.Target // primary, backup
	st        groupState
	audited   string        // suppression last audited: one line per episode
	health    [2]pathHealth // last exported
	last      decision
	lastAt    time.Time
	lastRes   string
	conflicts int
}

// New validates cfg and returns a remediator; Run starts it.
func New(cfg Config, logger *slog.Logger, opts Options) (*Remediator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Snapshots == nil || opts.Prober == nil {
		return nil, errors.New("remediate: the collector and the prober are required")
	}
	if opts.Routes == nil && cfg.Mode != ModeOff && len(cfg.Failover) > 0 {
		return nil, errors.New("remediate: no netlink handle: route failover needs CAP_NET_ADMIN (or set remediate.mode: off)")
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
		metrics: m,
		audit:   auditor{logger: logger, metrics: m, tracer: tp.Tracer("github.com/wgpulse/wgpulse/remediate")},
		wake:    make(chan struct{}, 1),
		cfg:     cfg,
	}
	r.setGroupsLocked(cfg)
	m.setMode(cfg.Mode)
	return r, nil
}

func (r *Remediator) setGroupsLocked(cfg Config) {
	r.groups, r.byKey = nil, map[string]*group{}
	for _, gc := range cfg.Failover {
		g := &group{cfg: gc.withDefaults(), st: groupState{Active: Primary}}
		for _, s := range gc.Prefixes {
			g.prefixes = append(g.prefixes, netip.MustParsePrefix(s))
		}
		for i, p := range []Path{gc.Primary, gc.Backup} {
			d := g.cfg
			g.targets[i] = prober.Target{Device: p.Device, Address: netip.MustParseAddr(p.Target), Interval: d.Interval,
				Timeout: d.Timeout, Window: d.Window, Suspect: d.Suspect,
				Rule: prober.Rule{Losses: d.Losses, LossRatio: d.LossRatio, RTT: d.RTT}}
			r.byKey[g.targets[i].Key()] = g
		}
		r.groups = append(r.groups, g)
		r.metrics.initGroup(g.cfg.Name, cfg.Mode)
	}
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
		r.metrics.penalty.WithLabelValues(g.cfg.Name).Set(penalty(g.cfg.Damping, g.st, now))
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
	// Subscriptions end with their own context, after the final restore:
	// no signal is needed by then, but the channels must stay readable.
	subCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	changes := r.prober.SubscribeChanges(subCtx)
	snaps := r.snaps.Subscribe(subCtx)
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	reconcile := time.NewTicker(reconcileEvery)
	defer reconcile.Stop()
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
			r.evaluateAllLocked(ctx)
			r.mu.Unlock()
		case <-tick.C:
			r.mu.Lock()
			r.evaluateAllLocked(ctx)
			r.mu.Unlock()
		case <-reconcile.C:
			r.mu.Lock()
			r.reconcileLocked(ctx, time.Now())
			r.mu.Unlock()
		case <-r.wake:
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
// registers the paths' probe targets.
func (r *Remediator) startLocked(ctx context.Context) {
	r.started = true
	mode := r.cfg.Mode
	if mode == ModeOff {
		r.logger.Info("remediation off: no failover paths probed, nothing touched")
		r.warnLeftoversLocked(nil)
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
		r.adoptKernelLocked(ctx, g, mode, now)
		r.exportActiveLocked(g)
	}
	r.warnLeftoversLocked(r.groups)
	r.registerTargetsLocked()
	r.saveLocked()
	r.logger.Info("remediation started", "mode", string(mode), "groups", len(r.groups), "state_file", r.cfg.StateFile,
		"route_protocol", r.cfg.RouteProtocol)
}

// adoptKernelLocked sets a group's active path from the kernel: our routes
// for all its prefixes mean the backup is active, none mean the primary.
// The state file only says what we believed; the kernel says what is.
func (r *Remediator) adoptKernelLocked(ctx context.Context, g *group, mode Mode, now time.Time) {
	believed := g.st.Active
	var have, missing []Route
	for _, p := range g.prefixes {
		want := r.ownRoute(g, p)
		rs, err := r.routes.list(p)
		if err != nil {
			r.logger.Error("cannot read routes at start: assuming the primary carries the group", "group", g.cfg.Name, "err", err)
			g.st.Active = Primary
			return
		}
		if slices.Contains(rs, want) {
			have = append(have, want)
		} else {
			missing = append(missing, want)
		}
	}
	switch {
	case len(have) == 0:
		g.st.Active = Primary
	case len(missing) == 0:
		g.st.Active = Backup
	default:
		g.st.Active = Backup
		if mode == ModeAuto { // a switch interrupted by a crash: finish it, so the group is in one state
			start := time.Now()
			err := r.addRoutes(missing)
			d := decision{Policy: "failover", Group: g.cfg.Name, Action: ActionSwitchToBackup, From: Backup, To: Backup,
				Reason: fmt.Sprintf("completing a switch interrupted before this start: %d of %d prefixes were on the backup", len(have), len(g.prefixes))}
			r.audit.record(ctx, d, mode, resultOf(err), start, err)
		}
	}
	if believed != g.st.Active && believed != "" {
		r.logger.Warn("the kernel disagrees with the state file; following the kernel", "group", g.cfg.Name,
			"state_file_active", believed, "kernel_active", g.st.Active)
	}
	if believed != g.st.Active || g.st.Since.IsZero() {
		g.st.Since = now
	}
}

// warnLeftoversLocked logs routes of our protocol for prefixes no group
// names: they are not touched (the remediator acts only on what its config
// names) and the log says how to remove them.
func (r *Remediator) warnLeftoversLocked(groups []*group) {
	if r.routes.h == nil {
		return
	}
	known := map[netip.Prefix]bool{}
	for _, g := range groups {
		for _, p := range g.prefixes {
			known[p] = true
		}
	}
	for _, fam := range []int{4, 6} {
		rs, err := r.ownedRoutes(fam)
		if err != nil {
			return
		}
		for _, rt := range rs {
			if !known[rt.Prefix] {
				r.logger.Warn("a route of wgpulse's protocol for a prefix no failover group names: left alone; remove it by hand if it is stale",
					"route", rt.String(), "remove_with", fmt.Sprintf("ip route del %s dev %s metric %d proto %d", rt.Prefix, rt.Device, rt.Metric, rt.Protocol))
			}
		}
	}
}

func (r *Remediator) registerTargetsLocked() {
	var ts []prober.Target
	if r.cfg.Mode != ModeOff {
		for _, g := range r.groups {
			ts = append(ts, g.targets[0], g.targets[1])
		}
	}
	r.prober.SetTargets(TargetOwner, ts)
}

// stopLocked undoes every change when restore_on_exit asks for it, then
// saves the state.
func (r *Remediator) stopLocked(ctx context.Context) {
	if r.cfg.Mode == ModeAuto && r.cfg.RestoreOnExit {
		for _, g := range r.groups {
			if g.st.Active != Backup {
				continue
			}
			start := time.Now()
			err := r.delRoutes(r.ownRoutes(g))
			d := decision{Policy: "failover", Group: g.cfg.Name, Action: ActionReturnToPrimary, From: Backup, To: Primary,
				Reason: "restore_on_exit: undoing every change on a clean exit"}
			r.audit.record(ctx, d, r.cfg.Mode, resultOf(err), start, err)
			if err == nil {
				g.st.Active, g.st.Since = Primary, time.Now()
				r.exportActiveLocked(g)
			}
		}
	}
	r.saveLocked()
}

func (r *Remediator) evaluateAllLocked(ctx context.Context) {
	now := time.Now()
	for _, g := range r.groups {
		r.evaluateLocked(ctx, g, now)
	}
}

// evaluateLocked runs the failover policy for one group and carries out,
// suppresses or skips its decision.
func (r *Remediator) evaluateLocked(ctx context.Context, g *group, now time.Time) {
	mode := r.cfg.Mode
	if mode == ModeOff || !r.started {
		return
	}
	sig := groupSignals{primary: r.pathHealthLocked(g, 0), backup: r.pathHealthLocked(g, 1)}
	r.exportHealthLocked(g, sig)
	d := decideFailover(g.cfg, g.st, sig, now)
	if d.Action != "" && d.Suppressed == "" {
		r.preflight(g, &d)
	}
	applyRails(&d, g.cfg, g.st, now, r.paused)
	switch {
	case d.Action == "":
		g.audited = ""
		return
	case d.Suppressed != "":
		if g.audited == d.Suppressed {
			return // this episode is audited already
		}
		g.audited = d.Suppressed
		g.last, g.lastAt, g.lastRes = d, now, ResultSuppressed
		r.audit.record(ctx, d, mode, ResultSuppressed, time.Now(), nil)
		return
	}
	g.audited = ""
	start := time.Now()
	var err error
	result := ResultDryRun
	if mode == ModeAuto {
		if d.To == Backup {
			err = r.addRoutes(r.ownRoutes(g))
		} else {
			err = r.delRoutes(r.ownRoutes(g))
		}
		result = resultOf(err)
	}
	if err != nil {
		g.st = backoff(g.st, fmt.Sprintf("a failed %s", d.Action), now)
	} else {
		g.st = commit(g.cfg, g.st, d, now)
		g.conflicts = 0
	}
	g.last, g.lastAt, g.lastRes = d, now, result
	r.audit.record(ctx, d, mode, result, start, err)
	r.exportActiveLocked(g)
	r.saveLocked()
}

// preflight suppresses an action that cannot work: a device of the group
// missing, or (switching to the backup) an operator route that our route's
// metric would not beat. It only reads the kernel, in dry-run too.
func (r *Remediator) preflight(g *group, d *decision) {
	dev := g.cfg.Backup.Device
	if d.To == Primary {
		dev = g.cfg.Primary.Device
	}
	if !r.routes.deviceExists(dev) {
		d.Suppressed = SuppressDeviceMissing
		d.Reason = fmt.Sprintf("device %s does not exist (check remediate.failover %q): %s", dev, g.cfg.Name, d.Reason)
		return
	}
	if d.To != Backup {
		return
	}
	for _, p := range g.prefixes {
		rs, err := r.routes.list(p)
		if err != nil {
			continue // the add will say what is wrong
		}
		for _, rt := range rs {
			if rt.Protocol != r.cfg.RouteProtocol && rt.Metric <= g.cfg.RouteMetric {
				d.Suppressed = SuppressMetricTooHigh
				d.Reason = fmt.Sprintf("route %s has a metric <= route_metric %d, so ours would not carry the traffic: lower route_metric: %s",
					rt, g.cfg.RouteMetric, d.Reason)
				return
			}
		}
	}
}

func (r *Remediator) ownRoute(g *group, p netip.Prefix) Route {
	return Route{Prefix: p, Device: g.cfg.Backup.Device, Metric: g.cfg.RouteMetric, Protocol: r.cfg.RouteProtocol}
}

func (r *Remediator) ownRoutes(g *group) []Route {
	out := make([]Route, len(g.prefixes))
	for i, p := range g.prefixes {
		out[i] = r.ownRoute(g, p)
	}
	return out
}

// addRoutes adds all or none: on a failure the routes added so far are
// removed again.
func (r *Remediator) addRoutes(rs []Route) error {
	for i, rt := range rs {
		if err := r.routes.add(rt); err != nil {
			for _, done := range rs[:i] {
				if derr := r.routes.del(done); derr != nil {
					err = errors.Join(err, fmt.Errorf("undoing: %w", derr))
				}
			}
			return err
		}
	}
	return nil
}

func (r *Remediator) delRoutes(rs []Route) error {
	var errs []error
	for _, rt := range rs {
		errs = append(errs, r.routes.del(rt))
	}
	return errors.Join(errs...)
}

// reconcileLocked checks that the routes we own are there and in force.
// One deleted or overridden by something else is a conflict: counted,
// logged, and backed off from, never fought.
func (r *Remediator) reconcileLocked(ctx context.Context, now time.Time) {
	if r.cfg.Mode != ModeAuto || !r.started {
		return
	}
	for _, g := range r.groups {
		if g.st.Active != Backup {
			continue
		}
		var problems []string
		gone := 0
		for _, p := range g.prefixes {
			want := r.ownRoute(g, p)
			rs, err := r.routes.list(p)
			if err != nil {
				r.logger.Warn("cannot read routes to check ours", "group", g.cfg.Name, "err", err)
				return
			}
			if !slices.Contains(rs, want) {
				gone++
				problems = append(problems, fmt.Sprintf("our route %s was deleted or replaced", want))
			}
			for _, rt := range rs {
				if rt != want && rt.Protocol != r.cfg.RouteProtocol && rt.Metric <= want.Metric {
					problems = append(problems, fmt.Sprintf("route %s overrides ours", rt))
				}
			}
		}
		if len(problems) == 0 {
			continue
		}
		g.conflicts++
		r.metrics.conflicts.WithLabelValues(g.cfg.Name).Inc()
		why := strings.Join(problems, "; ")
		if gone == len(g.prefixes) { // the kernel routes the group via the primary again
			g.st.Active, g.st.Since = Primary, now
			r.exportActiveLocked(g)
		}
		g.st = backoff(g.st, "a conflict with another route manager", now)
		r.logger.Warn("conflict: something else changed a route wgpulse owns; backing off instead of fighting",
			"group", g.cfg.Name, "conflict", why, "active", g.st.Active, "backoff", time.Duration(g.st.Backoff),
			"hint", "another manager (systemd-networkd without ManageForeignRoutes=no, NetworkManager, a routing daemon) may delete foreign routes")
		r.saveLocked()
	}
}

// pathHealthLocked is a path as the policy sees it: the prober's verdict on
// its target; with no verdict yet, a stale handshake on a fresh device read
// makes it down (the session cannot carry data).
func (r *Remediator) pathHealthLocked(g *group, i int) pathHealth {
	var ph pathHealth
	if h, ok := r.prober.HealthOf(g.targets[i].Key()); ok {
		ph = pathHealth{State: h.State, Since: h.Since, Reason: h.Reason, DownBy: h.DownBy, Loss: h.LossRatio, RTT: h.MedianRTT}
	}
	if ph.State != prober.StateUnknown || r.snap == nil {
		return ph
	}
	d, ok := r.snap.Device(g.targets[i].Device)
	if !ok || d.Stale {
		return ph // a failed read is unknown, never down
	}
	for _, p := range d.Peers {
		for _, a := range p.AllowedIPs {
			if a.Contains(g.targets[i].Address) && p.Handshake == collector.HandshakeStale {
				return pathHealth{State: prober.StateDown, Since: p.HandshakeSince, DownBy: "handshake",
					Reason: fmt.Sprintf("no handshake for over %s: the session cannot carry data", collector.RejectAfterTime)}
			}
		}
	}
	return ph
}

func (r *Remediator) exportHealthLocked(g *group, sig groupSignals) {
	for i, ph := range []pathHealth{sig.primary, sig.backup} {
		if ph.State == g.health[i].State && ph.Reason == g.health[i].Reason {
			continue
		}
		if ph.State != g.health[i].State {
			r.logger.Info("failover path health changed", "group", g.cfg.Name, "path", paths[i],
				"from", g.health[i].State.String(), "to", ph.State.String(), "reason", ph.Reason)
		}
		g.health[i] = ph
		r.metrics.healthy.WithLabelValues(g.cfg.Name, paths[i]).Set(b2f(ph.State == prober.StateUp))
		for _, s := range states {
			r.metrics.pathState.WithLabelValues(g.cfg.Name, paths[i], s).Set(b2f(s == ph.State.String()))
		}
	}
}

func (r *Remediator) exportActiveLocked(g *group) {
	for _, p := range paths {
		r.metrics.active.WithLabelValues(g.cfg.Name, p).Set(b2f(g.st.Active == p))
	}
}

// saveLocked writes the state file (not in dry-run or off: they touch
// nothing, their own file included).
func (r *Remediator) saveLocked() {
	if r.cfg.Mode != ModeAuto {
		return
	}
	st := persisted{Written: time.Now().UTC(), Paused: r.paused, Groups: map[string]groupState{}}
	for _, g := range r.groups {
		st.Groups[g.cfg.Name] = g.st
		if g.st.Active == Backup {
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

// ownedRoutes lists every main-table route of our protocol in a family.
func (r *Remediator) ownedRoutes(family int) ([]Route, error) {
	fam := unix.AF_INET
	if family == 6 {
		fam = unix.AF_INET6
	}
	return r.routes.listProto(fam)
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
// name; a group removed, or whose prefixes, devices or metric changed, while
// on the backup first returns to the primary (its routes are ours to undo).
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
		same := kept && slices.Equal(ng.Prefixes, g.cfg.Prefixes) && ng.Backup.Device == g.cfg.Backup.Device &&
			ng.withDefaults().RouteMetric == g.cfg.RouteMetric && cfg.RouteProtocol == r.cfg.RouteProtocol
		if g.st.Active == Backup && !same && r.cfg.Mode == ModeAuto {
			start := time.Now()
			err := r.delRoutes(r.ownRoutes(g))
			d := decision{Policy: "failover", Group: g.cfg.Name, Action: ActionReturnToPrimary, From: Backup, To: Primary,
				Reason: "the group was removed or its prefixes, backup device or metric changed on reload: undoing its routes"}
			r.audit.record(ctx, d, r.cfg.Mode, resultOf(err), start, err)
			if err != nil {
				return fmt.Errorf("undoing the routes of group %q before the reload: %w (the running configuration stays)", g.cfg.Name, err)
			}
			g.st.Active, g.st.Since = Primary, time.Now()
		}
		if kept {
			old[g.cfg.Name] = g.st
		} else {
			r.metrics.deleteGroup(g.cfg.Name)
		}
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
