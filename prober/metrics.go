package prober

import (
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wgpulse/wgpulse/collector/expo"
)

var targetLabels = []string{"device", "public_key", "name", "target"}

type metrics struct {
	// rtt is client_golang's histogram, kept only for the native buckets
	// (prober.native_histograms). Otherwise each target counts its classic
	// buckets itself (rttHist: ~100 bytes instead of a child of ~1.3 KB, and
	// scraped with the other per-target families).
	rtt                   *prometheus.HistogramVec
	rttBuckets            []float64 // upper bounds of the classic buckets, never modified
	rttHelp               string
	errors                *prometheus.CounterVec
	stray, resultsDropped prometheus.Counter
	targets               prometheus.Gauge
}

// Per-target counters and gauges are not stored as metric children (six or
// more per target, each with its own label pairs): Gather and WriteText build
// them from the targets' own accounting at scrape time, both from this one
// list. value gives a target's series, or false when it has none.
type family struct {
	name, help string
	typ        dto.MetricType
	state      bool // has the extra "state" label
	value      func(v *scrapeView, detail bool) (float64, bool)
}

// started: no verdict (up, jitter, path MTU) before the first probe finished.
func (v *scrapeView) started() bool { return v.probes > 0 }

var (
	famProbes = family{"wgpulse_probes_total", "Finished probes (answered or lost after the timeout); in-flight probes are not counted. SLI denominator.", dto.MetricType_COUNTER, false,
		func(v *scrapeView, _ bool) (float64, bool) { return float64(v.probes), true }}
	famFailures = family{"wgpulse_probe_failures_total", "Probes lost (no reply within prober.timeout) or not sendable. SLI numerator.", dto.MetricType_COUNTER, false,
		func(v *scrapeView, _ bool) (float64, bool) { return float64(v.failures), true }}
	famLate = family{"wgpulse_probe_late_replies_total", "Replies that arrived after their probe was counted as lost (exported once non-zero; prober.detail_metrics).", dto.MetricType_COUNTER, false,
		func(v *scrapeView, detail bool) (float64, bool) { return float64(v.late), detail && v.late > 0 }}
	famDups = family{"wgpulse_probe_duplicate_replies_total", "Extra replies to an already answered probe (exported once non-zero; prober.detail_metrics).", dto.MetricType_COUNTER, false,
		func(v *scrapeView, detail bool) (float64, bool) { return float64(v.dups), detail && v.dups > 0 }}
	famLoss = family{"wgpulse_probe_loss_ratio", "Share of probes lost over prober.window (prober.detail_metrics).", dto.MetricType_GAUGE, false,
		func(v *scrapeView, detail bool) (float64, bool) { return v.lossRatio, detail && v.started() }}
	famJitter = family{"wgpulse_probe_jitter_seconds", "Interarrival jitter of RTTs (RFC 3550 A.8) over consecutive probes, pairs with a loss skipped.", dto.MetricType_GAUGE, false,
		func(v *scrapeView, _ bool) (float64, bool) { return v.jitter.Seconds(), v.started() }}
	famUp = family{"wgpulse_probe_up", "1 while the target is up, 0 while it is down (by default: 3 probes lost in a row); absent while unknown.", dto.MetricType_GAUGE, false,
		func(v *scrapeView, _ bool) (float64, bool) {
			return float64(b2u(v.state == StateUp)), v.started() && v.state != StateUnknown
		}}
	famPMTU = family{"wgpulse_path_mtu_bytes", "Largest inner IP packet known to cross the tunnel with DF set (path MTU search); absent until known.", dto.MetricType_GAUGE, false,
		func(v *scrapeView, _ bool) (float64, bool) { return float64(v.pathMTU), v.started() && v.pathMTU > 0 }}
	famState = family{"wgpulse_path_mtu_search_state", "Path MTU search state (RFC 8899), one series with value 1 labelled with the current state: base, searching, search_complete, below_min (the path passes less than prober.pmtu.min), error or disabled (prober.detail_metrics).", dto.MetricType_GAUGE, true,
		func(v *scrapeView, detail bool) (float64, bool) { return 1, detail && v.started() }}
	famBelow = family{"wgpulse_path_mtu_below_bytes", "While the path MTU is below the search floor: the floor (prober.pmtu.min), the smallest size known not to pass; absent otherwise.", dto.MetricType_GAUGE, false,
		func(v *scrapeView, _ bool) (float64, bool) { return float64(v.below), v.started() && v.below > 0 }}
	families = []family{famProbes, famFailures, famLate, famDups, famLoss, famJitter, famUp, famPMTU, famState, famBelow}
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
		Name:    rttName,
		Help:    "Round-trip time of answered probes through the tunnel (kernel receive timestamps); classic buckets from prober.rtt_buckets.",
		Buckets: slices.Clone(cfg.RTTBuckets),
	}
	m := &metrics{rttBuckets: opts.Buckets, rttHelp: opts.Help}
	if cfg.NativeHistograms {
		// 20 buckets: a factor of 1.1 over one decade of RTT, coarser
		// (by halving the resolution) when the spread is wider. Each
		// native bucket costs memory per target, hot and cold.
		opts.Help = "Round-trip time of answered probes through the tunnel (kernel receive timestamps); classic buckets from prober.rtt_buckets, a native histogram alongside."
		opts.NativeHistogramBucketFactor = 1.1
		opts.NativeHistogramMaxBucketNumber = 20
		opts.NativeHistogramMinResetDuration = time.Hour
		m.rtt, m.rttHelp = prometheus.NewHistogramVec(opts, targetLabels), opts.Help
	}
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wgpulse_prober_errors_total", Help: "Failures to open a probe socket on a device.",
	}, []string{"device"})
	m.stray = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wgpulse_prober_stray_replies_total", Help: "Echo replies that matched no probe of this agent (other pingers, reused slots).",
	})
	m.resultsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wgpulse_prober_results_dropped_total", Help: "Probe results a slow subscriber did not take.",
	})
	m.targets = prometheus.NewGauge(prometheus.GaugeOpts{Name: "wgpulse_prober_targets", Help: "Targets being probed."})
	return m
}

