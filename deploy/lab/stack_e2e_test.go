package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// stackAlerts shortens the `for` durations of the generated rules so the
// chain runs in minutes. The 180 s after which WireGuard refuses a session
// is the protocol's and stays; the grace on top of it is 1 s here.
const stackAlerts = `alerts:
  handshake_grace: 1s
  handshake_for: 10s
  never_established_for: 20s
  loss_for: 30s
  probe_down_for: 30s
  prober_for: 30s
  agent_down_for: 30s
  config_problem_for: 20s
`

// The whole chain with the real programs: agents on the hub and every site
// of a lab, Debian's prometheus scraping them every 2 s with the rules that
// `wgpulse generate` renders, Debian's prometheus-alertmanager with the
// shipped config whose two receivers post to a webhook in this test.
//
//   - dc1's two tunnels cut: dc1 lost every tunnel, so WireGuardNodeTunnelsDown
//     pages once for it and none of its tunnel ends pages; the hub lost two of
//     eight, so WireGuardHandshakeMissing pages once for each of its ends with
//     instance, device, peer name and runbook_url; restored: each page's
//     resolved notification arrives.
//   - a peer that never handshook (added to a hub device) pages nobody; it
//     opens a ticket (WireGuardHandshakeNeverEstablished), which shows it
//     was seen.
//   - 50% loss on dc2-primary: the availability SLO's fast burn pages. The
//     burn windows are not shortened: on a Prometheus minutes old, rate()
//     over 1h uses the samples there are, so every window sees the burn.
//   - the hub's AllowedIPs for dc3-backup without dc3's tunnel address:
//     WireGuardAllowedIPsMissTunnelAddress (both ends joined on the key)
//     opens a ticket for that tunnel end only.
//   - meanwhile an MTU black hole on dc3-primary (MTU policy, dc3's agent)
//     and a 5 s NAT on dc4-primary (keepalive policy, the hub's agent) give
//     the remediation dashboard something to draw: every query of every
//     panel and variable of every generated dashboard returns data, and
//     every rule evaluates without error.
func TestAlertChainWithPrometheusAndAlertmanager(t *testing.T) {
	t.Parallel()
	promBin, amBin := labtest.Tool(t, "prometheus", "prometheus"), labtest.Tool(t, "prometheus-alertmanager", "prometheus-alertmanager")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2", "dc3", "dc4"}, Management: true})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	tun := func(name string) lab.Tunnel { return mustTunnel(t, l, name) }
	for path, fault := range map[string]string{"dc3-primary": "mtu=1300", "dc4-primary": "nat-timeout=5s"} {
		if _, err := l.Fault(path, fault); err != nil {
			t.Fatal(err)
		}
	}
	ghost := addGhostPeer(t, tun("dc2-backup").HubDevice)
	// The hub's AllowedIPs for dc3-backup lose dc3's tunnel address (the
	// LAN stays): the two ends disagree, which only Prometheus, seeing both,
	// can tell.
	d3b := tun("dc3-backup")
	dc3, _ := l.Site("dc3")
	if err := lab.IP("netns", "exec", l.HubNamespace, "wg", "set", d3b.HubDevice, "peer", d3b.PublicKey, "allowed-ips", dc3.LAN); err != nil {
		t.Fatal(err)
	}

	gen := generateStack(t, bin)

	hook := newWebhook(t)
	amAddr := startAlertmanager(t, amBin, hook.URL)

	// Agents: dc1 plain; dc2 with failover groups (auto) mirrored on the
	// hub; dc3 with the MTU policy; the hub with the keepalive policy on
	// dc4's devices, probing every 7 s (without PMTU probes) so its own
	// probes do not keep dc4's NAT mapping alive. dc4's agent only reads
	// its devices (no prober): its only traffic is wg(8)'s 25 s keepalive.
	state := t.TempDir()
	failover := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc2": "default"}, StateDir: state}
	hubCfg := failover
	hubCfg.ProberYAML = "interval: 7s\nwindow: 70s\npmtu: {enabled: false}"
	configs := map[string]string{
		"hub": l.AgentConfig("hub", hubCfg) + fmt.Sprintf("  keepalive:\n    enabled: true\n    devices: [%s, %s]\n    min: 2s\n    symptoms: 2\n",
			tun("dc4-primary").HubDevice, tun("dc4-backup").HubDevice),
		"dc1": l.AgentConfig("dc1", lab.Remediation{}),
		"dc2": l.AgentConfig("dc2", failover),
		"dc3": l.AgentConfig("dc3", lab.Remediation{Mode: "auto", StateDir: state, MTU: true, MTUYAML: "min: 1200",
			ProberYAML: "pmtu: {min: 1200, interval: 1m, confirm: 10s}"}),
		"dc4": l.AgentConfig("dc4", lab.Remediation{ProberYAML: "enabled: false"}),
	}
	targets := map[string]string{}
	agents := map[string]*lab.Agent{}
	for node, yml := range configs {
		mgmt := l.HubManagement
		if node != "hub" {
			s, _ := l.Site(node)
			mgmt = s.Management
		}
		cfg := filepath.Join(t.TempDir(), node+".yml")
		if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		targets[node] = net.JoinHostPort(mgmt, "9586")
		agents[node] = labtest.StartAgent(t, bin, nsOf(t, l, node), targets[node], "--config.file="+cfg, "--log.level=info")
	}
	defer func() {
		if t.Failed() {
			for node, a := range agents {
				t.Logf("agent %s log:\n%s", node, a.Logs())
			}
		}
	}()
	started := time.Now()
	prom := startPrometheus(t, promBin, gen, targets, amAddr)

	// Every agent scraped before the faults.
	waitFor(t, time.Minute, "every agent up in Prometheus", func() (bool, string) {
		v, err := instantQuery(prom, `sum(up{job="wgpulse"})`)
		if err != nil || len(v) == 0 {
			return false, fmt.Sprint(err)
		}
		return int(v[0].Value) == len(targets), fmt.Sprintf("%v of %d up", v[0].Value, len(targets))
	})

	cut := time.Now()
	for _, f := range [][2]string{{"dc1-primary", "down"}, {"dc1-backup", "down"}, {"dc2-primary", "loss=50"}} {
		if _, err := l.Fault(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	// dc1 lost every tunnel: one node page for dc1. The hub lost two of
	// eight: each of its ends of dc1's tunnels is one page group.
	type end struct{ instance, device, name string }
	var cutEnds []end
	for _, tn := range []lab.Tunnel{tun("dc1-primary"), tun("dc1-backup")} {
		cutEnds = append(cutEnds, end{"hub", tn.HubDevice, tn.Name})
	}
	nodePage := func(status string) *notification {
		return hook.first(func(n notification) bool {
			return n.Receiver == "pager" && n.Status == status && n.GroupLabels["alertname"] == "WireGuardNodeTunnelsDown"
		})
	}
	missing := func(e end, status string) *notification {
		return hook.first(func(n notification) bool {
			return n.Receiver == "pager" && n.Status == status && n.GroupLabels["alertname"] == "WireGuardHandshakeMissing" &&
				n.GroupLabels["instance"] == e.instance && n.GroupLabels["device"] == e.device
		})
	}
	waitFor(t, 6*time.Minute, "a WireGuardHandshakeMissing page for the hub's end of each of dc1's tunnels", func() (bool, string) {
		var got []string
		for _, e := range cutEnds {
			if missing(e, "firing") != nil {
				got = append(got, e.instance+"/"+e.name)
			}
		}
		return len(got) == len(cutEnds), fmt.Sprintf("paged so far: %v", got)
	})
	if n := nodePage("firing"); n == nil || len(n.Alerts) != 1 || n.Alerts[0].Labels["instance"] != "dc1" ||
		!strings.Contains(n.Alerts[0].Annotations["description"], "2 of 2 tunnels on dc1") {
		t.Errorf("node page %+v, want one for dc1 naming 2 of 2 tunnels", n)
	} else {
		t.Logf("cut -> node page %s for dc1: %s", n.At.Sub(cut).Round(time.Second), n.Alerts[0].Annotations["description"])
	}
	if n := hook.first(func(n notification) bool {
		return n.Receiver == "pager" && n.GroupLabels["alertname"] == "WireGuardHandshakeMissing" && n.GroupLabels["instance"] == "dc1"
	}); n != nil {
		t.Errorf("dc1's tunnels paged one by one while its node page fires: %+v", *n)
	}
	for _, e := range cutEnds {
		n := missing(e, "firing")
		t.Logf("cut -> page %s for %s %s (peer %s)", n.At.Sub(cut).Round(time.Second), e.instance, e.device, e.name)
		if len(n.Alerts) != 1 {
			t.Errorf("page for %s %s carries %d alerts, want 1", e.instance, e.device, len(n.Alerts))
			continue
		}
		a := n.Alerts[0]
		if a.Labels["name"] != e.name || a.Labels["severity"] != "critical" || a.Labels["public_key"] == "" ||
			!strings.HasSuffix(a.Annotations["runbook_url"], "/alerts/RUNBOOK.md#wireguardhandshakemissing") {
			t.Errorf("page for %s %s: labels %v annotations %v; want name %s, severity critical, public_key and the runbook_url", e.instance, e.device, a.Labels, a.Annotations, e.name)
		}
	}

	// The SLO's fast burn on dc2-primary, seen by dc2's agent.
	dc2p := tun("dc2-primary")
	waitFor(t, 4*time.Minute, "the SLO burn-rate page for dc2-primary", func() (bool, string) {
		return hook.first(func(n notification) bool {
			return n.Receiver == "pager" && n.Status == "firing" && n.GroupLabels["alertname"] == "WireGuardSLOErrorBudgetBurn" &&
				n.GroupLabels["instance"] == "dc2" && n.GroupLabels["device"] == dc2p.Device && n.GroupLabels["slo"] == "tunnel-availability"
		}) != nil, ""
	})
	burn := hook.first(func(n notification) bool {
		return n.GroupLabels["alertname"] == "WireGuardSLOErrorBudgetBurn" && n.GroupLabels["instance"] == "dc2" && n.GroupLabels["device"] == dc2p.Device
	})
	t.Logf("50%% loss -> SLO burn page %s (%s)", burn.At.Sub(cut).Round(time.Second), burn.Alerts[0].Labels["tier"])

	// The ghost is seen (a ticket), never paged.
	waitFor(t, 3*time.Minute, "the never-handshaked peer's ticket", func() (bool, string) {
		return hook.first(func(n notification) bool {
			return n.Receiver == "ticket" && n.GroupLabels["alertname"] == "WireGuardHandshakeNeverEstablished" && n.hasKey(ghost)
		}) != nil, ""
	})

	// dc3-backup's address, which the hub no longer allows: a ticket.
	mismatch := func(n notification) bool {
		return n.Receiver == "ticket" && n.Status == "firing" && slices.ContainsFunc(n.Alerts, func(a notifiedAlert) bool {
			return a.Labels["alertname"] == "WireGuardAllowedIPsMissTunnelAddress" && a.Labels["instance"] == "dc3" &&
				a.Labels["device"] == d3b.Device && a.Labels["address"] == d3b.LocalAddress
		})
	}
	waitFor(t, 3*time.Minute, "the ticket for the AllowedIPs that miss dc3-backup's address", func() (bool, string) {
		return hook.first(mismatch) != nil, ""
	})
	t.Logf("hub AllowedIPs without dc3-backup's address -> ticket %s after the agents started", hook.first(mismatch).At.Sub(started).Round(time.Second))
	for _, n := range hook.all() {
		for _, a := range n.Alerts {
			if a.Labels["alertname"] == "WireGuardAllowedIPsMissTunnelAddress" && a.Labels["device"] != d3b.Device {
				t.Errorf("AllowedIPs mismatch reported where both ends agree: %v", a.Labels)
			}
		}
	}

	checkDashboards(t, prom, filepath.Join(gen, "dashboards"))
	checkRules(t, prom)

	restore := time.Now()
	for _, p := range []string{"dc1-primary", "dc1-backup"} {
		if _, err := l.Fault(p, "up"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 4*time.Minute, "the resolved notification of every HandshakeMissing page and of the node page", func() (bool, string) {
		var open []string
		for _, e := range cutEnds {
			if missing(e, "resolved") == nil {
				open = append(open, e.instance+"/"+e.name)
			}
		}
		if nodePage("resolved") == nil {
			open = append(open, "dc1 node page")
		}
		return len(open) == 0, fmt.Sprintf("still open: %v", open)
	})
	for _, e := range cutEnds {
		t.Logf("restore -> resolved %s for %s %s", missing(e, "resolved").At.Sub(restore).Round(time.Second), e.instance, e.device)
		firing := hook.count(func(n notification) bool {
			return n.Receiver == "pager" && n.Status == "firing" && n.GroupLabels["alertname"] == "WireGuardHandshakeMissing" &&
				n.GroupLabels["instance"] == e.instance && n.GroupLabels["device"] == e.device
		})
		if firing != 1 {
			t.Errorf("%s %s paged %d times while firing, want once (group_interval/repeat_interval)", e.instance, e.device, firing)
		}
	}
	if n := hook.first(func(n notification) bool { return n.Receiver == "pager" && n.hasKey(ghost) }); n != nil {
		t.Errorf("the never-handshaked peer paged: %+v", *n)
	}
	for _, n := range hook.all() {
		if n.Receiver == "pager" && n.GroupLabels["alertname"] == "WireGuardHandshakeMissing" && n.GroupLabels["instance"] != "dc1" &&
			!slices.ContainsFunc(cutEnds, func(e end) bool { return e.device == n.GroupLabels["device"] }) {
			t.Logf("note: a handshake also went missing outside dc1: %v", n.GroupLabels)
		}
	}
}

// generateStack renders the rules and dashboards as an operator does, from
// stackAlerts, and returns the directory.
func generateStack(t *testing.T, bin string) string {
	t.Helper()
	gen := t.TempDir()
	genCfg := filepath.Join(gen, "wgpulse.yml")
	if err := os.WriteFile(genCfg, []byte(stackAlerts), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "generate", "--config", genCfg, "--out", gen).CombinedOutput(); err != nil {
		t.Fatalf("wgpulse generate: %v\n%s", err, out)
	}
	return gen
}

// addGhostPeer adds a peer that never handshakes (no endpoint, no
// AllowedIPs, a fresh key) to a device and returns its public key.
func addGhostPeer(t *testing.T, device string) string {
	t.Helper()
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := k.PublicKey()
	if err := c.ConfigureDevice(device, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: pub}}}); err != nil {
		t.Fatalf("adding a never-handshaked peer to %s: %v", device, err)
	}
	return pub.String()
}

