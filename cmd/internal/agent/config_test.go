package agent_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
)

func TestParseErrorsNameFileLineAndField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear, in order, one per line
	}{
		{
			name: "unknown key in a section",
			yaml: "collector:\n  poll_interval: 5s\n  pol_interval: 5s\n",
			want: []string{`wgpulse.yml:3: unknown field collector.pol_interval;`},
		},
		{
			name: "unknown top-level section",
			yaml: "colector:\n  devices: [wg0]\n",
			want: []string{`wgpulse.yml:1: unknown field colector;`},
		},
		{
			name: "unknown key named by its YAML path, not a Go type",
			yaml: "slo:\n  perod: 30d\n",
			want: []string{`wgpulse.yml:2: unknown field slo.perod;`},
		},
		{
			name: "unknown key inside a list item",
			yaml: "prober:\n  targets:\n    - {name: a, address: 10.0.0.1, device: wg0}\n    - name: b\n      adress: 10.0.0.2\n",
			want: []string{`wgpulse.yml:5: unknown field prober.targets[1].adress;`},
		},
		{
			name: "bad duration",
			yaml: "collector:\n  poll_interval: soon\n",
			want: []string{"wgpulse.yml:2: cannot unmarshal !!str `soon` into time.Duration"},
		},
		{
			name: "bad values, each with its own line",
			yaml: "collector:\n  devices:\n    - wg0\n    - wg0\n  poll_interval: 1ms\n",
			want: []string{
				"wgpulse.yml:5: collector.poll_interval: must be at least 100ms, got 1ms",
				`wgpulse.yml:4: collector.devices[1]: device "wg0" listed twice`,
			},
		},
		{
			name: "remediate: inconsistent devices and prefixes name their fields",
			yaml: `remediate:
  mode: auto
  failover:
    - name: dc1
      prefixes: [10.50.0.1/16]
      primary: {device: wg0, target: 10.200.1.1}
      backup: {device: wg0, target: 10.201.1.1}
`,
			want: []string{
				`wgpulse.yml:5: remediate.failover[0].prefixes[0]: "10.50.0.1/16" has host bits set: did you mean 10.50.0.0/16?`,
				`wgpulse.yml:7: remediate.failover[0].backup.device: is the primary's device "wg0" too`,
			},
		},
		{
			name: "remediate: a device the collector does not watch",
			yaml: `collector:
  devices: [wg0]
remediate:
  failover:
    - name: dc1
      prefixes: [10.50.0.0/16]
      primary: {device: wg0, target: 10.200.1.1}
      backup: {device: wg1, target: 10.201.1.1}
`,
			want: []string{`wgpulse.yml:8: remediate.failover[0].backup.device: "wg1" is not in collector.devices [wg0]`},
		},
		{
			name: "remediate: unknown mode",
			yaml: "remediate:\n  mode: yolo\n",
			want: []string{`wgpulse.yml:2: remediate.mode: must be "off", "dry-run" or "auto", got "yolo"`},
		},
		{
			name: "broken YAML",
			yaml: "collector:\n  devices: [wg0\n",
			want: []string{"wgpulse.yml:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.Parse([]byte(tt.yaml), "wgpulse.yml")
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d error lines, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestParseDefaultsAndOverrides(t *testing.T) {
	empty, err := agent.Parse(nil, "empty.yml")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(agent.DefaultConfig(), empty); diff != "" {
		t.Errorf("empty file is not the defaults (-want +got):\n%s", diff)
	}
	cfg, err := agent.Parse([]byte("collector:\n  devices: [wg0]\n"), "x.yml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Collector.PollInterval != 5*time.Second || len(cfg.Collector.Devices) != 1 {
		t.Errorf("partial section lost a default: %+v", cfg.Collector)
	}
}
