package agent_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// BenchmarkProberAnchor puts the prober side by side with Debian's fping
// and prometheus-smokeping-prober (make bench installs them), in one run of
// WGPULSE_ANCHOR_RUNS (3) interleaved rounds, each in a fresh namespace:
//
//   - 1,000 loopback targets at 1 probe/s each, 20 s after a 5 s start: the
//     CPU (user+system seconds per second) and RSS of the wgpulse agent
//     (pmtu off), of `fping -l -p 1000 -i 1` and of smokeping_prober
//     (--privileged, as root); while the agent runs, the system ping
//     measures the same path (one of the targets, once a second, as the
//     agent probes it), and the agent's mean RTT on that target (its
//     histogram's sum / count over the window) is set against ping's mean;
//     then, after the CPU window (the agent's raw ICMP socket sees every
//     echo reply in the namespace), ping on the next target sending as often
//     as the agent sends on its socket (1,000 a second, for 10 s), set
//     against the agent's mean on that target: on loopback the whole echo
//     runs inside the sender's sendto, so a sender's RTT is mostly how warm
//     its send path is, and that is set by how often it sends, not by the
//     path (ping alone on the same loopback read 45 µs once a
//     second and 6 µs a thousand times a second: pingByRate);
//   - one target, no load: the agent probing it every 200 ms against 100
//     system pings every 200 ms over the same 20 s (again the same rate);
//   - after the CPU window, each tool's working set (workingSetMB): its RSS
//     10 s after its clean file-backed pages were reclaimed.
//
// It prints min / median / max per tool and the ratios of the medians. One
// whole comparison per iteration: -benchtime=1x (make bench).
func BenchmarkProberAnchor(b *testing.B) {
	labtest.Require(b)
	fping := labtest.Tool(b, "fping", "fping")
	smokeping := labtest.Tool(b, "prometheus-smokeping-prober", "prometheus-smokeping-prober")
	labtest.Tool(b, "ping", "iputils-ping")
	bin := installedCopy(b, labtest.BuildBinary(b, "./cmd/wgpulse"), "wgpulse")
	runs := envCount("WGPULSE_ANCHOR_RUNS", 3, 1)
	const n = 1000
	targets := loopbackTargets(n)
	for b.Loop() {
		var cpu, rss, ws [3][]float64 // wgpulse, fping, smokeping
		var loadRTT, loadPing, rateRTT, ratePing, idleRTT, idlePing []float64
		for r := range runs {
			order := []int{0, 1, 2}
			if r%2 == 1 {
				order = []int{2, 1, 0}
			}
			for _, tool := range order {
				ns := "wgpl-q" + labtest.UniquePrefix()
				if err := lab.AddNetns(ns); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = lab.DelNetns(ns) }) // also when a step fails
				switch tool {
				case 0:
					c, m, w, rtts := proberRound(b, bin, ns, targets)
					cpu[0], rss[0], ws[0] = append(cpu[0], c), append(rss[0], m), append(ws[0], w)
					loadRTT, loadPing = append(loadRTT, rtts[0]), append(loadPing, rtts[1])
					rateRTT, ratePing = append(rateRTT, rtts[2]), append(ratePing, rtts[3])
				case 1:
					c, m, w := toolRound(b, ns, fping, append([]string{"-l", "-q", "-p", "1000", "-i", "1"}, targets...)...)
					cpu[1], rss[1], ws[1] = append(cpu[1], c), append(rss[1], m), append(ws[1], w)
				case 2:
					c, m, w := toolRound(b, ns, smokeping, append([]string{"--privileged", "--ping.interval=1s", "--web.listen-address=127.0.0.1:9374"}, targets...)...)
					cpu[2], rss[2], ws[2] = append(cpu[2], c), append(rss[2], m), append(ws[2], w)
				}
				_ = lab.DelNetns(ns)
			}
			ns := "wgpl-q" + labtest.UniquePrefix()
			if err := lab.AddNetns(ns); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = lab.DelNetns(ns) }) // also when a step fails
			rtt, ping := idleRound(b, bin, ns, targets[0])
			idleRTT, idlePing = append(idleRTT, rtt), append(idlePing, ping)
			_ = lab.DelNetns(ns)
		}
		fmt.Printf("\nprober at %d loopback targets, 1 probe/s each, %d interleaved rounds (min / median / max):\n\n", n, runs)
		fmt.Println("| figure | wgpulse | fping | smokeping_prober | wgpulse / fping | wgpulse / smokeping_prober |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, row := range []struct {
			name, unit, format string
			vs                 [3][]float64
		}{{"CPU", "cores", "%.3f", cpu}, {"RSS", "MB", "%.1f", rss}, {"RSS-working-set", "MB", "%.1f", ws}} {
			var med [3]float64
			var cells [3]string
			for i := range 3 {
				lo, m, hi := spread(row.vs[i])
				med[i] = m
				cells[i] = fmt.Sprintf(row.format+" / "+row.format+" / "+row.format+" %s", lo, m, hi, row.unit)
			}
			fmt.Printf("| %s | %s | %s | %s | %.2f | %.2f |\n", row.name, cells[0], cells[1], cells[2], med[0]/med[1], med[0]/med[2])
			b.ReportMetric(med[0], row.name+"-"+row.unit)
			b.ReportMetric(med[0]/med[1], row.name+"-vs-fping")
		}
		fmt.Printf("\nmean RTT against the system ping on the same path (min / median / max, µs):\n\n")
		fmt.Println("| | wgpulse | system ping | wgpulse − ping (median of the rounds' differences) |")
		fmt.Println("|---|---|---|---|")
		for _, row := range []struct {
			name, metric string
			ours, theirs []float64
		}{
			{"one target, no load, both every 200 ms", "idle-rtt-diff-µs", idleRTT, idlePing},
			{"under the 1,000-target load, ping as often as the agent sends (1,000/s)", "load-rtt-diff-µs", rateRTT, ratePing},
			{"under the load, ping once a second (each target's rate; a cold sender)", "load-1hz-ping-rtt-diff-µs", loadRTT, loadPing},
		} {
			diffs := make([]float64, len(row.ours))
			for i := range diffs {
				diffs[i] = row.ours[i] - row.theirs[i]
			}
			lo, m, hi := spread(row.ours)
			plo, pm, phi := spread(row.theirs)
			_, dm, _ := spread(diffs)
			fmt.Printf("| %s | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f | %+.0f |\n", row.name, lo, m, hi, plo, pm, phi, dm)
			b.ReportMetric(dm, row.metric)
		}
		pingByRate(b, targets[0])
	}
}

