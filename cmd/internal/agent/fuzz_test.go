package agent_test

import (
	"os"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
)

// The config file is the operator's, but a typo must give an error naming
// the file, never a crash; a file that loads is valid and loads again the
// same way.
func FuzzParseConfig(f *testing.F) {
	for _, p := range []string{"../../../deploy/systemd/wgpulse.yml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("remediate:\n  mode: auto\n  failover:\n    - name: g\n      prefixes: [10.50.0.0/16]\n      primary: {device: wg-p, target: 10.200.1.1}\n      backup: {device: wg-b, target: 10.201.1.1}\n"))
	f.Add([]byte("collector:\n  poll_interval: 5s\n  peer_names: {\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\": dc1}\nprober:\n  targets: [{name: x, address: 10.0.0.1, device: wg0}]\n"))
	f.Add([]byte("remediate: {mtu: {enabled: true, devices: [wg0]}, keepalive: {enabled: true, devices: [wg0], min: 2s, max: 1s}}"))
	f.Add([]byte("prober: [1, 2]\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := agent.Parse(data, "fuzz.yml")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := cfg.Remediate.Validate(); err != nil {
			t.Fatalf("a loaded config does not validate: %v", err)
		}
		if _, err := agent.Parse(data, "fuzz.yml"); err != nil {
			t.Fatalf("loads once, fails the second time: %v", err)
		}
	})
}
