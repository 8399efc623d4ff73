package prober

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector/expo"
	"github.com/wgpulse/wgpulse/collector/expo/expotest"
)

// The prober counts each target's classic RTT buckets itself; a scrape sees
// what client_golang's histogram, fed the same RTTs, shows: values on a
// bound fall in that bound's bucket (le), values past the last bound only in
// +Inf, lost probes nowhere.
func TestRTTHistogramAsClientGolang(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PMTU.Enabled = false
	cfg.RTTBuckets = []float64{0.002, 0.01, 0.05, 0.25}
	spec := Target{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1"), PublicKey: fmt.Sprintf("%044d", 1), Name: "peer"}
	p := silentProber(t, cfg, []Target{spec})
	ref := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: rttName, Help: p.metrics.rttHelp, Buckets: cfg.RTTBuckets}, targetLabels)
	refChild := ref.WithLabelValues(spec.Device, spec.PublicKey, spec.Name, spec.Label())
	rtts := []time.Duration{500 * time.Microsecond, 2 * time.Millisecond, 2*time.Millisecond + 1, 3 * time.Millisecond,
		10 * time.Millisecond, 40 * time.Millisecond, 250 * time.Millisecond, 251 * time.Millisecond, 2 * time.Second}
	now := time.Now()
	for _, tg := range p.targets {
		for i, rtt := range rtts {
			finishProbe(tg, true, rtt, now)
			refChild.Observe(rtt.Seconds())
			if i%3 == 0 {
				finishProbe(tg, false, 0, now) // lost: not in the histogram
			}
		}
	}
	want := histogramOf(t, ref)
	if want == nil {
		t.Fatal("client_golang gathered no histogram")
	}
	mfs, err := p.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got *dto.MetricFamily
	for _, mf := range mfs {
		if mf.GetName() == rttName {
			got = mf
		}
	}
	if got == nil {
		t.Fatalf("the prober's Gather has no %s", rttName)
	}
	if ct := got.GetMetric()[0].GetHistogram().GetCreatedTimestamp(); ct == nil || ct.AsTime().Before(now.Add(-time.Minute)) {
		t.Errorf("created timestamp %v, want the target's creation", ct)
	}
	if diff := cmp.Diff(familyText(t, want), familyText(t, got)); diff != "" {
		t.Errorf("the prober's histogram differs from client_golang's (-client_golang +prober):\n%s", diff)
	}
	if n := got.GetMetric()[0].GetHistogram().GetSampleCount(); n != uint64(len(rtts)) {
		t.Errorf("sample count %d, want the %d answered probes", n, len(rtts))
	}
}

func histogramOf(t *testing.T, c prometheus.Collector) *dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == rttName {
			return mf
		}
	}
	return nil
}

func familyText(t *testing.T, mf *dto.MetricFamily) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A text scrape (WriteText) writes byte for byte what expfmt writes for the
// prober's Gather (the protobuf path), with and without detail_metrics: for
// targets not yet probed, up, down and unknown, with a path MTU known or
// below the floor, late and duplicate replies, an IPv6 target,
// and names that need escaping.
func TestProberWriteTextMatchesGather(t *testing.T) {
	for _, detail := range []bool{false, true} {
		t.Run(fmt.Sprintf("detail=%v", detail), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.PMTU.Enabled = false
			cfg.DetailMetrics = detail
			specs := []Target{
				{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1"), PublicKey: fmt.Sprintf("%044d", 1), Name: `dc "north"\rack 1`},
				{Device: "wg0", Address: netip.MustParseAddr("10.0.0.2"), PublicKey: fmt.Sprintf("%044d", 2), Name: "line\nbreak ünïcode"},
				{Device: "wg0", Address: netip.MustParseAddr("10.0.0.3")}, // never probed
				{Device: "wg1", Address: netip.MustParseAddr("fd00::1"), Name: "v6"},
			}
			p := silentProber(t, cfg, specs)
			now := time.Now()
			for _, tg := range p.targets {
				switch tg.spec.Address.String() {
				case "10.0.0.1": // up, path MTU known, late and duplicate replies
					for k := range 4 {
						finishProbe(tg, true, time.Duration(1+20*k)*time.Millisecond, now)
					}
					tg.e.mu.Lock()
					tg.state, tg.lateN, tg.dupN, tg.pmtu = StateUp, 3, 1<<53, pmtuView{state: pmtuComplete, mtu: 1420}
					tg.e.mu.Unlock()
				case "10.0.0.2": // down, path MTU below the floor
					for range 3 {
						finishProbe(tg, false, 0, now)
					}
					tg.e.mu.Lock()
					tg.state, tg.pmtu = StateDown, pmtuView{state: pmtuBelowMin, below: 1280}
					tg.e.mu.Unlock()
				case "fd00::1": // unknown after a probe
					finishProbe(tg, true, 1500*time.Microsecond, now)
				}
			}
			got := expotest.TextMatchesGather(t, p)
			for _, s := range []string{`wgpulse_probe_rtt_seconds_bucket{device="wg0",name="dc \"north\"\\rack 1",public_key="` + fmt.Sprintf("%044d", 1) + `",target="10.0.0.1",le="0.002"} 1`,
				`wgpulse_probe_rtt_seconds_count{device="wg1",name="v6",public_key="",target="fd00::1"} 1`} {
				if !strings.Contains(got, s) {
					t.Errorf("the scrape lacks %s:\n%s", s, got)
				}
			}
		})
	}
}

// A text scrape of 1,000 targets reuses the last scrape's buffers: a handful
// of allocations, not the ~22,000 of building its families (BenchmarkScrape).
func TestTextScrapeAllocatesLittle(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PMTU.Enabled = false
	p := silentProber(t, cfg, numberedTargets(1000))
	now := time.Now()
	for _, tg := range p.targets {
		finishProbe(tg, true, time.Millisecond, now)
	}
	w := expo.NewTextWriter(io.Discard)
	allocs := testing.AllocsPerRun(20, func() {
		if err := p.WriteText(w); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.0f allocations per text scrape of 1,000 targets", allocs)
	if allocs > 20 {
		t.Errorf("%.0f allocations per text scrape of 1,000 targets, want at most 20", allocs)
	}
}

// BenchmarkTargetMemory reports the live heap per probed target (default
// configuration, every target answered once): the prober's share of the
// agent's RSS at 1,000 targets (make bench: BenchmarkProberAnchor).
func BenchmarkTargetMemory(b *testing.B) {
	for _, native := range []bool{false, true} {
		b.Run(fmt.Sprintf("native_histograms=%v", native), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.PMTU.Enabled = false
			cfg.NativeHistograms = native
			const n = 1000
			ts := numberedTargets(n)
			var perTarget float64
			for b.Loop() {
				before := liveHeap()
				p := silentProber(b, cfg, ts)
				now := time.Now()
				for _, tg := range p.targets {
					finishProbe(tg, true, time.Millisecond, now)
				}
				perTarget = math.Max(0, float64(liveHeap()-before)) / n
				runtime.KeepAlive(p)
			}
			b.ReportMetric(perTarget, "B/target")
		})
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// numberedTargets returns n targets on wg0, each with its peer's key and name.
func numberedTargets(n int) []Target {
	ts := make([]Target, n)
	for i := range ts {
		ts[i] = Target{Device: "wg0", Address: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), PublicKey: fmt.Sprintf("%044d", i), Name: fmt.Sprintf("peer-%d", i)}
	}
	return ts
}
