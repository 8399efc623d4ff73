package lab_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// dc1's two tunnels brought up by real wg-quick (userspace wireguard-go, as
// this machine has no WireGuard module): the primary with the default
// `Table = auto`, which routes the hub's LAN with metric 0, the backup with
// `Table = off`. A cut fails over within the fast profile's bound (by the
// prefix's halves), the heal returns after hold_down and leaves exactly
// wg-quick's routes, and `wg-quick down` of both, while on the backup,
// leaves nothing of ours and an agent that keeps serving.
func TestFailoverWithRealWgQuick(t *testing.T) {
	wgQuick := labtest.Tool(t, "wg-quick", "wireguard-tools")
	labtest.Tool(t, "wireguard-go", "wireguard-go")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	s, _ := l.Site("dc1")
	p, b := mustTunnel(t, l, "dc1-primary"), mustTunnel(t, l, "dc1-backup")
	dir := t.TempDir()
	quick := func(verb string, tn lab.Tunnel) error {
		cmd := exec.Command("ip", "netns", "exec", s.Namespace, wgQuick, verb, filepath.Join(dir, tn.Device+".conf"))
		cmd.Env = append(os.Environ(), "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return &quickError{verb, tn.Device, err, string(out)}
		}
		return nil
	}
	for _, u := range []struct {
		tn    lab.Tunnel
		table string
	}{{p, "auto"}, {b, "off"}} {
		conf, err := l.Release(u.tn.Name, u.table)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, u.tn.Device+".conf"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := quick("up", u.tn); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = quick("down", u.tn) }) // a test that stopped early
	}
	rs, err := lab.Routes(s.Namespace, l.HubLAN)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Dev != p.Device || rs[0].Metric != 0 {
		t.Fatalf("routes for %s after wg-quick up: %+v, want wg-quick's one via %s with metric 0", l.HubLAN, rs, p.Device)
	}
	wgq := rs[0]
	t.Logf("wg-quick's route: %s dev %s metric %d proto %s", wgq.Dst, wgq.Dev, wgq.Metric, wgq.Protocol)

	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	const holdDown = 5 * time.Second
	rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast"}, HoldDown: holdDown, StateDir: t.TempDir()}
	agents := startAgents(t, l, bin, rem, "hub", "dc1")
	waitGroups(t, agents, 30*time.Second, "every path up (wg-quick's devices handshaked)", bothUp)
	cutAndHealOverWgQuick(t, l, agents, holdDown, wgq, "the primary under wg-quick's Table = auto")

	// On the backup again, then the operator takes both tunnels down.
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, 10*time.Second, "every group on its backup", active("backup"))
	for _, tn := range []lab.Tunnel{p, b} {
		if err := quick("down", tn); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // a 2 s check, and a decision or two
	if owned := ownedRoutes(t, s.Namespace); len(owned) != 0 {
		t.Errorf("after wg-quick down of both, dc1 still owns %v", owned)
	}
	if code, _, err := agents["dc1"].Get("/metrics"); err != nil || code != 200 {
		t.Errorf("the agent after wg-quick down: /metrics %d %v", code, err)
	}
	if st := status(t, agents["dc1"]).Groups[0]; st.Active != "primary" {
		t.Errorf("the group believes %s with both devices gone and our routes with them; want the kernel's primary", st.Active)
	}
}

type quickError struct {
	verb, device string
	err          error
	out          string
}

func (e *quickError) Error() string {
	return "wg-quick " + e.verb + " " + e.device + ": " + e.err.Error() + "\n" + e.out
}
