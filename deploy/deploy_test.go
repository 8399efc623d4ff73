// Package deploy_test checks the deployment files under deploy/.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

func amtool(t *testing.T) string { return labtest.Tool(t, "amtool", "prometheus-alertmanager") }

const amConfig = "alertmanager/alertmanager.yml"

func TestAlertmanagerConfig(t *testing.T) {
	am := amtool(t)
	if out, err := exec.Command(am, "check-config", amConfig).CombinedOutput(); err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	// Routing: critical pages, the rest is a ticket.
	for _, tc := range []struct {
		labels []string
		want   string
	}{
		{[]string{"alertname=WireGuardHandshakeMissing", "severity=critical"}, "pager"},
		{[]string{"alertname=WireGuardNodeTunnelsDown", "severity=critical"}, "pager"},
		{[]string{"alertname=WireGuardSLOErrorBudgetBurn", "severity=critical", "tier=page"}, "pager"},
		{[]string{"alertname=WireGuardProbeLossHigh", "severity=warning"}, "ticket"},
		{[]string{"alertname=WireGuardSLOErrorBudgetBurn", "severity=warning", "tier=ticket"}, "ticket"},
		{[]string{"alertname=Whatever", "severity=info"}, "ticket"},
	} {
		out, err := exec.Command(am, append([]string{"config", "routes", "test", "--config.file=" + amConfig}, tc.labels...)...).Output()
		if err != nil {
			t.Fatalf("amtool config routes test %v: %v", tc.labels, err)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%v routes to %q, want %q", tc.labels, got, tc.want)
		}
	}
	// Inhibitions: agent down silences that node's tunnel alerts; an SLO page
	// silences the same tunnel's ticket.
	b, err := os.ReadFile(amConfig)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Inhibit []struct {
			Source []string `yaml:"source_matchers"`
			Target []string `yaml:"target_matchers"`
			Equal  []string `yaml:"equal"`
		} `yaml:"inhibit_rules"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	var agentDown, sloPage bool
	for _, r := range cfg.Inhibit {
		src, tgt, eq := strings.Join(r.Source, ","), strings.Join(r.Target, ","), strings.Join(r.Equal, ",")
		agentDown = agentDown || (strings.Contains(src, "WireGuardAgentDown") && strings.Contains(tgt, `alertname=~"WireGuard.+"`) && eq == "instance")
		sloPage = sloPage || (strings.Contains(src, `tier="page"`) && strings.Contains(tgt, `tier="ticket"`) && strings.Contains(eq, "slo"))
	}
	if !agentDown || !sloPage {
		t.Errorf("inhibit rules: agent-down inhibits tunnel alerts %v, SLO page inhibits ticket %v; want both", agentDown, sloPage)
	}
}

// The shipped inhibition, in a real Alertmanager fed and read with amtool:
// while WireGuardNodeTunnelsDown fires for a node, that node's per-tunnel
// pages and tickets are inhibited, another node's are not, nor the node's
// other alerts; once it resolves, a single tunnel's page goes out again.
func TestAlertmanagerNodeOutageInhibitsPerTunnelAlerts(t *testing.T) {
	am := amtool(t)
	bin := labtest.Tool(t, "prometheus-alertmanager", "prometheus-alertmanager")
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	daemon := exec.Command(bin, "--config.file="+amConfig, "--storage.path="+dir, "--web.listen-address="+addr, "--cluster.listen-address=")
	var logs bytes.Buffer
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
		if t.Failed() {
			t.Logf("alertmanager:\n%s", logs.String())
		}
	})
	url := "--alertmanager.url=http://" + addr
	deadline := time.Now().Add(15 * time.Second)
	for {
		if resp, err := http.Get("http://" + addr + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("alertmanager not ready after 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	add := func(labels ...string) {
		t.Helper()
		if out, err := exec.Command(am, append([]string{url, "alert", "add"}, labels...)...).CombinedOutput(); err != nil {
			t.Fatalf("amtool alert add %v: %v\n%s", labels, err, out)
		}
	}
	type alert struct {
		Labels map[string]string `json:"labels"`
		Status struct {
			InhibitedBy []string `json:"inhibitedBy"`
		} `json:"status"`
	}
	query := func() map[string]bool { // "alertname instance device" -> inhibited
		t.Helper()
		out, err := exec.Command(am, url, "alert", "query", "--active", "--inhibited", "-o", "json").Output()
		if err != nil {
			t.Fatalf("amtool alert query: %v", err)
		}
		var as []alert
		if err := json.Unmarshal(out, &as); err != nil {
			t.Fatalf("amtool alert query: %v: %s", err, out)
		}
		got := map[string]bool{}
		for _, a := range as {
			got[a.Labels["alertname"]+" "+a.Labels["instance"]+" "+a.Labels["device"]] = len(a.Status.InhibitedBy) > 0
		}
		return got
	}
	node := []string{"alertname=WireGuardNodeTunnelsDown", "severity=critical", "instance=hub", "job=wgpulse"}
	add(node...)
	add("alertname=WireGuardHandshakeMissing", "severity=critical", "instance=hub", "job=wgpulse", "device=wg-dc1p", "public_key=K1")
	add("alertname=WireGuardSLOErrorBudgetBurn", "severity=critical", "tier=page", "slo=tunnel-availability", "instance=hub", "job=wgpulse", "device=wg-dc2p", "public_key=K2")
	add("alertname=WireGuardProbeDown", "severity=warning", "instance=hub", "job=wgpulse", "device=wg-dc1b", "public_key=K3")
	add("alertname=WireGuardConfigProblem", "severity=warning", "instance=hub", "job=wgpulse", "device=wg-dc1p", "check=rp_filter_strict")
	add("alertname=WireGuardHandshakeMissing", "severity=critical", "instance=dc3", "job=wgpulse", "device=wg0", "public_key=K4")
	want := map[string]bool{
		"WireGuardNodeTunnelsDown hub ":           false,
		"WireGuardHandshakeMissing hub wg-dc1p":   true,
		"WireGuardSLOErrorBudgetBurn hub wg-dc2p": true,
		"WireGuardProbeDown hub wg-dc1b":          true,
		"WireGuardConfigProblem hub wg-dc1p":      false, // not a tunnel's outage
		"WireGuardHandshakeMissing dc3 wg0":       false, // another node
	}
	var got map[string]bool
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = query(); maps.Equal(got, want) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("inhibited while the node alert fires: %v, want %v", got, want)
	}
	// The node alert resolves: the single tunnel still broken pages again.
	add(append(node, "--end="+time.Now().Add(-time.Second).UTC().Format(time.RFC3339))...)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = query(); !got["WireGuardHandshakeMissing hub wg-dc1p"] {
			if _, firing := got["WireGuardNodeTunnelsDown hub "]; !firing {
				return
			}
		}
	}
	t.Fatalf("after the node alert resolved: %v, want the hub's HandshakeMissing not inhibited and no node alert", got)
}
