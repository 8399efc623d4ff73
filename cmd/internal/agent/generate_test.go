package agent_test

//lint:file-ignore SA1019 the v1 dashboard schema is deliberate: it is the JSON Grafana imports, and the SDK version the project pins (v0.0.22) documents it

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/alerts"
	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/dashboards"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// root is the module root, where the generated files are committed.
const root = "../../.."

func TestGeneratedFilesAreFresh(t *testing.T) {
	files, err := agent.Generated(agent.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 9 {
		t.Fatalf("generated %d files, want 4 rule files, a PrometheusRule and 4 dashboards", len(files))
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is stale or missing (%v): run make generate and commit the result", name, err)
		}
	}
}

func promtool(t *testing.T) string { return labtest.Tool(t, "promtool", "prometheus") }

func TestRulesPassPromtool(t *testing.T) {
	pt := promtool(t)
	rules, _ := filepath.Glob(filepath.Join(root, "alerts", "*.yml"))
	if out, err := exec.Command(pt, append([]string{"check", "rules"}, rules...)...).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	tests, _ := filepath.Glob(filepath.Join(root, "alerts", "tests", "*.yml"))
	cmd := exec.Command(pt, append([]string{"test", "rules"}, tests...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	// The optional rules: rendered as `wgpulse generate` does with them
	// on, next to their tests.
	dir := t.TempDir()
	if _, err := agent.Generate(everyRuleConfig(), dir); err != nil {
		t.Fatal(err)
	}
	optional, _ := filepath.Glob(filepath.Join(root, "alerts", "tests", "optional", "*.yml"))
	for _, f := range optional {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "alerts", filepath.Base(f))
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(pt, "test", "rules", dst).CombinedOutput(); err != nil {
			t.Fatalf("promtool test rules %s: %v\n%s", f, err, out)
		}
	}
	tests = append(tests, optional...)

	// Every alert has a firing and a not-firing case.
	type caseFile struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range tests {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cf caseFile
		if err := yaml.Unmarshal(b, &cf); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cf.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					firing[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
	}
	for _, a := range allAlerts(t) {
		if !firing[a.Alert] || !quiet[a.Alert] {
			t.Errorf("alert %s: firing case %v, not-firing case %v in alerts/tests; want both", a.Alert, firing[a.Alert], quiet[a.Alert])
		}
	}
}

func allRules(t *testing.T, cfg agent.Config) []alerts.Rule {
	t.Helper()
	var out []alerts.Rule
	for _, rf := range []alerts.RuleFile{alerts.TunnelRules(cfg.Alerts), alerts.SLORules(cfg.Alerts, cfg.SLO), alerts.RemediationRules(cfg.Alerts), alerts.FleetRules(cfg.Alerts)} {
		for _, g := range rf.Groups {
			out = append(out, g.Rules...)
		}
	}
	return out
}

// everyRuleConfig is the default config with the optional rules turned on
// (alerts.key_rotation), so the conventions hold for every rule there is.
func everyRuleConfig() agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Alerts.KeyRotation = alerts.Duration(90 * 24 * time.Hour)
	return cfg
}

func allAlerts(t *testing.T) []alerts.Rule {
	var out []alerts.Rule
	seen := map[string]bool{}
	for _, r := range allRules(t, everyRuleConfig()) {
		if r.Alert != "" && !seen[r.Alert] {
			seen[r.Alert] = true
			out = append(out, r)
		}
	}
	return out
}

// tunnelAlert matches expressions over per-peer or per-tunnel metrics.
var tunnelAlert = regexp.MustCompile(`wireguard_peer_|wgpulse_probes?_|wgpulse_path_mtu`)

func TestAlertConventions(t *testing.T) {
	runbook, err := os.ReadFile(filepath.Join(root, "alerts", "RUNBOOK.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range allRules(t, everyRuleConfig()) {
		if r.Alert == "" {
			continue
		}
		if !strings.HasPrefix(r.Alert, "WireGuard") {
			t.Errorf("%s: alert names start with WireGuard", r.Alert)
		}
		if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
			t.Errorf("%s: severity %q", r.Alert, r.Labels["severity"])
		}
		if s := r.Annotations["summary"]; s == "" || strings.Contains(s, "{{") {
			t.Errorf("%s: summary must be static and present: %q", r.Alert, s)
		}
		d := r.Annotations["description"]
		if !strings.Contains(d, "{{") {
			t.Errorf("%s: description is not templated: %q", r.Alert, d)
		}
		// Tunnel alerts name the node, the device and the peer (by name, or
		// by key where the alert is about a device's own key).
		if tunnelAlert.MatchString(r.Expr) {
			for _, l := range []string{"$labels.instance", "$labels.device"} {
				if !strings.Contains(d, l) {
					t.Errorf("%s: description does not name %s: %q", r.Alert, l, d)
				}
			}
			if !strings.Contains(d, "$labels.name") && !strings.Contains(d, "$labels.public_key") {
				t.Errorf("%s: description names neither the peer nor its key: %q", r.Alert, d)
			}
		}
		heading := "## " + r.Alert + "\n"
		if !strings.HasSuffix(r.Annotations["runbook_url"], alerts.Anchor(r.Alert)) || !bytes.Contains(runbook, []byte(heading)) {
			t.Errorf("%s: runbook_url %q has no section %q in alerts/RUNBOOK.md", r.Alert, r.Annotations["runbook_url"], strings.TrimSpace(heading))
		}
	}
}

func TestSLOConfigShapesRules(t *testing.T) {
	cfg := agent.DefaultConfig()
	cfg.SLO.Period = alerts.Duration(7 * 24 * time.Hour)
	cfg.SLO.Ticket.Enabled = false
	cfg.SLO.Page.Severity = "warning"
	cfg.SLO.MinProbes = 42
	var pages, tickets int
	for _, r := range allRules(t, cfg) {
		if r.Alert != "WireGuardSLOErrorBudgetBurn" {
			continue
		}
		switch r.Labels["tier"] {
		case "page":
			pages++
			// 2% of a 7d budget in 1h: factor 0.02*168 = 3.36, times the 0.1% budget.
			if r.Labels["slo"] == "tunnel-availability" && !strings.Contains(r.Expr, "> 0.00336") {
				t.Errorf("7d page threshold not derived from the period:\n%s", r.Expr)
			}
			if r.Labels["severity"] != "warning" || !strings.Contains(r.Expr, ">= 42") {
				t.Errorf("page tier ignores severity or min_probes: %v\n%s", r.Labels, r.Expr)
			}
		case "ticket":
			tickets++
		}
	}
	if pages != 2 || tickets != 0 {
		t.Errorf("%d page and %d ticket alerts with the ticket tier disabled, want 2 and 0", pages, tickets)
	}
	if err := (alerts.SLOConfig{Period: alerts.Duration(time.Hour)}).Validate(); err == nil || !strings.Contains(err.Error(), "period: must be 7d to 90d") {
		t.Errorf("a 1h period is accepted: %v", err)
	}
}

// metricSet is the agent's metric families by name and type.
type metricSet map[string]dto.MetricType

// has says whether the agent exposes a series of this name: a family, or
// the _bucket, _sum or _count series of a histogram (of nothing else).
func (m metricSet) has(name string) bool {
	if _, ok := m[name]; ok {
		return true
	}
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, s); ok && m[base] == dto.MetricType_HISTOGRAM {
			return true
		}
	}
	return false
}

