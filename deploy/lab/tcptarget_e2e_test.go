package lab_test

import (
	"os"
	"path/filepath"
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
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	r := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "default", "dc2": "default"}, StateDir: t.TempDir(), HoldDown: 5 * time.Second,
		TCPPorts: map[string]int{"dc1": 9}}
	agents := map[string]*lab.Agent{}
	for _, site := range []string{"dc1", "dc2"} {
		cfg := filepath.Join(t.TempDir(), site+".yml")
		if err := os.WriteFile(cfg, []byte(l.AgentConfig(site, r)), 0o600); err != nil {
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
	if err := l.DropTCP(true, "dc1-primary", "dc2-primary"); err != nil {
		t.Fatal(err)
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
	// 10 s more: the outage stays near 12 of the 60 probes the default
	// profile's 1m window holds, clear of its 30% rule, so dc1's primary is
	// up as soon as it answers (an 18 s outage would keep it down until
	// its losses leave the window).
	// dc2 is looked at each second of them, not once at the end.
	for range 10 {
		time.Sleep(time.Second)
		if d2 := status(t, agents["dc2"]).Groups[0]; d2.Active != failover.Primary || d2.Paths["primary"].State != "up" {
			t.Fatalf("dc2 (ICMP target): active %s, primary %s %s after the fault; want primary and up throughout: ICMP passes",
				d2.Active, d2.Paths["primary"].State, time.Since(fault).Round(100*time.Millisecond))
		}
	}
	if err := l.DropTCP(false); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitGroups(t, map[string]*lab.Agent{"dc1": agents["dc1"]}, 20*time.Second, "dc1 back on its primary", active(failover.Primary))
	t.Logf("dc1 back on its primary %s after TCP passed again (hold_down %s)", time.Since(healed).Round(100*time.Millisecond), r.HoldDown)
}
