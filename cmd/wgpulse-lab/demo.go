package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/remediate/failover"
)

type demoCommand struct {
	cmd      *kingpin.CmdClause
	agent    *string
	step     *time.Duration
	hold     *bool
	holdDown *time.Duration
}

func addDemoCommand(app *kingpin.Application) *demoCommand {
	d := &demoCommand{cmd: app.Command("demo", "Build the lab, run a wgpulse agent in each site, and play a fault timeline showing what the agents report. Ctrl-C cleans up.")}
	d.agent = d.cmd.Flag("agent", "wgpulse binary (default: next to wgpulse-lab, then $PATH).").String()
	d.step = d.cmd.Flag("step", "How long each step of the timeline lasts.").Default("10s").Duration()
	d.hold = d.cmd.Flag("hold", "Keep the lab and agents up after the timeline, for Prometheus/Grafana, until Ctrl-C.").Bool()
	d.holdDown = d.cmd.Flag("hold-down", "The agents' failover hold_down (30s in production; short here so the return shows).").Default("5s").Duration()
	return d
}

// demoStep is one line of the fault timeline.
type demoStep struct {
	title  string
	faults [][]string // each: path, key=value...
	// dropTCP, when set, makes the hub drop TCP over these tunnels (ICMP
	// passes); an empty, non-nil list passes it again.
	dropTCP []string
	// until, when set, keeps the step going (ticking) until the agents show
	// what it is about, for at most untilMax.
	until func(*view) bool
	what  string // what until waits for
}

// untilMax bounds a step that waits for the agents.
const untilMax = 90 * time.Second

// blackHoleSeen: dc1's agent measured the black hole on dc1-primary and its
// MTU policy put the measured path MTU in force.
func blackHoleSeen(vw *view) bool {
	pmtu, inForce, ok := dc1PrimaryMTU(vw)
	return ok && pmtu > 0 && pmtu <= 1300 && inForce > 0 && inForce <= 1300
}

// mtuTakenBack: the next full path MTU search on dc1-primary found the
// whole 1420 again and dc1's MTU policy took its MTU back (after its
// hold_down).
func mtuTakenBack(vw *view) bool {
	pmtu, inForce, ok := dc1PrimaryMTU(vw)
	return ok && pmtu >= 1420 && inForce == 0
}

// dc1PrimaryMTU is dc1-primary's path MTU as dc1's agent measured it and
// the MTU its MTU policy has in force (0: none); ok is false until the
// agent reports the target.
func dc1PrimaryMTU(vw *view) (pmtu int, inForce float64, ok bool) {
	v, found := vw.last["dc1-primary"]
	if !found || v.status == nil || v.status.Probe == nil {
		return 0, 0, false
	}
	return v.status.Probe.PathMTU, v.mtuPolicy, true
}

var timeline = []demoStep{
	{title: "clean network: every tunnel handshaked, traffic flowing"},
	{title: "20% loss and 40ms delay on dc1-primary", faults: [][]string{{"dc1-primary", "loss=20", "delay=40ms"}}},
	{title: "jitter: 30ms ± 20ms on dc2-primary; dc1-primary clean again", faults: [][]string{{"dc1-primary", "loss=0", "delay=0"}, {"dc2-primary", "delay=30ms", "jitter=20ms"}}},
	{title: "NAT rebinds on dc2-primary: the hub sees a new endpoint", faults: [][]string{{"dc2-primary", "delay=0", "jitter=0", "rebind"}}},
	{title: "MTU black hole on dc1-primary: underlay drops packets > 1300 bytes; dc1's agent measures the path MTU and its MTU policy puts it in force",
		faults: [][]string{{"dc1-primary", "mtu=1300"}}, until: blackHoleSeen, what: "dc1's path MTU measured and in force"},
	{title: "dc1-primary DOWN: the agents move dc1 <-> hub LAN traffic to the backup", faults: [][]string{{"dc1-primary", "mtu=0", "down"}}},
	{title: "dc1-primary back UP: traffic returns after hold_down", faults: [][]string{{"dc1-primary", "up"}}},
	{title: "dc2-primary passes ICMP but drops TCP: dc2's groups probe with TCP connects and move to the backup", dropTCP: []string{"dc2-primary"}},
	{title: "dc2-primary carries TCP again: traffic returns after hold_down", dropTCP: []string{}},
	{title: "dc1-primary's black hole is gone (since step 6): the next full path MTU search finds 1420 and dc1's MTU policy takes its MTU back after hold_down",
		until: mtuTakenBack, what: "dc1's MTU policy taking its MTU back"},
}