// agentMetrics builds a real agent on fake transports with one device, one
// peer and its probe target, and returns every metric family it exposes,
// with its type, or only describes (untyped then).
func agentMetrics(t *testing.T) metricSet {
	t.Helper()
	key, _ := wgtypes.GeneratePrivateKey()
	dev := &wgtypes.Device{Name: "wg0", Type: wgtypes.LinuxKernel, PublicKey: key.PublicKey(), ListenPort: 51820, Peers: []wgtypes.Peer{{
		PublicKey: key.PublicKey(), Endpoint: &net.UDPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 51820},
		LastHandshakeTime: time.Now(), AllowedIPs: []net.IPNet{{IP: net.IPv4(10, 0, 0, 1), Mask: net.CIDRMask(32, 32)}},
	}}}
	fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Drop: true} })
	a, err := agent.New(agent.Options{
		Logger: slog.New(slog.DiscardHandler),
		Collector: collector.Options{
			Client: clientFunc(func(string) (*wgtypes.Device, error) { return dev, nil }),
			Links: linksFunc(func() ([]netlink.Link, error) {
				return []netlink.Link{&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0", MTU: 1420}}}, nil
			}),
			ListUAPI: func() ([]string, error) { return nil, nil },
		},
		Prober: prober.Options{Open: fn.Open},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	snap := a.Collector().Poll()
	a.Prober().SetTargets(prober.OwnTargets, prober.Targets(snap, a.Prober().Config()))
	known := metricSet{}
	mfs, err := a.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		known[mf.GetName()] = mf.GetType()
	}
	// Labelled series exist only once they have a value (error counters of
	// failures never seen, detail metrics): take their names from the
	// descriptors too.
	ch := make(chan *prometheus.Desc, 64)
	go func() { a.Describe(ch); close(ch) }()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := fq.FindStringSubmatch(d.String()); m != nil {
			if _, ok := known[m[1]]; !ok {
				known[m[1]] = dto.MetricType_UNTYPED
			}
		}
	}
	known["up"] = dto.MetricType_GAUGE // Prometheus's own, per scrape target
	return known
}

