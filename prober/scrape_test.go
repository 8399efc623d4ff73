package prober

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector/expo"
)

// BenchmarkScrape measures the exposition of the prober's series for 1,000
// and 10,000 targets that have each finished some probes (fake transport):
// gather through a registry plus text encoding, as a scrape does.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.PMTU.Enabled = false
			var ts []Target
			for i := range n {
				ts = append(ts, Target{Device: "wg0", Address: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), PublicKey: fmt.Sprintf("%044d", i), Name: fmt.Sprintf("peer-%d", i)})
			}
			p := silentProber(b, cfg, ts)
			now := time.Now()
			for _, t := range p.targets {
				for k := range 3 {
					finishProbe(t, k != 1, time.Duration(k+1)*time.Millisecond, now)
				}
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(p)
			b.ReportAllocs()
			for b.Loop() {
				mfs, err := expo.Gatherers{reg, p}.Gather()
				if err != nil {
					b.Fatal(err)
				}
				enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
				for _, mf := range mfs {
					_ = enc.Encode(mf)
				}
			}
		})
	}
}

// silentProber returns a prober on a transport that never answers, probing
// ts without starting its loops: tests finish probes with finishProbe.
func silentProber(tb testing.TB, cfg Config, ts []Target) *Prober {
	tb.Helper()
	p, err := New(cfg, slog.New(slog.DiscardHandler), Options{Open: func(string, bool) (Conn, error) { return silentConn{make(chan struct{})}, nil }})
	if err != nil {
		tb.Fatal(err)
	}
	p.SetTargets(OwnTargets, ts)
	return p
}

// finishProbe sends one probe to tg and ends it at once, answered after rtt
// or lost, without waiting for time.
func finishProbe(tg *target, ok bool, rtt time.Duration, now time.Time) {
	tg.e.sendProbe(tg, now, false)
	s := &tg.e.slots[int(tg.e.seq-1)&(len(tg.e.slots)-1)]
	tg.e.mu.Lock()
	tg.finish(tg.e, s, ok, rtt, now)
	tg.e.mu.Unlock()
}

// silentConn is a transport that sends nowhere and never answers.
type silentConn struct{ done chan struct{} }

func (c silentConn) Send(netip.Addr, uint16, uint16, []byte) error { return nil }
func (c silentConn) Recv([]byte) (Reply, error)                    { <-c.done; return Reply{}, ErrClosed }
func (c silentConn) EchoID() uint16                                { return 1 }
func (c silentConn) Privileged() bool                              { return true }
func (c silentConn) Close() error                                  { close(c.done); return nil }

