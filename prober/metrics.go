package prober

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wgpulse/wgpulse/collector/expo"
)

var targetLabels = []string{"device", "public_key", "name", "target"}

type metrics struct {
	rtt                   *prometheus.HistogramVec
	errors                *prometheus.CounterVec
	stray, resultsDropped prometheus.Counter
	targets               prometheus.Gauge
}

// Per-target counters and gauges are not stored as metric children (six or
// more per target, each with its own label pairs): Gather builds them from
// the targets' own accounting at scrape time. Only the RTT histogram, which
// must be observed as probes finish, is a stored child.
type family struct {
	name, help string
	typ        dto.MetricType
	state      bool // has the extra "state" label
}

var (
	famProbes   = family{"wgpulse_probes_total", "Finished probes (answered or lost after the timeout); in-flight probes are not counted. SLI denominator.", dto.MetricType_COUNTER, false}
	famFailures = family{"wgpulse_probe_failures_total", "Probes lost (no reply within prober.timeout) or not sendable. SLI numerator.", dto.MetricType_COUNTER, false}
	famLate     = family{"wgpulse_probe_late_replies_total", "Replies that arrived after their probe was counted as lost (exported once non-zero; prober.detail_metrics).", dto.MetricType_COUNTER, false}
	famDups     = family{"wgpulse_probe_duplicate_replies_total", "Extra replies to an already answered probe (exported once non-zero; prober.detail_metrics).", dto.MetricType_COUNTER, false}
	famLoss     = family{"wgpulse_probe_loss_ratio", "Share of probes lost over prober.window (prober.detail_metrics).", dto.MetricType_GAUGE, false}
	famJitter   = family{"wgpulse_probe_jitter_seconds", "Interarrival jitter of RTTs (RFC 3550 A.8) over consecutive probes, pairs with a loss skipped.", dto.MetricType_GAUGE, false}
	famUp       = family{"wgpulse_probe_up", "1 while the target is up, 0 while it is down (by default: 3 probes lost in a row); absent while unknown.", dto.MetricType_GAUGE, false}
	famPMTU     = family{"wgpulse_path_mtu_bytes", "Largest inner IP packet known to cross the tunnel with DF set (path MTU search); absent until known.", dto.MetricType_GAUGE, false}
	famState    = family{"wgpulse_path_mtu_search_state", "Path MTU search state (RFC 8899), one series with value 1 labelled with the current state: base, searching, search_complete, below_min (the path passes less than prober.pmtu.min), error or disabled (prober.detail_metrics).", dto.MetricType_GAUGE, true}
	famBelow    = family{"wgpulse_path_mtu_below_bytes", "While the path MTU is below the search floor: the floor (prober.pmtu.min), the smallest size known not to pass; absent otherwise.", dto.MetricType_GAUGE, false}
	families    = []family{famProbes, famFailures, famLate, famDups, famLoss, famJitter, famUp, famPMTU, famState, famBelow}
)

func (f family) desc() *prometheus.Desc {
	labels := targetLabels
	if f.state {
		labels = append(targetLabels[:4:4], "state")
	}
	return prometheus.NewDesc(f.name, f.help, labels, nil)
}

func (f family) builder(n int) *expo.Family { return expo.NewFamily(f.name, f.help, f.typ, n) }

func newMetrics(cfg Config) *metrics {
	opts := prometheus.HistogramOpts{
		Name:    "wgpulse_probe_rtt_seconds",
		Help:    "Round-trip time of answered probes through the tunnel (kernel receive timestamps); classic buckets from prober.rtt_buckets.",
		Buckets: cfg.RTTBuckets,
	}
	if cfg.NativeHistograms {
		// 20 buckets: a factor of 1.1 over one decade of RTT, coarser
		// (by halving the resolution) when the spread is wider. Each
		// native bucket costs memory per target, hot and cold.
		opts.Help = "Round-trip time of answered probes through the tunnel (kernel receive timestamps); classic buckets from prober.rtt_buckets, a native histogram alongside."
		opts.NativeHistogramBucketFactor = 1.1
		opts.NativeHistogramMaxBucketNumber = 20
		opts.NativeHistogramMinResetDuration = time.Hour
	}
	return &metrics{
		rtt: prometheus.NewHistogramVec(opts, targetLabels),
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
	for _, f := range families { // built by Gather, described for completeness
		ch <- f.desc()
	}
}

// Collect implements prometheus.Collector for the RTT histogram and the
// prober's own counters. The per-target counters and gauges come from Gather.
func (p *Prober) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.metrics.collectors() {
		c.Collect(ch)
	}
}

