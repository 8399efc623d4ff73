package remediate

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Results of a decision (the `result` label of
// wgpulse_remediation_actions_total and the audit line's result).
const (
	ResultOK         = "ok"         // carried out
	ResultError      = "error"      // tried and failed; nothing half-done is left
	ResultDryRun     = "dry_run"    // what auto would have done; nothing touched
	ResultSuppressed = "suppressed" // wanted and not taken (audit line and span only)
)

var (
	actions = []string{ActionSwitchToBackup, ActionReturnToPrimary}
	results = []string{ResultOK, ResultError, ResultDryRun}
	paths   = []string{Primary, Backup}
	states  = []string{"unknown", "up", "down"}
)

type metrics struct {
	actions      *prometheus.CounterVec
	suppressed   *prometheus.CounterVec
	active       *prometheus.GaugeVec
	healthy      *prometheus.GaugeVec
	pathState    *prometheus.GaugeVec
	conflicts    *prometheus.CounterVec
	flaps        *prometheus.CounterVec
	penalty      *prometheus.GaugeVec
	damped       *prometheus.GaugeVec
	policies     *prometheus.GaugeVec
	lastDecision *prometheus.GaugeVec
	mtu          *prometheus.GaugeVec
	keepalive    *prometheus.GaugeVec
	natEstimate  *prometheus.GaugeVec
	natUnfixable *prometheus.GaugeVec
	paused       prometheus.Gauge
	mode         *prometheus.GaugeVec
	stateErrs    prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_remediation_actions_total",
			Help: "Remediation actions decided, by policy, group, action, result (ok, error, dry_run) and mode.",
		}, []string{"policy", "group", "action", "result", "mode"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_remediation_suppressed_total",
			Help: "Remediation actions wanted and not taken, by reason (counted once per episode).",
		}, []string{"policy", "group", "reason"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_active_path",
			Help: "1 for the path carrying the group's prefixes (in dry-run: the path auto would have made active).",
		}, []string{"group", "path"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_path_healthy",
			Help: "1 while the path is up, 0 while it is down or unknown (see wgpulse_failover_path_state).",
		}, []string{"group", "path"}),
		pathState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_path_state",
			Help: "1 for the path's current health: unknown, up or down.",
		}, []string{"group", "path", "state"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_remediation_conflicts_total",
			Help: "Times something else deleted or overrode a route the remediator owns; it backs off instead of fighting.",
		}, []string{"group"}),
		flaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_failover_flaps_total",
			Help: "Switches that left a path less than hold_down after arriving on it (e.g. a return the tunnel did not confirm).",
		}, []string{"group"}),
		penalty: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_damping_penalty",
			Help: "The group's flap damping penalty (BGP style); at or above suppress the group makes no voluntary switch.",
		}, []string{"group"}),
		damped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_damped",
			Help: "1 while flap damping holds the group: no voluntary switch until the penalty decays below reuse.",
		}, []string{"group"}),
		policies: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_policy_info",
			Help: "1 for each policy and group (a failover group, or the device an MTU or keepalive policy covers) the remediator runs.",
		}, []string{"policy", "group"}),
		lastDecision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_last_decision_timestamp_seconds",
			Help: "Unix time of the last audited decision of a policy for a group (or peer), with its action, result and reason; one series each.",
		}, []string{"policy", "group", "peer", "action", "result", "reason"}),
		mtu: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_mtu_bytes",
			Help: "The MTU the MTU policy put in force for a peer (route: on its routed prefixes; device: the whole device); absent when none.",
		}, []string{"device", "public_key", "name", "mechanism"}),
		keepalive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_keepalive_seconds",
			Help: "The PersistentKeepalive the keepalive policy set for a peer; absent when none.",
		}, []string{"device", "public_key", "name"}),
		natEstimate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_keepalive_nat_timeout_estimate_seconds",
			Help: "Estimated lifetime of the NAT mapping between this node and the peer, from idle gaps (present once a mapping was seen expiring).",
		}, []string{"device", "public_key", "name"}),
		natUnfixable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_keepalive_nat_unfixable",
			Help: "1 when NAT mapping expiry goes on with PersistentKeepalive set on this side: the peer behind the NAT must set it.",
		}, []string{"device", "public_key", "name"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_paused",
			Help: "1 while remediation is paused (POST /-/remediate/pause, SIGUSR1).",
		}),
		mode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_mode",
			Help: "1 for the remediator's mode: off, dry-run or auto.",
		}, []string{"mode"}),
		stateErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgpulse_remediation_state_file_errors_total",
			Help: "Failures to read (corrupt, set aside) or write the state file.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.actions, m.suppressed, m.active, m.healthy, m.pathState, m.conflicts, m.flaps, m.penalty, m.damped, m.policies, m.lastDecision, m.mtu, m.keepalive, m.natEstimate, m.natUnfixable, m.paused, m.mode, m.stateErrs}
}

