package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/alerts"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// BenchmarkFleetPrometheus simulates a fleet with the real programs: 20
// agents, each a node with a userspace WireGuard device of 500 peers and 500
// probed tunnels (10,000 tunnels in all: a fleet of 1,000 nodes x 10 tunnels
// has as many), scraped every 5 s by Debian's Prometheus with the committed
// rules. After 4 minutes it reports Prometheus's head series (scraped and
// recorded), samples appended per second, its RSS, the evaluation time of
// each rule group, and the fleet dashboard's load time (every panel query,
// in order, over the whole run) as shipped (recording rules) and with every
// recording rule replaced by its raw expression. One whole measurement per
// iteration: run it with -benchtime=1x (make bench does).
func BenchmarkFleetPrometheus(b *testing.B) {
	labtest.Require(b)
	promBin := labtest.Tool(b, "prometheus", "prometheus")
	bin := labtest.BuildBinary(b, "./cmd/wgpulse")
	const nodes, tunnels = 20, 500
	for b.Loop() {
		ns := "wgpl-f" + labtest.UniquePrefix()
		if err := lab.AddNetns(ns); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = lab.DelNetns(ns) })
		logDir := b.TempDir()
		var scrape strings.Builder
		for k := range nodes {
			dev := fmt.Sprintf("wf%s%02d", labtest.UniquePrefix()[:3], k)
			proc, err := lab.StartNode(ns, dev, 1420, logDir, false)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(proc.Stop)
			cfg := fleetNode(b, dev, k, tunnels)
			addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(9600+k))
			labtest.StartAgent(b, bin, ns, addr, "--config.file="+cfg, "--log.level=warn")
			fmt.Fprintf(&scrape, "      - {targets: [%q], labels: {instance: node-%02d}}\n", addr, k)
		}
		rules, _ := filepath.Abs("../../alerts")
		prom := runPrometheus(b, ns, promBin, "127.0.0.1:9090", fmt.Sprintf(`global: {scrape_interval: 5s, scrape_timeout: 5s, evaluation_interval: 15s}
rule_files: [%q]
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:9090"]}]
  - job_name: wgpulse
    static_configs:
%s`, filepath.Join(rules, "*.yml"), scrape.String()))
		start := time.Now()
		time.Sleep(4 * time.Minute)

		val := func(q string) float64 {
			v, err := instantQuery(prom, q)
			if err != nil || len(v) == 0 {
				b.Fatalf("%s: %v (%d results)", q, err, len(v))
			}
			return float64(v[0].Value)
		}
		b.ReportMetric(val(`sum(up{job="wgpulse"})`), "agents-up")
		b.ReportMetric(val(`prometheus_tsdb_head_series`), "head-series")
		b.ReportMetric(val(`count({__name__=~".+:.+"})`), "recorded-series")
		b.ReportMetric(val(`sum(scrape_samples_scraped{job="wgpulse"})`)/nodes, "series/node")
		b.ReportMetric(val(`rate(prometheus_tsdb_head_samples_appended_total[1m])`), "samples/s")
		b.ReportMetric(val(`process_resident_memory_bytes{job="prometheus"}`)/1e6, "prom-rss-MB")

		groups, err := instantQuery(prom, `prometheus_rule_group_last_duration_seconds{job="prometheus"}`)
		if err != nil || len(groups) == 0 {
			b.Fatalf("rule group durations: %v", err)
		}
		for _, g := range groups {
			name := string(g.Metric["rule_group"])
			b.ReportMetric(float64(g.Value)*1000, "eval-ms-"+name[strings.LastIndex(name, ";")+1:])
		}

		shipped, raw := fleetDashboardQueries(b)
		rec := timeQueries(b, prom, shipped, start)
		rw := timeQueries(b, prom, raw, start)
		b.ReportMetric(float64(rec.Milliseconds()), "fleet-dashboard-ms")
		b.ReportMetric(float64(rw.Milliseconds()), "fleet-dashboard-raw-ms")
	}
}

