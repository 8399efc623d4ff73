package prober_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/prober"
)

// realProber probes addresses on the loopback device with real sockets.
func realProber(t testing.TB, cfg prober.Config, addrs []string) (*prober.Prober, <-chan prober.Result, func()) {
	t.Helper()
	labtest.Require(t) // raw ICMP sockets and SO_BINDTODEVICE
	p, err := prober.New(cfg, slog.New(slog.DiscardHandler), prober.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The subscription outlives the run: results still queued when the
	// prober stops are read afterwards.
	subCtx, subCancel := context.WithCancel(context.Background())
	t.Cleanup(subCancel)
	results := p.Subscribe(subCtx)
	ctx, cancel := context.WithCancel(context.Background())
	var ts []prober.Target
	for _, a := range addrs {
		ts = append(ts, prober.Target{Device: "lo", Address: netip.MustParseAddr(a), Name: a, DeviceMTU: 65536})
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	p.SetTargets(prober.OwnTargets, ts)
	return p, results, func() { cancel(); <-done }
}

func TestRealSocketsIPv4AndIPv6(t *testing.T) {
	cfg := testConfig()
	cfg.Interval = 20 * time.Millisecond
	addrs := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"}
	p, _, stop := realProber(t, cfg, addrs)
	time.Sleep(time.Second)
	stop()
	for _, a := range addrs {
		h := health(t, p, a)
		if h.Probes < 30 || h.Failures != 0 || !h.Up {
			t.Errorf("%s: %d probes, %d failures, up %v; want >= 30 answered", a, h.Probes, h.Failures, h.Up)
		}
		if h.RTT <= 0 || h.RTT > 5*time.Millisecond {
			t.Errorf("%s: RTT %v on loopback", a, h.RTT)
		}
	}
}

func TestUnreachableTargetIsLostNotStray(t *testing.T) {
	cfg := testConfig()
	cfg.Interval, cfg.Timeout = 50*time.Millisecond, 200*time.Millisecond
	// 127.0.0.0/8 answers everything on lo; an address routed nowhere on lo
	// (TEST-NET-2 is not local) gets no reply through lo.
	p, _, stop := realProber(t, cfg, []string{"198.51.100.7"})
	time.Sleep(time.Second)
	stop()
	h := health(t, p, "198.51.100.7")
	if h.Probes < 10 || h.Failures != h.Probes || h.Up {
		t.Errorf("unanswered target: %d probes %d failures up %v; want all lost", h.Probes, h.Failures, h.Up)
	}
}

var pingRTT = regexp.MustCompile(`time=([0-9.]+) ms`)

// systemPingMedian runs iputils ping and returns the median RTT.
func systemPingMedian(t testing.TB, addr string, count int, interval time.Duration) time.Duration {
	t.Helper()
	out, err := exec.Command("ping", "-n", "-c", strconv.Itoa(count), "-i", fmt.Sprintf("%.3f", interval.Seconds()), addr).CombinedOutput()
	if err != nil {
		t.Fatalf("system ping: %v\n%s", err, out)
	}
	var rtts []time.Duration
	for _, m := range pingRTT.FindAllStringSubmatch(string(out), -1) {
		ms, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, time.Duration(ms*float64(time.Millisecond)))
	}
	if len(rtts) == 0 {
		t.Fatalf("no RTTs from system ping:\n%s", out)
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

// medianOf reads results until none comes for 200 ms.
func medianOf(results <-chan prober.Result) (time.Duration, int, int) {
	var rtts []time.Duration
	lost := 0
	for {
		select {
		case r := <-results:
			if r.Success {
				rtts = append(rtts, r.RTT)
			} else {
				lost++
			}
		case <-time.After(200 * time.Millisecond):
			if len(rtts) == 0 {
				return 0, 0, lost
			}
			slices.Sort(rtts)
			return rtts[len(rtts)/2], len(rtts), lost
		}
	}
}

// TestRTTMatchesSystemPing: over 100 probes on the same path the median RTT
// is within 100 µs of iputils ping's.
func TestRTTMatchesSystemPing(t *testing.T) {
	cfg := testConfig()
	cfg.Interval = 10 * time.Millisecond
	_, results, stop := realProber(t, cfg, []string{"127.0.0.1"})
	time.Sleep(1100 * time.Millisecond)
	stop()
	ours, n, _ := medianOf(results)
	sys := systemPingMedian(t, "127.0.0.1", 100, 10*time.Millisecond)
	t.Logf("median RTT over %d probes: wgpulse %v, system ping %v", n, ours, sys)
	if n < 100 {
		t.Fatalf("only %d answered probes", n)
	}
	if d := ours - sys; d > 100*time.Microsecond || d < -100*time.Microsecond {
		t.Errorf("median RTT %v vs system ping %v: differ by more than 100µs", ours, sys)
	}
}

// BenchmarkThousandTargets probes 1,000 loopback addresses at 1 Hz each for
// 10 s (per b.N) and reports CPU (cores = CPU seconds per wall second, user +
// system, including the kernel's echo replies on loopback), RSS, loss and
// the median RTT next to system ping's on the same path under that load.
func BenchmarkThousandTargets(b *testing.B) {
	const n = 1000
	var addrs []string
	for i := range n {
		addrs = append(addrs, fmt.Sprintf("127.1.%d.%d", i/250, i%250+1))
	}
	cfg := prober.DefaultConfig()
	cfg.PMTU.Enabled = false
	for b.Loop() {
		_, results, stop := realProber(b, cfg, addrs)
		// Collect RTTs as they come (as a remediator would), not in a big buffer.
		var (
			mu      sync.Mutex
			rtts    = make([]time.Duration, 0, 16384)
			lost    int
			collect atomic.Bool
		)
		go func() {
			for r := range results {
				if !collect.Load() {
					continue
				}
				mu.Lock()
				if r.Success {
					rtts = append(rtts, r.RTT)
				} else {
					lost++
				}
				mu.Unlock()
			}
		}()
		time.Sleep(2 * time.Second) // every target's phase has started
		collect.Store(true)
		var ru0, ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		start := time.Now()
		pingMedian := systemPingMedian(b, "127.1.0.1", 100, 50*time.Millisecond) // 5 s, same path, under load
		time.Sleep(10*time.Second - time.Since(start))
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		wall := time.Since(start)
		rss := rssMB()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapInuse)/1e6, "heap-inuse-MB")
		b.ReportMetric(float64(ms.Sys)/1e6, "go-sys-MB")
		stop()
		mu.Lock()
		slices.Sort(rtts)
		answered, ours := len(rtts), rtts[len(rtts)/2]
		mu.Unlock()
		cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()) // includes the system ping: negligible
		b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
		b.ReportMetric(rss, "rss-MB")
		b.ReportMetric(float64(answered)/wall.Seconds(), "replies/s")
		b.ReportMetric(float64(lost), "lost")
		b.ReportMetric(float64(ours.Microseconds()), "rtt-p50-µs")
		b.ReportMetric(float64(pingMedian.Microseconds()), "ping-p50-µs")
	}
}

