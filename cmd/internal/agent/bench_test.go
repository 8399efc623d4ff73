package agent_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

func TestMain(m *testing.M) {
	lab.RunChild()
	// Agents built by tests keep their state (the key first-seen file) in a
	// temporary directory, as under systemd's StateDirectory=, not in
	// /var/lib/wgpulse.
	dir, err := os.MkdirTemp("", "wgpulse-agent-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("STATE_DIRECTORY", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// benchDevice is one userspace WireGuard device in its own namespace with n
// peers configured through wgctrl (endpoints set, never reachable).
type benchDevice struct {
	ns    string
	dev   string
	wg    *wgctrl.Client
	links *netlink.Handle
}

var benchDevices = map[int]*benchDevice{}

func setupBenchDevice(b *testing.B, n int) *benchDevice {
	b.Helper()
	labtest.Require(b)
	if d, ok := benchDevices[n]; ok {
		return d
	}
	p := labtest.UniquePrefix()
	ns, dev := "wgpl-b"+p, "wb"+p+strconv.Itoa(n/1000)
	if err := lab.AddNetns(ns); err != nil {
		b.Fatal(err)
	}
	logDir, err := os.MkdirTemp("", "wgpulse-bench-")
	if err != nil {
		b.Fatal(err)
	}
	proc, err := lab.StartNode(ns, dev, 1420, logDir, false)
	if err != nil {
		_ = lab.DelNetns(ns)
		b.Fatal(err)
	}
	// Devices live for the whole benchmark binary; remove them at the end of
	// the top-level benchmark that created them.
	b.Cleanup(func() {
		proc.Stop()
		_ = lab.DelNetns(ns)
		os.RemoveAll(logDir)
		delete(benchDevices, n)
	})
	wg, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	priv, _ := wgtypes.GeneratePrivateKey()
	peers := make([]wgtypes.PeerConfig, n)
	ka := 25 * time.Second
	for i := range peers {
		k, _ := wgtypes.GeneratePrivateKey()
		peers[i] = wgtypes.PeerConfig{
			PublicKey:                   k.PublicKey(),
			Endpoint:                    &net.UDPAddr{IP: net.IPv4(198, 18, byte(i>>8), byte(i)), Port: 51820},
			AllowedIPs:                  []net.IPNet{{IP: net.IPv4(10, 128+byte(i>>16), byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}},
			PersistentKeepaliveInterval: &ka,
		}
		if i%2 == 0 { // half the peers also carry an IPv6 prefix
			peers[i].AllowedIPs = append(peers[i].AllowedIPs, net.IPNet{IP: net.ParseIP(fmt.Sprintf("fd00::%x", i)), Mask: net.CIDRMask(128, 128)})
		}
	}
	if err := wg.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &priv, Peers: peers}); err != nil {
		b.Fatal(err)
	}
	// The hub's own addresses in the peers' subnets, as a hub's wg-quick
	// Address = line gives it: their connected routes carry the peers'
	// /32s and /128s (without them every peer has an
	// allowed_ips_routed_elsewhere finding, which a real hub does not).
	for _, addr := range []string{"10.128.0.1/9", "fd00::1/64"} {
		if err := lab.IP("-n", ns, "addr", "add", addr, "dev", dev); err != nil {
			b.Fatal(err)
		}
	}
	h, err := lab.NetlinkIn(ns)
	if err != nil {
		b.Fatal(err)
	}
	d := &benchDevice{ns: ns, dev: dev, wg: wg, links: h}
	benchDevices[n] = d
	return d
}

var sizes = []int{1000, 10000}

// BenchmarkDeviceRead is the bare wgctrl Device() call: the floor for a poll.
func BenchmarkDeviceRead(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			d := setupBenchDevice(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.wg.Device(d.dev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPoll is a full poll: device read + netlink MTU + snapshot + change detection.
func BenchmarkPoll(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			d := setupBenchDevice(b, n)
			c, err := collector.New(collector.Config{PollInterval: time.Second, Devices: []string{d.dev}},
				slog.New(slog.DiscardHandler), collector.Options{Client: d.wg, Links: d.links})
			if err != nil {
				b.Fatal(err)
			}
			c.Poll()
			b.ReportAllocs()
			for b.Loop() {
				if s := c.Poll(); len(s.Devices) != 1 || len(s.Devices[0].Peers) != n {
					b.Fatalf("poll saw %d devices, errors %v", len(s.Devices), s.Errors)
				}
			}
		})
	}
}

// BenchmarkScrape is a full HTTP /metrics scrape of the agent's handler over
// loopback, as Prometheus does it (uncompressed text and gzip). It reports
// RSS and RSS growth over the measured scrapes.
func BenchmarkScrape(b *testing.B) {
	for _, n := range sizes {
		for _, gz := range []bool{false, true} {
			b.Run(fmt.Sprintf("peers=%d/gzip=%t", n, gz), func(b *testing.B) {
				d := setupBenchDevice(b, n)
				a, err := agent.New(agent.Options{
					Logger:    slog.New(slog.DiscardHandler),
					Collector: collector.Options{Client: d.wg, Links: d.links},
				})
				if err != nil {
					b.Fatal(err)
				}
				if err := a.Collector().ApplyConfig(collector.Config{PollInterval: time.Second, Devices: []string{d.dev}}); err != nil {
					b.Fatal(err)
				}
				a.Collector().Poll()
				h, err := a.Handler()
				if err != nil {
					b.Fatal(err)
				}
				srv := httptest.NewServer(h)
				defer srv.Close()
				client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
				scrapeOnce := func() int64 {
					req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
					if gz {
						req.Header.Set("Accept-Encoding", "gzip")
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					defer resp.Body.Close()
					nb, err := io.Copy(io.Discard, resp.Body)
					if err != nil || resp.StatusCode != 200 {
						b.Fatalf("scrape: %d %v", resp.StatusCode, err)
					}
					return nb
				}
				// Warm up, then measure RSS growth over the timed scrapes.
				for range 3 {
					scrapeOnce()
				}
				rss0 := rssMB(b)
				var bytes int64
				b.ReportAllocs()
				for b.Loop() {
					bytes = scrapeOnce()
				}
				rss1 := rssMB(b)
				b.ReportMetric(float64(bytes)/1e6, "body-MB")
				b.ReportMetric(rss1, "rss-MB")
				b.ReportMetric(rss1-rss0, "rss-growth-MB")
			})
		}
	}
}

func rssMB(b *testing.B) float64 {
	b.Helper()
	runtime.GC()
	return mustMB(b, 0)
}

// BenchmarkAgentProcess runs the real wgpulse binary inside the device's
// namespace and scrapes it b.N times with gzip, as Prometheus does. It reports
// the agent's RSS after its first poll (rss-start), after one scrape, and at
// the end: growth is end - start, drift is end - after-first-scrape (flat
// memory means drift near 0). Run with -benchtime=60x for 60 scrapes.
func BenchmarkAgentProcess(b *testing.B) {
	bin := labtest.BuildBinary(b, "./cmd/wgpulse")
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			d := setupBenchDevice(b, n)
			dir := b.TempDir()
			cfg := dir + "/wgpulse.yml"
			// The collector's exposition only: probing 10,000 unreachable peers
			// is the prober's cost, measured by BenchmarkAgentProber1000.
			if err := os.WriteFile(cfg, []byte("collector:\n  devices: ["+d.dev+"]\n  poll_interval: 5s\nprober:\n  enabled: false\n"), 0o600); err != nil {
				b.Fatal(err)
			}
			args := benchProfileArgs([]string{"--config.file=" + cfg, "--log.level=warn"})
			a := labtest.StartAgent(b, bin, d.ns, "127.0.0.1:9586", args...)
			pid := agentPid(b, a)
			scrape := func() {
				req, _ := http.NewRequest("GET", "http://"+a.Addr+"/metrics", nil)
				req.Header.Set("Accept-Encoding", "gzip")
				resp, err := a.Client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("scrape status %d", resp.StatusCode)
				}
			}
			for {
				if code, _, _ := a.Get("/-/ready"); code == 200 {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			rss0 := procRSSMB(b, pid)
			scrape()
			rss1 := procRSSMB(b, pid)
			for b.Loop() {
				scrape()
			}
			rss2 := procRSSMB(b, pid)
			saveHeapProfile(b, a, fmt.Sprintf("agent-peers-%d", n))
			_, body, err := a.Get("/metrics")
			if err != nil {
				b.Fatal(err)
			}
			if dir := os.Getenv("WGPULSE_BENCH_PROFILES"); dir != "" {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("agent-peers-%d.prom", n)), []byte(body), 0o644)
			}
			series := 0
			for _, line := range strings.Split(body, "\n") {
				if line != "" && line[0] != '#' {
					series++
				}
			}
			b.ReportMetric(float64(series), "series")
			b.ReportMetric(rss0, "rss-start-MB")
			b.ReportMetric(rss2, "rss-end-MB")
			b.ReportMetric(rss2-rss0, "growth-MB")
			b.ReportMetric(rss2-rss1, "drift-MB")
		})
	}
}