func (d *demoCommand) run(prefix string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "wgpulse-lab demo: interrupted; everything the lab made is removed")
			return 130
		}
		fmt.Fprintf(stderr, "wgpulse-lab demo: %v\n", err)
		return 1
	}
	agentBin, err := findAgent(*d.agent)
	if err != nil {
		return fail(err)
	}
	// The lab's traffic, the ground truth next to the agents' view, is the
	// system ping's.
	if _, err := exec.LookPath("ping"); err != nil {
		return fail(errors.New("the demo's traffic runs the system ping, which is not installed: apt-get install iputils-ping (make demo does this)"))
	}
	// SIGPIPE (`demo | head`) and SIGHUP (terminal closed) end the demo
	// like Ctrl-C does: with cleanup, not with a dead process.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGPIPE, syscall.SIGHUP)
	defer stop()

	fmt.Fprintln(stdout, "== building the lab")
	l, err := lab.Up(ctx, lab.Config{Prefix: prefix, Management: true, Keepalive: 5 * time.Second}, lab.Options{Progress: indent(stdout)})
	if err != nil {
		return fail(err)
	}
	defer func() {
		fmt.Fprintln(stdout, "== cleaning up")
		if err := l.Down(); err != nil {
			fmt.Fprintf(stderr, "wgpulse-lab demo: cleanup: %v (run wgpulse-lab down --prefix %s)\n", err, prefix)
		}
	}()

	fmt.Fprintf(stdout, "== starting a wgpulse agent on the hub and in each site (remediate.mode auto: failover with dc1 on the fast profile over ICMP, dc2 default over TCP connects, hold_down %s; the MTU and keepalive policies)\n", *d.holdDown)
	var agents []*demoAgent
	hub := lab.Site{Name: "hub", Namespace: l.HubNamespace, Management: l.HubManagement}
	// dc2's groups probe with TCP connects (to a closed port: a refusal
	// proves the path), so a path that drops TCP and passes ICMP shows.
	rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast", "dc2": "default"}, HoldDown: *d.holdDown, StateDir: l.Dir,
		TCPPorts: map[string]int{"dc2": 9},
		// The MTU and keepalive policies run on every node. The prober
		// probes every 200 ms (1 s in production) over a 10 s window (1m),
		// so its loss and RTT (the last 64 replies) follow the steps; the path MTU is confirmed every 5 s (30 s) with a 1 s probe
		// timeout (2 s), so a black hole is measured in about 20 s.
		MTU: true, MTUYAML: "min: 1200\nhold_down: 20s", Keepalive: true,
		ProberYAML: "interval: 200ms\ntimeout: 1s\nwindow: 10s\npmtu: {min: 1200, interval: 1m, confirm: 5s}"}
	for _, s := range append([]lab.Site{hub}, l.Sites...) {
		a, err := startDemoAgent(ctx, l, s, agentBin, rem)
		if err != nil {
			return fail(err)
		}
		defer a.Stop()
		agents = append(agents, a)
		fmt.Fprintf(stdout, "   %s: http://%s/metrics  http://%s/-/remediate   (log %s)\n", s.Name, a.Addr, a.Addr, a.log)
	}

	traffic := startTraffic(ctx, l)
	lanFlow, err := startLANFlow(l)
	if err != nil {
		return fail(err)
	}
	defer lanFlow.stop()
	start := time.Now()
	vw := &view{w: stdout, start: start, l: l, agents: agents, tr: traffic, lan: lanFlow, prevBytes: map[string]float64{}}
	// The table starts once it is whole: the lab's first pings, and every
	// agent's first probes and path MTU search (a few seconds).
	fmt.Fprintln(stdout, "== waiting for the first pings and each agent's first probes and path MTU search")
	for !vw.complete() {
		if time.Since(start) > untilMax {
			fmt.Fprintf(stdout, "   not every value is in after %s (a '-' below is a value missing); starting anyway\n", untilMax)
			break
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(500 * time.Millisecond):
		}
	}
	fmt.Fprintf(stdout, "== fault timeline (%d steps of %s; Ctrl-C stops and cleans up)\n", len(timeline), *d.step)
	start = time.Now()
	vw.start = start
	var downAt, upAt time.Time // of dc1-primary
	for i, st := range timeline {
		vw.stepStart = time.Now()
		for _, f := range st.faults {
			switch {
			case f[0] == "dc1-primary" && slices.Contains(f, "down"):
				downAt = vw.stepStart
			case f[0] == "dc1-primary" && slices.Contains(f, "up"):
				upAt = vw.stepStart
			}
		}
		for _, f := range st.faults {
			if _, err := l.Fault(f[0], f[1:]...); err != nil {
				return fail(err)
			}
		}
		if st.dropTCP != nil {
			if err := l.DropTCP(len(st.dropTCP) > 0, st.dropTCP...); err != nil {
				return fail(err)
			}
		}
		fmt.Fprintf(stdout, "\n[%5s] step %d/%d: %s\n", since(start), i+1, len(timeline), st.title)
		tick := time.NewTicker(*d.step / 2)
		for n := 0; ; n++ {
			if n >= 2 && (st.until == nil || st.until(vw)) {
				break
			}
			if n >= 2 && time.Since(vw.stepStart) > untilMax {
				fmt.Fprintf(stdout, "   the agents did not show %s within %s; going on\n", st.what, untilMax)
				break
			}
			if n == 2 {
				fmt.Fprintf(stdout, "   waiting for %s (up to %s)\n", st.what, untilMax)
			}
			select {
			case <-ctx.Done():
				tick.Stop()
				return 0
			case <-tick.C:
			}
			vw.tick()
		}
		tick.Stop()
	}
	// The return waits for hold_down: show it even when a step is shorter.
	if deadline := time.Now().Add(*d.holdDown + 10*time.Second); vw.onBackup() {
		fmt.Fprintf(stdout, "\n[%5s] waiting for the return to the primary (hold_down %s)\n", since(start), *d.holdDown)
		for vw.onBackup() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(250 * time.Millisecond)
		}
		vw.tick()
	}
	if !downAt.IsZero() && !upAt.IsZero() {
		o := vw.lan.ping.Longest(downAt, upAt)
		fmt.Fprintf(stdout, "\n== failover: dc1-primary went down at %s; LAN traffic %s was on the backup after %d ms (%d pings of 10 ms lost)\n",
			since2(start, downAt), vw.lan.route, o.Took.Milliseconds(), o.Lost)
		fmt.Fprintf(stdout, "== return: dc1-primary came back at %s; since then: %s\n", since2(start, upAt), vw.lan.summary(upAt, time.Time{}))
	}
	if *d.hold {
		fmt.Fprintf(stdout, "\n== holding the lab up; agents stay at the addresses above. Ctrl-C to clean up.\n")
		<-ctx.Done()
	}
	return 0
}