const rttName = "wgpulse_probe_rtt_seconds"

func (m *metrics) collectors() []prometheus.Collector {
	cs := []prometheus.Collector{m.errors, m.stray, m.resultsDropped, m.targets}
	if m.rtt != nil {
		cs = append(cs, m.rtt)
	}
	return cs
}

// Describe implements prometheus.Collector.
func (p *Prober) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range p.metrics.collectors() {
		c.Describe(ch)
	}
	for _, f := range families { // built by Gather, described for completeness
		ch <- f.desc()
	}
	if p.metrics.rtt == nil {
		ch <- prometheus.NewDesc(rttName, p.metrics.rttHelp, targetLabels, nil)
	}
}

// Collect implements prometheus.Collector for the prober's own counters (and
// the RTT histogram when it has native buckets). The per-target families
// come from Gather.
func (p *Prober) Collect(ch chan<- prometheus.Metric) {
	for _, c := range p.metrics.collectors() {
		c.Collect(ch)
	}
}

var (
	lnDevice, lnPublicKey, lnName, lnTarget, lnState = "device", "public_key", "name", "target", "state"
	pmtuStateNames                                   = [...]string{"disabled", "base", "searching", "search_complete", "error", "below_min"}
)

// Gather implements prometheus.Gatherer for the per-target families, built
// from slabs (collector/expo) like the collector's families: at 10,000
// targets the registry's per-series path costs several times more.
func (p *Prober) Gather() ([]*dto.MetricFamily, error) {
	sc := p.scrape()
	defer p.scrapeDone(sc)
	views, n, nb := sc.views, len(sc.views), len(p.metrics.rttBuckets)
	pairs := expo.NewPairs(5 * n)
	sets := expo.NewSets(9 * n)
	bases := make([][]*dto.LabelPair, n)
	for i := range views {
		l := views[i].labels
		// Sorted by label name: device, name, public_key, target.
		bases[i] = sets.Set(pairs.Pair(&lnDevice, &l[0]), pairs.Pair(&lnName, &l[2]), pairs.Pair(&lnPublicKey, &l[1]), pairs.Pair(&lnTarget, &l[3]))
	}
	built := make([]*expo.Family, len(families))
	for k, f := range families {
		count := 0
		for i := range views {
			_, ok := f.value(&views[i], sc.detail)
			count += int(b2u(ok))
		}
		built[k] = f.builder(count)
		for i := range views {
			x, ok := f.value(&views[i], sc.detail)
			if !ok {
				continue
			}
			labels := bases[i]
			if f.state { // the state sorts between public_key and target; not into views: reused
				labels = sets.Set(labels[0], labels[1], labels[2], pairs.Pair(&lnState, &pmtuStateNames[views[i].pmtuState]), labels[3])
			}
			built[k].Add(x, labels)
		}
	}
	out := expo.Families(built...)
	if sc.classic && n > 0 {
		rtt := expo.NewHistogramFamily(rttName, p.metrics.rttHelp, p.metrics.rttBuckets, n)
		for i := range views {
			v := &views[i]
			rtt.Add(sc.cum[i*nb:(i+1)*nb], v.count, v.sum, v.created, bases[i])
		}
		out = append(out, rtt.MetricFamily())
	}
	return out, nil
}

