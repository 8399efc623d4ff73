package lab_test

import (
	"fmt"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// nativeBuckets scrapes the agent in protobuf (the only format that carries
// native histograms) and returns the RTT histogram of one target as
// bucket index -> count, with its schema.
func nativeBuckets(t *testing.T, a *lab.Agent, target string) nativeHist {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+a.Addr+"/metrics", nil)
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	resp, err := a.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			t.Fatalf("no wgpulse_probe_rtt_seconds for %s in protobuf scrape: %v", target, err)
		}
		if mf.GetName() != "wgpulse_probe_rtt_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabel(m, "target", target) {
				continue
			}
			h := m.GetHistogram()
			if h.GetSchema() == 0 && len(h.GetPositiveSpan()) == 0 {
				t.Fatal("RTT histogram has no native buckets")
			}
			out := map[int]float64{}
			idx, count, d := 0, int64(0), 0
			for _, sp := range h.GetPositiveSpan() {
				idx += int(sp.GetOffset())
				for range sp.GetLength() {
					count += h.GetPositiveDelta()[d]
					out[idx] = float64(count)
					idx++
					d++
				}
			}
			return nativeHist{out, h.GetSchema(), h.GetSampleSum(), float64(h.GetSampleCount())}
		}
	}
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// nativeHist is one scrape of a native histogram: cumulative counts by
// bucket index, and the schema the indices are in.
type nativeHist struct {
	buckets    map[int]float64
	schema     int32
	sum, count float64
}

// at is h in a schema no finer than its own: a histogram past its bucket
// limit (20, prober.native_histograms) halves its resolution as the
// distribution widens, so two scrapes of one histogram may differ in
// schema, and subtracting bucket counts of different schemas is garbage
// (a CI run read a clean path's median as 39 ms that way). Bucket i of
// schema s is bucket ceil(i / 2^(s-to)) of schema to.
func (h nativeHist) at(to int32) map[int]float64 {
	if h.schema == to {
		return h.buckets
	}
	div := 1 << (h.schema - to)
	out := map[int]float64{}
	for i, c := range h.buckets {
		j := i / div
		if i > 0 && i%div != 0 {
			j++ // ceil for positive indices; Go's division truncates negative ones toward zero, which is ceil
		}
		out[j] += c
	}
	return out
}

// nativeMedian is the median of the observations between two scrapes of
// one histogram, in the coarser of their two schemas, and the factor of
// that schema's buckets (how far the interpolated median may be off).
func nativeMedian(before, after nativeHist) (time.Duration, float64) {
	schema := min(before.schema, after.schema)
	b, a := before.at(schema), after.at(schema)
	var idx []int
	var total float64
	diff := map[int]float64{}
	for k, v := range a {
		if d := v - b[k]; d > 0 {
			diff[k] = d
			idx = append(idx, k)
			total += d
		}
	}
	sort.Ints(idx)
	base := math.Pow(2, math.Pow(2, -float64(schema)))
	var cum float64
	for _, k := range idx {
		if cum+diff[k] >= total/2 {
			lower, upper := math.Pow(base, float64(k-1)), math.Pow(base, float64(k))
			frac := (total/2 - cum) / diff[k]
			return time.Duration((lower + frac*(upper-lower)) * float64(time.Second)), base
		}
		cum += diff[k]
	}
	return 0, base
}

// Two scrapes in different schemas give the median of what was observed
// between them: 100 observations at 1 ms before, then 100 at 30 ms; the
// second scrape is one schema coarser (its buckets merged in pairs).
func TestNativeMedianAcrossSchemas(t *testing.T) {
	idx := func(v float64, schema int32) int { // the bucket of v: base^(i-1) < v <= base^i
		return int(math.Ceil(math.Log2(v) * math.Pow(2, float64(schema))))
	}
	before := nativeHist{buckets: map[int]float64{idx(0.001, 3): 100}, schema: 3}
	after := nativeHist{buckets: map[int]float64{idx(0.001, 2): 100, idx(0.030, 2): 100}, schema: 2}
	if got, f := nativeMedian(before, after); got < 27*time.Millisecond || got > 31*time.Millisecond || math.Abs(f-math.Pow(2, 0.25)) > 1e-9 {
		t.Errorf("median %v (bucket factor %.3f) across schemas 3 and 2, want about 30ms in buckets of factor 1.189", got, f)
	}
	if got, _ := nativeMedian(before, nativeHist{buckets: after.buckets, schema: 3}); got > 27*time.Millisecond && got < 31*time.Millisecond {
		t.Errorf("the check cannot fail: read as one schema the scrapes also give %v", got)
	}
}