type clientFunc func(string) (*wgtypes.Device, error)

func (f clientFunc) Device(n string) (*wgtypes.Device, error) { return f(n) }

type linksFunc func() ([]netlink.Link, error)

func (f linksFunc) LinkList() ([]netlink.Link, error) { return f() }

// expression is one PromQL expression and where it came from.
type expression struct{ where, expr string }

var grafanaFuncs = regexp.MustCompile(`^(?:label_values\((.*),\s*\w+\)|label_values\((\w+)\)|query_result\((.*)\))$`)

// dashboardExprs walks generated dashboard JSON for every query, target and
// variable, and returns the panels for linting.
func dashboardExprs(t *testing.T) ([]expression, []map[string]any, map[string][]string) {
	t.Helper()
	var exprs []expression
	var panels []map[string]any
	vars := map[string][]string{}
	files, _ := filepath.Glob(filepath.Join(root, "dashboards", "*.json"))
	if len(files) != 4 {
		t.Fatalf("%d dashboards, want 4", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels     []map[string]any `json:"panels"`
			Templating struct {
				List []struct {
					Name  string `json:"name"`
					Query any    `json:"query"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(f)
		for _, v := range d.Templating.List {
			vars[base] = append(vars[base], v.Name)
			q, ok := v.Query.(string)
			if !ok || v.Name == "datasource" {
				continue
			}
			m := grafanaFuncs.FindStringSubmatch(q)
			if m == nil {
				t.Errorf("%s: variable %s: query %q is not label_values() or query_result()", base, v.Name, q)
				continue
			}
			exprs = append(exprs, expression{base + " variable " + v.Name, m[1] + m[2] + m[3]})
		}
		for _, p := range d.Panels {
			if p["type"] == "row" {
				continue
			}
			panels = append(panels, p)
			targets, _ := p["targets"].([]any)
			for _, tg := range targets {
				e, _ := tg.(map[string]any)["expr"].(string)
				exprs = append(exprs, expression{fmt.Sprintf("%s panel %q", base, p["title"]), e})
			}
		}
	}
	return exprs, panels, vars
}

var counterSuffix = regexp.MustCompile(`(_total|_bucket)$`)

// selectorProblems parses expr and returns what is wrong with its metric
// selectors: a name the agent does not expose, a counter used without
// rate()/increase()/irate(); and how many selectors it checked.
func selectorProblems(known metricSet, expr string) (problems []string, selectors int, err error) {
	ast, err := parser.NewParser(parser.Options{}).ParseExpr(strings.ReplaceAll(expr, "$__rate_interval", "5m"))
	if err != nil {
		return nil, 0, err
	}
	parser.Inspect(ast, func(n parser.Node, path []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		selectors++
		if !known.has(vs.Name) {
			problems = append(problems, fmt.Sprintf("metric %q is not exposed by the agent", vs.Name))
		}
		if counterSuffix.MatchString(vs.Name) {
			ok := len(path) >= 2
			if ok {
				_, isMatrix := path[len(path)-1].(*parser.MatrixSelector)
				call, isCall := path[len(path)-2].(*parser.Call)
				ok = isMatrix && isCall && slices.Contains([]string{"rate", "increase", "irate"}, call.Func.Name)
			}
			if !ok {
				problems = append(problems, fmt.Sprintf("counter %s used without rate()/increase()", vs.Name))
			}
		}
		return nil
	})
	return problems, selectors, nil
}

func TestExpressionsParseAndUseRealMetrics(t *testing.T) {
	known := agentMetrics(t)
	var exprs []expression
	for _, r := range allRules(t, everyRuleConfig()) {
		if r.Record != "" {
			known[r.Record] = dto.MetricType_GAUGE
		}
		exprs = append(exprs, expression{"rule " + r.Alert + r.Record, r.Expr})
	}
	dexprs, _, _ := dashboardExprs(t)
	exprs = append(exprs, dexprs...)
	checked := 0
	for _, e := range exprs {
		problems, n, err := selectorProblems(known, e.expr)
		if err != nil {
			t.Errorf("%s: does not parse: %v\n%s", e.where, err, e.expr)
		}
		checked += n
		for _, p := range problems {
			t.Errorf("%s: %s", e.where, p)
		}
	}
	if checked < 50 {
		t.Fatalf("only %d selectors checked: the walk is broken", checked)
	}
}

// The check above can fail: made-up names, histogram suffixes on what is
// not a histogram and bare counters are each caught; real histogram series
// pass.
func TestSelectorCheckCanFail(t *testing.T) {
	known := agentMetrics(t)
	for expr, want := range map[string]string{
		`wireguard_peer_latest_handshake_seconds`:                    `"wireguard_peer_latest_handshake_seconds" is not exposed`,
		`wireguard_device_info_count`:                                `"wireguard_device_info_count" is not exposed`,
		`rate(wireguard_peer_receive_bytes_total_bucket[5m])`:        `"wireguard_peer_receive_bytes_total_bucket" is not exposed`,
		`wireguard_peer_receive_bytes_total`:                         "counter wireguard_peer_receive_bytes_total used without rate()",
		`rate(wgpulse_probe_rtt_seconds_count[5m])`:                  "",
		`rate(wgpulse_probe_rtt_seconds_bucket[5m])`:                 "",
		`rate(wgpulse_collector_poll_duration_seconds_sum[5m])`:      "",
		`increase(wgpulse_collector_errors_total[$__rate_interval])`: "",
	} {
		problems, n, err := selectorProblems(known, expr)
		if err != nil || n != 1 {
			t.Fatalf("%s: %d selectors, %v", expr, n, err)
		}
		if got := strings.Join(problems, "; "); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%s: problems %q, want %q", expr, got, want)
		}
	}
}

// The fleet dashboard queries the fleet layer's recording rules and up only:
// drawing a fleet from raw buckets and counters is what the layer avoids.
func TestFleetDashboardUsesRecordingRulesOnly(t *testing.T) {
	exprs, _, _ := dashboardExprs(t)
	checked := 0
	for _, e := range exprs {
		if !strings.HasPrefix(e.where, "wireguard-fleet.json panel") {
			continue
		}
		ast, err := parser.NewParser(parser.Options{}).ParseExpr(e.expr)
		if err != nil {
			t.Fatalf("%s: %v", e.where, err)
		}
		parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				checked++
				if !strings.Contains(vs.Name, ":") && vs.Name != "up" {
					t.Errorf("%s: queries %s, not a fleet recording rule", e.where, vs.Name)
				}
			}
			return nil
		})
	}
	if checked < 15 {
		t.Fatalf("only %d fleet selectors checked", checked)
	}
}

func TestDashboardsLint(t *testing.T) {
	exprs, panels, vars := dashboardExprs(t)
	for file, vs := range vars {
		for _, want := range []string{"datasource", "job", "instance", "device", "peer"} {
			if !slices.Contains(vs, want) {
				t.Errorf("%s: no %q variable (have %v)", file, want, vs)
			}
		}
	}
	for _, p := range panels {
		unit, _ := p["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["unit"].(string)
		if unit == "" {
			t.Errorf("panel %q has no unit", p["title"])
		}
		if d, _ := p["description"].(string); d == "" {
			t.Errorf("panel %q has no description", p["title"])
		}
	}
	rateRange := regexp.MustCompile(`\brate\([^\[]*\[([^\]]+)\]`)
	for _, e := range exprs {
		for _, m := range rateRange.FindAllStringSubmatch(e.expr, -1) {
			if m[1] != "$__rate_interval" {
				t.Errorf("%s: rate() over [%s], want [$__rate_interval]", e.where, m[1])
			}
		}
	}
}

func TestDashboardsRoundTripThroughTheSDK(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	built, err := dashboards.All(alerts.DefaultSLOConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range built {
		raw, err := os.ReadFile(filepath.Join(root, "dashboards", n.File))
		if err != nil {
			t.Fatal(err)
		}
		// Strict decoding validates required fields (it caught a null table
		// footer reducer); it returns an empty cog.BuildErrors as a non-nil
		// error on success, and does not decode panels. The plugin-aware
		// decoder below does, for the equality and re-encoding checks.
		var strict dashboard.Dashboard
		if err := strict.UnmarshalJSONStrict(raw); err != nil {
			if be, ok := err.(cog.BuildErrors); !ok || len(be) > 0 {
				t.Fatalf("%s: SDK rejects it: %v", n.File, err)
			}
		}
		var d dashboard.Dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: SDK cannot decode it: %v", n.File, err)
		}
		if len(d.Panels) == 0 || (d.Panels[0].Panel == nil && d.Panels[0].RowPanel == nil) {
			t.Fatalf("%s: decoded without panels", n.File)
		}
		// (Equals is not used: the table builder stores targets by value and
		// the decoder by pointer, which Equals reports as a difference.)
		if len(d.Panels) != len(n.Dashboard.Panels) || *d.Title != *n.Dashboard.Title {
			t.Errorf("%s: decodes to %d panels titled %q; the SDK built %d titled %q", n.File, len(d.Panels), *d.Title, len(n.Dashboard.Panels), *n.Dashboard.Title)
		}
		again, err := dashboards.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, raw) {
			t.Errorf("%s: does not re-encode to the same JSON", n.File)
		}
		if d.Description == nil || !strings.Contains(*d.Description, "DO NOT EDIT") {
			t.Errorf("%s: no generated-file marker", n.File)
		}
	}
}

// The README and the runbook describe only what exists: every metric name
// they mention is exposed by the agent (or recorded by a rule), every
// metric the agent exposes is in the README's table, and every runbook
// section is an alert the rules define (and, in TestAlertConventions, every
// alert has its section).
func TestDocsDescribeWhatExists(t *testing.T) {
	known := agentMetrics(t)
	alertNames := map[string]bool{}
	for _, r := range allRules(t, everyRuleConfig()) {
		alertNames[r.Alert] = r.Alert != ""
	}
	// A name in backticks, whole (not a recording rule's wgpulse_tunnel:…
	// nor a wgpulse_probe_* pattern).
	name := regexp.MustCompile("`((?:wireguard|wgpulse)_[a-z0-9_]+)[`{]")
	for _, doc := range []string{"README.md", "alerts/RUNBOOK.md"} {
		b, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		mentioned := 0
		for _, m := range name.FindAllStringSubmatch(string(b), -1) {
			mentioned++
			if !known.has(m[1]) {
				t.Errorf("%s mentions %s, which the agent does not expose", doc, m[1])
			}
		}
		if mentioned < 5 {
			t.Errorf("%s: only %d metric names found: the scan is broken", doc, mentioned)
		}
		if doc == "README.md" {
			// The first cell of each table row names one or more metrics.
			inTable := map[string]bool{}
			for _, row := range regexp.MustCompile("(?m)^\\| (`[^|]+)\\|").FindAllStringSubmatch(string(b), -1) {
				for _, m := range name.FindAllStringSubmatch(row[1], -1) {
					inTable[m[1]] = true
				}
			}
			for n := range known {
				if n != "up" && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") && !inTable[n] {
					t.Errorf("the agent exposes %s; the README's metrics table does not list it", n)
				}
			}
		} else {
			for _, m := range regexp.MustCompile(`(?m)^## (\S+)$`).FindAllStringSubmatch(string(b), -1) {
				if !alertNames[m[1]] {
					t.Errorf("alerts/RUNBOOK.md has a section for %s, which no rule defines", m[1])
				}
			}
		}
	}
}
