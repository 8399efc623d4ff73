package agent_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/remediate/failover"
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
			name: "a failover target with an unknown key",
			yaml: "remediate:\n  failover:\n    - name: g\n      prefixes: [10.50.0.0/16]\n      primary: {device: wg0, target: {address: 10.200.1.1, tcp_prot: 22}}\n      backup: {device: wg1, target: 10.201.1.1}\n",
			want: []string{`wgpulse.yml:5: unknown field "tcp_prot" in a target: want address and tcp_port`},
		},
		{
			name: "a failover target with a bad port",
			yaml: "remediate:\n  failover:\n    - name: g\n      prefixes: [10.50.0.0/16]\n      primary: {device: wg0, target: {address: 10.200.1.1, tcp_port: 70000}}\n      backup: {device: wg1, target: 10.201.1.1}\n",
			want: []string{`wgpulse.yml:5: remediate.failover[0].primary.target: tcp_port "70000" must be 1-65535`},
		},
		{
			name: "a prober target with a bad port",
			yaml: "prober:\n  targets:\n    - {name: a, address: 10.0.0.1, device: wg0, tcp_port: -1}\n",
			want: []string{`wgpulse.yml:3: prober.targets[0].tcp_port: must be 1-65535`},
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

// TCP liveness targets: a failover path's {address, tcp_port} and a prober
// target's tcp_port reach the prober as TCP targets.
func TestTCPTargetsParse(t *testing.T) {
	cfg, err := agent.Parse([]byte(`prober:
  targets:
    - {name: ssh, address: 10.50.0.1, device: wg0, tcp_port: 22}
remediate:
  failover:
    - name: g
      prefixes: [10.60.0.0/16]
      primary: {device: wg0, target: {address: 10.200.1.1, tcp_port: 443}}
      backup: {device: wg1, target: 10.201.1.1}
`), "x.yml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Prober.Targets[0].TCPPort; got != 22 {
		t.Errorf("prober target tcp_port %d, want 22", got)
	}
	g := cfg.Remediate.Failover[0]
	for _, c := range []struct {
		t    failover.ProbeTarget
		port uint16
	}{{g.Primary.Target, 443}, {g.Backup.Target, 0}} {
		if _, port, err := c.t.Parse(); err != nil || port != c.port {
			t.Errorf("target %q: port %d (%v), want %d", c.t, port, err, c.port)
		}
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