// initGroup creates every series of a group at zero, so dashboards and
// alerts see them from the start.
func (m *metrics) initGroup(name string, mode Mode) {
	for _, a := range actions {
		for _, r := range results {
			m.actions.WithLabelValues("failover", name, a, r, string(mode))
		}
	}
	for _, r := range suppressReasons {
		m.suppressed.WithLabelValues("failover", name, r)
	}
	for _, p := range paths {
		m.active.WithLabelValues(name, p)
		m.healthy.WithLabelValues(name, p)
		for _, s := range states {
			m.pathState.WithLabelValues(name, p, s)
		}
	}
	m.conflicts.WithLabelValues(name)
	m.flaps.WithLabelValues(name)
	m.penalty.WithLabelValues(name)
	m.damped.WithLabelValues(name)
	m.policies.WithLabelValues("failover", name).Set(1)
}

// initPolicy creates a per-peer policy's counters of one device at zero.
func (m *metrics) initPolicy(policy, device string, acts []string, mode Mode) {
	for _, a := range acts {
		for _, r := range results {
			m.actions.WithLabelValues(policy, device, a, r, string(mode))
		}
	}
	for _, r := range suppressReasons {
		m.suppressed.WithLabelValues(policy, device, r)
	}
	m.conflicts.WithLabelValues(device)
	m.policies.WithLabelValues(policy, device).Set(1)
}

func (m *metrics) deleteGroup(name string) {
	l := prometheus.Labels{"group": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.actions, m.suppressed, m.active, m.healthy, m.pathState, m.conflicts, m.flaps, m.penalty, m.damped, m.lastDecision} {
		v.DeletePartialMatch(l)
	}
}

func (m *metrics) setMode(mode Mode) {
	for _, md := range []Mode{ModeOff, ModeDryRun, ModeAuto} {
		v := 0.0
		if md == mode {
			v = 1
		}
		m.mode.WithLabelValues(string(md)).Set(v)
	}
}

// auditor leaves the three traces of a decision: a log line, a metric and
// a span.
type auditor struct {
	logger  *slog.Logger
	metrics *metrics
	tracer  trace.Tracer
}

// record audits one decision. result is ResultOK, ResultError, ResultDryRun
// or ResultSuppressed; err is the failure of ResultError.
func (a auditor) record(ctx context.Context, d decision, mode Mode, result string, start time.Time, err error) {
	took := time.Since(start)
	attrs := []attribute.KeyValue{
		attribute.String("wgpulse.policy", d.Policy),
		attribute.String("wgpulse.group", d.Group),
		attribute.String("wgpulse.action", d.Action),
		attribute.String("wgpulse.from", d.From),
		attribute.String("wgpulse.to", d.To),
		attribute.String("wgpulse.reason", d.Reason),
		attribute.String("wgpulse.mode", string(mode)),
		attribute.String("wgpulse.result", result),
	}
	if d.Suppressed != "" {
		attrs = append(attrs, attribute.String("wgpulse.suppressed", d.Suppressed))
	}
	if d.Peer != "" {
		attrs = append(attrs, attribute.String("wgpulse.peer", d.Peer))
	}
	_, span := a.tracer.Start(ctx, "remediate."+d.Policy+".decision", trace.WithTimestamp(start), trace.WithAttributes(attrs...))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(trace.WithTimestamp(start.Add(took)))

	logAttrs := []any{"audit", true, "policy", d.Policy, "group", d.Group, "action", d.Action, "from", d.From, "to", d.To,
		"reason", d.Reason, "mode", string(mode), "result", result, "duration", took}
	if d.Peer != "" {
		logAttrs = append(logAttrs, "peer", d.Peer)
	}
	level := slog.LevelInfo
	switch {
	case result == ResultSuppressed:
		a.metrics.suppressed.WithLabelValues(d.Policy, d.Group, d.Suppressed).Inc()
		logAttrs = append(logAttrs, "suppressed", d.Suppressed)
	default:
		a.metrics.actions.WithLabelValues(d.Policy, d.Group, d.Action, result, string(mode)).Inc()
	}
	if err != nil {
		level = slog.LevelError
		logAttrs = append(logAttrs, "err", err)
	}
	a.logger.Log(ctx, level, "remediation decision", logAttrs...)
	a.metrics.lastDecision.DeletePartialMatch(prometheus.Labels{"policy": d.Policy, "group": d.Group, "peer": d.Peer})
	a.metrics.lastDecision.WithLabelValues(d.Policy, d.Group, d.Peer, d.Action, result, d.Reason).Set(float64(time.Now().UnixNano()) / 1e9)
}
