package lab_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// ourMTURoute is the MTU policy's route for the hub LAN in the site, if any.
func ourMTURoute(t *testing.T, ns, lanPrefix string) *lab.Route {
	t.Helper()
	rs, err := lab.Routes(ns, lanPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Protocol == "117" {
			return &r
		}
	}
	return nil
}

// An MTU black hole of 1300 bytes on dc1-primary: a 1 MB TCP transfer
// between the LANs stalls; within 60 s the site's agent puts the measured
// path MTU in force for that peer and the same transfer succeeds; once the
// fault is cleared and hold_down has passed, the MTU goes back up.
func TestMTUPolicyOnTheLab(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	site := startAgent(t, l, bin, lab.Remediation{Mode: "auto", StateDir: t.TempDir(), MTU: true,
		MTUYAML:    "min: 1200\nhold_down: 20s",
		ProberYAML: "pmtu: {min: 1200, interval: 1m, confirm: 10s}"}, "dc1")
	s, _ := l.Site("dc1")
	// The first search finds the clean path.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(scrapeOf(t, site), `wgpulse_path_mtu_bytes{device="`+l.Tunnels[0].Device+`"`) && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	if _, err := lab.TCPTransfer(l.HubNamespace, "10.50.0.1:7101", s.Namespace, "10.101.0.1", 1<<20, 10*time.Second); err != nil {
		t.Fatalf("1 MB over the clean path: %v", err)
	}

	fault := time.Now()
	if _, err := l.Fault("dc1-primary", "mtu=1300"); err != nil {
		t.Fatal(err)
	}
	took, err := lab.TCPTransfer(l.HubNamespace, "10.50.0.1:7102", s.Namespace, "10.101.0.1", 1<<20, 8*time.Second)
	if err == nil {
		t.Fatalf("1 MB through the black hole took %s: the fault does not bite, the test proves nothing", took)
	}
	t.Logf("before remediation: %v", err)
	var route *lab.Route
	for route == nil && time.Since(fault) < 60*time.Second {
		time.Sleep(500 * time.Millisecond)
		route = ourMTURoute(t, s.Namespace, "10.50.0.0/16")
	}
	if route == nil {
		t.Fatalf("no MTU route within 60 s of the fault; agent log:\n%s", site.Logs())
	}
	t.Logf("MTU in force %s after the fault: %s", time.Since(fault).Round(100*time.Millisecond), route)
	if route.MTU > 1232 || route.MTU < 1212 {
		t.Errorf("route MTU %d: want within 20 bytes below 1232 (what mtu=1300 lets through a 1420 device)", route.MTU)
	}
	took, err = lab.TCPTransfer(l.HubNamespace, "10.50.0.1:7103", s.Namespace, "10.101.0.1", 1<<20, 10*time.Second)
	if err != nil {
		t.Fatalf("1 MB after remediation: %v", err)
	}
	t.Logf("after remediation: 1 MB in %s", took.Round(time.Millisecond))

	cleared := time.Now()
	if _, err := l.Fault("dc1-primary", "mtu=0"); err != nil {
		t.Fatal(err)
	}
	for ourMTURoute(t, s.Namespace, "10.50.0.0/16") != nil && time.Since(cleared) < 3*time.Minute {
		time.Sleep(time.Second)
	}
	if r := ourMTURoute(t, s.Namespace, "10.50.0.0/16"); r != nil {
		t.Fatalf("MTU route %s still there 3 min after the fault was cleared", r)
	}
	t.Logf("MTU back up %s after the fault was cleared (next full search, then hold_down 20s)", time.Since(cleared).Round(time.Second))
}

func scrapeOf(t *testing.T, a *lab.Agent) string {
	t.Helper()
	_, body, err := a.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return body
}
