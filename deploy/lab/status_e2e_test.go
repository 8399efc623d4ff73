package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// `wgpulse status` on a real terminal: the hub's agent on a lab where
// dc1-backup loses 30% and a peer never handshook; the command runs in a
// tmux pane and the test reads the screen tmux shows, colours included:
// one table per device, ok in green, degraded (with its reason) in yellow,
// never in magenta. Piped, the same command prints no colour.
func TestStatusOnARealTerminal(t *testing.T) {
	t.Parallel()
	tmux := labtest.Tool(t, "tmux", "tmux")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	p, b := mustTunnel(t, l, "dc1-primary"), mustTunnel(t, l, "dc1-backup")
	if _, err := l.Fault("dc1-backup", "loss=30"); err != nil {
		t.Fatal(err)
	}
	ghost := addGhostPeer(t, b.HubDevice)
	cfg := filepath.Join(t.TempDir(), "hub.yml")
	if err := os.WriteFile(cfg, []byte(l.AgentConfig("hub", lab.Remediation{ProberYAML: "interval: 200ms\nwindow: 10s"})), 0o600); err != nil {
		t.Fatal(err)
	}
	labtest.StartAgent(t, bin, l.HubNamespace, agentAddr, "--config.file="+cfg)
	status := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"netns", "exec", l.HubNamespace, bin, "status", "--agent", "http://" + agentAddr}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("wgpulse status: %v\n%s", err, out)
		}
		return string(out)
	}
	// Wait until the agent has its verdicts: loss seen on the backup.
	health := map[string]string{}
	waitFor(t, time.Minute, "the agent's verdicts", func() (bool, string) {
		var st struct {
			Devices []struct {
				Peers []struct {
					Name      string `json:"name"`
					PublicKey string `json:"public_key"`
					Health    string `json:"health"`
					Reason    string `json:"reason"`
				} `json:"peers"`
			} `json:"devices"`
		}
		if err := json.Unmarshal([]byte(status("--json")), &st); err != nil {
			return false, err.Error()
		}
		for _, d := range st.Devices {
			for _, pr := range d.Peers {
				key := pr.Name
				if key == "" {
					key = pr.PublicKey
				}
				health[key] = pr.Health + " " + pr.Reason
			}
		}
		return strings.HasPrefix(health[p.Name], "ok") && strings.HasPrefix(health[b.Name], "degraded loss") && strings.HasPrefix(health[ghost], "never"),
			fmt.Sprint(health)
	})

	session := "wgpulse-status-" + l.Config.Prefix
	cmd := fmt.Sprintf("ip netns exec %s %s status --agent http://%s; sleep 600", l.HubNamespace, bin, agentAddr)
	if out, err := exec.Command(tmux, "new-session", "-d", "-s", session, "-x", "250", "-y", "60", cmd).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "kill-session", "-t", session).Run() })
	var screen string
	waitFor(t, 20*time.Second, "the status table on the tmux screen", func() (bool, string) {
		out, err := exec.Command(tmux, "capture-pane", "-p", "-e", "-t", session).Output()
		screen = string(out)
		return err == nil && strings.Contains(screen, "HEALTH") && strings.Contains(screen, "never"), screen
	})
	t.Logf("the screen:\n%s", strings.TrimRight(screen, "\n "))
	row := func(name string) string {
		for _, line := range strings.Split(screen, "\n") {
			if strings.Contains(line, name) {
				return line
			}
		}
		t.Fatalf("no row for %s on the screen:\n%s", name, screen)
		return ""
	}
	// tmux renders SGR colours as it received them: 32 green, 33 yellow, 35 magenta.
	colour := func(code, word string) *regexp.Regexp {
		return regexp.MustCompile(`\x1b\[(0;)?` + code + `m` + word + `\x1b\[(0|39)?m`)
	}
	if r := row(p.Name); !colour("32", "ok").MatchString(r) {
		t.Errorf("%s: want ok in green: %q", p.Name, r)
	}
	if r := row(b.Name); !colour("33", "degraded").MatchString(r) || !strings.Contains(r, "loss") {
		t.Errorf("%s: want degraded in yellow with the loss: %q", b.Name, r)
	}
	if r := row(ghost[:12]); !colour("35", "never").MatchString(r) {
		t.Errorf("the ghost peer: want never in magenta: %q", r)
	}
	for _, head := range []string{"PEER", "ENDPOINT", "HANDSHAKE", "RX/s", "LOSS", "RTT p50/p99", "JITTER", "PMTU/MTU", "KEEPALIVE", "EP CHANGES", "FAILOVER"} {
		if !strings.Contains(screen, head) {
			t.Errorf("column %s missing from the screen", head)
		}
	}
	if piped := status(); strings.Contains(piped, "\x1b[") {
		t.Errorf("colour when not on a terminal:\n%q", piped)
	}
}

func mustTunnel(t *testing.T, l *lab.Lab, name string) lab.Tunnel {
	t.Helper()
	tn, err := l.Tunnel(name)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}
