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
	rtt                   *prometheus.HistogramVec
	errors                *prometheus.CounterVec
	stray, resultsDropped prometheus.Counter
	targets               prometheus.Gauge
}

// Per-target counters and gauges are not stored as metric children (six or
// more per target, each with its own label pairs): they are read from the
// target's own accounting at scrape time. Only the RTT histogram, which must
// be observed as probes finish, is a stored child.
var (
	descProbes = prometheus.NewDesc("wgpulse_probes_total",
		"Finished probes (answered or lost after the timeout); in-flight probes are not counted. SLI denominator.", targetLabels, nil)
	descFailures = prometheus.NewDesc("wgpulse_probe_failures_total",
		"Probes lost (no reply within prober.timeout) or not sendable. SLI numerator.", targetLabels, nil)
	descLate = prometheus.NewDesc("wgpulse_probe_late_replies_total",
		"Replies that arrived after their probe was counted as lost (exported once non-zero).", targetLabels, nil)
	descDups = prometheus.NewDesc("wgpulse_probe_duplicate_replies_total",
		"Extra replies to an already answered probe (exported once non-zero).", targetLabels, nil)
	descLoss = prometheus.NewDesc("wgpulse_probe_loss_ratio",
		"Share of probes lost over prober.window.", targetLabels, nil)
	descJitter = prometheus.NewDesc("wgpulse_probe_jitter_seconds",
		"Interarrival jitter of RTTs (RFC 3550 A.8) over consecutive probes, pairs with a loss skipped.", targetLabels, nil)
	descUp = prometheus.NewDesc("wgpulse_probe_up",
		"1 if one of the last three probes was answered.", targetLabels, nil)
	descPMTU = prometheus.NewDesc("wgpulse_path_mtu_bytes",
		"Largest inner IP packet known to cross the tunnel with DF set (path MTU search); absent until known.", targetLabels, nil)
	descPMTUState = prometheus.NewDesc("wgpulse_path_mtu_search_state",
		"Path MTU search state (RFC 8899): 1 for the current state.", append(targetLabels[:4:4], "state"), nil)
)

func newMetrics() *metrics {
	return &metrics{
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "wgpulse_probe_rtt_seconds",
			Help:                            "Round-trip time of answered probes through the tunnel (kernel receive timestamps).",
			Buckets:                         RTTBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, targetLabels),
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
	return []prometheus.Collector{m.rtt, m.errors, m.stray, m.resultsDropped, m.targets}
}

// Describe implements prometheus.Collector.
func (p *Prober) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range p.metrics.collectors() {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descProbes, descFailures, descLate, descDups, descLoss, descJitter, descUp, descPMTU, descPMTUState} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (p *Prober) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.metrics.collectors() {
		c.Collect(ch)
	}
	p.mu.Lock()
	ts := make([]*target, 0, len(p.targets))
	for _, t := range p.targets {
		ts = append(ts, t)
	}
	p.mu.Unlock()
	for _, t := range ts {
		t.collect(ch)
	}
}

func (t *target) collect(ch chan<- prometheus.Metric) {
	t.e.mu.Lock()
	probes, failures, late, dups := t.probes, t.failures, t.lateN, t.dupN
	loss, jitter, up, started := t.lossRatio(), t.jitter, t.isUp(), t.finished > 0
	pm := t.pmtu
	t.e.mu.Unlock()
	l := t.m.labels
	ch <- prometheus.MustNewConstMetric(descProbes, prometheus.CounterValue, float64(probes), l...)
	ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(failures), l...)
	if late > 0 {
		ch <- prometheus.MustNewConstMetric(descLate, prometheus.CounterValue, float64(late), l...)
	}
	if dups > 0 {
		ch <- prometheus.MustNewConstMetric(descDups, prometheus.CounterValue, float64(dups), l...)
	}
	if !started {
		return // no verdict before the first probe finished
	}
	ch <- prometheus.MustNewConstMetric(descLoss, prometheus.GaugeValue, loss, l...)
	ch <- prometheus.MustNewConstMetric(descJitter, prometheus.GaugeValue, jitter, l...)
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, float64(b2u(up)), l...)
	if pm.mtu > 0 {
		ch <- prometheus.MustNewConstMetric(descPMTU, prometheus.GaugeValue, float64(pm.mtu), l...)
	}
	for _, s := range pmtuStates {
		ch <- prometheus.MustNewConstMetric(descPMTUState, prometheus.GaugeValue, float64(b2u(s == pm.state)), l[0], l[1], l[2], l[3], s.String())
	}
}