// WriteText implements expo.TextGatherer: the families of Gather, in the same
// order, written straight from the targets' views (a text scrape builds no
// MetricFamily).
func (p *Prober) WriteText(w *expo.TextWriter) error {
	sc := p.scrape()
	defer p.scrapeDone(sc)
	views, nb := sc.views, len(p.metrics.rttBuckets)
	labels := func(v *scrapeView) [4]expo.Label {
		return [4]expo.Label{{Name: lnDevice, Value: v.labels[0]}, {Name: lnName, Value: v.labels[2]},
			{Name: lnPublicKey, Value: v.labels[1]}, {Name: lnTarget, Value: v.labels[3]}}
	}
	for _, f := range families {
		w.Family(f.name, f.help, f.typ)
		for i := range views {
			v := &views[i]
			x, ok := f.value(v, sc.detail)
			if !ok {
				continue
			}
			l := labels(v)
			if f.state {
				w.Series(x, l[0], l[1], l[2], expo.Label{Name: lnState, Value: pmtuStateNames[v.pmtuState]}, l[3])
			} else {
				w.Series(x, l[:]...)
			}
		}
	}
	if sc.classic {
		w.Family(rttName, p.metrics.rttHelp, dto.MetricType_HISTOGRAM)
		for i := range views {
			v := &views[i]
			l := labels(v)
			w.Histogram(p.metrics.rttBuckets, sc.cum[i*nb:(i+1)*nb], v.count, v.sum, l[:]...)
		}
	}
	return nil
}

// scrapeBufs is one scrape's view of every target. The prober keeps one set
// for the next scrape (each scrape of 1,000 targets made 300 KB of garbage);
// a scrape that finds it taken makes its own.
type scrapeBufs struct {
	ts      []keyed
	views   []scrapeView
	cum     []uint64 // the classic RTT buckets, cumulative, len(rttBuckets) per view
	detail  bool
	classic bool
}

// keyed is a target with its key (never changes), to sort by.
type keyed struct {
	key string
	t   *target
}

// scrape reads every target, in a stable order (by key). The prober's lock
// is held only to list them.
func (p *Prober) scrape() *scrapeBufs {
	p.mu.Lock()
	sc := p.spare
	p.spare = nil
	if sc == nil {
		sc = &scrapeBufs{}
	}
	sc.detail, sc.classic = p.cfg.DetailMetrics, p.metrics.rtt == nil
	sc.ts = sc.ts[:0]
	for k, t := range p.targets {
		sc.ts = append(sc.ts, keyed{k, t})
	}
	p.mu.Unlock()
	slices.SortFunc(sc.ts, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	n, nb := len(sc.ts), len(p.metrics.rttBuckets)
	sc.views = slices.Grow(sc.views[:0], n)[:n]
	sc.cum = slices.Grow(sc.cum[:0], nb*n)[:nb*n]
	for i, kt := range sc.ts {
		sc.views[i] = kt.t.scrapeView(sc.cum[i*nb:(i+1)*nb], sc.detail)
	}
	return sc
}

// scrapeDone keeps sc for the next scrape, holding no target.
func (p *Prober) scrapeDone(sc *scrapeBufs) {
	clear(sc.ts)
	clear(sc.views)
	p.mu.Lock()
	p.spare = sc
	p.mu.Unlock()
}