// TestProberOnLab: faults on dc1-primary, measured by the agent in dc1.
func TestProberOnLab(t *testing.T) {
	l := labtest.Start(t, lab.Config{})
	prim, _ := l.Tunnel("dc1-primary")
	backup, _ := l.Tunnel("dc1-backup")
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	cfg := writeFile(t, t.TempDir(), "dc1.yml", fmt.Sprintf(`collector:
  devices: [%s, %s]
  poll_interval: 1s
prober:
  interval: 20ms
  timeout: 500ms
  window: 10s
  pmtu: {min: 1200}
  native_histograms: true
  detail_metrics: true
`, prim.Device, backup.Device))
	agent := labtest.StartAgent(t, bin, prim.Namespace, "127.0.0.1:9586", "--config.file="+cfg)
	target := labelsOf("device", prim.Device, "target", prim.RemoteAddress, "public_key", prim.HubPublicKey)
	eventually(t, 10*time.Second, func() string {
		s, _ := scrape(t, agent)
		if v, ok := s.get("wgpulse_probe_up", target); !ok || v != 1 {
			return fmt.Sprintf("primary target not up yet: %v", s["wgpulse_probe_up"])
		}
		return ""
	})

	mustFault(t, l, prim.Name, "loss=20", "delay=30ms", "jitter=10ms", "mtu=1300")
	time.Sleep(2 * time.Second) // let probes sent before the change finish
	s0, _ := scrape(t, agent)
	h0 := nativeBuckets(t, agent, prim.RemoteAddress)
	b0 := nativeBuckets(t, agent, backup.RemoteAddress)
	time.Sleep(12 * time.Second)
	s1, _ := scrape(t, agent)
	h1 := nativeBuckets(t, agent, prim.RemoteAddress)
	b1 := nativeBuckets(t, agent, backup.RemoteAddress)

	probes := s1.mustGet(t, "wgpulse_probes_total", target) - s0.mustGet(t, "wgpulse_probes_total", target)
	failures := s1.mustGet(t, "wgpulse_probe_failures_total", target) - s0.mustGet(t, "wgpulse_probe_failures_total", target)
	loss := failures / probes
	// The clean backup path, probed by the same agent over the same
	// window, is logged for context (what userspace WireGuard and the
	// runner's load add), not subtracted: under a saturated CPU it rose to
	// 22ms while the delayed primary stayed at 32ms.
	control, _ := nativeMedian(b0, b1)
	median, factor := nativeMedian(h0, h1)
	mean := time.Duration((h1.sum - h0.sum) / (h1.count - h0.count) * float64(time.Second))
	jitter := time.Duration(s1.mustGet(t, "wgpulse_probe_jitter_seconds", target) * float64(time.Second))
	t.Logf("under loss=20 delay=30ms jitter=10ms: %v probes, loss %.1f%%, RTT mean %v (sum/count), median %v (native histogram, buckets of factor %.3f; the clean backup's %v), jitter %v",
		probes, 100*loss, mean, median, factor, control, jitter)
	if probes < 400 || loss < 0.15 || loss > 0.25 {
		t.Errorf("loss from the counters %.1f%% over %v probes, want 15-25%% over >= 400", 100*loss, probes)
	}
	// 30ms -10%/+15%: the relay's timers add 0.6-0.7ms to every delayed
	// round trip (TestLabTellsTheTruth/delay measures it), and the jitter
	// is symmetric, so the mean is 30.7ms. Measured (the median, before
	// the mean was checked): 31.5ms idle, 32.0ms with both cores
	// saturated, 33.0ms once in CI.
	if mean < 27*time.Millisecond || mean > 34500*time.Microsecond {
		t.Errorf("RTT mean %v (median %v, clean backup %v), want 30ms -10%%/+15%%", mean, median, control)
	}
	// The median is interpolated inside a bucket: of factor 1.09 while the
	// histogram holds at most 20 of them, coarser once the ~1 ms before the
	// fault and the 20-40 ms after it need more (the agent halves the
	// resolution then: factor 1.19, 1.41). The bound widens by that factor.
	if lo, hi := time.Duration(float64(27*time.Millisecond)/factor), time.Duration(float64(34500*time.Microsecond)*factor); median < lo || median > hi {
		t.Errorf("RTT median %v outside %v-%v (30ms -10%%/+15%%, widened by the bucket factor %.3f)", median, lo.Round(100*time.Microsecond), hi.Round(100*time.Microsecond), factor)
	}
	if jitter <= time.Millisecond || jitter > 10*time.Millisecond {
		t.Errorf("jitter %v, want within the injected ±10ms range (and above 1ms)", jitter)
	}
	if b := labelsOf("device", backup.Device, "target", backup.RemoteAddress); s1.mustGet(t, "wgpulse_probe_loss_ratio", b) != 0 {
		t.Errorf("the clean backup path reports loss %v", s1.mustGet(t, "wgpulse_probe_loss_ratio", b))
	}

	// Path MTU: the underlay passes 1300-byte packets, so inner packets of
	// up to 1232 bytes; the search must land within 20 bytes below.
	limit := lab.InnerLimit(1300, prim.MTU)
	eventually(t, 90*time.Second, func() string {
		s, _ := scrape(t, agent)
		state, _ := s.get("wgpulse_path_mtu_search_state", labelsOf("device", prim.Device, "target", prim.RemoteAddress, "state", "search_complete"))
		pmtu, ok := s.get("wgpulse_path_mtu_bytes", target)
		if state != 1 || !ok {
			return fmt.Sprintf("PMTU search not complete: %v", s["wgpulse_path_mtu_search_state"])
		}
		if int(pmtu) > limit || int(pmtu) < limit-20 {
			t.Fatalf("path MTU %v, want within 20 bytes below the true inner limit %d", pmtu, limit)
		}
		t.Logf("path MTU %v (true inner limit %d)", pmtu, limit)
		return ""
	})
	s, _ := scrape(t, agent)
	if v, _ := s.get("wgpulse_path_mtu_bytes", labelsOf("device", backup.Device, "target", backup.RemoteAddress)); v != float64(prim.MTU) {
		t.Errorf("backup path MTU %v, want the full device MTU %d", v, prim.MTU)
	}

	// Faults cleared: loss is back to 0 within one window.
	mustFault(t, l, prim.Name, "loss=0", "delay=0", "jitter=0", "mtu=0")
	time.Sleep(10*time.Second + 500*time.Millisecond + time.Second)
	s, _ = scrape(t, agent)
	if v := s.mustGet(t, "wgpulse_probe_loss_ratio", target); v != 0 {
		t.Errorf("loss ratio %v one window after clearing the faults, want 0", v)
	}

	// Path down: the target is down, the backup is not.
	mustFault(t, l, prim.Name, "down")
	eventually(t, 5*time.Second, func() string {
		s, _ := scrape(t, agent)
		if v := s.mustGet(t, "wgpulse_probe_up", target); v != 0 {
			return "primary still up with its path down"
		}
		if v := s.mustGet(t, "wgpulse_probe_up", labelsOf("device", backup.Device, "target", backup.RemoteAddress)); v != 1 {
			return "backup went down with the primary"
		}
		return ""
	})

	// 10 s after start, inside the loss/RTT window above (whose figures
	// held), the agent dropped the pages of its binary only start-up used.
	m := regexp.MustCompile(`released the program pages only start-up used.* file_rss_before_kb=(\d+) file_rss_after_kb=(\d+)`).FindStringSubmatch(agent.Logs())
	if m == nil {
		t.Fatalf("no log line of the start-up pages' release:\n%s", agent.Logs())
	}
	before, _ := strconv.Atoi(m[1])
	after, _ := strconv.Atoi(m[2])
	t.Logf("start-up pages released: file RSS %d kB -> %d kB", before, after)
	if after > before/2 {
		t.Errorf("file RSS %d kB -> %d kB at the release, want at most half", before, after)
	}
}
