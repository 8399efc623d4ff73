package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// anchorRev is the collector's anchor: the project's previous release, the
// last commit before #19 (no exporter of WireGuard peers can be installed
// from a registry this machine reaches: mdlayher/wireguard_exporter is not
// on the Go module proxy here and Debian has none). WGPULSE_ANCHOR_REV
// picks another revision.
const anchorRev = "41d975e"

// benchAnchorRev is the revision the collector is set against:
// WGPULSE_ANCHOR_REV, or anchorRev.
func benchAnchorRev() string {
	if r := os.Getenv("WGPULSE_ANCHOR_REV"); r != "" {
		return r
	}
	return anchorRev
}

// envCount is the whole number in the environment variable name when it is
// at least least, else def.
func envCount(name string, def, least int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n >= least {
		return n
	}
	return def
}

// buildRev builds ./cmd/wgpulse as of a git revision (git archive into a
// temporary directory, so the work tree is untouched).
func buildRev(b *testing.B, rev string) string {
	b.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		b.Skipf("no git checkout to build the anchor %s from: %v", rev, err)
	}
	dir := b.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", strings.TrimSpace(string(root)), rev, dir))
	if out, err := archive.CombinedOutput(); err != nil {
		b.Fatalf("git archive %s: %v\n%s (set WGPULSE_ANCHOR_REV to a revision this clone has)", rev, err, out)
	}
	bin := filepath.Join(dir, "wgpulse-"+rev)
	build := exec.Command("go", "build", "-o", bin, "./cmd/wgpulse")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // built as wgpulse is (labtest.BuildBinary)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building the anchor %s: %v\n%s", rev, err, out)
	}
	return bin
}

// collectorRun is one agent process's figures at 10,000 peers.
type collectorRun struct {
	plainMs, gzipMs, rss60, rss120, rssMax, seriesPerPeer, cpuMsPerScrape float64
}

// BenchmarkCollectorAnchor puts the collector at 10,000 peers (prober off)
// side by side with its anchor, in one run: WGPULSE_ANCHOR_RUNS (5) rounds,
// each starting this tree's agent and the anchor's, in alternating order,
// on the same device, scraping each 120 times back to back with gzip (RSS
// after the 60th and 120th, and the highest after any of them: the 120
// take about one poll interval, and RSS moves with the poll's garbage)
// and 20 times plain. It prints min / median /
// max per binary and the ratio of the medians. One whole comparison per
// iteration: -benchtime=1x (make bench).
func BenchmarkCollectorAnchor(b *testing.B) {
	labtest.Require(b)
	rev, runs := benchAnchorRev(), envCount("WGPULSE_ANCHOR_RUNS", 5, 1)
	bins := map[string]string{"wgpulse": labtest.BuildBinary(b, "./cmd/wgpulse"), "anchor " + rev: buildRev(b, rev)}
	names := []string{"wgpulse", "anchor " + rev}
	const peers = 10000
	d := setupBenchDevice(b, peers)
	cfg := filepath.Join(b.TempDir(), "wgpulse.yml")
	if err := os.WriteFile(cfg, []byte("collector:\n  devices: ["+d.dev+"]\n  poll_interval: 5s\nprober:\n  enabled: false\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		got := map[string][]collectorRun{}
		for r := range runs {
			order := slices.Clone(names)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, name := range order {
				got[name] = append(got[name], measureCollector(b, bins[name], d.ns, cfg, peers))
			}
		}
		fmt.Printf("\ncollector at %d peers, prober off, %d interleaved runs (min / median / max):\n\n", peers, runs)
		fmt.Printf("| figure | %s | %s | ratio of medians |\n|---|---|---|---|\n", names[0], names[1])
		for _, f := range []struct {
			name string
			get  func(collectorRun) float64
			unit string
		}{
			{"`/metrics` plain", func(c collectorRun) float64 { return c.plainMs }, "ms"},
			{"`/metrics` gzip", func(c collectorRun) float64 { return c.gzipMs }, "ms"},
			{"RSS after 60 scrapes", func(c collectorRun) float64 { return c.rss60 }, "MB"},
			{"RSS after 120 scrapes", func(c collectorRun) float64 { return c.rss120 }, "MB"},
			{"RSS, highest after any of the 120", func(c collectorRun) float64 { return c.rssMax }, "MB"},
			{"agent CPU per gzip scrape, polls included", func(c collectorRun) float64 { return c.cpuMsPerScrape }, "ms"},
			{"series per peer", func(c collectorRun) float64 { return c.seriesPerPeer }, ""},
		} {
			var med [2]float64
			cells := make([]string, 2)
			for i, name := range names {
				vs := make([]float64, 0, runs)
				for _, c := range got[name] {
					vs = append(vs, f.get(c))
				}
				lo, m, hi := spread(vs)
				med[i] = m
				cells[i] = fmt.Sprintf("%.1f / %.1f / %.1f %s", lo, m, hi, f.unit)
			}
			fmt.Printf("| %s | %s | %s | %.2f |\n", f.name, cells[0], cells[1], med[0]/med[1])
			key := strings.NewReplacer("`", "", "/", "", " ", "-").Replace(f.name)
			b.ReportMetric(med[0], key+"-"+f.unit)
			b.ReportMetric(med[0]/med[1], key+"-ratio")
		}
	}
}

// spread returns the min, median and max.
func spread(vs []float64) (lo, med, hi float64) {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[0], s[len(s)/2], s[len(s)-1]
}

func measureCollector(b *testing.B, bin, ns, cfg string, peers int) collectorRun {
	b.Helper()
	a := startReadyAgent(b, bin, ns, "127.0.0.1:9586", cfg)
	defer a.Stop()
	var run collectorRun
	var gz, plain []float64
	cpu0 := procCPU(b, a.Pid())
	for i := 1; i <= 120; i++ {
		took, _ := scrapeMetrics(b, a, true, false)
		gz = append(gz, float64(took.Microseconds())/1000)
		rss := procRSSMB(b, a.Pid())
		run.rssMax = max(run.rssMax, rss)
		switch i {
		case 60:
			run.rss60 = rss
		case 120:
			run.rss120 = rss
		}
	}
	// The agent's CPU over the 120 scrapes, polls (every 5 s) included.
	run.cpuMsPerScrape = float64((procCPU(b, a.Pid()) - cpu0).Microseconds()) / 1000 / 120
	for range 20 {
		took, _ := scrapeMetrics(b, a, false, false)
		plain = append(plain, float64(took.Microseconds())/1000)
	}
	_, body := scrapeMetrics(b, a, false, true) // the series are counted on one more scrape, untimed
	_, run.gzipMs, _ = spread(gz)
	_, run.plainMs, _ = spread(plain)
	perPeer := 0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "wireguard_peer_") {
			perPeer++
		}
	}
	run.seriesPerPeer = float64(perPeer) / float64(peers)
	return run
}

