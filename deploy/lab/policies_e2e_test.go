package lab_test

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/remediate/failover"
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

// natBracket reads the NAT lifetime bracket from the keepalive policy's
// first set_keepalive audit line.
func natBracket(t *testing.T, logs string) (kept, expired time.Duration) {
	t.Helper()
	m := regexp.MustCompile(`idle gaps kept up to (\S+), expired from (\S+);`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no NAT bracket in the agent log:\n%s", logs)
	}
	var err error
	if kept, err = time.ParseDuration(m[1]); err != nil {
		t.Fatal(err)
	}
	if expired, err = time.ParseDuration(m[2]); err != nil {
		t.Fatal(err)
	}
	return kept, expired
}

func scrapeOf(t *testing.T, a *lab.Agent) string {
	t.Helper()
	_, body, err := a.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// peerValue reads one per-peer series of an agent.
func peerValue(t *testing.T, a *lab.Agent, name, publicKey string) (float64, bool) {
	t.Helper()
	for _, s := range parseScrape(t, scrapeOf(t, a))[name] {
		if s.labels["public_key"] == publicKey {
			return s.value, true
		}
	}
	return 0, false
}

// A NAT whose mappings expire after 5 s idle, and traffic only from the far
// side: the hub probes dc1 every 7 s, dc1 only sends wg(8)'s 25 s keepalive.
// The hub sees rebinds and lost probes after idle gaps; its agent brackets
// the mapping lifetime (within 30% when a gap that kept it is known, else
// no further above it than the probe interval), sets a keepalive below it,
// and within 2
// minutes the rebinds and failed replies stop. Peers without symptoms keep
// their settings.
func TestKeepalivePolicyOnTheLab(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	if _, err := l.Fault("dc1-primary", "nat-timeout=5s"); err != nil {
		t.Fatal(err)
	}
	fault := time.Now()
	var devices []string
	for _, tn := range l.Tunnels {
		devices = append(devices, tn.HubDevice)
	}
	cfg := filepath.Join(t.TempDir(), "hub.yml")
	yml := l.AgentConfig("hub", lab.Remediation{Mode: "auto", StateDir: t.TempDir(), ProberYAML: "interval: 7s\nwindow: 70s\npmtu: {enabled: false}"}) +
		"  keepalive:\n    enabled: true\n    devices: [" + strings.Join(devices, ", ") + "]\n    min: 2s\n    symptoms: 2\n"
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	hub := labtest.StartAgent(t, bin, l.HubNamespace, agentAddr, "--config.file="+cfg)
	primary, backup := l.Tunnels[0], l.Tunnels[1]
	keepalive := func(tn lab.Tunnel) float64 {
		v, _ := peerValue(t, hub, "wireguard_peer_persistent_keepalive_seconds", tn.PublicKey)
		return v
	}
	var set float64
	for set == 0 && time.Since(fault) < 2*time.Minute {
		time.Sleep(time.Second)
		set = keepalive(primary)
	}
	if set == 0 {
		t.Fatalf("no keepalive set within 2 minutes; agent log:\n%s", hub.Logs())
	}
	est, _ := peerValue(t, hub, "wgpulse_keepalive_nat_timeout_estimate_seconds", primary.PublicKey)
	t.Logf("keepalive %gs set %s after the fault; NAT lifetime estimate %.1fs (true 5s)", set, time.Since(fault).Round(time.Second), est)
	if set >= 5 {
		t.Errorf("keepalive %gs, want below the 5 s NAT timeout", set)
	}
	// The estimate can be no sharper than the idle gaps the traffic made.
	// With a gap known to have kept the mapping it is the middle of a
	// two-sided bracket: within 30% of the truth whenever the bracket is
	// no wider than 3 s (CI saw kept 2 s, expired 5 s: 3.5 s, the truth at
	// the bracket's edge); with only gaps that expired it is the shortest of
	// them, above the truth by however long the gap outlasted it (the hub
	// probes every 7 s, so below 7.5 s).
	kept, expired := natBracket(t, hub.Logs())
	t.Logf("bracket from the audit line: kept up to %s, expired from %s", kept, expired)
	mid := (kept + expired).Seconds() / 2
	switch {
	case kept > 0 && expired-kept <= 3*time.Second && (est < 3.5 || est > 6.5):
		t.Errorf("estimate %.1fs from a two-sided bracket of %s, want within 30%% of 5s", est, expired-kept)
	case kept > 0 && (est < mid-0.1 || est > mid+0.1): // the audit line rounds each end to 0.1 s
		t.Errorf("estimate %.1fs from the bracket %s..%s, want its middle %.2fs", est, kept, expired, mid)
	case kept == 0 && (est < 4.5 || est > 7.5):
		t.Errorf("estimate %.1fs from expired gaps only, want from the true 5s to the 7s probe interval", est)
	case kept > 5500*time.Millisecond || expired < 4500*time.Millisecond:
		t.Errorf("bracket kept %s, expired %s: the true 5 s lifetime lies outside it", kept, expired)
	}
	time.Sleep(30 * time.Second) // the next keepalive of the site recreates the mapping; ours then holds it
	rebinds, _ := peerValue(t, hub, "wireguard_peer_endpoint_changes_total", primary.PublicKey)
	failed, _ := peerValue(t, hub, "wgpulse_probe_failures_total", primary.PublicKey)
	time.Sleep(60 * time.Second)
	rebinds2, _ := peerValue(t, hub, "wireguard_peer_endpoint_changes_total", primary.PublicKey)
	failed2, _ := peerValue(t, hub, "wgpulse_probe_failures_total", primary.PublicKey)
	t.Logf("in the minute after: %g rebinds, %g failed probes (before: %g rebinds, %g failed in all)", rebinds2-rebinds, failed2-failed, rebinds, failed)
	if rebinds2 != rebinds || failed2 > failed {
		t.Errorf("symptoms go on with the keepalive set: %g more rebinds, %g more failed probes", rebinds2-rebinds, failed2-failed)
	}
	if rebinds < 2 || failed < 2 {
		t.Errorf("only %g rebinds and %g failed probes before: the NAT fault did not bite, the test proves nothing", rebinds, failed)
	}
	if v := keepalive(backup); v != 0 {
		t.Errorf("the peer without symptoms (dc1-backup) got keepalive %gs", v)
	}
}

// Dry-run of all three policies at once: dc1's first uplink down (endpoint
// failover), an MTU black hole on dc1-backup (MTU policy), a 5 s NAT on
// dc2-primary with traffic only from the hub (keepalive policy). Every
// decision is logged and counted as dry_run; no route, endpoint or
// keepalive changes.
func TestDryRunOfEveryPolicy(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}, DualWAN: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	dc1, _ := l.Site("dc1")
	routesBefore, err := lab.Routes(dc1.Namespace, "")
	if err != nil {
		t.Fatal(err)
	}
	site := startAgent(t, l, bin, lab.Remediation{Mode: "dry-run", Endpoint: map[string]string{"dc1": "fast"}, StateDir: t.TempDir(),
		MTU: true, MTUYAML: "min: 1200", ProberYAML: "pmtu: {min: 1200, interval: 1m, confirm: 10s}"}, "dc1")
	var hubDevices []string
	for _, tn := range l.Tunnels {
		hubDevices = append(hubDevices, tn.HubDevice)
	}
	cfg := filepath.Join(t.TempDir(), "hub.yml")
	yml := l.AgentConfig("hub", lab.Remediation{Mode: "dry-run", StateDir: t.TempDir(), ProberYAML: "interval: 7s\nwindow: 70s\npmtu: {enabled: false}"}) +
		"  keepalive:\n    enabled: true\n    devices: [" + strings.Join(hubDevices, ", ") + "]\n    min: 2s\n    symptoms: 2\n"
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	hub := labtest.StartAgent(t, bin, l.HubNamespace, agentAddr, "--config.file="+cfg)
	waitGroups(t, map[string]*lab.Agent{"dc1": site}, 20*time.Second, "both uplinks up", bothUp)
	for _, f := range [][]string{{"dc2-primary", "nat-timeout=5s"}, {"dc1-backup", "mtu=1300"}, {"dc1-primary", "down"}} {
		if _, err := l.Fault(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	dryRun := func(a *lab.Agent, policy, action string) float64 {
		var sum float64
		for _, s := range parseScrape(t, scrapeOf(t, a))["wgpulse_remediation_actions_total"] {
			if s.labels["policy"] == policy && s.labels["action"] == action && s.labels["result"] == "dry_run" && s.labels["mode"] == "dry-run" {
				sum += s.value
			}
		}
		return sum
	}
	deadline := time.Now().Add(150 * time.Second)
	for time.Now().Before(deadline) && (dryRun(site, "failover", "switch_to_backup") == 0 || dryRun(site, "mtu", "lower_mtu") == 0 || dryRun(hub, "keepalive", "set_keepalive") == 0) {
		time.Sleep(2 * time.Second)
	}
	for _, c := range []struct {
		a              *lab.Agent
		policy, action string
	}{{site, "failover", "switch_to_backup"}, {site, "mtu", "lower_mtu"}, {hub, "keepalive", "set_keepalive"}} {
		if dryRun(c.a, c.policy, c.action) == 0 {
			t.Errorf("no dry-run %s decision counted", c.policy)
		}
		if !strings.Contains(c.a.Logs(), "policy="+c.policy+" ") || !strings.Contains(c.a.Logs(), "result=dry_run") {
			t.Errorf("no dry-run %s audit line", c.policy)
		}
	}
	routesAfter, err := lab.Routes(dc1.Namespace, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(routesBefore, routesAfter); diff != "" {
		t.Errorf("dry-run changed dc1's routes (-before +after)\n%s", diff)
	}
	tun, _ := l.Tunnel("dc1-primary")
	if ep, ok := peerEndpoint(t, site, tun.HubPublicKey); !ok || ep != tun.RelayAddress {
		t.Errorf("dry-run moved dc1's endpoint to %q (was %s)", ep, tun.RelayAddress)
	}
	if v, _ := peerValue(t, hub, "wireguard_peer_persistent_keepalive_seconds", l.Tunnels[2].PublicKey); v != 0 {
		t.Errorf("dry-run set keepalive %gs on the hub", v)
	}
}

// peerEndpoint is the endpoint an agent shows for a peer.
func peerEndpoint(t *testing.T, a *lab.Agent, publicKey string) (string, bool) {
	t.Helper()
	for _, s := range parseScrape(t, scrapeOf(t, a))["wireguard_peer_info"] {
		if s.labels["public_key"] == publicKey {
			return s.labels["endpoint"], true
		}
	}
	return "", false
}

// report logs min/median/max of samples and reports them as metrics.
func report(b *testing.B, what, unit string, samples []float64) {
	slices.Sort(samples)
	b.Logf("%s over %d runs: %v", what, len(samples), samples)
	b.ReportMetric(samples[0], what+"-min-"+unit)
	b.ReportMetric(samples[len(samples)/2], what+"-p50-"+unit)
	b.ReportMetric(samples[len(samples)-1], what+"-max-"+unit)
}

// BenchmarkEndpointOutage measures the outage of LAN traffic (a ping every
// 10 ms) over repeated endpoint failovers of dc1 (fast profile, one agent).
func BenchmarkEndpointOutage(b *testing.B) {
	const runs = 7
	for b.Loop() {
		l := labtest.Start(b, lab.Config{Sites: []string{"dc1"}, DualWAN: []string{"dc1"}})
		bin := labtest.BuildBinary(b, "./cmd/wgpulse")
		cfg := filepath.Join(b.TempDir(), "dc1.yml")
		rem := lab.Remediation{Mode: "auto", Endpoint: map[string]string{"dc1": "fast"}, HoldDown: 3 * time.Second, StateDir: b.TempDir(),
			GroupYAML: "damping: {penalty: 1, suppress: 1000000, reuse: 999999, half_life: 1m}\nrate_limit: {burst: 1000, per: 1h}"}
		if err := os.WriteFile(cfg, []byte(l.AgentConfig("dc1", rem)), 0o600); err != nil {
			b.Fatal(err)
		}
		s, _ := l.Site("dc1")
		a := labtest.StartAgent(b, bin, s.Namespace, agentAddr, "--config.file="+cfg, "--log.level=info")
		wait := func(cond func(failover.GroupStatus) bool) {
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				var st failover.Report
				if code, body, err := a.Get("/-/remediate"); err == nil && code == 200 && json.Unmarshal([]byte(body), &st) == nil && len(st.Groups) == 1 && cond(st.Groups[0]) {
					return
				}
				if time.Now().After(deadline) {
					b.Fatal("agent state not reached within 30s")
				}
			}
		}
		wait(bothUp)
		p, err := lab.StartPinger(s.Namespace, "10.101.0.1", "10.50.0.1", 10*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		var outages []float64
		for range runs {
			time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond)
			cut := time.Now()
			if _, err := l.Fault("dc1-primary", "down"); err != nil {
				b.Fatal(err)
			}
			wait(active("backup"))
			time.Sleep(1500 * time.Millisecond)
			outages = append(outages, float64(p.Longest(cut, time.Now()).Took.Milliseconds()))
			if _, err := l.Fault("dc1-primary", "up"); err != nil {
				b.Fatal(err)
			}
			wait(active("primary"))
			wait(bothUp)
		}
		p.Stop()
		report(b, "endpoint-outage", "ms", outages)
	}
}

// BenchmarkMTUAndKeepaliveFix measures, over several runs each, the time
// from an MTU black hole (mtu=1300) to the MTU in force, and from a 5 s NAT
// timeout with traffic only from the hub to the keepalive set, with the
// estimate's error.
func BenchmarkMTUAndKeepaliveFix(b *testing.B) {
	const runs = 3
	for b.Loop() {
		l := labtest.Start(b, lab.Config{Sites: []string{"dc1", "dc2"}})
		bin := labtest.BuildBinary(b, "./cmd/wgpulse")
		dc1, _ := l.Site("dc1")
		labtest.StartAgentWith(b, lab.AgentOptions{Bin: bin, NS: dc1.Namespace, Addr: agentAddr, Args: []string{"--config.file=" + writeConfig(b,
			l.AgentConfig("dc1", lab.Remediation{Mode: "auto", StateDir: b.TempDir(), MTU: true, MTUYAML: "min: 1200\nhold_down: 5s",
				ProberYAML: "pmtu: {min: 1200, interval: 1m, confirm: 10s}"})), "--log.level=info"}})
		var hubDevices []string
		for _, tn := range l.Tunnels {
			hubDevices = append(hubDevices, tn.HubDevice)
		}
		hubCfg := l.AgentConfig("hub", lab.Remediation{Mode: "auto", StateDir: b.TempDir(), ProberYAML: "interval: 7s\nwindow: 70s\npmtu: {enabled: false}"}) +
			"  keepalive:\n    enabled: true\n    devices: [" + strings.Join(hubDevices, ", ") + "]\n    min: 2s\n    symptoms: 2\n"
		hub := labtest.StartAgentWith(b, lab.AgentOptions{Bin: bin, NS: l.HubNamespace, Addr: agentAddr, Args: []string{"--config.file=" + writeConfig(b, hubCfg), "--log.level=info"}})
		var mtuTimes, kaTimes, kaErrs []float64
		for i := range runs {
			// MTU on dc1-primary.
			fault := time.Now()
			if _, err := l.Fault("dc1-primary", "mtu=1300"); err != nil {
				b.Fatal(err)
			}
			for route := (*lab.Route)(nil); route == nil; {
				if time.Since(fault) > 3*time.Minute {
					b.Fatal("no MTU route within 3 minutes")
				}
				time.Sleep(500 * time.Millisecond)
				rs, _ := lab.Routes(dc1.Namespace, "10.50.0.0/16")
				for _, r := range rs {
					if r.Protocol == "117" {
						route = &r
					}
				}
			}
			mtuTimes = append(mtuTimes, time.Since(fault).Seconds())
			// Keepalive on dc2-primary (a fresh peer each run: dc2's NAT, then reset).
			tn := l.Tunnels[2]
			fault = time.Now()
			if _, err := l.Fault("dc2-primary", "nat-timeout=5s"); err != nil {
				b.Fatal(err)
			}
			for {
				v, _ := hubPeerValue(b, hub, "wgpulse_remediation_keepalive_seconds", tn.PublicKey)
				if v > 0 {
					est, _ := hubPeerValue(b, hub, "wgpulse_keepalive_nat_timeout_estimate_seconds", tn.PublicKey)
					kaTimes = append(kaTimes, time.Since(fault).Seconds())
					kaErrs = append(kaErrs, 100*(est-5)/5)
					break
				}
				if time.Since(fault) > 4*time.Minute {
					b.Fatal("no keepalive within 4 minutes")
				}
				time.Sleep(time.Second)
			}
			if i == runs-1 {
				break
			}
			// Reset for the next run: clear the faults, restart the hub agent
			// with its state file gone (a fresh estimate), and let the MTU go back up.
			for _, f := range [][]string{{"dc1-primary", "mtu=0"}, {"dc2-primary", "nat-timeout=0"}} {
				if _, err := l.Fault(f[0], f[1]); err != nil {
					b.Fatal(err)
				}
			}
			hub.Stop()
			if err := lab.IP("netns", "exec", l.HubNamespace, "wg", "set", tn.HubDevice, "peer", tn.PublicKey, "persistent-keepalive", "0"); err != nil {
				b.Fatal(err)
			}
			hubCfg = l.AgentConfig("hub", lab.Remediation{Mode: "auto", StateDir: b.TempDir(), ProberYAML: "interval: 7s\nwindow: 70s\npmtu: {enabled: false}"}) +
				"  keepalive:\n    enabled: true\n    devices: [" + strings.Join(hubDevices, ", ") + "]\n    min: 2s\n    symptoms: 2\n"
			hub = labtest.StartAgentWith(b, lab.AgentOptions{Bin: bin, NS: l.HubNamespace, Addr: agentAddr, Args: []string{"--config.file=" + writeConfig(b, hubCfg), "--log.level=info"}})
			for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(time.Second) {
				rs, _ := lab.Routes(dc1.Namespace, "10.50.0.0/16")
				if !slices.ContainsFunc(rs, func(r lab.Route) bool { return r.Protocol == "117" }) {
					break
				}
				if time.Now().After(deadline) {
					b.Fatal("the MTU did not go back up")
				}
			}
		}
		report(b, "mtu-fix", "s", mtuTimes)
		report(b, "keepalive-fix", "s", kaTimes)
		report(b, "nat-estimate-error", "%", kaErrs)
	}
}

func writeConfig(b *testing.B, yml string) string {
	p := filepath.Join(b.TempDir(), "agent.yml")
	if err := os.WriteFile(p, []byte(yml), 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

func hubPeerValue(b *testing.B, a *lab.Agent, name, publicKey string) (float64, bool) {
	_, body, err := a.Get("/metrics")
	if err != nil {
		return 0, false
	}
	for _, s := range parseScrape(b, body)[name] {
		if s.labels["public_key"] == publicKey {
			return s.value, true
		}
	}
	return 0, false
}