// fleetNode writes the config of one simulated node: its WireGuard device
// with the given number of peers (named, without endpoints, so nothing
// handshakes in vain) and as many probed tunnels on the loopback, every 15 s.
func fleetNode(b *testing.B, dev string, k, tunnels int) string {
	b.Helper()
	c, err := wgctrl.New()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	priv, _ := wgtypes.GeneratePrivateKey()
	peers := make([]wgtypes.PeerConfig, tunnels)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "collector:\n  devices: [%s]\n  poll_interval: 5s\n  peer_names:\n", dev)
	var targets strings.Builder
	for i := range peers {
		key, _ := wgtypes.GeneratePrivateKey()
		peers[i] = wgtypes.PeerConfig{PublicKey: key.PublicKey(),
			AllowedIPs: []net.IPNet{{IP: net.IPv4(10, byte(k), byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}}}
		name := fmt.Sprintf("site-%02d-%03d", k, i)
		fmt.Fprintf(&cfg, "    %q: %s\n", key.PublicKey(), name)
		fmt.Fprintf(&targets, "    - {name: %s, address: 127.%d.%d.%d, device: lo}\n", name, 10+k, i/250, i%250+1)
	}
	if err := c.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &priv, Peers: peers}); err != nil {
		b.Fatal(err)
	}
	cfg.WriteString("prober:\n  auto_targets: false\n  interval: 15s\n  pmtu: {enabled: false}\n  targets:\n" + targets.String())
	file := filepath.Join(b.TempDir(), dev+".yml")
	if err := os.WriteFile(file, []byte(cfg.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// fleetDashboardQueries returns the fleet dashboard's queries with every
// variable at "All", as shipped and with each recording rule replaced by
// its expression (what the dashboard would cost without the fleet layer).
func fleetDashboardQueries(b *testing.B) (shipped, raw []dashQuery) {
	b.Helper()
	data, err := os.ReadFile("../../dashboards/wireguard-fleet.json")
	if err != nil {
		b.Fatal(err)
	}
	exprs := map[string]string{}
	for _, r := range alerts.FleetRules(alerts.DefaultConfig()).Groups[0].Rules {
		exprs[r.Record] = r.Expr
	}
	rec := regexp.MustCompile(`([a-z_]+:[a-z_0-9]+:[a-z_0-9]+)\{[^}]*\}`)
	for _, q := range dashboardQueries(b, data) {
		q.Expr = strings.NewReplacer(`"$job"`, `".*"`, `"$instance"`, `".*"`, `"$device"`, `".*"`).Replace(q.Expr)
		shipped = append(shipped, q)
		q.Expr = rec.ReplaceAllStringFunc(q.Expr, func(m string) string {
			return "(" + exprs[rec.FindStringSubmatch(m)[1]] + ")"
		})
		raw = append(raw, q)
	}
	return shipped, raw
}

type dashQuery struct {
	Expr    string
	Instant bool
}

func dashboardQueries(b *testing.B, data []byte) []dashQuery {
	var d struct {
		Panels []dashPanel `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		b.Fatal(err)
	}
	var qs []dashQuery
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			qs = append(qs, dashQuery{t.Expr, t.Instant})
		}
	}
	return qs
}

// timeQueries runs the queries one after the other, as a dashboard load
// over the run (step 15 s), three times, and returns the median total.
func timeQueries(b *testing.B, prom promv1.API, qs []dashQuery, since time.Time) time.Duration {
	b.Helper()
	var totals []time.Duration
	for range 3 {
		t0 := time.Now()
		for _, q := range qs {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			var v model.Value
			var err error
			if q.Instant {
				v, _, _, err = prom.Query(ctx, q.Expr, time.Now())
			} else {
				v, _, _, err = prom.QueryRange(ctx, q.Expr, promv1.Range{Start: since, End: time.Now(), Step: 15 * time.Second})
			}
			cancel()
			if err != nil {
				b.Fatalf("%s: %v", q.Expr, err)
			}
			_ = v // no path MTU and no handshakes in this simulation: those panels are empty here
		}
		totals = append(totals, time.Since(t0))
	}
	slices.Sort(totals)
	return totals[1]
}