// pingByRate prints the system ping's mean RTT on one loopback target, alone
// in a fresh namespace, by how often it sends: the reference the RTT rows
// above are set against moves with its own send rate, which is why each row
// compares senders of the same rate.
func pingByRate(b *testing.B, target string) {
	b.Helper()
	ns := "wgpl-q" + labtest.UniquePrefix()
	if err := lab.AddNetns(ns); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lab.DelNetns(ns) })
	fmt.Printf("\nthe system ping alone on %s, by how often it sends (µs):\n\n", target)
	fmt.Println("| sends | pings | mean | min / median / max |")
	fmt.Println("|---|---|---|---|")
	for _, run := range []struct {
		every time.Duration
		count int
	}{{time.Second, 20}, {200 * time.Millisecond, 100}, {5 * time.Millisecond, 2000}, {time.Millisecond, 10000}} {
		p := runPing(ns, target, run.count, run.every)
		mean := meanMicros(b, p)
		rtts := make([]float64, len(p.RTTs))
		for i, d := range p.RTTs {
			rtts[i] = float64(d.Nanoseconds()) / 1e3
		}
		lo, m, hi := spread(rtts)
		fmt.Printf("| every %s | %d | %.0f | %.0f / %.0f / %.0f |\n", run.every, len(rtts), mean, lo, m, hi)
	}
	_ = lab.DelNetns(ns)
}

