package lab_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

const agentAddr = "127.0.0.1:9586"

// startAgents runs an agent with the lab's config on each node.
func startAgents(t *testing.T, l *lab.Lab, bin string, r lab.Remediation, nodes ...string) map[string]*lab.Agent {
	t.Helper()
	agents := map[string]*lab.Agent{}
	for _, n := range nodes {
		agents[n] = startAgent(t, l, bin, r, n)
	}
	return agents
}

func startAgent(t *testing.T, l *lab.Lab, bin string, r lab.Remediation, node string) *lab.Agent {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), node+".yml")
	if err := os.WriteFile(cfg, []byte(l.AgentConfig(node, r)), 0o600); err != nil {
		t.Fatal(err)
	}
	return labtest.StartAgent(t, bin, nsOf(t, l, node), agentAddr, "--config.file="+cfg)
}

func nsOf(t *testing.T, l *lab.Lab, node string) string {
	t.Helper()
	if node == "hub" {
		return l.HubNamespace
	}
	s, err := l.Site(node)
	if err != nil {
		t.Fatal(err)
	}
	return s.Namespace
}

func status(t *testing.T, a *lab.Agent) failover.Report {
	t.Helper()
	code, body, err := a.Get("/-/remediate")
	if err != nil || code != 200 {
		t.Fatalf("GET /-/remediate in %s: %d %v %s", a.NS, code, err, body)
	}
	var s failover.Report
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitGroups waits until every group of every agent satisfies cond.
func waitGroups(t *testing.T, agents map[string]*lab.Agent, limit time.Duration, what string, cond func(failover.GroupStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok := true
		var last []string
		for n, a := range agents {
			for _, g := range status(t, a).Groups {
				if !cond(g) {
					ok = false
					last = append(last, fmt.Sprintf("%s/%s: active %s, primary %s (%s), backup %s (%s)", n, g.Name, g.Active,
						g.Paths["primary"].State, g.Paths["primary"].Reason, g.Paths["backup"].State, g.Paths["backup"].Reason))
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s:\n%s", what, limit, strings.Join(last, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func bothUp(g failover.GroupStatus) bool {
	return g.Paths["primary"].State == "up" && g.Paths["backup"].State == "up"
}

func active(path string) func(failover.GroupStatus) bool {
	return func(g failover.GroupStatus) bool { return g.Active == path }
}

// ownedRoutes are the routes of wgpulse's protocol in a namespace.
func ownedRoutes(t *testing.T, ns string) []lab.Route {
	t.Helper()
	rs, err := lab.Routes(ns, "")
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(rs, func(r lab.Route) bool { return r.Protocol != "117" })
}

// dc1-primary and dc2-primary go down: traffic between the LANs moves to the
// backups within 1 s (fast) and 5 s (default) in both directions, a TCP
// stream survives; when the primaries are back it returns after hold_down
// without losing a ping.
func TestFailoverOutageAndReturn(t *testing.T) {
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	const holdDown = 5 * time.Second
	agents := startAgents(t, l, bin, lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast", "dc2": "default"},
		HoldDown: holdDown, StateDir: t.TempDir()}, "hub", "dc1", "dc2")
	waitGroups(t, agents, 20*time.Second, "every path up", bothUp)

	type flow struct {
		site   string
		limit  time.Duration
		ping   *lab.Pinger
		stream *lab.TCPStream
	}
	var flows []*flow
	for i, f := range []struct {
		site  string
		limit time.Duration
	}{{"dc1", time.Second}, {"dc2", 5 * time.Second}} {
		s, _ := l.Site(f.site)
		src := strings.TrimSuffix(s.LAN, "0.0/16") + "0.1"
		p, err := lab.StartPinger(s.Namespace, src, "10.50.0.1", 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		st, err := lab.StartTCPStream(l.HubNamespace, fmt.Sprintf("10.50.0.1:%d", 7001+i), s.Namespace, src)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Stop()
		flows = append(flows, &flow{f.site, f.limit, p, st})
	}
	time.Sleep(2 * time.Second)
	for _, f := range flows {
		if o := f.ping.Longest(time.Time{}, time.Time{}); o.Lost > 0 {
			t.Fatalf("%s: %d pings lost before any fault", f.site, o.Lost)
		}
	}

	cut := time.Now()
	for _, path := range []string{"dc1-primary", "dc2-primary"} {
		if _, err := l.Fault(path, "down"); err != nil {
			t.Fatal(err)
		}
	}
	waitGroups(t, agents, 15*time.Second, "every group on its backup", active("backup"))
	time.Sleep(2 * time.Second)
	for _, f := range flows {
		o := f.ping.Longest(cut, time.Time{})
		t.Logf("%s: outage %s (%d pings of 10 ms lost) after the primary went down", f.site, o.Took, o.Lost)
		if o.Took > f.limit {
			t.Errorf("%s: outage %s, want <= %s", f.site, o.Took, f.limit)
		}
		if _, _, stall, err := f.stream.Check(); err != nil {
			t.Errorf("%s: TCP stream broken by the failover: %v", f.site, err)
		} else {
			t.Logf("%s: TCP stream intact, longest stall %s", f.site, stall.Round(time.Millisecond))
		}
	}
	for _, n := range []string{"hub", "dc1", "dc2"} {
		if rs := ownedRoutes(t, nsOf(t, l, n)); len(rs) != 2 && n == "hub" || len(rs) != 1 && n != "hub" {
			t.Errorf("%s owns %v; want one route per group, no duplicate", n, rs)
		}
	}

	restore := time.Now()
	for _, path := range []string{"dc1-primary", "dc2-primary"} {
		if _, err := l.Fault(path, "up"); err != nil {
			t.Fatal(err)
		}
	}
	waitGroups(t, agents, holdDown+20*time.Second, "every group back on its primary", active("primary"))
	time.Sleep(2 * time.Second)
	for n, a := range agents {
		for _, g := range status(t, a).Groups {
			if since := g.ActiveSince.Sub(restore); since < holdDown {
				t.Errorf("%s/%s returned %s after the primary came back, want >= hold_down %s", n, g.Name, since, holdDown)
			}
		}
		if rs := ownedRoutes(t, nsOf(t, l, n)); len(rs) != 0 {
			t.Errorf("%s still owns %v after the return", n, rs)
		}
	}
	for _, f := range flows {
		if os := f.ping.Outages(restore, time.Time{}); len(os) != 0 {
			t.Errorf("%s: pings lost after the primary came back: %+v", f.site, os)
		}
		sent, echoed, stall, err := f.stream.Check()
		if err != nil || echoed < sent-10 {
			t.Errorf("%s: TCP stream after the return: %d sent, %d echoed, %v", f.site, sent, echoed, err)
		}
		t.Logf("%s: TCP stream %d messages, longest stall %s, no reset", f.site, echoed, stall.Round(time.Millisecond))
	}
}

// 10% loss on a primary for 2 minutes moves nothing, with either profile;
// a primary flapping 5 s down / 5 s up for 2 minutes causes at most 3
// switches per agent.
func TestNoSwitchOnLossAndBoundedFlapping(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2", "dc3"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	agents := startAgents(t, l, bin, lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast", "dc2": "default", "dc3": "fast"},
		HoldDown: 5 * time.Second, StateDir: t.TempDir()}, "hub", "dc1", "dc2", "dc3")
	waitGroups(t, agents, 20*time.Second, "every path up", bothUp)
	for _, path := range []string{"dc1-primary", "dc2-primary"} {
		if _, err := l.Fault(path, "loss=10"); err != nil {
			t.Fatal(err)
		}
	}
	end := time.Now().Add(2 * time.Minute)
	for time.Now().Before(end) {
		if _, err := l.Fault("dc3-primary", "down"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if _, err := l.Fault("dc3-primary", "up"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
	}
	for n, a := range agents {
		for _, g := range status(t, a).Groups {
			site := g.Name // on the hub, groups are named after their sites
			if n != "hub" {
				site = n
			}
			limit := 0
			if site == "dc3" {
				limit = 3
			}
			t.Logf("%s/%s (%s): %d switches", n, g.Name, site, g.Switches)
			if g.Switches > limit {
				t.Errorf("%s/%s: %d switches, want at most %d", n, g.Name, g.Switches, limit)
			}
			if site == "dc3" && g.Switches == 0 {
				t.Errorf("%s/%s: the flapping primary never failed over: the test proves nothing", n, g.Name)
			}
		}
	}
}

// Dry-run logs and counts the decision and leaves every route as it was.
func TestDryRunTouchesNothing(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	a := startAgent(t, l, bin, lab.Remediation{Mode: "dry-run", Profiles: map[string]string{"dc1": "fast"}, StateDir: t.TempDir()}, "dc1")
	waitGroups(t, map[string]*lab.Agent{"dc1": a}, 20*time.Second, "every path up", bothUp)
	before, err := lab.Routes(nsOf(t, l, "dc1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, map[string]*lab.Agent{"dc1": a}, 10*time.Second, "the dry-run switch", active("backup"))
	after, err := lab.Routes(nsOf(t, l, "dc1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("dry-run changed routes (-before +after)\n%s", diff)
	}
	_, body, err := a.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	want := `wgpulse_remediation_actions_total{action="switch_to_backup",group="hub",mode="dry-run",policy="failover",result="dry_run"} 1`
	if !strings.Contains(body, want) {
		t.Errorf("metrics lack %s", want)
	}
	if !strings.Contains(a.Logs(), `msg="remediation decision"`) || !strings.Contains(a.Logs(), "result=dry_run") {
		t.Errorf("no audit line for the dry-run decision:\n%s", a.Logs())
	}
	// SIGUSR1 toggles the pause.
	for _, want := range []bool{true, false} {
		if err := a.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for status(t, a).Paused != want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := status(t, a).Paused; got != want {
			t.Fatalf("after SIGUSR1: paused %v, want %v", got, want)
		}
	}
}

// An agent killed (SIGKILL) on the backup and restarted while the primary
// is still down adds no duplicate and does not flip back, and its state
// file agrees with the kernel; with restore_on_exit, SIGTERM keeps the
// route while the primary is down and, once it is up, leaves the routes
// exactly as they were before any agent started.
func TestCrashRestartAndRestoreOnExit(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	ns := nsOf(t, l, "dc1")
	pristine, err := lab.Routes(ns, "")
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast"}, StateDir: stateDir}
	a := startAgent(t, l, bin, rem, "dc1")
	waitGroups(t, map[string]*lab.Agent{"dc1": a}, 20*time.Second, "every path up", bothUp)
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, map[string]*lab.Agent{"dc1": a}, 10*time.Second, "switch", active("backup"))
	a.Kill()

	b := startAgent(t, l, bin, rem, "dc1")
	time.Sleep(5 * time.Second) // long enough to act, were it to
	owned := ownedRoutes(t, ns)
	if len(owned) != 1 || owned[0].Dev != l.Tunnels[1].Device {
		t.Fatalf("after the restart wgpulse owns %v; want exactly one route via the backup", owned)
	}
	if s := status(t, b); s.Groups[0].Active != "backup" {
		t.Fatalf("restarted agent: active %s, want backup (the primary is still down)", s.Groups[0].Active)
	}
	if strings.Contains(b.Logs(), "remediation decision") {
		t.Errorf("the restarted agent decided something:\n%s", b.Logs())
	}
	var file struct {
		Policies struct {
			Failover struct {
				Groups map[string]struct{ Active string } `json:"groups"`
				Routes []struct {
					Prefix, Device string
					Metric         int
				} `json:"owned_routes"`
			} `json:"failover"`
		} `json:"policies"`
	}
	raw, err := os.ReadFile(filepath.Join(stateDir, "dc1.json"))
	if err == nil {
		err = json.Unmarshal(raw, &file)
	}
	st := file.Policies.Failover
	if err != nil || st.Groups["hub"].Active != "backup" || len(st.Routes) != 1 ||
		st.Routes[0].Prefix != owned[0].Dst || st.Routes[0].Device != owned[0].Dev || st.Routes[0].Metric != owned[0].Metric {
		t.Errorf("state file (%v) disagrees with the kernel %v:\n%s", err, owned, raw)
	}

	b.Stop() // restore_on_exit is off: the route stays
	if len(ownedRoutes(t, ns)) != 1 {
		t.Fatal("SIGTERM without restore_on_exit removed the route")
	}
	term := func(a *lab.Agent) {
		t.Helper()
		if err := a.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("agent did not exit on SIGTERM")
		}
	}
	// restore_on_exit with the primary still down: deleting the route would
	// drop the traffic, so the clean exit keeps it and says so.
	rem.RestoreOnExit = true
	c := startAgent(t, l, bin, rem, "dc1")
	time.Sleep(2 * time.Second)
	term(c)
	if len(ownedRoutes(t, ns)) != 1 || !strings.Contains(c.Logs(), "kept on the backup") {
		t.Fatalf("restore_on_exit with the primary down: wgpulse owns %v; want the route kept, audited:\n%s", ownedRoutes(t, ns), c.Logs())
	}
	// The primary healed, the group still on the backup (within hold_down):
	// a clean exit hands the traffic back.
	if _, err := l.Fault("dc1-primary", "up"); err != nil {
		t.Fatal(err)
	}
	rem.HoldDown = time.Minute
	d := startAgent(t, l, bin, rem, "dc1")
	waitGroups(t, map[string]*lab.Agent{"dc1": d}, 20*time.Second, "the primary up, still on the backup", func(g failover.GroupStatus) bool {
		return g.Active == "backup" && g.Paths["primary"].State == "up"
	})
	term(d)
	c = d
	after, err := lab.Routes(ns, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(pristine, after); diff != "" {
		t.Errorf("after restore_on_exit the routes differ from before any agent (-before +after)\n%s\n%s", diff, c.Logs())
	}
}

// BenchmarkFailoverOutage measures the outage of traffic between two LANs
// (a ping every 10 ms) over repeated failovers of dc1 (fast profile) and
// dc2 (default profile) at once, with agents on the hub and both sites, and
// reports min, median and max per profile. `make bench` runs it once; each
// run makes `failovers` failovers.
func BenchmarkFailoverOutage(b *testing.B) {
	const failovers = 7
	for b.Loop() {
		l := labtest.Start(b, lab.Config{Sites: []string{"dc1", "dc2"}})
		bin := labtest.BuildBinary(b, "./cmd/wgpulse")
		agents := map[string]*lab.Agent{}
		for _, n := range []string{"hub", "dc1", "dc2"} {
			cfg := filepath.Join(b.TempDir(), n+".yml")
			rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast", "dc2": "default"}, HoldDown: 3 * time.Second, StateDir: b.TempDir(),
				// Damping and the rate limit would (rightly) stop repeated failovers: out of the way here.
				GroupYAML: "damping: {penalty: 1, suppress: 1000000, reuse: 999999, half_life: 1m}\nrate_limit: {burst: 1000, per: 1h}"}
			if err := os.WriteFile(cfg, []byte(l.AgentConfig(n, rem)), 0o600); err != nil {
				b.Fatal(err)
			}
			ns := l.HubNamespace
			if n != "hub" {
				s, _ := l.Site(n)
				ns = s.Namespace
			}
			agents[n] = labtest.StartAgent(b, bin, ns, agentAddr, "--config.file="+cfg, "--log.level=info")
		}
		wait := func(what string, cond func(failover.GroupStatus) bool) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				ok := true
				for _, a := range agents {
					code, body, err := a.Get("/-/remediate")
					var s failover.Report
					if err != nil || code != 200 || json.Unmarshal([]byte(body), &s) != nil {
						ok = false
						break
					}
					for _, g := range s.Groups {
						ok = ok && cond(g)
					}
				}
				if ok {
					return
				}
				if time.Now().After(deadline) {
					b.Fatalf("%s: not within 30s", what)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		wait("every path up", bothUp)
		pings := map[string]*lab.Pinger{}
		for _, site := range []string{"dc1", "dc2"} {
			s, _ := l.Site(site)
			p, err := lab.StartPinger(s.Namespace, strings.TrimSuffix(s.LAN, "0.0/16")+"0.1", "10.50.0.1", 10*time.Millisecond)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Stop()
			pings[site] = p
		}
		outages := map[string][]time.Duration{}
		for range failovers {
			time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond) // a random phase against the probe schedule
			cut := time.Now()
			for _, path := range []string{"dc1-primary", "dc2-primary"} {
				if _, err := l.Fault(path, "down"); err != nil {
					b.Fatal(err)
				}
			}
			wait("every group on its backup", active("backup"))
			time.Sleep(1500 * time.Millisecond)
			end := time.Now()
			for site, p := range pings {
				outages[site] = append(outages[site], p.Longest(cut, end).Took)
			}
			for _, path := range []string{"dc1-primary", "dc2-primary"} {
				if _, err := l.Fault(path, "up"); err != nil {
					b.Fatal(err)
				}
			}
			wait("every group back on its primary", active("primary"))
			wait("every path up", bothUp)
		}
		for site, profile := range map[string]string{"dc1": "fast", "dc2": "default"} {
			o := outages[site]
			slices.Sort(o)
			b.Logf("%s profile outages over %d failovers: %v", profile, len(o), o)
			b.ReportMetric(float64(o[0].Milliseconds()), profile+"-min-ms")
			b.ReportMetric(float64(o[len(o)/2].Milliseconds()), profile+"-p50-ms")
			b.ReportMetric(float64(o[len(o)-1].Milliseconds()), profile+"-max-ms")
		}
	}
}

// hubEndpointOf scrapes the hub agent for the endpoint it sees for a peer.
func hubEndpointOf(t *testing.T, hub *lab.Agent, publicKey string) string {
	t.Helper()
	_, body, err := hub.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range parseScrape(t, body)["wireguard_peer_info"] {
		if s.labels["public_key"] == publicKey {
			return s.labels["endpoint"]
		}
	}
	t.Fatalf("the hub agent does not show peer %s", publicKey)
	return ""
}

// Endpoint mode: dc1's primary tunnel runs over two uplinks. The first one
// dies: the site's agent alone swaps the peer's endpoint within 1 s (fast
// profile), the TCP stream survives and the hub sees the site at its new
// endpoint; the uplink back, the endpoint returns after hold_down.
func TestEndpointFailoverOnTheLab(t *testing.T) {
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}, DualWAN: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	const holdDown = 5 * time.Second
	site := startAgent(t, l, bin, lab.Remediation{Mode: "auto", Endpoint: map[string]string{"dc1": "fast"}, HoldDown: holdDown, StateDir: t.TempDir()}, "dc1")
	hub := startAgent(t, l, bin, lab.Remediation{}, "hub") // watches only
	agents := map[string]*lab.Agent{"dc1": site}
	waitGroups(t, agents, 20*time.Second, "both uplinks up", bothUp)
	tun, _ := l.Tunnel("dc1-primary")
	time.Sleep(2 * time.Second) // the hub agent polls the endpoint each second
	before := hubEndpointOf(t, hub, tun.PublicKey)

	s, _ := l.Site("dc1")
	ping, err := lab.StartPinger(s.Namespace, "10.101.0.1", "10.50.0.1", 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Stop()
	stream, err := lab.StartTCPStream(l.HubNamespace, "10.50.0.1:7003", s.Namespace, "10.101.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Stop()
	time.Sleep(time.Second)

	cut := time.Now()
	if _, err := l.Fault("dc1-primary", "down"); err != nil { // the first uplink
		t.Fatal(err)
	}
	waitGroups(t, agents, 10*time.Second, "endpoint on the second uplink", active("backup"))
	time.Sleep(2 * time.Second)
	o := ping.Longest(cut, time.Time{})
	t.Logf("endpoint failover: outage %s (%d pings of 10 ms lost)", o.Took, o.Lost)
	if o.Took > time.Second {
		t.Errorf("outage %s, want <= 1s (fast profile)", o.Took)
	}
	if _, _, stall, err := stream.Check(); err != nil {
		t.Errorf("TCP stream broken by the endpoint swap: %v", err)
	} else {
		t.Logf("TCP stream intact, longest stall %s", stall.Round(time.Millisecond))
	}
	after := hubEndpointOf(t, hub, tun.PublicKey)
	if after == before || after == "" {
		t.Errorf("the hub still sees the site at %s (before: %s)", after, before)
	}
	t.Logf("the hub sees the site at %s, was %s", after, before)

	restore := time.Now()
	if _, err := l.Fault("dc1-primary", "up"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, holdDown+20*time.Second, "endpoint back on the first uplink", active("primary"))
	g := status(t, site).Groups[0]
	if since := g.ActiveSince.Sub(restore); since < holdDown {
		t.Errorf("returned %s after the uplink came back, want >= hold_down %s", since, holdDown)
	}
	time.Sleep(2 * time.Second)
	lost := 0
	for _, o := range ping.Outages(restore, time.Time{}) {
		lost += o.Lost
	}
	t.Logf("return after %s: %d pings lost since the uplink came back", g.ActiveSince.Sub(restore).Round(100*time.Millisecond), lost)
	if _, _, _, err := stream.Check(); err != nil {
		t.Errorf("TCP stream broken by the return: %v", err)
	}
	if st := status(t, site); st.Groups[0].Conflicts != 0 {
		t.Errorf("conflicts %d: a roam back during the return was taken for another manager", st.Groups[0].Conflicts)
	}
}