func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }

func since2(start, t time.Time) string { return t.Sub(start).Round(time.Second).String() }

func findAgent(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "wgpulse"); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("wgpulse"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("wgpulse binary not found next to wgpulse-lab or in $PATH: run make build, or pass --agent")
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

type indentWriter struct{ w io.Writer }

func (i indentWriter) Write(p []byte) (int, error) {
	_, err := fmt.Fprintf(i.w, "   %s", p)
	return len(p), err
}

func indent(w io.Writer) io.Writer { return indentWriter{w} }

// demoAgent is a wgpulse process in a site namespace, reachable from the
// host through the site's management veth, started with the lab's own
// agent code (the same the end-to-end tests use).
type demoAgent struct {
	*lab.Agent
	site  lab.Site
	log   string
	names map[string]string // peerID(device, public key) -> tunnel name
}

func startDemoAgent(ctx context.Context, l *lab.Lab, s lab.Site, bin string, rem lab.Remediation) (*demoAgent, error) {
	a := &demoAgent{site: s, log: filepath.Join(l.Dir, "agent-"+s.Name+".log"), names: map[string]string{}}
	for _, t := range l.Tunnels {
		switch {
		case s.Name == "hub": // the hub watches every site: NAT rebinds show here
			a.names[peerID(t.HubDevice, t.PublicKey)] = t.Name
		case t.Site == s.Name:
			a.names[peerID(t.Device, t.HubPublicKey)] = t.Name
		}
	}
	cfgPath := filepath.Join(l.Dir, "agent-"+s.Name+".yml")
	if err := os.WriteFile(cfgPath, []byte(l.AgentConfig(s.Name, rem)), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(a.log)
	if err != nil {
		return nil, err
	}
	a.Agent, err = lab.StartAgent(ctx, lab.AgentOptions{
		Bin: bin, NS: s.Namespace, Addr: s.Management + ":9586", Args: []string{"--config.file=" + cfgPath, "--log.level=info"},
		Env: []string{"WGPULSE_LAB_PREFIX=" + l.Config.Prefix, // so `down` finds it after a crash
			"STATE_DIRECTORY=" + filepath.Join(l.Dir, "state-"+s.Name)}, // its state goes with the lab
		Log: logf, Ready: true,
	})
	if err != nil {
		logf.Close()
		b, _ := os.ReadFile(a.log)
		return nil, fmt.Errorf("%w; its log:\n%s", err, b)
	}
	return a, nil
}

// peerView is what an agent reports for one tunnel: its counters from
// /metrics, the values the MTU and keepalive policies put in force, and
// the peer in the status API (the prober's loss, RTT, jitter and path MTU,
// the health word).
type peerView struct {
	handshake, rx, tx, changes float64
	mtuPolicy                  float64 // wgpulse_remediation_mtu_bytes; 0 = none
	mtuMechanism               string
	keepalivePolicy            bool // wgpulse_remediation_keepalive_seconds is present
	status                     *agent.PeerStatus
	deviceMTU                  int
}

// peerID names a peer on one of the node's devices.
func peerID(device, publicKey string) string { return device + "/" + publicKey }

func (a *demoAgent) scrape() (map[string]peerView, error) {
	code, body, err := a.Get("/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("scrape: HTTP %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	out := map[string]peerView{}
	get := func(name string, set func(*peerView, float64, map[string]string)) {
		for _, m := range mfs[name].GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			tunnel, ok := a.names[peerID(labels["device"], labels["public_key"])]
			if !ok {
				continue
			}
			v := out[tunnel]
			set(&v, m.GetGauge().GetValue()+m.GetCounter().GetValue(), labels)
			out[tunnel] = v
		}
	}
	get("wireguard_peer_last_handshake_seconds", func(v *peerView, f float64, _ map[string]string) { v.handshake = f })
	get("wireguard_peer_receive_bytes_total", func(v *peerView, f float64, _ map[string]string) { v.rx = f })
	get("wireguard_peer_transmit_bytes_total", func(v *peerView, f float64, _ map[string]string) { v.tx = f })
	get("wireguard_peer_endpoint_changes_total", func(v *peerView, f float64, _ map[string]string) { v.changes = f })
	get("wgpulse_remediation_mtu_bytes", func(v *peerView, f float64, l map[string]string) { v.mtuPolicy, v.mtuMechanism = f, l["mechanism"] })
	get("wgpulse_remediation_keepalive_seconds", func(v *peerView, _ float64, _ map[string]string) { v.keepalivePolicy = true })

	code, body, err = a.Get(agent.StatusPath)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err != nil {
		return nil, fmt.Errorf("status API: %w", err)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return nil, fmt.Errorf("status API: %w", err)
	}
	for _, d := range st.Devices {
		for _, p := range d.Peers {
			if tunnel, ok := a.names[peerID(d.Name, p.PublicKey)]; ok {
				v := out[tunnel]
				v.status, v.deviceMTU = &p, d.MTU
				out[tunnel] = v
			}
		}
	}
	return out, nil
}

// traffic pings through every tunnel from its site, so counters move and the
// ground truth (ping's own loss and RTT over the last 15 probes, and whether a
// 1400-byte don't-fragment packet crosses) shows next to the agents' view.
type traffic struct {
	mu     sync.Mutex
	recent map[string][]lab.PingResult // last few batches of 5
	big    map[string]bool
}

func startTraffic(ctx context.Context, l *lab.Lab) *traffic {
	tr := &traffic{recent: map[string][]lab.PingResult{}, big: map[string]bool{}}
	for _, t := range l.Tunnels {
		go func() {
			for ctx.Err() == nil {
				r, err := lab.Ping(t.Namespace, t.RemoteAddress, 5, 200*time.Millisecond, 56, false)
				big, bigErr := lab.Ping(t.Namespace, t.RemoteAddress, 1, 0, 1400-28, true)
				tr.mu.Lock()
				if err == nil {
					tr.recent[t.Name] = append(tr.recent[t.Name], r)
					if n := len(tr.recent[t.Name]); n > 3 {
						tr.recent[t.Name] = tr.recent[t.Name][n-3:]
					}
				}
				tr.big[t.Name] = bigErr == nil && big.Received == 1
				tr.mu.Unlock()
			}
		}()
	}
	return tr
}

// get returns the merged recent pings and whether the last big packet passed.
func (tr *traffic) get(name string) (lab.PingResult, bool, bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var m lab.PingResult
	for _, r := range tr.recent[name] {
		m.Sent += r.Sent
		m.Received += r.Received
		m.RTTs = append(m.RTTs, r.RTTs...)
	}
	return m, tr.big[name], len(tr.recent[name]) > 0
}

// view prints the live timeline; it remembers the previous byte counters to
// show traffic per tick.
type view struct {
	w         io.Writer
	start     time.Time
	stepStart time.Time
	l         *lab.Lab
	agents    []*demoAgent
	tr        *traffic
	lan       *lanFlow
	prevBytes map[string]float64
	table     table
	last      map[string]peerView // the site agents' view in the last tick, by tunnel
}

// demoColumns head the table: the lab's truth next to the site agent's
// measurement ("lab / agent"), and what the MTU and keepalive policies keep
// in force.
var demoColumns = []string{"tunnel", "faults", "site agent: handshake age", "bytes/tick", "hub agent: endpoint changes",
	"loss lab/agent", "rtt p50 lab/agent", "jitter lab/agent", "path MTU lab/agent", "1400B DF", "health lab/agent", "MTU in force", "keepalive site/hub"}

func (vw *view) tick() {
	vw.table.write(vw.w, vw.rows(true))
	vw.failover()
}

// complete reports whether every cell of the table has a value: the lab's
// pings and every agent's first probes and path MTU search are in.
func (vw *view) complete() bool {
	for _, row := range vw.rows(false)[1:] {
		for _, cell := range row[1:] {
			if cell == "-" || strings.HasPrefix(cell, "- /") || strings.HasSuffix(cell, "/ -") {
				return false
			}
		}
	}
	return true
}

// rows are the table's rows for this instant, the header first; a printed
// tick (advance) moves the bytes/tick counters on, a look does not.
func (vw *view) rows(advance bool) [][]string {
	rows := [][]string{append([]string{"[" + since(vw.start) + "]"}, demoColumns...)}
	tunnels, _ := vw.l.Status()
	views := map[string]map[string]peerView{}
	for _, a := range vw.agents {
		if v, err := a.scrape(); err == nil {
			views[a.site.Name] = v
		}
	}
	vw.last = map[string]peerView{}
	for _, t := range tunnels {
		hs, bytes, changes := "no scrape", "-", "no scrape"
		site, siteOK := views[t.Site]
		v := site[t.Name]
		if siteOK {
			vw.last[t.Name] = v
			hs = "never"
			if v.handshake > 0 {
				hs = time.Since(time.Unix(int64(v.handshake), 0)).Round(time.Second).String()
			}
			bytes = fmt.Sprintf("%.0f", v.rx+v.tx-vw.prevBytes[t.Name])
			if advance {
				vw.prevBytes[t.Name] = v.rx + v.tx
			}
		}
		hub, hubOK := views["hub"]
		if hubOK {
			changes = fmt.Sprintf("%.0f", hub[t.Name].changes)
		}
		truth := vw.truth(t)
		seen := agentCells(v)
		mtu, keepalive := inForce(v), "-"
		if siteOK && hubOK && v.status != nil && hub[t.Name].status != nil {
			keepalive = keepaliveCell(v) + " / " + keepaliveCell(hub[t.Name])
		}
		rows = append(rows, []string{"", t.Name, fmt.Sprint(t.Faults), hs, bytes, changes,
			truth.loss + " / " + seen.loss, truth.rtt + " / " + seen.rtt, truth.jitter + " / " + seen.jitter,
			truth.pmtu + " / " + seen.pmtu, truth.big, truth.health + " / " + seen.health, mtu, keepalive})
	}
	return rows
}

// cells is one side of the "lab / agent" columns.
type cells struct{ loss, rtt, jitter, pmtu, big, health string }

// truth is what the lab knows of the tunnel: the system ping's loss, RTT
// median and jitter (mean difference of consecutive RTTs) over its last
// 15 probes, whether a 1400-byte DF packet crossed, the largest inner
// packet the path's faults let through the device (lab.InnerLimit), and a
// health word from the faults set on the path.
func (vw *view) truth(t lab.Tunnel) cells {
	c := cells{loss: "-", rtt: "-", jitter: "-", big: "-", pmtu: fmt.Sprint(t.MTU), health: "clean"}
	if f := t.Faults; f != nil {
		if f.MTU > 0 {
			c.pmtu = fmt.Sprint(lab.InnerLimit(f.MTU, t.MTU))
		}
		switch {
		case f.Down:
			c.health = "down"
		case f.Loss > 0 || f.Delay > 0 || f.Jitter > 0 || (f.MTU > 0 && lab.InnerLimit(f.MTU, t.MTU) < t.MTU):
			c.health = "impaired"
		}
	}
	r, passed, ok := vw.tr.get(t.Name)
	if !ok {
		return c
	}
	c.loss = fmt.Sprintf("%.0f%%", 100*r.Loss())
	c.big = map[bool]string{true: "passes", false: "LOST"}[passed]
	switch len(r.RTTs) {
	case 0:
		c.rtt, c.jitter = "all lost", "all lost"
	case 1:
		c.rtt, c.jitter = r.Quantile(0.5).Round(100*time.Microsecond).String(), "one reply"
	default:
		c.rtt = r.Quantile(0.5).Round(100 * time.Microsecond).String()
		var sum time.Duration
		for i := 1; i < len(r.RTTs); i++ {
			sum += (r.RTTs[i] - r.RTTs[i-1]).Abs()
		}
		c.jitter = (sum / time.Duration(len(r.RTTs)-1)).Round(100 * time.Microsecond).String()
	}
	return c
}

// agentCells is the site agent's view of the tunnel's peer: its prober's
// loss, RTT median, jitter and path MTU, and the status health word. A
// "-" is a value the agent does not have.
func agentCells(v peerView) cells {
	c := cells{loss: "-", rtt: "-", jitter: "-", pmtu: "-", health: "-"}
	ps := v.status
	if ps == nil {
		return c
	}
	c.health = ps.Health
	pr := ps.Probe
	if pr == nil || pr.State == "unknown" {
		return c
	}
	c.loss = fmt.Sprintf("%.0f%%", 100*pr.LossRatio)
	switch {
	case pr.RTTP50Seconds > 0:
		c.rtt = seconds(pr.RTTP50Seconds)
	case pr.State == "down" || pr.LossRatio == 1:
		c.rtt = "all lost"
	}
	c.jitter = seconds(pr.JitterSeconds)
	if pr.PathMTU > 0 {
		c.pmtu = fmt.Sprint(pr.PathMTU)
	}
	return c
}

// inForce is the MTU the site's packets to the peer get: the MTU policy's
// (on the peer's routes, or the device) when it set one, else the device's.
func inForce(v peerView) string {
	switch {
	case v.status == nil:
		return "-"
	case v.mtuPolicy > 0:
		return fmt.Sprintf("%.0f (mtu policy, %s)", v.mtuPolicy, v.mtuMechanism)
	}
	return fmt.Sprint(v.deviceMTU)
}

// keepaliveCell is the peer's PersistentKeepalive, marked when the
// keepalive policy set it.
func keepaliveCell(v peerView) string {
	k := "off"
	if s := v.status.KeepaliveSeconds; s > 0 {
		k = seconds(s)
	}
	if v.keepalivePolicy {
		k += " (keepalive policy)"
	}
	return k
}

func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// table prints rows in columns as wide as the widest cell seen in any
// tick so far, so a column does not move from one tick to the next when a
// cell widens (the time reaching 1m0s, a handshake age of 1m5s) and back.
type table struct{ widths []int }

func (tb *table) write(w io.Writer, rows [][]string) {
	for _, row := range rows {
		for i, cell := range row {
			if i == len(tb.widths) {
				tb.widths = append(tb.widths, 0)
			}
			tb.widths[i] = max(tb.widths[i], len(cell))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		b.WriteString("  ")
		for i, cell := range row {
			if i == len(row)-1 {
				b.WriteString(cell)
				break
			}
			b.WriteString(cell + strings.Repeat(" ", tb.widths[i]-len(cell)+2))
		}
		b.WriteString("\n")
	}
	_, _ = io.WriteString(w, b.String())
}

// failover prints each agent's failover groups (active path, path health,
// the last decision and its reason) and the dc1 <-> hub LAN flow.
func (vw *view) failover() {
	fmt.Fprintf(vw.w, "  failover: LAN %s this step; %s\n", vw.lan.route, vw.lan.summary(vw.stepStart, time.Time{}))
	for _, a := range vw.agents {
		st, err := a.status()
		if err != nil {
			fmt.Fprintf(vw.w, "    %-4s agent: %v\n", a.site.Name, err)
			continue
		}
		for _, g := range st.Groups {
			path := func(name string) string {
				p := g.Paths[name]
				if p.State == "down" {
					return name + " down: " + p.Reason
				}
				return name + " " + p.State
			}
			line := fmt.Sprintf("    %-4s agent, group %-4s on %-7s (%s; %s)", a.site.Name, g.Name, strings.ToUpper(g.Active), path("primary"), path("backup"))
			if d := g.Last; d != nil {
				what := d.Action + " " + d.Result
				if d.Suppressed != "" {
					what = d.Action + " suppressed (" + d.Suppressed + ")"
				}
				line += fmt.Sprintf("  last: %s at %s: %s", what, d.At.Local().Format("15:04:05.000"), d.Reason)
			}
			fmt.Fprintln(vw.w, line)
		}
	}
}

// onBackup reports whether any group of any agent is on its backup.
func (vw *view) onBackup() bool {
	for _, a := range vw.agents {
		if st, err := a.status(); err == nil {
			for _, g := range st.Groups {
				if g.Active == "backup" {
					return true
				}
			}
		}
	}
	return false
}

func (a *demoAgent) status() (failover.Report, error) {
	var st failover.Report
	code, body, err := a.Get("/-/remediate")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err == nil {
		err = json.Unmarshal([]byte(body), &st)
	}
	return st, err
}

// lanFlow is traffic between stable LAN addresses (dc1 10.101.0.1 and the
// hub's 10.50.0.1): a ping every 10 ms, whose runs of losses are the outage
// a failover causes, and a long-lived TCP stream it must not break.
type lanFlow struct {
	route  string
	ping   *lab.Pinger
	stream *lab.TCPStream
}

func startLANFlow(l *lab.Lab) (*lanFlow, error) {
	s, err := l.Site("dc1")
	if err != nil {
		return nil, err
	}
	src := strings.TrimSuffix(s.LAN, "0.0/16") + "0.1"
	f := &lanFlow{route: src + " -> 10.50.0.1"}
	if f.ping, err = lab.StartPinger(s.Namespace, src, "10.50.0.1", 10*time.Millisecond); err != nil {
		return nil, err
	}
	if f.stream, err = lab.StartTCPStream(l.HubNamespace, "10.50.0.1:7000", s.Namespace, src); err != nil {
		f.ping.Stop()
		return nil, err
	}
	return f, nil
}

func (f *lanFlow) summary(from, to time.Time) string {
	lost := 0
	for _, o := range f.ping.Outages(from, to) {
		lost += o.Lost
	}
	o := f.ping.Longest(from, to)
	tcp := "TCP stream intact"
	if _, _, stall, err := f.stream.Check(); err != nil {
		tcp = "TCP stream BROKEN: " + err.Error()
	} else if stall > 100*time.Millisecond {
		tcp += fmt.Sprintf(" (longest stall %s)", stall.Round(time.Millisecond))
	}
	if lost == 0 {
		return "no ping lost; " + tcp
	}
	return fmt.Sprintf("%d pings of 10 ms lost, longest outage %d ms; %s", lost, o.Took.Milliseconds(), tcp)
}

func (f *lanFlow) stop() {
	f.ping.Stop()
	_ = f.stream.Stop()
}