// toolRound runs an anchor for 25 s and returns its CPU (cores) over the
// last 20 s, its RSS at the end and its working set after that.
func toolRound(b *testing.B, ns, tool string, args ...string) (cores, rssMB, workingMB float64) {
	b.Helper()
	cmd := lab.Command(ns, tool, args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", tool, err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(5 * time.Second)
	cores, rssMB = cpuOver(b, cmd.Process.Pid, 20*time.Second)
	return cores, rssMB, workingSetMB(b, cmd.Process.Pid)
}

// workingSetMB is a process's RSS 10 s after the kernel was asked to
// reclaim its clean file-backed pages (process_madvise MADV_PAGEOUT on every
// read-only file mapping: program text, rodata, shared libraries), as it
// would under memory pressure. What faults back in over those 10 s is what
// the process uses in steady state; RSS at the end of the CPU window also
// holds the pages only its start touched and those the kernel's fault-around
// mapped next to them.
func workingSetMB(b *testing.B, pid int) float64 {
	b.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		b.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		b.Fatal(err)
	}
	type iovec struct{ base, len uintptr } // addresses in the other process
	var iov []iovec
	for _, l := range strings.Split(string(maps), "\n") {
		// start-end perms offset dev inode path
		f := strings.Fields(l)
		if len(f) < 6 || f[4] == "0" || strings.Contains(f[1], "w") {
			continue // anonymous, or writable: not a clean file page
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
			b.Fatalf("%s: %v", l, err)
		}
		iov = append(iov, iovec{uintptr(lo), uintptr(hi - lo)})
	}
	for len(iov) > 0 {
		n := min(len(iov), 1024) // UIO_MAXIOV
		if _, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n), unix.MADV_PAGEOUT, 0, 0); errno != 0 {
			b.Fatalf("process_madvise MADV_PAGEOUT on pid %d: %v", pid, errno)
		}
		iov = iov[n:]
	}
	time.Sleep(10 * time.Second)
	return procRSSMB(b, pid)
}

// cpuOver measures a process's CPU over d and its RSS at the end.
func cpuOver(b *testing.B, pid int, d time.Duration) (cores, rssMB float64) {
	b.Helper()
	c0, t0 := procCPU(b, pid), time.Now()
	time.Sleep(d)
	c := procCPU(b, pid) - c0
	return c.Seconds() / time.Since(t0).Seconds(), procRSSMB(b, pid)
}

// rttSumCount is the sum and count of the agent's RTT histogram for one
// target: the path the system ping measures.
func rttSumCount(b *testing.B, a *lab.Agent, target string) (sum, count float64) {
	b.Helper()
	_, body, err := a.Get("/metrics")
	if err != nil {
		b.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range mfs["wgpulse_probe_rtt_seconds"].GetMetric() {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "target" && l.GetValue() == target }) {
			continue
		}
		sum += m.GetHistogram().GetSampleSum()
		count += float64(m.GetHistogram().GetSampleCount())
	}
	return sum, count
}

// pingRun is one run of the system ping: its result, or why it has none.
type pingRun struct {
	lab.PingResult
	err error
}

func runPing(ns, target string, count int, every time.Duration) pingRun {
	r, err := lab.Ping(ns, target, count, every, 56, false)
	return pingRun{r, err}
}

// meanMicros is a ping run's mean RTT (µs). A run that failed or got no
// answer ends the benchmark: as 0 µs it would pass any comparison.
func meanMicros(b *testing.B, p pingRun) float64 {
	b.Helper()
	if p.err != nil || len(p.RTTs) == 0 {
		b.Fatalf("the system ping measured nothing (sent %d, answered %d): %v", p.Sent, p.Received, p.err)
	}
	var s time.Duration
	for _, d := range p.RTTs {
		s += d
	}
	return float64(s.Nanoseconds()) / 1e3 / float64(len(p.RTTs))
}

func startProberAgent(b *testing.B, bin, ns, cfg string) *lab.Agent {
	b.Helper()
	file := filepath.Join(b.TempDir(), "wgpulse.yml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	return startBenchAgent(b, bin, ns, "--config.file="+file, "--log.level=warn")
}

// installedCopy installs the binary at bin as `make install` does
// (install(1), which copies as cp does), rather than run the linker's
// output. How a binary was written decides how the page cache holds it, and
// the agent's file RSS with it: a fault maps the whole cached folio around
// the page it needs. The pages that faulted back after the start-up release
// were about 8 MB of the linker's output (written through a mapping), 8 to
// 13 MB of a copy made by cp, and 18 MB of a copy written in one write(2)
// (large folios: the release barely shows there). A copy is also not a
// file another agent maps (a page two processes map is not paged out).
func installedCopy(b *testing.B, bin, name string) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), name)
	if out, err := exec.Command("install", "-m", "0755", bin, p).CombinedOutput(); err != nil {
		b.Fatalf("install %s %s: %v\n%s", bin, p, err, out)
	}
	return p
}

