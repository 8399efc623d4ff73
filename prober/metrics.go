package prober

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var targetLabels = []string{"device", "public_key", "name", "target"}

// RTTBuckets are the classic buckets of wgpulse_probe_rtt_seconds: 100 µs to
// 10 s, about three per decade.
var RTTBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

type metrics struct {
	rtt                               *prometheus.HistogramVec
	probes, failures, late, dups      *prometheus.CounterVec
	loss, jitter, up, pmtu, pmtuState *prometheus.GaugeVec
	errors                            *prometheus.CounterVec
	stray, resultsDropped             prometheus.Counter
	targets                           prometheus.Gauge
}

func newMetrics() *metrics {
	gauge := func(name, help string, extra ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, append(targetLabels[:4:4], extra...))
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, targetLabels)
	}
	return &metrics{
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "wgpulse_probe_rtt_seconds",
			Help:                            "Round-trip time of answered probes through the tunnel (kernel receive timestamps).",
			Buckets:                         RTTBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, targetLabels),
		probes:    counter("wgpulse_probes_total", "Finished probes (answered or lost after the timeout); in-flight probes are not counted. SLI denominator."),
		failures:  counter("wgpulse_probe_failures_total", "Probes lost (no reply within prober.timeout) or not sendable. SLI numerator."),
		late:      counter("wgpulse_probe_late_replies_total", "Replies that arrived after their probe was counted as lost."),
		dups:      counter("wgpulse_probe_duplicate_replies_total", "Extra replies to an already answered probe."),
		loss:      gauge("wgpulse_probe_loss_ratio", "Share of probes lost over prober.window."),
		jitter:    gauge("wgpulse_probe_jitter_seconds", "Interarrival jitter of RTTs (RFC 3550 A.8), pairs with a loss skipped."),
		up:        gauge("wgpulse_probe_up", "1 if one of the last three probes was answered."),
		pmtu:      gauge("wgpulse_path_mtu_bytes", "Largest inner IP packet known to cross the tunnel with DF set (path MTU search)."),
		pmtuState: gauge("wgpulse_path_mtu_search_state", "Path MTU search state (RFC 8899): 1 for the current state.", "state"),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_prober_errors_total", Help: "Failures to open a probe socket on a device.",
		}, []string{"device"}),
		stray: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgpulse_prober_stray_replies_total", Help: "Echo replies that matched no probe of this agent (other pingers, reused slots).",
		}),
		resultsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgpulse_prober_results_dropped_total", Help: "Probe results a slow subscriber did not take.",
		}),
		targets: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wgpulse_prober_targets", Help: "Targets being probed."}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.rtt, m.probes, m.failures, m.late, m.dups, m.loss, m.jitter, m.up,
		m.pmtu, m.pmtuState, m.errors, m.stray, m.resultsDropped, m.targets}
}

func (m *metrics) delete(labels []string) {
	for _, v := range []interface{ DeleteLabelValues(...string) bool }{m.rtt, m.probes, m.failures, m.late, m.dups, m.loss, m.jitter, m.up, m.pmtu} {
		v.DeleteLabelValues(labels...)
	}
	m.pmtuState.DeletePartialMatch(prometheus.Labels{"device": labels[0], "public_key": labels[1], "name": labels[2], "target": labels[3]})
}

// Describe implements prometheus.Collector.
func (p *Prober) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range p.metrics.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (p *Prober) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.metrics.collectors() {
		c.Collect(ch)
	}
}
