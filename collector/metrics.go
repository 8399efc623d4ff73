package collector

import (
	"github.com/prometheus/client_golang/prometheus"
)

type selfMetrics struct {
	errors       *prometheus.CounterVec
	up           *prometheus.GaugeVec
	pollDuration prometheus.Histogram
}

func newSelfMetrics() selfMetrics {
	return selfMetrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "errors_total",
			Help: `Failed reads per device; device="" counts failures to list devices.`,
		}, []string{"device"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "device_up",
			Help: "1 if the device was read in the last poll, 0 if reading it failed.",
		}, []string{"device"}),
		pollDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "poll_duration_seconds",
			Help:    "Time to read all watched devices once.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
}

func (s selfMetrics) deviceUp(device string, v float64) {
	if device != "" {
		s.up.WithLabelValues(device).Set(v)
	}
}

// Describe implements prometheus.Collector for the collector's self
// metrics. The wireguard_* families come from Gather.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.self.errors.Describe(ch)
	c.self.up.Describe(ch)
	c.self.pollDuration.Describe(ch)
}

// Collect implements prometheus.Collector for the self metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.self.errors.Collect(ch)
	c.self.up.Collect(ch)
	c.self.pollDuration.Collect(ch)
}
