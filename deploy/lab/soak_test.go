package lab_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// soakFault is one fault of the soak's timeline on one tunnel.
type soakFault struct {
	tunnel, kind string // kind: down, loss, delay, mtu, rebind, recreate
	from, to     time.Time
}

// unhealthy says whether the fault makes a path down by the failover
// rules (the profiles have no RTT rule; an MTU limit and a NAT rebind do
// not stop small probes): only then may a group leave it.
func (f soakFault) unhealthy() bool {
	return f.kind == "down" || f.kind == "loss" || f.kind == "recreate"
}

// soakDecision is one carried-out failover decision from an agent's audit log.
type soakDecision struct {
	node, group, action string
	at                  time.Time
}

// BenchmarkSoak runs agents in auto (failover and MTU policies) on every
// lab node for WGPULSE_SOAK (default 10m) while faults cycle on every path:
// every 30 s the next tunnel gets the next fault for 20 s (down, loss 50%,
// delay 150 ms, MTU 1300, NAT rebind), so each tunnel sees each fault; and
// every 2 minutes a site's tunnel device is recreated (what `systemctl
// restart wg-quick@` does). It reports, and fails on:
//   - routes of wgpulse left after the run (faults cleared, agents stopped
//     with restore_on_exit): must be 0;
//   - switches to a backup while its primary was healthy: must be 0;
//   - returns onto a primary while its fault was on: must be 0;
//   - every switch after a primary went down within its profile's bound
//     (fast 1 s, default 4 s from the fault to the audited decision);
//   - goroutines, open fds and RSS of each agent sampled every 15 s: the
//     last sample within a margin of the one after the first minute.
func BenchmarkSoak(b *testing.B) {
	dur := 10 * time.Minute
	if v := os.Getenv("WGPULSE_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			b.Fatalf("WGPULSE_SOAK=%q: want a duration of at least 1m", v)
		}
		dur = d
	}
	for b.Loop() {
		soak(b, dur)
	}
}