// BenchmarkCollectorRSSOverTime is the collector at 10,000 peers (prober
// off) over WGPULSE_RSS_SCRAPES (120) gzip scrapes, one every 5 s, as
// Prometheus scrapes a node: 10 minutes, 120 polls. BenchmarkCollectorAnchor's
// 120 scrapes back to back take about one poll interval; this run shows
// whether the RSS stays flat over many polls, and how high it gets between
// them. It also passes the 2 minutes after which a peer with an endpoint
// that never handshook is a problem (neverGrace): none of these peers ever
// does. The anchor runs beside it, at once, on the same device, scraped
// right after it. Both are installed copies (as `make install`): how a
// binary was written decides how much of it the page cache maps.
// WGPULSE_RSS_PROBER=1 runs both with the prober at its defaults instead
// (every peer probed; none answers).
func BenchmarkCollectorRSSOverTime(b *testing.B) {
	labtest.Require(b)
	rev, scrapes := benchAnchorRev(), envCount("WGPULSE_RSS_SCRAPES", 120, 60)
	bins := []string{installedCopy(b, labtest.BuildBinary(b, "./cmd/wgpulse"), "wgpulse"), installedCopy(b, buildRev(b, rev), "wgpulse-"+rev)}
	const peers = 10000
	d := setupBenchDevice(b, peers)
	cfg := filepath.Join(b.TempDir(), "wgpulse.yml")
	yml, what := "collector:\n  devices: ["+d.dev+"]\n  poll_interval: 5s\nprober:\n  enabled: false\n", "prober off"
	if os.Getenv("WGPULSE_RSS_PROBER") == "1" {
		yml, what = "collector:\n  devices: ["+d.dev+"]\n  poll_interval: 5s\n", "prober on (its defaults; no peer answers)"
	}
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var agents [2]*lab.Agent
		for i, bin := range bins {
			agents[i] = startReadyAgent(b, bin, d.ns, fmt.Sprintf("127.0.0.1:%d", 9586+i), cfg)
			defer agents[i].Stop()
		}
		fmt.Printf("\ncollector at %d peers, %s, a gzip scrape every 5 s (MB: RSS = anonymous + file-backed; scrape time):\n\n", peers, what)
		fmt.Printf("| scrapes | time | wgpulse | anchor %s |\n|---|---|---|---|\n", rev)
		var at60, last [2]float64
		var early, late [2][]float64 // RSS after scrapes 2-24 (the first 2 minutes) and 25 on
		var worst [2]time.Duration
		start := time.Now()
		for s := 1; s <= scrapes; s++ {
			time.Sleep(time.Until(start.Add(time.Duration(s) * 5 * time.Second)))
			var cells [2]string
			for i, a := range agents {
				took, _ := scrapeMetrics(b, a, true, false)
				rss, anon, file := procStatus(b, a.Pid())
				switch { // not the first: it is the agent's first poll too
				case s >= 25:
					late[i] = append(late[i], rss)
				case s >= 2:
					early[i] = append(early[i], rss)
				}
				if s >= 2 {
					worst[i] = max(worst[i], took)
				}
				if s == 60 {
					at60[i] = rss
				}
				last[i] = rss
				cells[i] = fmt.Sprintf("%.1f = %.1f + %.1f; %s", rss, anon, file, took.Round(100*time.Microsecond))
			}
			if s == 1 || s%12 == 0 || s == scrapes {
				fmt.Printf("| %d | %s | %s | %s |\n", s, time.Since(start).Round(time.Second), cells[0], cells[1])
			}
		}
		var peak [2]float64
		for i, name := range []string{"wgpulse", "anchor " + rev} {
			e0, e1, e2 := spread(early[i])
			l0, l1, l2 := spread(late[i])
			peak[i] = max(e2, l2)
			fmt.Printf("%s RSS (min / median / max): %.1f / %.1f / %.1f MB after scrapes 2-24, %.1f / %.1f / %.1f MB after 25-%d\n", name, e0, e1, e2, l0, l1, l2, scrapes)
		}
		fmt.Printf("\nhighest RSS after scrape 2 to %d: wgpulse %.1f MB, anchor %.1f MB (%.2f); slowest scrape %s and %s\n",
			scrapes, peak[0], peak[1], peak[0]/peak[1], worst[0].Round(100*time.Microsecond), worst[1].Round(100*time.Microsecond))
		b.ReportMetric(at60[0], "RSS-60-scrapes-MB")
		b.ReportMetric(last[0], "RSS-last-scrape-MB")
		b.ReportMetric(peak[0], "RSS-peak-MB")
		b.ReportMetric(peak[0]/peak[1], "RSS-peak-ratio")
		b.ReportMetric(peak[1], "anchor-RSS-peak-MB")
	}
}

