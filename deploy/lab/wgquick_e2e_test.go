package lab_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

// The site's routes as wg-quick leaves them: the primary with `Table =
// auto` (its route for the hub LAN at metric 0, proto boot: nothing is
// below it), the backup with `Table = off` (no route). A cut of the primary
// still fails over within the fast bound, by the prefix's halves via the
// backup; the heal returns after hold_down and leaves exactly wg-quick's
// route; the agent's clean exit with restore_on_exit (the primary up)
// leaves nothing of ours.
func TestFailoverOverWgQuickRoutes(t *testing.T) {
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	s, _ := l.Site("dc1")
	p, b := l.Tunnels[0], l.Tunnels[1]
	for _, args := range [][]string{
		{"-n", s.Namespace, "route", "del", l.HubLAN, "dev", p.Device, "metric", "100"},
		{"-n", s.Namespace, "route", "del", l.HubLAN, "dev", b.Device, "metric", "200"},
		{"-n", s.Namespace, "route", "add", l.HubLAN, "dev", p.Device, "proto", "boot"}, // what wg-quick adds
	} {
		if err := lab.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	wgQuick := lab.Route{Dst: l.HubLAN, Dev: p.Device, Metric: 0, Protocol: "boot"}
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	const holdDown = 5 * time.Second
	rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast"}, HoldDown: holdDown, StateDir: t.TempDir(), RestoreOnExit: true}
	agents := startAgents(t, l, bin, rem, "hub", "dc1")
	waitGroups(t, agents, 20*time.Second, "every path up", bothUp)

	cutAndHealOverWgQuick(t, l, agents, holdDown, wgQuick, "wg-quick's metric-0 primary")

	// On the backup again; the primary heals, and a clean exit within
	// hold_down hands the traffic back (with the primary still down it
	// would keep the routes: deleting them would drop the traffic).
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, 10*time.Second, "every group on its backup", active("backup"))
	if _, err := l.Fault("dc1-primary", "up"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, holdDown, "the primary up, still on the backup", func(g failover.GroupStatus) bool {
		return g.Active == "backup" && g.Paths["primary"].State == "up"
	})
	for _, a := range agents {
		a.Stop()
	}
	if owned := ownedRoutes(t, s.Namespace); len(owned) != 0 {
		t.Errorf("after a clean exit with restore_on_exit dc1 still owns %v", owned)
	}
}

// cutAndHealOverWgQuick cuts dc1's primary, whose route for the hub's LAN
// is wg-quick's (metric 0), under a ping between the LANs: the failover
// within the fast profile's bound owns the prefix's halves via the backup;
// the heal returns after hold_down without a lost ping and leaves exactly
// wg-quick's route.
func cutAndHealOverWgQuick(t *testing.T, l *lab.Lab, agents map[string]*lab.Agent, holdDown time.Duration, wgQuick lab.Route, what string) {
	t.Helper()
	s, _ := l.Site("dc1")
	b := mustTunnel(t, l, "dc1-backup")
	ping, err := lab.StartPinger(s.Namespace, strings.TrimSuffix(s.LAN, "0.0/16")+"0.1", "10.50.0.1", 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Stop()
	time.Sleep(time.Second)
	if o := ping.Longest(time.Time{}, time.Time{}); o.Lost > 0 {
		t.Fatalf("%d pings lost before any fault", o.Lost)
	}
	cut := time.Now()
	if _, err := l.Fault("dc1-primary", "down"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, 10*time.Second, "every group on its backup", active("backup"))
	time.Sleep(time.Second)
	o := ping.Longest(cut, time.Time{})
	t.Logf("%s cut: outage %s (%d pings of 10 ms lost)", what, o.Took, o.Lost)
	if o.Took > time.Second {
		t.Errorf("outage %s, want <= 1s (fast profile)", o.Took)
	}
	var dsts []string
	for _, r := range ownedRoutes(t, s.Namespace) {
		if r.Dev != b.Device {
			t.Errorf("route %+v of ours not via the backup", r)
		}
		dsts = append(dsts, r.Dst)
	}
	slices.Sort(dsts)
	if want := []string{"10.50.0.0/17", "10.50.128.0/17"}; !slices.Equal(dsts, want) {
		t.Errorf("dc1 owns %v, want the halves %v via the backup", dsts, want)
	}

	heal := time.Now()
	if _, err := l.Fault("dc1-primary", "up"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, agents, holdDown+20*time.Second, "every group back on its primary", active("primary"))
	if since := status(t, agents["dc1"]).Groups[0].ActiveSince.Sub(heal); since < holdDown {
		t.Errorf("returned %s after the heal, want >= hold_down %s", since, holdDown)
	}
	time.Sleep(time.Second)
	if os := ping.Outages(heal, time.Time{}); len(os) != 0 {
		t.Errorf("pings lost after the primary came back: %+v", os)
	}
	rs, err := lab.Routes(s.Namespace, "")
	if err != nil {
		t.Fatal(err)
	}
	var hub []lab.Route
	for _, r := range rs {
		if r.Dst == l.HubLAN || strings.HasPrefix(r.Dst, "10.50.") {
			r.Metrics, r.MTU = nil, 0
			hub = append(hub, r)
		}
	}
	if len(hub) != 1 || hub[0].Dst != wgQuick.Dst || hub[0].Dev != wgQuick.Dev || hub[0].Metric != 0 || hub[0].Protocol != wgQuick.Protocol {
		t.Errorf("routes for the hub LAN after the return: %+v, want exactly wg-quick's %+v", hub, wgQuick)
	}
}