var (
	lnDevice, lnPublicKey, lnName, lnTarget, lnState = "device", "public_key", "name", "target", "state"
	pmtuStateNames                                   = [...]string{"disabled", "base", "searching", "search_complete", "error", "below_min"}
)

// Gather implements prometheus.Gatherer for the per-target counters and
// gauges, built from slabs (collector/expo) like the collector's families: at
// 10,000 targets the registry's per-series path costs several times more.
func (p *Prober) Gather() ([]*dto.MetricFamily, error) {
	p.mu.Lock()
	ts := make([]*target, 0, len(p.targets))
	for _, t := range p.targets {
		ts = append(ts, t)
	}
	detail := p.cfg.DetailMetrics
	p.mu.Unlock()
	views := make([]Health, len(ts))
	labels := make([][]string, len(ts))
	var late, dups, started, pmtus, belows int
	for i, t := range ts {
		views[i], labels[i] = t.health(), t.labels()
		v := &views[i]
		late += int(b2u(detail && v.Late > 0))
		dups += int(b2u(detail && v.Duplicates > 0))
		started += int(b2u(v.Probes > 0))
		pmtus += int(b2u(v.PathMTU > 0))
		belows += int(b2u(v.PathMTUBelow > 0))
	}
	n := len(views)
	var (
		probes, failures = famProbes.builder(n), famFailures.builder(n)
		lateF, dupsF     = famLate.builder(late), famDups.builder(dups)
		jitter, up       = famJitter.builder(started), famUp.builder(started)
		loss, state      = famLoss.builder(started * int(b2u(detail))), famState.builder(started * int(b2u(detail)))
		pmtu             = famPMTU.builder(pmtus)
		below            = famBelow.builder(belows)
	)
	pairs := expo.NewPairs(5 * n)
	sets := expo.NewSets(9 * n)
	for i := range views {
		v := &views[i]
		l := labels[i]
		// Sorted by label name: device, name, public_key, (state,) target.
		dev, name, key, tgt := pairs.Pair(&lnDevice, &l[0]), pairs.Pair(&lnName, &l[2]), pairs.Pair(&lnPublicKey, &l[1]), pairs.Pair(&lnTarget, &l[3])
		base := sets.Set(dev, name, key, tgt)
		probes.Add(float64(v.Probes), base)
		failures.Add(float64(v.Failures), base)
		if detail && v.Late > 0 {
			lateF.Add(float64(v.Late), base)
		}
		if detail && v.Duplicates > 0 {
			dupsF.Add(float64(v.Duplicates), base)
		}
		if v.Probes == 0 {
			continue // no verdict before the first probe finished
		}
		jitter.Add(v.Jitter.Seconds(), base)
		if v.State != StateUnknown {
			up.Add(float64(b2u(v.Up)), base)
		}
		if v.PathMTU > 0 {
			pmtu.Add(float64(v.PathMTU), base)
		}
		if v.PathMTUBelow > 0 {
			below.Add(float64(v.PathMTUBelow), base)
		}
		if detail {
			loss.Add(v.LossRatio, base)
			state.Add(1, sets.Set(dev, name, key, pairs.Pair(&lnState, &v.PMTUState), tgt))
		}
	}
	return expo.Families(probes, failures, lateF, dupsF, loss, jitter, up, pmtu, state, below), nil
}
