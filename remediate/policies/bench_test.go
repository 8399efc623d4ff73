package policies_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// BenchmarkDecisionToRoute measures, with the real netlink in a network
// namespace, the time from the probe loss that crosses the threshold (the
// prober's down verdict) to the remediator's route appearing in the kernel
// (the RTM_NEWROUTE notification): decision plus netlink. Probes run on a
// fake network in real time; 50 failovers per run.
func BenchmarkDecisionToRoute(b *testing.B) {
	labtest.Require(b)
	ns := "wgpb" + labtest.UniquePrefix()
	if err := lab.AddNetns(ns); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lab.DelNetns(ns) })
	for _, s := range [][]string{
		{"-n", ns, "link", "add", primaryDev, "type", "veth", "peer", "name", primaryDev + "x"},
		{"-n", ns, "link", "add", backupDev, "type", "veth", "peer", "name", backupDev + "x"},
		{"-n", ns, "link", "set", primaryDev, "up"}, {"-n", ns, "link", "set", primaryDev + "x", "up"},
		{"-n", ns, "link", "set", backupDev, "up"}, {"-n", ns, "link", "set", backupDev + "x", "up"},
		{"-n", ns, "route", "add", lan, "dev", primaryDev, "metric", "100", "proto", "static"},
		{"-n", ns, "route", "add", lan, "dev", backupDev, "metric", "200", "proto", "static"},
	} {
		if err := lab.IP(s...); err != nil {
			b.Fatal(err)
		}
	}
	h, err := lab.NetlinkIn(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer nsh.Close()
	events := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(events, done, netlink.RouteSubscribeOptions{Namespace: &nsh}); err != nil {
		b.Fatal(err)
	}

	var primaryDead atomic.Bool
	fn := probertest.New(func(_ string, dst netip.Addr, _ int) probertest.Reply {
		if dst.String() == primaryTarget && primaryDead.Load() {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: 200 * time.Microsecond}
	})
	p, err := prober.New(prober.Config{Enabled: true, Interval: time.Second, Timeout: 2 * time.Second, Window: time.Minute, Size: 56, PMTU: prober.PMTUConfig{Min: 1280, Interval: time.Hour}},
		slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
	if err != nil {
		b.Fatal(err)
	}
	col, err := collector.New(collector.Config{PollInterval: time.Hour, Devices: []string{primaryDev, backupDev}}, slog.New(slog.DiscardHandler),
		collector.Options{Client: &fakeWG{peers: map[string]string{}, fail: map[string]bool{}}, Links: noLinks{}})
	if err != nil {
		b.Fatal(err)
	}
	g := group("fast")
	g.HoldDown = time.Millisecond
	g.LossRatio = 0.99
	g.Damping = remediate.Damping{Penalty: 1, Suppress: 1e9, Reuse: 1e8, HalfLife: time.Minute}
	g.RateLimit = remediate.RateLimit{Burst: 1000, Per: time.Hour}
	cfg := policies.DefaultConfig()
	cfg.Mode, cfg.StateFile, cfg.Failover = remediate.ModeAuto, b.TempDir()+"/state.json", []failover.Group{g}
	rem, err := policies.New(cfg, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: col, Prober: p, Routes: h})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	changes := p.SubscribeChanges(ctx)
	wg.Go(func() { p.Run(ctx) })
	wg.Go(func() { rem.Run(ctx) })

	primaryKey := prober.Target{Device: primaryDev, Address: netip.MustParseAddr(primaryTarget)}.Key()
	// downAt waits for the primary's down verdict; ourRoute for the route.
	downAt := func() time.Time {
		for c := range changes {
			if c.Health.Target.Key() == primaryKey && c.Health.State == prober.StateDown {
				return c.Health.Since
			}
		}
		return time.Time{}
	}
	ourRoute := func(added bool) time.Time {
		timeout := time.After(10 * time.Second)
		for {
			select {
			case u := <-events:
				if u.Protocol == remediate.DefaultRouteProtocol && (u.Type == syscall.RTM_NEWROUTE) == added {
					return time.Now()
				}
			case <-timeout:
				b.Fatalf("no route event (added %v) within 10s", added)
			}
		}
	}
	waitUp := func() {
		for range 500 {
			if h, ok := p.HealthOf(primaryKey); ok && h.State == prober.StateUp {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Fatal("primary not up")
	}
	for b.Loop() {
		var lat []time.Duration
		for range 50 {
			waitUp()
			time.Sleep(200 * time.Millisecond)
			primaryDead.Store(true)
			down := downAt()
			added := ourRoute(true)
			lat = append(lat, added.Sub(down))
			primaryDead.Store(false)
			ourRoute(false) // the return, after the 1 ms hold-down
		}
		slices.Sort(lat)
		b.Logf("down verdict -> route in the kernel over %d failovers: min %s p50 %s p99 %s max %s", len(lat), lat[0], lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
	}
}

// BenchmarkHundredGroupsCPU measures the CPU of 100 failover groups on the
// fast profile (200 targets at 10 probes/s): one prober and collector run
// throughout, and 5 s windows alternate without and with the remediator
// (started fresh for each), three pairs, so the difference of adjacent
// windows is the remediator's own cost and the prober's drift between runs
// cancels. Reported: the prober alone and the remediator's median extra.
// Probes run on a fake network in real time; routes on a fake table.
func BenchmarkHundredGroupsCPU(b *testing.B) {
	const groups = 100
	var cfgGroups []failover.Group
	var targets []prober.Target
	devices := []string{}
	for i := range groups {
		p, bk := fmt.Sprintf("wgp%d", i), fmt.Sprintf("wgb%d", i)
		devices = append(devices, p, bk)
		cfgGroups = append(cfgGroups, failover.Group{Name: fmt.Sprintf("g%d", i), Profile: "fast",
			Prefixes: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/250, i%250)},
			Primary:  failover.Path{Device: p, Target: failover.ProbeTarget(fmt.Sprintf("10.200.%d.1", i))},
			Backup:   failover.Path{Device: bk, Target: failover.ProbeTarget(fmt.Sprintf("10.201.%d.1", i))}})
		prof := failover.Profiles["fast"]
		for _, pt := range []struct{ dev, addr string }{{p, fmt.Sprintf("10.200.%d.1", i)}, {bk, fmt.Sprintf("10.201.%d.1", i)}} {
			targets = append(targets, prober.Target{Device: pt.dev, Address: netip.MustParseAddr(pt.addr), Interval: prof.Interval,
				Timeout: prof.Timeout, Suspect: prof.Suspect, Window: prof.Window, Rule: prober.Rule{Losses: prof.Losses, LossRatio: prof.LossRatio}})
		}
	}
	cores := func(window time.Duration) float64 {
		var ru0, ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		start := time.Now()
		time.Sleep(window)
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		return cpu.Seconds() / time.Since(start).Seconds()
	}
	for b.Loop() {
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		pcfg := prober.DefaultConfig()
		pcfg.PMTU.Enabled = false
		p, err := prober.New(pcfg, slog.New(slog.DiscardHandler), prober.Options{Open: fn.Open})
		if err != nil {
			b.Fatal(err)
		}
		col, err := collector.New(collector.Config{PollInterval: time.Second, Devices: devices}, slog.New(slog.DiscardHandler),
			collector.Options{Client: &fakeWG{peers: map[string]string{}, fail: map[string]bool{}}, Links: noLinks{}})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { p.Run(ctx) })
		wg.Go(func() { col.Run(ctx) })
		p.SetTargets("bench", targets) // the same targets the groups probe: the prober's load does not change
		time.Sleep(2 * time.Second)
		var alone, extra []float64
		for range 3 {
			a := cores(5 * time.Second)
			cfg := policies.DefaultConfig()
			cfg.Mode, cfg.StateFile, cfg.Failover = remediate.ModeAuto, b.TempDir()+"/state.json", cfgGroups
			rem, err := policies.New(cfg, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: col, Prober: p, Routes: newFakeRoutes(devices...)})
			if err != nil {
				b.Fatal(err)
			}
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { rem.Run(rctx); close(done) }()
			time.Sleep(time.Second) // started, targets registered
			w := cores(5 * time.Second)
			rcancel()
			<-done
			alone, extra = append(alone, a), append(extra, w-a)
		}
		cancel()
		wg.Wait()
		slices.Sort(alone)
		slices.Sort(extra)
		b.Logf("100 fast groups: prober alone %.3f cores (windows %.3f), remediator +%.4f cores (windows %.4f)", alone[1], alone, extra[1], extra)
		b.ReportMetric(alone[1], "prober-cores")
		b.ReportMetric(extra[1], "remediator-cores")
	}
}
