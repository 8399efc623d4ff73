package lab_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

// A path that passes ICMP and drops TCP (a middlebox, a firewall rule): the
// hub drops TCP arriving over both sites' primary tunnels. dc1's group
// probes with TCP connects (to a closed port of the hub's tunnel address: a
// refusal proves the path) and fails over within its bound; dc2's group
// probes with ICMP, sees nothing wrong, and stays. With the rule gone dc1
// returns after hold_down.
func TestTCPTargetSeesWhatICMPMisses(t *testing.T) {
	t.Parallel()
	labtest.Tool(t, "nft", "nftables")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	r := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "default", "dc2": "default"}, StateDir: t.TempDir(), HoldDown: 5 * time.Second}
	agents := map[string]*lab.Agent{}
	for _, site := range []string{"dc1", "dc2"} {
		yml := l.AgentConfig(site, r)
		if site == "dc1" {
			for _, path := range []string{"primary", "backup"} {
				tn := mustTunnel(t, l, "dc1-"+path)
				old := fmt.Sprintf("{device: %s, target: %s}", tn.Device, tn.RemoteAddress)
				if !strings.Contains(yml, old) {
					t.Fatalf("dc1's config has no %q:\n%s", old, yml)
				}
				yml = strings.Replace(yml, old, fmt.Sprintf("{device: %s, target: {address: %s, tcp_port: 9}}", tn.Device, tn.RemoteAddress), 1)
			}
		}
		cfg := filepath.Join(t.TempDir(), site+".yml")
		if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		agents[site] = labtest.StartAgent(t, bin, nsOf(t, l, site), agentAddr, "--config.file="+cfg)
	}
	waitGroups(t, agents, 30*time.Second, "both paths up in both groups", bothUp)
	g := status(t, agents["dc1"]).Groups[0]
	if tgt := g.Paths["primary"].Target; tgt != mustTunnel(t, l, "dc1-primary").RemoteAddress+":9" {
		t.Fatalf("dc1's primary target %q, want the hub's tunnel address with port 9", tgt)
	}

	// The hub takes no TCP over the primaries; ICMP passes.
	nft := fmt.Sprintf(`table inet tcpdrop {
  chain in {
    type filter hook input priority 0; policy accept;
    iifname { %q, %q } meta l4proto tcp drop
  }
}`, mustTunnel(t, l, "dc1-primary").HubDevice, mustTunnel(t, l, "dc2-primary").HubDevice)
	cmd := lab.Command(l.HubNamespace, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	fault := time.Now()
	waitGroups(t, map[string]*lab.Agent{"dc1": agents["dc1"]}, 10*time.Second, "dc1 (TCP target) on its backup", active(failover.Backup))
	took := time.Since(fault)
	t.Logf("TCP dropped on the primaries -> dc1 (TCP target) on its backup %s later", took.Round(10*time.Millisecond))
	// default profile: 6 probes lost in a row, found with the suspect probes
	// in about 2 s after the first loss's 1 s timeout.
	if took > 5*time.Second {
		t.Errorf("dc1 switched %s after the fault, want <= 5s (default profile)", took)
	}
	time.Sleep(15 * time.Second)
	d2 := status(t, agents["dc2"]).Groups[0]
	if d2.Active != failover.Primary || d2.Paths["primary"].State != "up" {
		t.Errorf("dc2 (ICMP target): active %s, primary %s after 15 s; want primary and up: ICMP passes", d2.Active, d2.Paths["primary"].State)
	}
	if out, err := lab.Command(l.HubNamespace, "nft", "delete", "table", "inet", "tcpdrop").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	waitGroups(t, map[string]*lab.Agent{"dc1": agents["dc1"]}, 20*time.Second, "dc1 back on its primary", active(failover.Primary))
}