// notification is what Alertmanager's webhook receiver posts.
type notification struct {
	At           time.Time `json:"-"`
	Receiver     string    `json:"-"` // the URL path: pager or ticket
	Status       string    `json:"status"`
	GroupKey     string    `json:"groupKey"`
	GroupLabels  map[string]string
	CommonLabels map[string]string
	Alerts       []notifiedAlert `json:"alerts"`
}

type notifiedAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func (n notification) hasKey(key string) bool {
	return slices.ContainsFunc(n.Alerts, func(a notifiedAlert) bool { return a.Labels["public_key"] == key })
}

type webhook struct {
	URL string
	mu  sync.Mutex
	got []notification
}

func newWebhook(t *testing.T) *webhook {
	w := &webhook{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var n notification
		if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
			t.Errorf("webhook %s: %v", r.URL.Path, err)
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		n.At, n.Receiver = time.Now(), strings.TrimPrefix(r.URL.Path, "/")
		w.mu.Lock()
		w.got = append(w.got, n)
		w.mu.Unlock()
		t.Logf("webhook %s: %s %v (%d alerts)", n.Receiver, n.Status, n.GroupLabels, len(n.Alerts))
	}))
	t.Cleanup(srv.Close)
	w.URL = srv.URL
	return w
}

func (w *webhook) all() []notification {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got)
}

