// Package expo builds Prometheus metric families directly, from a few slabs
// per family instead of several allocations per series. The collector and the
// prober use it for their per-peer and per-target families, where a large
// node has tens of thousands of series and the registry's per-series path
// (channel, Write, hashing, sorting) dominates a scrape.
package expo

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Family fills one MetricFamily from slabs sized up front.
type Family struct {
	mf       *dto.MetricFamily
	metrics  []dto.Metric
	values   []float64
	gauges   []dto.Gauge
	counters []dto.Counter
}

// NewFamily returns a family with room for n series.
func NewFamily(name, help string, typ dto.MetricType, n int) *Family {
	f := &Family{
		mf:      &dto.MetricFamily{Name: &name, Help: &help, Type: typ.Enum(), Metric: make([]*dto.Metric, 0, n)},
		metrics: make([]dto.Metric, n),
		values:  make([]float64, n),
	}
	if typ == dto.MetricType_COUNTER {
		f.counters = make([]dto.Counter, n)
	} else {
		f.gauges = make([]dto.Gauge, n)
	}
	return f
}

// Add appends a series; labels must be sorted by name and stay unchanged
// until the scrape is encoded. Adding more than n series panics.
func (f *Family) Add(v float64, labels []*dto.LabelPair) {
	i := len(f.mf.Metric)
	m := &f.metrics[i]
	f.values[i] = v
	if f.counters != nil {
		f.counters[i].Value = &f.values[i]
		m.Counter = &f.counters[i]
	} else {
		f.gauges[i].Value = &f.values[i]
		m.Gauge = &f.gauges[i]
	}
	m.Label = labels
	f.mf.Metric = append(f.mf.Metric, m)
}

// Families returns the non-empty families.
func Families(fs ...*Family) []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(fs))
	for _, f := range fs {
		if len(f.mf.Metric) > 0 {
			out = append(out, f.mf)
		}
	}
	return out
}

// HistogramFamily fills one classic histogram MetricFamily from slabs sized
// up front, as client_golang's histogram writes one: cumulative buckets
// below +Inf, the sample count and sum, and the created timestamp.
type HistogramFamily struct {
	mf      *dto.MetricFamily
	upper   []float64 // shared by every series, never modified
	metrics []dto.Metric
	hists   []dto.Histogram
	buckets []dto.Bucket
	bptrs   []*dto.Bucket
	cums    []uint64
	counts  []uint64
	sums    []float64
	created []timestamppb.Timestamp
}

// NewHistogramFamily returns a family with room for n series over the upper
// bounds upper, which must stay unchanged until the scrape is encoded.
func NewHistogramFamily(name, help string, upper []float64, n int) *HistogramFamily {
	nb := len(upper)
	return &HistogramFamily{
		mf:      &dto.MetricFamily{Name: &name, Help: &help, Type: dto.MetricType_HISTOGRAM.Enum(), Metric: make([]*dto.Metric, 0, n)},
		upper:   upper,
		metrics: make([]dto.Metric, n),
		hists:   make([]dto.Histogram, n),
		buckets: make([]dto.Bucket, n*nb),
		bptrs:   make([]*dto.Bucket, n*nb),
		cums:    make([]uint64, n*nb),
		counts:  make([]uint64, n),
		sums:    make([]float64, n),
		created: make([]timestamppb.Timestamp, n),
	}
}

// Add appends a series: cum holds the cumulative count of each upper bound
// (copied), count and sum the samples'; labels as in Family.Add. Adding more
// than n series panics.
func (f *HistogramFamily) Add(cum []uint64, count uint64, sum float64, created time.Time, labels []*dto.LabelPair) {
	i, nb := len(f.mf.Metric), len(f.upper)
	cums, bs, bp := f.cums[i*nb:(i+1)*nb], f.buckets[i*nb:(i+1)*nb], f.bptrs[i*nb:(i+1)*nb:(i+1)*nb]
	copy(cums, cum)
	for j := range bs {
		bs[j].CumulativeCount, bs[j].UpperBound = &cums[j], &f.upper[j]
		bp[j] = &bs[j]
	}
	f.counts[i], f.sums[i] = count, sum
	ts := &f.created[i]
	ts.Seconds, ts.Nanos = created.Unix(), int32(created.Nanosecond())
	h := &f.hists[i]
	h.SampleCount, h.SampleSum, h.Bucket, h.CreatedTimestamp = &f.counts[i], &f.sums[i], bp, ts
	m := &f.metrics[i]
	m.Histogram, m.Label = h, labels
	f.mf.Metric = append(f.mf.Metric, m)
}

// MetricFamily returns the family, or nil when it has no series.
func (f *HistogramFamily) MetricFamily() *dto.MetricFamily {
	if len(f.mf.Metric) == 0 {
		return nil
	}
	return f.mf
}

// Pairs hands out label pairs pointing at strings the caller keeps alive.
type Pairs struct{ buf []dto.LabelPair }

// NewPairs returns room for n label pairs.
func NewPairs(n int) *Pairs { return &Pairs{buf: make([]dto.LabelPair, 0, n)} }

// Pair returns a label pair; a miscounted slab grows instead of failing.
func (s *Pairs) Pair(name, value *string) *dto.LabelPair {
	if len(s.buf) == cap(s.buf) {
		s.buf = make([]dto.LabelPair, 0, 64)
	}
	s.buf = append(s.buf, dto.LabelPair{Name: name, Value: value})
	return &s.buf[len(s.buf)-1]
}

// Sets hands out label slices, which series may share.
type Sets struct{ buf []*dto.LabelPair }

// NewSets returns room for n label pair pointers in total.
func NewSets(n int) *Sets { return &Sets{buf: make([]*dto.LabelPair, 0, n)} }

// Set returns a label slice of pairs (already sorted by label name).
func (s *Sets) Set(pairs ...*dto.LabelPair) []*dto.LabelPair {
	if cap(s.buf)-len(s.buf) < len(pairs) {
		s.buf = make([]*dto.LabelPair, 0, 64)
	}
	start := len(s.buf)
	s.buf = append(s.buf, pairs...)
	return s.buf[start:len(s.buf):len(s.buf)]
}

// Gatherers joins gatherers whose family names do not overlap (the agent's
// registry and the collector's and prober's own families), skipping the
// per-series consistency checks of prometheus.Gatherers, the most expensive
// part of a large scrape.
type Gatherers []prometheus.Gatherer

// Gather implements prometheus.Gatherer.
func (gs Gatherers) Gather() ([]*dto.MetricFamily, error) {
	var (
		out  []*dto.MetricFamily
		errs prometheus.MultiError
	)
	for _, g := range gs {
		mfs, err := g.Gather()
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, mfs...)
	}
	return out, errs.MaybeUnwrap()
}
