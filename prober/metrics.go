package prober

import (
	"slices"
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
	var late, dups, started, pmtus, belows int
	for i := range views {
		v := &views[i]
		late += int(b2u(sc.detail && v.late > 0))
		dups += int(b2u(sc.detail && v.dups > 0))
		started += int(b2u(v.probes > 0))
		pmtus += int(b2u(v.pathMTU > 0))
		belows += int(b2u(v.below > 0))
	}
	var (
		probes, failures = famProbes.builder(n), famFailures.builder(n)
		lateF, dupsF     = famLate.builder(late), famDups.builder(dups)
		jitter, up       = famJitter.builder(started), famUp.builder(started)
		loss, state      = famLoss.builder(started * int(b2u(sc.detail))), famState.builder(started * int(b2u(sc.detail)))
		pmtu             = famPMTU.builder(pmtus)
		below            = famBelow.builder(belows)
		rtt              *expo.HistogramFamily
	)
	if sc.classic {
		rtt = expo.NewHistogramFamily(rttName, p.metrics.rttHelp, p.metrics.rttBuckets, n)
	}
	pairs := expo.NewPairs(5 * n)
	sets := expo.NewSets(9 * n)
	for i := range views {
		v := &views[i]
		l := v.labels
		// Sorted by label name: device, name, public_key, (state,) target.
		dev, name, key, tgt := pairs.Pair(&lnDevice, &l[0]), pairs.Pair(&lnName, &l[2]), pairs.Pair(&lnPublicKey, &l[1]), pairs.Pair(&lnTarget, &l[3])
		base := sets.Set(dev, name, key, tgt)
		if rtt != nil {
			rtt.Add(sc.cum[i*nb:(i+1)*nb], v.count, v.sum, v.created, base)
		}
		probes.Add(float64(v.probes), base)
		failures.Add(float64(v.failures), base)
		if sc.detail && v.late > 0 {
			lateF.Add(float64(v.late), base)
		}
		if sc.detail && v.dups > 0 {
			dupsF.Add(float64(v.dups), base)
		}
		if v.probes == 0 {
			continue // no verdict before the first probe finished
		}
		jitter.Add(v.jitter.Seconds(), base)
		if v.state != StateUnknown {
			up.Add(float64(b2u(v.state == StateUp)), base)
		}
		if v.pathMTU > 0 {
			pmtu.Add(float64(v.pathMTU), base)
		}
		if v.below > 0 {
			below.Add(float64(v.below), base)
		}
		if sc.detail {
			loss.Add(v.lossRatio, base)
			state.Add(1, sets.Set(dev, name, key, pairs.Pair(&lnState, &pmtuStateNames[v.pmtuState]), tgt)) // not into views: reused
		}
	}
	out := expo.Families(probes, failures, lateF, dupsF, loss, jitter, up, pmtu, state, below)
	if rtt != nil && rtt.MetricFamily() != nil {
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
	each := func(f family, value func(v *scrapeView) (float64, bool)) {
		w.Family(f.name, f.help, f.typ)
		for i := range views {
			if x, ok := value(&views[i]); ok {
				l := labels(&views[i])
				w.Series(x, l[:]...)
			}
		}
	}
	started := func(v *scrapeView) bool { return v.probes > 0 }
	each(famProbes, func(v *scrapeView) (float64, bool) { return float64(v.probes), true })
	each(famFailures, func(v *scrapeView) (float64, bool) { return float64(v.failures), true })
	each(famLate, func(v *scrapeView) (float64, bool) { return float64(v.late), sc.detail && v.late > 0 })
	each(famDups, func(v *scrapeView) (float64, bool) { return float64(v.dups), sc.detail && v.dups > 0 })
	each(famLoss, func(v *scrapeView) (float64, bool) { return v.lossRatio, sc.detail && started(v) })
	each(famJitter, func(v *scrapeView) (float64, bool) { return v.jitter.Seconds(), started(v) })
	each(famUp, func(v *scrapeView) (float64, bool) {
		return float64(b2u(v.state == StateUp)), started(v) && v.state != StateUnknown
	})
	each(famPMTU, func(v *scrapeView) (float64, bool) { return float64(v.pathMTU), started(v) && v.pathMTU > 0 })
	if sc.detail {
		w.Family(famState.name, famState.help, famState.typ)
		for i := range views {
			if v := &views[i]; started(v) {
				w.Series(1, expo.Label{Name: lnDevice, Value: v.labels[0]}, expo.Label{Name: lnName, Value: v.labels[2]},
					expo.Label{Name: lnPublicKey, Value: v.labels[1]}, expo.Label{Name: lnState, Value: pmtuStateNames[v.pmtuState]},
					expo.Label{Name: lnTarget, Value: v.labels[3]})
			}
		}
	}
	each(famBelow, func(v *scrapeView) (float64, bool) { return float64(v.below), started(v) && v.below > 0 })
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
	ts      []*target
	views   []scrapeView
	cum     []uint64 // the classic RTT buckets, cumulative, len(rttBuckets) per view
	detail  bool
	classic bool
}

// scrape reads every target, in a stable order (device, address, port). The
// prober's lock is held only to list and sort them.
func (p *Prober) scrape() *scrapeBufs {
	p.mu.Lock()
	sc := p.spare
	p.spare = nil
	if sc == nil {
		sc = &scrapeBufs{}
	}
	sc.detail, sc.classic = p.cfg.DetailMetrics, p.metrics.rtt == nil
	sc.ts = sc.ts[:0]
	for _, t := range p.targets {
		sc.ts = append(sc.ts, t)
	}
	slices.SortFunc(sc.ts, func(a, b *target) int { return a.spec.compare(&b.spec) }) // spec is written under p.mu
	p.mu.Unlock()
	n, nb := len(sc.ts), len(p.metrics.rttBuckets)
	sc.views = slices.Grow(sc.views[:0], n)[:n]
	sc.cum = slices.Grow(sc.cum[:0], nb*n)[:nb*n]
	for i, t := range sc.ts {
		sc.views[i] = t.scrapeView(sc.cum[i*nb:(i+1)*nb], sc.detail)
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
