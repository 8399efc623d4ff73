// Package deploy_test checks the deployment files under deploy/.
package deploy_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

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