// seriesPerTarget scrapes a prober whose one target has answered and lost
// probes, late and duplicate replies and a known path MTU, and counts the
// text exposition's series of that target, by family.
func seriesPerTarget(t *testing.T, detail bool) (int, map[string]int) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.PMTU.Enabled = false
	cfg.DetailMetrics = detail
	p := silentProber(t, cfg, []Target{{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1"), PublicKey: fmt.Sprintf("%044d", 1), Name: "peer"}})
	now := time.Now()
	for _, tg := range p.targets {
		for k := range 4 {
			// RTTs in different buckets, one lost.
			finishProbe(tg, k != 1, time.Duration(1+40*k)*time.Millisecond, now)
		}
		tg.e.mu.Lock()
		tg.lateN, tg.dupN = 1, 1
		tg.pmtu = pmtuView{state: pmtuComplete, mtu: 1420}
		tg.e.mu.Unlock()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(p)
	mfs, err := expo.Gatherers{reg, p}.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	byFamily := map[string]int{}
	n := 0
	for line := range strings.SplitSeq(buf.String(), "\n") {
		if line == "" || line[0] == '#' || !strings.Contains(line, `target="10.0.0.1"`) {
			continue
		}
		n++
		byFamily[line[:strings.IndexAny(line, "{ ")]]++
	}
	return n, byFamily
}

// The default costs at most 12 series per probed target, with everything the
// dashboards, alerts and SLOs read; detail_metrics adds the diagnostics.
func TestSeriesPerProbedTarget(t *testing.T) {
	n, fams := seriesPerTarget(t, false)
	t.Logf("default: %d series per target: %v", n, fams)
	if n > 12 {
		t.Errorf("%d series per probed target by default, want at most 12: %v", n, fams)
	}
	for fam, want := range map[string]int{
		"wgpulse_probes_total": 1, "wgpulse_probe_failures_total": 1, "wgpulse_probe_up": 1, "wgpulse_probe_jitter_seconds": 1,
		"wgpulse_path_mtu_bytes": 1, "wgpulse_probe_rtt_seconds_bucket": len(DefaultRTTBuckets) + 1,
		"wgpulse_probe_rtt_seconds_sum": 1, "wgpulse_probe_rtt_seconds_count": 1,
	} {
		if fams[fam] != want {
			t.Errorf("%s: %d series, want %d", fam, fams[fam], want)
		}
	}
	detail := []string{"wgpulse_probe_loss_ratio", "wgpulse_path_mtu_search_state", "wgpulse_probe_late_replies_total", "wgpulse_probe_duplicate_replies_total"}
	for _, fam := range detail {
		if fams[fam] != 0 {
			t.Errorf("%s exported without prober.detail_metrics", fam)
		}
	}
	nd, famsD := seriesPerTarget(t, true)
	t.Logf("detail_metrics: %d series per target", nd)
	for _, fam := range detail {
		if famsD[fam] != 1 {
			t.Errorf("%s: %d series with prober.detail_metrics, want 1", fam, famsD[fam])
		}
	}
	if nd != n+len(detail) {
		t.Errorf("detail_metrics: %d series, want the default's %d plus %d", nd, n, len(detail))
	}
}

// The native histogram is there only with prober.native_histograms.
func TestNativeHistogramsOptIn(t *testing.T) {
	for _, native := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.PMTU.Enabled = false
		cfg.NativeHistograms = native
		p := silentProber(t, cfg, []Target{{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1")}})
		for _, tg := range p.targets {
			finishProbe(tg, true, 3*time.Millisecond, time.Now())
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(p)
		mfs, err := expo.Gatherers{reg, p}.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var h *dto.Histogram
		for _, mf := range mfs {
			if mf.GetName() == "wgpulse_probe_rtt_seconds" {
				h = mf.GetMetric()[0].GetHistogram()
			}
		}
		if h == nil || len(h.GetBucket()) != len(DefaultRTTBuckets) {
			t.Fatalf("native_histograms=%v: histogram %v, want the %d classic buckets", native, h, len(DefaultRTTBuckets))
		}
		if got := len(h.GetPositiveSpan()) > 0; got != native {
			t.Errorf("native_histograms=%v: native buckets present = %v", native, got)
		}
	}
}

// Every device probed through has its error counter from the first
// targets on, so increase() sees the first failure; a device no longer
// probed loses it.
func TestErrorCountersExistFromTheStart(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PMTU.Enabled = false
	p, err := New(cfg, slog.New(slog.DiscardHandler), Options{Open: func(dev string, _ bool) (Conn, error) {
		if dev == "wg-b" {
			return nil, errors.New("no such device")
		}
		return silentConn{make(chan struct{})}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(p)
	a := Target{Device: "wg-a", Address: netip.MustParseAddr("10.0.0.1")}
	p.SetTargets(OwnTargets, []Target{a, {Device: "wg-b", Address: netip.MustParseAddr("10.0.1.1")}})
	want := `
# HELP wgpulse_prober_errors_total Failures to open a probe socket on a device.
# TYPE wgpulse_prober_errors_total counter
wgpulse_prober_errors_total{device="wg-a"} 0
wgpulse_prober_errors_total{device="wg-b"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wgpulse_prober_errors_total"); err != nil {
		t.Error(err)
	}
	p.SetTargets(OwnTargets, []Target{a})
	want = `
# HELP wgpulse_prober_errors_total Failures to open a probe socket on a device.
# TYPE wgpulse_prober_errors_total counter
wgpulse_prober_errors_total{device="wg-a"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wgpulse_prober_errors_total"); err != nil {
		t.Error(err)
	}
}

// RTTQuantiles reads the last 64 replies: after RTTs of 1..100 ms, those of
// 37..100 ms.
func TestRTTQuantilesOfTheLastReplies(t *testing.T) {
	p := silentProber(t, DefaultConfig(), []Target{{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1")}})
	key := Target{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1")}.Key()
	if p50, p99, ok := p.RTTQuantiles(key); !ok || p50 != 0 || p99 != 0 {
		t.Errorf("no replies yet: %v %v %v, want zeros", p50, p99, ok)
	}
	for _, tg := range p.targets {
		for ms := 1; ms <= 100; ms++ {
			finishProbe(tg, true, time.Duration(ms)*time.Millisecond, time.Now())
		}
	}
	p50, p99, _ := p.RTTQuantiles(key)
	if p50 != 69*time.Millisecond || p99 != 100*time.Millisecond {
		t.Errorf("p50 %v p99 %v, want 69ms and 100ms", p50, p99)
	}
	if h, _ := p.HealthOf(key); h.MedianRTT != 97*time.Millisecond {
		t.Errorf("median of the last 8 (93..100 ms) = %v, want 97ms", h.MedianRTT)
	}
	if _, _, ok := p.RTTQuantiles("wg0|10.9.9.9"); ok {
		t.Error("unknown target answered")
	}
}