func rssMB() float64 {
	mb, _ := lab.ProcRSS(0)
	return mb
}

// An underlay target (no device) is probed wherever the routing table sends
// it, beside device-bound targets; their replies are not counted as stray by
// the unbound socket that also sees them.
func TestUnboundTargetBesideBoundOnes(t *testing.T) {
	labtest.Require(t)
	cfg := testConfig()
	cfg.Interval = 20 * time.Millisecond
	p, err := prober.New(cfg, slog.New(slog.DiscardHandler), prober.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	p.SetTargets(prober.OwnTargets, []prober.Target{
		{Device: "", Address: netip.MustParseAddr("127.0.0.5"), Name: "underlay"},
		{Device: "lo", Address: netip.MustParseAddr("127.0.0.6"), Name: "bound", DeviceMTU: 65536},
	})
	time.Sleep(time.Second)
	cancel()
	<-done
	for _, a := range []string{"127.0.0.5", "127.0.0.6"} {
		if h := health(t, p, a); h.Probes < 30 || h.Failures != 0 || h.State != prober.StateUp {
			t.Errorf("%s: %d probes, %d failures, %s; want all answered", a, h.Probes, h.Failures, h.State)
		}
	}
	if stray := counter(t, p, "wgpulse_prober_stray_replies_total"); stray != 0 {
		t.Errorf("%v stray replies: the unbound socket counted the bound target's replies", stray)
	}
}
