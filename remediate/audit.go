package remediate

import (
	"context"
	"log/slog"
	"slices"
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

type metrics struct {
	actions      *prometheus.CounterVec
	suppressed   *prometheus.CounterVec
	conflicts    *prometheus.CounterVec
	policies     *prometheus.GaugeVec
	lastDecision *prometheus.GaugeVec
	paused       prometheus.Gauge
	mode         *prometheus.GaugeVec
	stateErrs    prometheus.Counter
	// stateUnusable: started paused because the state file was unusable.
	stateUnusable prometheus.Gauge
	budget        prometheus.Gauge
	lasting       *prometheus.GaugeVec
}

var results = []string{ResultOK, ResultError, ResultDryRun}

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
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_remediation_conflicts_total",
			Help: "Times something else deleted or overrode a route the remediator owns; it backs off instead of fighting.",
		}, []string{"group"}),
		policies: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_policy_info",
			Help: "1 for each policy and group (a failover group, or the device an MTU or keepalive policy covers) the remediator runs.",
		}, []string{"policy", "group"}),
		lastDecision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_last_decision_timestamp_seconds",
			Help: "Unix time of the last audited decision of a policy for a group (or peer), with its action, result and reason code (the prose is in the log); one series each.",
		}, []string{"policy", "group", "peer", "action", "result", "reason"}),
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
		budget: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_budget_remaining",
			Help: "Changes left in the node-wide budget (remediate.budget) as of the last decision; a quarter is kept for escapes from dead paths.",
		}),
		lasting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_conflict_lasting",
			Help: "1 while a unit is in a lasting conflict: something else reverted its change twice in a row (each within 20m of the last); even escapes then wait out the backoff.",
		}, []string{"policy", "group"}),
		stateUnusable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wgpulse_remediation_state_file_unusable",
			Help: "1 while remediation is paused because its state file was unusable at start (in auto); resuming clears it.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.actions, m.suppressed, m.conflicts, m.policies, m.lastDecision, m.paused, m.mode, m.stateErrs, m.stateUnusable, m.budget, m.lasting}
}

// initUnit creates a unit's series at zero, so dashboards and alerts see
// them from the start.
func (m *metrics) initUnit(policy, unit string, acts, reasons []string, mode Mode) {
	for _, a := range acts {
		for _, r := range results {
			m.actions.WithLabelValues(policy, unit, a, r, string(mode))
		}
	}
	for _, r := range append(slices.Clone(reasons), railReasons...) {
		m.suppressed.WithLabelValues(policy, unit, r)
	}
	m.conflicts.WithLabelValues(unit)
	m.lasting.WithLabelValues(policy, unit)
	m.policies.WithLabelValues(policy, unit).Set(1)
}

// dropUnit deletes a unit's series.
func (m *metrics) dropUnit(policy, unit string) {
	l := prometheus.Labels{"policy": policy, "group": unit}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.actions, m.suppressed, m.lastDecision, m.policies, m.lasting} {
		v.DeletePartialMatch(l)
	}
	m.conflicts.DeleteLabelValues(unit)
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

// conflict audits something else changing what a policy owns: a log line
// (audit=true) and a span, like a decision; the caller counts it.
func (a auditor) conflict(ctx context.Context, policy string, c Conflict, mode Mode) {
	attrs := []attribute.KeyValue{attribute.String("wgpulse.policy", policy), attribute.String("wgpulse.group", c.Group),
		attribute.String("wgpulse.conflict", c.Problem), attribute.String("wgpulse.mode", string(mode))}
	logAttrs := []any{"audit", true, "policy", policy, "group", c.Group, "conflict", c.Problem, "mode", string(mode)}
	if c.Peer != "" {
		attrs = append(attrs, attribute.String("wgpulse.peer", c.Peer))
		logAttrs = append(logAttrs, "peer", c.Peer)
	}
	if c.Rails != nil {
		logAttrs = append(logAttrs, "backoff", time.Duration(c.Rails.Backoff))
	}
	_, span := a.tracer.Start(ctx, "remediate."+policy+".conflict", trace.WithAttributes(attrs...))
	span.End()
	a.logger.Log(ctx, slog.LevelWarn, "conflict: something else changed what wgpulse owns; backing off instead of fighting", append(logAttrs, c.Attrs...)...)
}

// record audits one decision. result is ResultOK, ResultError, ResultDryRun
// or ResultSuppressed; err is the failure of ResultError.
func (a auditor) record(ctx context.Context, d Decision, mode Mode, result string, start time.Time, err error) {
	took := time.Since(start)
	attrs := []attribute.KeyValue{
		attribute.String("wgpulse.policy", d.Policy),
		attribute.String("wgpulse.group", d.Group),
		attribute.String("wgpulse.action", d.Action),
		attribute.String("wgpulse.from", d.From),
		attribute.String("wgpulse.to", d.To),
		attribute.String("wgpulse.reason", d.Reason),
		attribute.String("wgpulse.code", d.ReasonCode()),
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
		"reason", d.Reason, "code", d.ReasonCode(), "mode", string(mode), "result", result, "duration", took}
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
	a.metrics.lastDecision.WithLabelValues(d.Policy, d.Group, d.Peer, d.Action, result, d.ReasonCode()).Set(float64(time.Now().UnixNano()) / 1e9)
}