// saveHeapProfile writes the agent's heap profile (after a GC) to
// $WGPULSE_BENCH_PROFILES/<name>.heap when that is set: read it with
// go tool pprof -sample_index=inuse_space.
func saveHeapProfile(b *testing.B, a *lab.Agent, name string) {
	dir := os.Getenv("WGPULSE_BENCH_PROFILES")
	if dir == "" {
		return
	}
	code, body, err := a.Get("/debug/pprof/heap?gc=1")
	if code2, allocs, err2 := a.Get("/debug/pprof/allocs"); err2 == nil && code2 == 200 {
		_ = os.WriteFile(filepath.Join(dir, name+".allocs"), []byte(allocs), 0o644)
	}
	if err != nil || code != 200 {
		b.Fatalf("heap profile: %d %v", code, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".heap"), []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
}

// agentPid finds the agent process: `ip netns exec` execs it, so the pid of
// the command is the agent's.
func agentPid(b *testing.B, a *lab.Agent) int {
	b.Helper()
	return a.Pid()
}

func procRSSMB(b *testing.B, pid int) float64 { return mustMB(b, pid) }

func mustMB(b *testing.B, pid int) float64 {
	b.Helper()
	mb, err := lab.ProcRSS(pid)
	if err != nil {
		b.Fatal(err)
	}
	return mb
}

// BenchmarkAgentProber1000 runs the real agent in a fresh namespace with
// 1,000 configured targets on its loopback (1 probe/s each) and reports the
// agent process's CPU (user+system seconds per wall second) and RSS over 20 s
// of steady state, and what it reported for the targets. Each iteration is a
// whole 25 s measurement: run it with -benchtime=1x (make bench does).
func BenchmarkAgentProber1000(b *testing.B) {
	labtest.Require(b)
	bin := installedCopy(b, labtest.BuildBinary(b, "./cmd/wgpulse"), "wgpulse") // RSS as make install's copy has it
	for b.Loop() {
		ns := "wgpl-p" + labtest.UniquePrefix()
		if err := lab.AddNetns(ns); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = lab.DelNetns(ns) }) // also when a step fails
		file := filepath.Join(b.TempDir(), "wgpulse.yml")
		if err := os.WriteFile(file, []byte(loopbackProberConfig(loopbackTargets(1000))), 0o600); err != nil {
			b.Fatal(err)
		}
		a := startBenchAgent(b, bin, ns, "--config.file="+file, "--log.level=warn")
		time.Sleep(5 * time.Second) // all targets started
		cpu0, t0 := procCPU(b, a.Pid()), time.Now()
		time.Sleep(20 * time.Second)
		cpu := procCPU(b, a.Pid()) - cpu0
		wall := time.Since(t0)
		rss := procRSSMB(b, a.Pid())
		_, body, err := a.Get("/metrics")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
		b.ReportMetric(rss, "rss-MB")
		parser := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var probes, failures float64
		for _, m := range mfs["wgpulse_probes_total"].GetMetric() {
			probes += m.GetCounter().GetValue()
		}
		for _, m := range mfs["wgpulse_probe_failures_total"].GetMetric() {
			failures += m.GetCounter().GetValue()
		}
		b.ReportMetric(float64(len(mfs["wgpulse_probe_up"].GetMetric())), "targets-reported")
		b.ReportMetric(probes, "probes")
		b.ReportMetric(failures, "failed")
		a.Stop() // before the next iteration starts another agent
		_ = lab.DelNetns(ns)
	}
}