// startBenchAgent runs the agent for a prober measurement: as shipped (its
// heap profile only when WGPULSE_BENCH_PROFILES asks for one, as
// --web.enable-pprof also turns on allocation sampling), and blind to
// userspace WireGuard devices elsewhere on the machine (a lab, or CI's
// tests), which it would otherwise watch and auto-probe.
func startBenchAgent(b *testing.B, bin, ns string, args ...string) *lab.Agent {
	b.Helper()
	return labtest.StartAgentWith(b, lab.AgentOptions{Bin: bin, NS: ns, Addr: "127.0.0.1:9586", Args: benchProfileArgs(args), NoUserspaceDevices: true})
}

// benchProfileArgs adds --web.enable-pprof to an agent's arguments only when
// WGPULSE_BENCH_PROFILES asks for heap profiles: the flag also turns on
// allocation sampling, which costs RSS the shipped agent does not pay.
func benchProfileArgs(args []string) []string {
	if os.Getenv("WGPULSE_BENCH_PROFILES") != "" {
		return append(args, "--web.enable-pprof")
	}
	return args
}

// proberRound: the agent at the 1,000 targets, with the system ping on one
// of them during the window, once a second, and after it on the next 1,000
// times a second, as often as the agent sends. rtts: the agent's mean and
// ping's on the first, then on the second (µs).
func proberRound(b *testing.B, bin, ns string, targets []string) (cores, rssMB, workingMB float64, rtts [4]float64) {
	b.Helper()
	a := startProberAgent(b, bin, ns, loopbackProberConfig(targets))
	defer a.Stop()
	time.Sleep(5 * time.Second)
	paths := targets[len(targets)/2 : len(targets)/2+2]
	pinged := make(chan pingRun, 1)
	go func() { pinged <- runPing(ns, paths[0], 19, time.Second) }()
	s0, n0 := rttSumCount(b, a, paths[0])
	cores, rssMB = cpuOver(b, a.Pid(), 20*time.Second)
	saveHeapProfile(b, a, "prober-1000")
	s1, n1 := rttSumCount(b, a, paths[0])
	ping := <-pinged
	w0, m0 := rttSumCount(b, a, paths[1])
	same := runPing(ns, paths[1], len(targets)*10, time.Second/time.Duration(len(targets)))
	w1, m1 := rttSumCount(b, a, paths[1])
	if n1 <= n0 || m1 <= m0 {
		b.Fatalf("the agent answered no probe to %s or %s:\n%s", paths[0], paths[1], a.Logs())
	}
	rtts = [4]float64{(s1 - s0) / (n1 - n0) * 1e6, meanMicros(b, ping), (w1 - w0) / (m1 - m0) * 1e6, meanMicros(b, same)}
	return cores, rssMB, workingSetMB(b, a.Pid()), rtts
}

// idleRound: one target every 200 ms against 100 system pings.
func idleRound(b *testing.B, bin, ns, target string) (rttMicros, pingMicros float64) {
	b.Helper()
	a := startProberAgent(b, bin, ns, fmt.Sprintf("prober:\n  pmtu: {enabled: false}\n  targets:\n    - {address: %s, device: lo, interval: 200ms}\n", target))
	defer a.Stop()
	time.Sleep(2 * time.Second)
	pinged := make(chan pingRun, 1)
	go func() { pinged <- runPing(ns, target, 100, 200*time.Millisecond) }()
	s0, n0 := rttSumCount(b, a, target)
	time.Sleep(20 * time.Second)
	s1, n1 := rttSumCount(b, a, target)
	if n1 <= n0 {
		b.Fatalf("the agent answered no probe in 20 s:\n%s", a.Logs())
	}
	return (s1 - s0) / (n1 - n0) * 1e6, meanMicros(b, <-pinged)
}