func (w *webhook) first(match func(notification) bool) *notification {
	for _, n := range w.all() {
		if match(n) {
			return &n
		}
	}
	return nil
}

func (w *webhook) count(match func(notification) bool) int {
	c := 0
	for _, n := range w.all() {
		if match(n) {
			c++
		}
	}
	return c
}

func freeLocalPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon runs a program (in namespace ns, or on the host with "")
// until the test ends and waits until http://addr/-/ready answers 200. Its
// output is shown if the test fails.
func startDaemon(t testing.TB, ns, addr, bin string, args ...string) *http.Client {
	t.Helper()
	var out bytes.Buffer
	var mu sync.Mutex
	cmd := exec.Command(bin, args...)
	client := &http.Client{Timeout: 2 * time.Minute}
	if ns != "" {
		cmd = lab.Command(ns, bin, args...)
		client.Transport = &http.Transport{DialContext: lab.DialContextIn(ns)}
	}
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("%s output:\n%s", filepath.Base(bin), out.String())
			mu.Unlock()
		}
	})
	waitFor(t, 30*time.Second, filepath.Base(bin)+" ready", func() (bool, string) {
		r, err := client.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK, r.Status
	})
	return client
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// startAlertmanager runs Alertmanager with the shipped config, its
// receivers pointed at the webhook, and returns its address.
func startAlertmanager(t *testing.T, bin, hookURL string) string {
	t.Helper()
	shipped, err := os.ReadFile("../alertmanager/alertmanager.yml")
	if err != nil {
		t.Fatal(err)
	}
	const shippedURL = "http://127.0.0.1:9096"
	if c := strings.Count(string(shipped), shippedURL+"/"); c != 2 {
		t.Fatalf("the shipped Alertmanager config has %d receivers at %s, this test expects pager and ticket", c, shippedURL)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(string(shipped), shippedURL, hookURL)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeLocalPort(t)
	startDaemon(t, "", addr, bin, "--config.file="+cfg, "--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	return addr
}

// startPrometheus scrapes the agents (instance = node name) every 2 s,
// evaluates the generated rules every 2 s and alerts Alertmanager.
func startPrometheus(t *testing.T, bin, gen string, targets map[string]string, amAddr string) promv1.API {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}\n")
	fmt.Fprintf(&b, "rule_files: [%q]\n", filepath.Join(gen, "alerts", "*.yml"))
	fmt.Fprintf(&b, "alerting: {alertmanagers: [{static_configs: [{targets: [%q]}]}]}\n", amAddr)
	b.WriteString("scrape_configs:\n  - job_name: wgpulse\n    static_configs:\n")
	for _, node := range slices.Sorted(maps.Keys(targets)) {
		fmt.Fprintf(&b, "      - {targets: [%q], labels: {instance: %s}}\n", targets[node], node)
	}
	return runPrometheus(t, "", bin, freeLocalPort(t), b.String())
}

// runPrometheus runs Prometheus with config (in namespace ns, or on the
// host with "") on addr until the test ends.
func runPrometheus(t testing.TB, ns, bin, addr, config string) promv1.API {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(filepath.Dir(bin), "promtool"), "check", "config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	client := startDaemon(t, ns, addr, bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr)
	c, err := promapi.NewClient(promapi.Config{Address: "http://" + addr, Client: client})
	if err != nil {
		t.Fatal(err)
	}
	return promv1.NewAPI(c)
}

func instantQuery(api promv1.API, q string) (model.Vector, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, _, _, err := api.Query(ctx, q, time.Now())
	if err != nil {
		return nil, err
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("%s: %s, not a vector", q, v.Type())
	}
	return vec, nil
}

// waitFor polls cond every second until it holds or the time is up.
func waitFor(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s (%s)", what, within, detail)
		}
		time.Sleep(time.Second)
	}
}