func soak(b *testing.B, dur time.Duration) {
	l := labtest.Start(b, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(b, "./cmd/wgpulse")
	profiles := map[string]string{"dc1": "fast", "dc2": "default"}
	bounds := map[string]time.Duration{"fast": time.Second, "default": 4 * time.Second}
	nodes := []string{"hub", "dc1", "dc2"}
	nsOf := map[string]string{"hub": l.HubNamespace}
	agents := map[string]*lab.Agent{}
	for _, n := range nodes {
		if n != "hub" {
			s, _ := l.Site(n)
			nsOf[n] = s.Namespace
		}
		cfg := filepath.Join(b.TempDir(), n+".yml")
		rem := lab.Remediation{Mode: "auto", Profiles: profiles, HoldDown: 5 * time.Second, StateDir: b.TempDir(), RestoreOnExit: true, MTU: true,
			MTUYAML: "hold_down: 1m\nmin: 1200\n"}
		if err := os.WriteFile(cfg, []byte(l.AgentConfig(n, rem)), 0o600); err != nil {
			b.Fatal(err)
		}
		agents[n] = labtest.StartAgent(b, bin, nsOf[n], agentAddr, "--config.file="+cfg, "--log.format=json")
	}
	time.Sleep(5 * time.Second)

	tunnels := []string{"dc1-primary", "dc1-backup", "dc2-primary", "dc2-backup"}
	kinds := []struct{ kind, on, off string }{
		{"down", "down", "up"}, {"loss", "loss=50", "loss=0"}, {"delay", "delay=150ms", "delay=0"},
		{"mtu", "mtu=1300", "mtu=0"}, {"rebind", "rebind", ""},
	}
	fault := func(tunnel, spec string) {
		if _, err := l.Fault(tunnel, spec); err != nil {
			b.Fatal(err)
		}
	}
	type sample struct {
		at                     time.Duration
		goroutines, fds, rssMB float64
	}
	samples := map[string][]sample{}
	scrape := func(at time.Duration) {
		for n, a := range agents {
			_, body, err := a.Get("/metrics")
			if err != nil {
				b.Fatalf("scraping %s: %v", n, err)
			}
			v := func(name string) float64 {
				for _, s := range parseScrape(b, body)[name] {
					return s.value
				}
				b.Fatalf("%s exposes no %s", n, name)
				return 0
			}
			samples[n] = append(samples[n], sample{at, v("go_goroutines"), v("process_open_fds"), v("process_resident_memory_bytes") / (1 << 20)})
		}
	}

	var faults []soakFault
	start := time.Now()
	b.Logf("soak: %s, agents in auto on %s, a fault every 30 s, a device recreated every 2 min", dur, strings.Join(nodes, ", "))
	nextScrape, nextRecreate := time.Duration(0), 2*time.Minute
	for step := 0; time.Since(start) < dur; step++ {
		t, k := tunnels[step%len(tunnels)], kinds[step%len(kinds)]
		from := time.Now()
		fault(t, k.on)
		stepEnd := from.Add(30 * time.Second)
		for time.Now().Before(stepEnd) {
			el := time.Since(start)
			if el >= nextScrape {
				scrape(el)
				nextScrape += 15 * time.Second
			}
			if el >= nextRecreate {
				rt := tunnels[int(nextRecreate/(2*time.Minute)-1)%len(tunnels)]
				at := time.Now()
				if err := l.Recreate(rt); err != nil {
					b.Fatal(err)
				}
				faults = append(faults, soakFault{rt, "recreate", at, time.Now().Add(5 * time.Second)})
				b.Logf("%5.0fs: recreated the device of %s", el.Seconds(), rt)
				nextRecreate += 2 * time.Minute
			}
			if time.Since(from) >= 20*time.Second && k.off != "" {
				fault(t, k.off)
				faults = append(faults, soakFault{t, k.kind, from, time.Now()})
				k.off = ""
			}
			time.Sleep(250 * time.Millisecond)
		}
		if k.kind == "rebind" {
			faults = append(faults, soakFault{t, k.kind, from, from.Add(time.Second)})
		}
		b.Logf("%5.0fs: %s %s for 20 s", from.Sub(start).Seconds(), t, k.kind)
	}
	scrape(time.Since(start))

	// The end: no fault, every agent stops cleanly and hands back.
	time.Sleep(10 * time.Second)
	for _, a := range agents {
		a.Stop()
	}
	leaked := 0
	for _, n := range nodes {
		for _, fam := range []string{"-4", "-6"} {
			out, err := exec.Command("ip", fam, "-n", nsOf[n], "route", "show", "proto", "117").CombinedOutput()
			if err != nil {
				b.Fatalf("ip %s route show proto 117 in %s: %v\n%s", fam, nsOf[n], err, out)
			}
			if s := strings.TrimSpace(string(out)); s != "" {
				leaked += strings.Count(s, "\n") + 1
				b.Errorf("%s: routes of wgpulse left after the run:\n%s", n, s)
			}
		}
	}

	// Every carried-out failover decision, from the audit lines.
	var decisions []soakDecision
	for _, n := range nodes {
		sc := bufio.NewScanner(strings.NewReader(agents[n].Logs()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m struct {
				Time                               time.Time
				Msg, Policy, Group, Action, Result string
			}
			if json.Unmarshal(sc.Bytes(), &m) != nil || m.Msg != "remediation decision" || m.Policy != "failover" || m.Result != "ok" {
				continue
			}
			decisions = append(decisions, soakDecision{n, m.Group, m.Action, m.Time})
		}
	}
	siteOf := func(d soakDecision) string {
		if d.node == "hub" {
			return d.group // the hub's group for a site's LAN is named after it
		}
		return d.node
	}
	faultOn := func(tunnel string, at time.Time, grace time.Duration) (soakFault, bool) {
		for _, f := range faults {
			if f.tunnel == tunnel && f.unhealthy() && !at.Before(f.from) && at.Before(f.to.Add(grace)) {
				return f, true
			}
		}
		return soakFault{}, false
	}
	healthySwitches, badReturns := 0, 0
	for _, d := range decisions {
		primary := siteOf(d) + "-primary"
		switch d.action {
		case "switch_to_backup":
			if _, ok := faultOn(primary, d.at, 10*time.Second); !ok {
				healthySwitches++
				b.Errorf("%s group %s switched to the backup at %s with its primary healthy", d.node, d.group, d.at.Sub(start).Round(time.Millisecond))
			}
		case "return_to_primary":
			if f, ok := faultOn(primary, d.at, 0); ok && d.at.Before(f.to) {
				if _, backupBad := faultOn(siteOf(d)+"-backup", d.at, 0); !backupBad {
					badReturns++
					b.Errorf("%s group %s returned to the primary at %s during its %s fault", d.node, d.group, d.at.Sub(start).Round(time.Millisecond), f.kind)
				}
			}
		}
	}
	// Each primary going down: the switch of every agent whose group was on
	// the primary then, within the profile's bound.
	var late int
	latencies := map[string][]time.Duration{}
	for _, f := range faults {
		site, path, _ := strings.Cut(f.tunnel, "-")
		if f.kind != "down" || path != "primary" {
			continue
		}
		for _, n := range []string{"hub", site} {
			group := site
			if n != "hub" {
				group = "hub"
			}
			var before *soakDecision
			var sw *soakDecision
			for i, d := range decisions {
				if d.node != n || d.group != group {
					continue
				}
				if d.at.Before(f.from) {
					before = &decisions[i]
				} else if sw == nil && d.action == "switch_to_backup" && d.at.Before(f.to) {
					sw = &decisions[i]
				}
			}
			if before != nil && before.action == "switch_to_backup" {
				continue // already on the backup (damped, or the backup's own fault history)
			}
			prof := profiles[site]
			if sw == nil {
				late++
				b.Errorf("%s group %s: no switch during the %s down at %s", n, group, f.tunnel, f.from.Sub(start).Round(time.Second))
				continue
			}
			took := sw.at.Sub(f.from)
			latencies[prof] = append(latencies[prof], took)
			if took > bounds[prof] {
				late++
				b.Errorf("%s group %s switched %s after %s went down: above the %s profile's %s", n, group, took.Round(time.Millisecond), f.tunnel, prof, bounds[prof])
			}
		}
	}
	for prof, ls := range latencies {
		slices.Sort(ls)
		b.Logf("%s profile: %d switches after a primary went down, fault to decision %v (bound %s)", prof, len(ls), ls, bounds[prof])
		b.ReportMetric(float64(ls[len(ls)-1].Milliseconds()), prof+"-max-switch-ms")
	}
	b.Logf("%d failover decisions carried out; leaked routes %d; switches with the primary healthy %d; returns onto a faulty primary %d; late or missing switches %d",
		len(decisions), leaked, healthySwitches, badReturns, late)
	b.ReportMetric(float64(leaked), "leaked-routes")
	b.ReportMetric(float64(healthySwitches), "healthy-switches")

	// Resources: flat from the first minute on.
	for _, n := range nodes {
		ss := samples[n]
		var base sample
		for _, s := range ss {
			if s.at >= time.Minute {
				base = s
				break
			}
		}
		last := ss[len(ss)-1]
		var row []string
		for _, s := range ss {
			row = append(row, fmt.Sprintf("%.0fs:%.0f/%.0f/%.0fMB", s.at.Seconds(), s.goroutines, s.fds, s.rssMB))
		}
		b.Logf("%s goroutines/fds/RSS over time: %s", n, strings.Join(row, " "))
		if last.goroutines > base.goroutines+20 || last.fds > base.fds+10 || last.rssMB > base.rssMB*1.5+10 {
			b.Errorf("%s grows: goroutines %.0f -> %.0f, fds %.0f -> %.0f, RSS %.0f -> %.0f MB", n, base.goroutines, last.goroutines, base.fds, last.fds, base.rssMB, last.rssMB)
		}
		b.ReportMetric(last.goroutines-base.goroutines, n+"-goroutines-growth")
		b.ReportMetric(last.rssMB-base.rssMB, n+"-rss-growth-MB")
	}
}