// BenchmarkProberRSSOverScrapes runs the agent at the 1,000 loopback targets
// (1 probe/s each, pmtu off) for WGPULSE_RSS_SCRAPES (120) scrapes of
// /metrics, one every 5 s, twice at once in two namespaces: as it starts by
// default, dropping its start-up pages 10 s in, and with
// --no-runtime.release-startup-pages. The second runs a copy of the binary:
// a page two processes map is not paged out. It prints RSS and its anonymous
// and file-backed parts every 12 scrapes; the figures are those at 60 and at
// the last scrape, and the highest RSS after the release.
func BenchmarkProberRSSOverScrapes(b *testing.B) {
	labtest.Require(b)
	built := labtest.BuildBinary(b, "./cmd/wgpulse")
	bin, kept := installedCopy(b, built, "wgpulse"), installedCopy(b, built, "wgpulse-kept")
	scrapes := envCount("WGPULSE_RSS_SCRAPES", 120, 60)
	file := filepath.Join(b.TempDir(), "wgpulse.yml")
	if err := os.WriteFile(file, []byte(loopbackProberConfig(loopbackTargets(1000))), 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var agents [2]*lab.Agent
		for i, exe := range []string{bin, kept} {
			ns := "wgpl-r" + labtest.UniquePrefix()
			if err := lab.AddNetns(ns); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = lab.DelNetns(ns) })
			args := []string{"--config.file=" + file, "--log.level=info"}
			if i == 1 {
				args = append(args, "--no-runtime.release-startup-pages")
			}
			agents[i] = startBenchAgent(b, exe, ns, args...)
			defer agents[i].Stop()
		}
		fmt.Printf("\nagent RSS at 1,000 loopback targets, a scrape every 5 s (MB: RSS = anonymous + file-backed):\n\n")
		fmt.Println("| scrapes | time | start-up pages dropped (default) | kept (--no-runtime.release-startup-pages) |")
		fmt.Println("|---|---|---|---|")
		var at60, last, peak [2]float64
		start := time.Now()
		for s := 1; s <= scrapes; s++ {
			time.Sleep(time.Until(start.Add(time.Duration(s) * 5 * time.Second)))
			var cells [2]string
			for i, a := range agents {
				if code, _, err := a.Get("/metrics"); err != nil || code != 200 {
					b.Fatalf("scrape %d: %d %v\n%s", s, code, err, a.Logs())
				}
				rss, anon, file := procStatus(b, a.Pid())
				if s >= 3 { // after the release, 10 s in
					peak[i] = max(peak[i], rss)
				}
				if s == 60 {
					at60[i] = rss
				}
				last[i] = rss
				cells[i] = fmt.Sprintf("%.1f = %.1f + %.1f", rss, anon, file)
			}
			if s == 1 || s%12 == 0 || s == scrapes {
				fmt.Printf("| %d | %s | %s | %s |\n", s, time.Since(start).Round(time.Second), cells[0], cells[1])
			}
		}
		if !strings.Contains(agents[0].Logs(), "released the program pages only start-up used") {
			b.Fatalf("the default agent logged no release of its start-up pages:\n%s", agents[0].Logs())
		}
		b.ReportMetric(at60[0], "RSS-60-scrapes-MB")
		b.ReportMetric(last[0], "RSS-last-scrape-MB")
		b.ReportMetric(peak[0], "RSS-peak-MB")
		b.ReportMetric(last[1], "RSS-kept-last-scrape-MB")
	}
}

// procStatus is a process's RSS, RssAnon and RssFile in MB.
func procStatus(b *testing.B, pid int) (rss, anon, file float64) {
	b.Helper()
	mb, err := lab.ProcStatusMB(pid, "VmRSS", "RssAnon", "RssFile")
	if err != nil {
		b.Fatal(err)
	}
	return mb[0], mb[1], mb[2]
}

// loopbackTargets are n addresses of 127.1.0.0/16, 250 to a /24.
func loopbackTargets(n int) []string {
	targets := make([]string, n)
	for i := range targets {
		targets[i] = fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)
	}
	return targets
}

// loopbackProberConfig probes targets through lo at the prober's defaults,
// pmtu off.
func loopbackProberConfig(targets []string) string {
	var cfg strings.Builder
	cfg.WriteString("prober:\n  pmtu: {enabled: false}\n  targets:\n")
	for _, t := range targets {
		fmt.Fprintf(&cfg, "    - {address: %s, device: lo}\n", t)
	}
	return cfg.String()
}