// startReadyAgent starts bin with the config file cfg and returns once its
// first poll is done (/-/ready).
func startReadyAgent(b *testing.B, bin, ns, addr, cfg string) *lab.Agent {
	b.Helper()
	return labtest.StartAgentWith(b, lab.AgentOptions{Bin: bin, NS: ns, Addr: addr, Ready: true, Args: []string{"--config.file=" + cfg, "--log.level=warn"}})
}

// scrapeMetrics scrapes a's /metrics, with gzip or without, and returns
// how long it took and, with keep, the body. A timed scrape reads the body
// into io.Discard: an io.ReadAll of 11 MB (growing its buffer, faulting in
// fresh pages) cost the client 20-60 ms here, the same for both binaries,
// which measured the client more than the agent.
func scrapeMetrics(b *testing.B, a *lab.Agent, gzip, keep bool) (time.Duration, string) {
	b.Helper()
	req, _ := http.NewRequest("GET", "http://"+a.Addr+"/metrics", nil)
	// Set either way: the client (which dials inside the namespace) would
	// ask for gzip and unpack it itself.
	req.Header.Set("Accept-Encoding", map[bool]string{true: "gzip", false: "identity"}[gzip])
	t0 := time.Now()
	resp, err := a.Client.Do(req)
	if err != nil {
		b.Fatalf("scrape: %v\n%s", err, a.Logs())
	}
	var body []byte
	if keep {
		body, err = io.ReadAll(resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	took := time.Since(t0)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("scrape: %d %v\n%s", resp.StatusCode, err, a.Logs())
	}
	return took, string(body)
}