// The parts of a generated dashboard that hold queries.
type dashPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr    string `json:"expr"`
		Instant bool   `json:"instant"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // collapsed rows
}

type dashVariable struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Query      any    `json:"query"`
	Regex      string `json:"regex"`
	IncludeAll bool   `json:"includeAll"`
	AllValue   string `json:"allValue"`
}

var (
	labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)
	queryResultRE = regexp.MustCompile(`^query_result\((.+)\)$`)
	variableRE    = regexp.MustCompile(`\$\{?(\w+)\}?`)
)

// checkDashboards runs every variable and panel query of every dashboard
// against Prometheus, as Grafana would with every multi-value variable at
// "All" and each single-value variable (the peer) at one of the values its
// query offers: every panel must draw data for some value. It retries for
// up to three minutes (the remediation panels need the policies to act).
func checkDashboards(t *testing.T, api promv1.API, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(files) < 4 {
		t.Fatalf("%d dashboards in %s", len(files), dir)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var empty []string
		panels := 0
		for _, f := range files {
			e, n := emptyPanels(t, api, f)
			empty, panels = append(empty, e...), panels+n
		}
		if len(empty) == 0 {
			t.Logf("%d panels of %d dashboards all draw data", panels, len(files))
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d of %d panels draw nothing:\n%s", len(empty), panels, strings.Join(empty, "\n"))
			return
		}
		time.Sleep(5 * time.Second)
	}
}

func emptyPanels(t *testing.T, api promv1.API, file string) (empty []string, panels int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []dashVariable `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := filepath.Base(file)
	subst := func(expr string, vars map[string]string) string {
		return variableRE.ReplaceAllStringFunc(expr, func(m string) string {
			if v, ok := vars[variableRE.FindStringSubmatch(m)[1]]; ok {
				return v
			}
			return m
		})
	}
	vars := map[string]string{"__rate_interval": "30s", "__interval": "10s"}
	choices := map[string][]string{} // single-value variables: the values offered
	for _, v := range d.Templating.List {
		q, _ := v.Query.(string)
		if v.Type != "query" {
			continue
		}
		q = subst(q, vars)
		var values []string
		switch {
		case labelValuesRE.MatchString(q):
			m := labelValuesRE.FindStringSubmatch(q)
			series, _, _, err := api.Series(ctx, []string{m[1]}, time.Now().Add(-10*time.Minute), time.Now())
			if err != nil {
				t.Fatalf("%s variable %s: %v", name, v.Name, err)
			}
			for _, s := range series {
				if lv := string(s[model.LabelName(m[2])]); lv != "" && !slices.Contains(values, lv) {
					values = append(values, lv)
				}
			}
		case queryResultRE.MatchString(q):
			res, _, _, err := api.Query(ctx, queryResultRE.FindStringSubmatch(q)[1], time.Now())
			if err != nil {
				t.Fatalf("%s variable %s: %v", name, v.Name, err)
			}
			re := regexp.MustCompile(strings.Trim(v.Regex, "/"))
			for _, s := range res.(model.Vector) {
				// Grafana's rendering of a result: name{labels} value timestamp.
				line := fmt.Sprintf("%s %s %d", s.Metric, s.Value, s.Timestamp)
				if m := re.FindStringSubmatch(line); m != nil {
					values = append(values, m[re.SubexpIndex("value")])
				}
			}
		default:
			t.Fatalf("%s variable %s: query %q is neither label_values nor query_result", name, v.Name, q)
		}
		if len(values) == 0 {
			empty = append(empty, fmt.Sprintf("%s: variable $%s offers no value (%s)", name, v.Name, q))
			return empty, 0
		}
		if v.IncludeAll {
			vars[v.Name] = v.AllValue
		} else {
			choices[v.Name] = values
		}
	}
	var all []dashPanel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	for _, p := range all {
		if len(p.Targets) == 0 {
			continue
		}
		panels++
		// Every target of the panel returns data for one choice of the
		// single-value variables (one peer: what Grafana would draw).
		var missing []string
		for _, choice := range combinations(choices) {
			missing = missing[:0]
			vs := maps.Clone(vars)
			maps.Copy(vs, choice)
			for _, tg := range p.Targets {
				q := subst(tg.Expr, vs)
				var v model.Value
				if tg.Instant {
					v, _, _, err = api.Query(ctx, q, time.Now())
				} else {
					v, _, _, err = api.QueryRange(ctx, q, promv1.Range{Start: time.Now().Add(-5 * time.Minute), End: time.Now(), Step: 10 * time.Second})
				}
				if err != nil {
					t.Errorf("%s panel %q: %s: %v", name, p.Title, q, err)
					continue
				}
				if isEmpty(v) {
					missing = append(missing, q)
				}
			}
			if len(missing) == 0 {
				break
			}
		}
		if len(missing) > 0 {
			empty = append(empty, fmt.Sprintf("%s panel %q: %s", name, p.Title, strings.Join(missing, " | ")))
		}
	}
	return empty, panels
}