func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, err := lab.ProcCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkAgentProber10k runs the real agent with 10,000 probed targets on
// its loopback (default config: max_rate 1000/s stretches each target's
// interval to 10 s), then scrapes it 120 times as Prometheus does. It reports
// the series per scrape and per probed target, the scrape's size and time,
// the agent's RSS after its 1st, 15th, 60th and 120th scrape (flat memory:
// the GC's heap target is reached by the 15th and RSS stays there) and its
// heap at the last scrape. One whole measurement per iteration: run it
// with -benchtime=1x (make bench does).
func BenchmarkAgentProber10k(b *testing.B) {
	labtest.Require(b)
	bin := installedCopy(b, labtest.BuildBinary(b, "./cmd/wgpulse"), "wgpulse") // RSS as make install's copy has it
	const n = 10000
	for _, native := range []bool{false, true} {
		b.Run(fmt.Sprintf("native_histograms=%v", native), func(b *testing.B) { agentProber10k(b, bin, n, native, true) })
	}
	// A hub whose peers all firewall ICMP: every probe is lost.
	b.Run("answering=false", func(b *testing.B) { agentProber10k(b, bin, n, false, false) })
}

func agentProber10k(b *testing.B, bin string, n int, native, answering bool) {
	for b.Loop() {
		ns := "wgpl-t" + labtest.UniquePrefix()
		if err := lab.AddNetns(ns); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = lab.DelNetns(ns) }) // also when a step fails
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "prober:\n  native_histograms: %v\n  pmtu: {enabled: false}\n  targets:\n", native)
		if !answering {
			// Targets behind a veth without ARP whose other end does not
			// forward: what is sent there vanishes.
			for _, args := range [][]string{{"link", "add", "silent0", "type", "veth", "peer", "name", "silent1"}, {"link", "set", "silent0", "arp", "off", "up"},
				{"link", "set", "silent1", "up"}, {"addr", "add", "10.99.0.1/16", "dev", "silent0"}} {
				if err := lab.IP(append([]string{"-n", ns}, args...)...); err != nil {
					b.Fatal(err)
				}
			}
		}
		for i := range n {
			if answering {
				fmt.Fprintf(&cfg, "    - {name: site-%05d, address: 127.%d.%d.%d, device: lo}\n", i, 1+i/62500, i/250%250, i%250+1)
			} else {
				fmt.Fprintf(&cfg, "    - {name: site-%05d, address: 10.99.%d.%d, device: silent0}\n", i, 1+i/250, i%250+1)
			}
		}
		file := filepath.Join(b.TempDir(), "wgpulse.yml")
		if err := os.WriteFile(file, []byte(cfg.String()), 0o600); err != nil {
			b.Fatal(err)
		}
		a := startBenchAgent(b, bin, ns, "--config.file="+file, "--log.level=warn")
		time.Sleep(15 * time.Second) // every target probed at least once
		// The probing's CPU, before any scrape: 10 s of steady state.
		cpu0, t0 := procCPU(b, a.Pid()), time.Now()
		time.Sleep(10 * time.Second)
		b.ReportMetric((procCPU(b, a.Pid())-cpu0).Seconds()/time.Since(t0).Seconds(), "probing-cores")
		scrape := func() (body string, took time.Duration) {
			t0 := time.Now()
			code, body, err := a.Get("/metrics")
			if err != nil || code != 200 {
				b.Fatalf("scrape: %d %v", code, err)
			}
			return body, time.Since(t0)
		}
		body, _ := scrape()
		rss1 := procRSSMB(b, a.Pid())
		var series, perTarget int
		for _, line := range strings.Split(body, "\n") {
			if line == "" || line[0] == '#' {
				continue
			}
			series++
			if strings.Contains(line, `target="`) {
				perTarget++
			}
		}
		var total time.Duration
		rss := map[int]float64{1: rss1}
		var last string
		for i := 2; i <= 120; i++ {
			body, took := scrape()
			total += took
			if i == 15 || i == 60 || i == 120 {
				rss[i] = procRSSMB(b, a.Pid())
			}
			last = body
		}
		// The agent's own view of its heap at the last scrape.
		for _, line := range strings.Split(last, "\n") {
			for metric, unit := range map[string]string{"go_memstats_heap_inuse_bytes ": "heap-inuse-MB", "go_memstats_next_gc_bytes ": "next-gc-MB"} {
				if v, ok := strings.CutPrefix(line, metric); ok {
					f, _ := strconv.ParseFloat(v, 64)
					b.ReportMetric(f/1e6, unit)
				}
			}
		}
		b.ReportMetric(float64(series), "series")
		b.ReportMetric(float64(perTarget)/float64(n), "series/target")
		b.ReportMetric(float64(len(body))/1e6, "scrape-MB")
		b.ReportMetric(float64(total.Milliseconds())/119, "scrape-ms")
		for _, i := range []int{1, 15, 60, 120} {
			b.ReportMetric(rss[i], fmt.Sprintf("rss-%d-MB", i))
		}
		a.Stop()
		_ = lab.DelNetns(ns)
	}
}
