package lab_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// A node's tunnels are restarted under the agent (`systemctl restart
// wg-quick@wgb`: the device deleted and created again, a new ifindex). The
// backup restarted: its path is never believed down and is up again within
// seconds, so a cut of the primary still fails over within the fast
// profile's bound. The primary restarted while on the backup: the return
// comes only after hold_down.
func TestFailoverSurvivesDeviceChurn(t *testing.T) {
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	const holdDown = 5 * time.Second
	agents := startAgents(t, l, bin, lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast"},
		HoldDown: holdDown, StateDir: t.TempDir()}, "hub", "dc1")
	dc1 := agents["dc1"]
	waitGroups(t, agents, 20*time.Second, "every path up", bothUp)

	// watch records every state of dc1's paths the agent reports while f runs.
	watch := func(f func()) map[string]map[string]bool {
		seen := map[string]map[string]bool{"primary": {}, "backup": {}}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				for _, g := range status(t, dc1).Groups {
					for p, ps := range g.Paths {
						seen[p][ps.State] = true
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		f()
		close(stop)
		<-done
		return seen
	}

	var reopened time.Duration
	seen := watch(func() {
		start := time.Now()
		if err := l.Recreate("dc1-backup"); err != nil {
			t.Fatal(err)
		}
		for reopened == 0 && time.Since(start) < 3*time.Second {
			if strings.Contains(dc1.Logs(), "probing through device again") {
				reopened = time.Since(start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Second) // two fast intervals and more: a verdict on the new socket
	})
	g := status(t, dc1).Groups[0]
	t.Logf("backup recreated: socket reopened after %s; states seen while it was %v, now %s", reopened.Round(time.Millisecond),
		seen["backup"], g.Paths["backup"].State)
	if seen["backup"]["down"] || g.Paths["backup"].State != "up" {
		t.Fatalf("the backup was believed down, or not up again within 1s of its socket's reopen, while only its device was recreated:\n%s", dc1.Logs())
	}

	s, _ := l.Site("dc1")
	src := strings.TrimSuffix(s.LAN, "0.0/16") + "0.1"
	ping, err := lab.StartPinger(s.Namespace, src, "10.50.0.1", 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Stop()
	time.Sleep(time.Second)
	cut := time.Now()
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, 10*time.Second, "every group on its backup", active("backup"))
	time.Sleep(time.Second)
	o := ping.Longest(cut, time.Time{})
	t.Logf("primary cut after the backup's restart: outage %s (%d pings of 10 ms lost)", o.Took, o.Lost)
	if o.Took > time.Second {
		t.Errorf("outage %s, want <= 1s (fast profile)", o.Took)
	}

	if _, err := l.Fault("dc1-primary", "up"); err != nil {
		t.Fatal(err)
	}
	recreated := time.Now()
	if err := l.Recreate("dc1-primary"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, holdDown+20*time.Second, "every group back on its primary", active("primary"))
	for n, a := range agents {
		for _, g := range status(t, a).Groups {
			if since := g.ActiveSince.Sub(recreated); since < holdDown {
				t.Errorf("%s/%s returned %s after the primary was recreated, want >= hold_down %s", n, g.Name, since, holdDown)
			} else {
				t.Logf("%s/%s returned %s after the primary was recreated (hold_down %s)", n, g.Name, since.Round(time.Millisecond), holdDown)
			}
		}
		if rs := ownedRoutes(t, nsOf(t, l, n)); len(rs) != 0 {
			t.Errorf("%s still owns %v after the return", n, rs)
		}
	}
}