// combinations of the single-value variables' values (one map each).
func combinations(choices map[string][]string) []map[string]string {
	out := []map[string]string{{}}
	for _, name := range slices.Sorted(maps.Keys(choices)) {
		var next []map[string]string
		for _, base := range out {
			for _, v := range choices[name] {
				m := maps.Clone(base)
				// As Grafana's Prometheus data source interpolates a single
				// value into =~"...": regex-escaped, the backslashes doubled
				// for the PromQL string (a key with "+" needs "\\+").
				m[name] = strings.ReplaceAll(regexp.QuoteMeta(v), `\`, `\\`)
				next = append(next, m)
			}
		}
		out = next
	}
	return out
}

func isEmpty(v model.Value) bool {
	switch v := v.(type) {
	case model.Vector:
		return len(v) == 0
	case model.Matrix:
		return len(v) == 0
	case *model.Scalar:
		return v == nil
	}
	return true
}

// checkRules: every recording and alerting rule evaluated, without error.
func checkRules(t *testing.T, api promv1.API) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := api.Rules(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var recording, alerting int
	for _, g := range res.Groups {
		for _, r := range g.Rules {
			switch r := r.(type) {
			case promv1.RecordingRule:
				recording++
				if r.Health != promv1.RuleHealthGood || r.LastError != "" {
					t.Errorf("recording rule %s (group %s): health %s, error %q", r.Name, g.Name, r.Health, r.LastError)
				}
			case promv1.AlertingRule:
				alerting++
				if r.Health != promv1.RuleHealthGood || r.LastError != "" {
					t.Errorf("alerting rule %s (group %s): health %s, error %q", r.Name, g.Name, r.Health, r.LastError)
				}
			}
		}
	}
	t.Logf("%d recording and %d alerting rules in %d groups evaluate without error", recording, alerting, len(res.Groups))
	if recording == 0 || alerting == 0 {
		t.Error("Prometheus loaded no rules")
	}
}
