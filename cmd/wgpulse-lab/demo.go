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
}

var timeline = []demoStep{
	{"clean network: every tunnel handshaked, traffic flowing", nil, nil},
	{"20% loss and 40ms delay on dc1-primary", [][]string{{"dc1-primary", "loss=20", "delay=40ms"}}, nil},
	{"jitter: 30ms ± 20ms on dc2-primary; dc1-primary clean again", [][]string{{"dc1-primary", "loss=0", "delay=0"}, {"dc2-primary", "delay=30ms", "jitter=20ms"}}, nil},
	{"NAT rebinds on dc2-primary: the hub sees a new endpoint", [][]string{{"dc2-primary", "delay=0", "jitter=0", "rebind"}}, nil},
	{"MTU black hole on dc1-primary: underlay drops packets > 1300 bytes", [][]string{{"dc1-primary", "mtu=1300"}}, nil},
	{"dc1-primary DOWN: the agents move dc1 <-> hub LAN traffic to the backup", [][]string{{"dc1-primary", "mtu=0", "down"}}, nil},
	{"dc1-primary back UP: traffic returns after hold_down", [][]string{{"dc1-primary", "up"}}, nil},
	{"dc2-primary passes ICMP but drops TCP: dc2's groups probe with TCP connects and move to the backup", nil, []string{"dc2-primary"}},
	{"dc2-primary carries TCP again: traffic returns after hold_down", nil, []string{}},
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

	fmt.Fprintf(stdout, "== starting a wgpulse agent on the hub and in each site (remediate.mode auto: dc1 fast profile over ICMP, dc2 default over TCP connects; hold_down %s)\n", *d.holdDown)
	var agents []*demoAgent
	hub := lab.Site{Name: "hub", Namespace: l.HubNamespace, Management: l.HubManagement}
	// dc2's groups probe with TCP connects (to a closed port: a refusal
	// proves the path), so a path that drops TCP and passes ICMP shows.
	rem := lab.Remediation{Mode: "auto", Profiles: map[string]string{"dc1": "fast", "dc2": "default"}, HoldDown: *d.holdDown, StateDir: l.Dir,
		TCPPorts: map[string]int{"dc2": 9}}
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
	fmt.Fprintf(stdout, "== fault timeline (%d steps of %s; Ctrl-C stops and cleans up)\n", len(timeline), *d.step)
	start := time.Now()
	vw := &view{w: stdout, start: start, l: l, agents: agents, tr: traffic, lan: lanFlow, prevBytes: map[string]float64{}}
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
		for range 2 {
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
	names map[string]string // hub public key -> tunnel name
}

func startDemoAgent(ctx context.Context, l *lab.Lab, s lab.Site, bin string, rem lab.Remediation) (*demoAgent, error) {
	a := &demoAgent{site: s, log: filepath.Join(l.Dir, "agent-"+s.Name+".log"), names: map[string]string{}}
	for _, t := range l.Tunnels {
		switch {
		case s.Name == "hub": // the hub watches every site: NAT rebinds show here
			a.names[t.PublicKey] = t.Name
		case t.Site == s.Name:
			a.names[t.HubPublicKey] = t.Name
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

// peerView is what an agent reports for one tunnel.
type peerView struct {
	handshake, rx, tx, changes float64
}

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
	get := func(name string, set func(*peerView, float64)) {
		for _, m := range mfs[name].GetMetric() {
			var key string
			for _, l := range m.GetLabel() {
				if l.GetName() == "public_key" {
					key = l.GetValue()
				}
			}
			tunnel, ok := a.names[key]
			if !ok {
				continue
			}
			v := out[tunnel]
			set(&v, m.GetGauge().GetValue()+m.GetCounter().GetValue())
			out[tunnel] = v
		}
	}
	get("wireguard_peer_last_handshake_seconds", func(v *peerView, f float64) { v.handshake = f })
	get("wireguard_peer_receive_bytes_total", func(v *peerView, f float64) { v.rx = f })
	get("wireguard_peer_transmit_bytes_total", func(v *peerView, f float64) { v.tx = f })
	get("wireguard_peer_endpoint_changes_total", func(v *peerView, f float64) { v.changes = f })
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
}

func (vw *view) tick() {
	rows := [][]string{{"[" + since(vw.start) + "]", "tunnel", "faults", "site agent: handshake age", "bytes/tick", "hub agent: endpoint changes", "ping: loss", "rtt p50", "1400B DF"}}
	tunnels, _ := vw.l.Status()
	views := map[string]map[string]peerView{}
	for _, a := range vw.agents {
		if v, err := a.scrape(); err == nil {
			views[a.site.Name] = v
		}
	}
	for _, t := range tunnels {
		hs, bytes, changes := "no scrape", "-", "no scrape"
		if site, ok := views[t.Site]; ok {
			v := site[t.Name]
			hs = "never"
			if v.handshake > 0 {
				hs = time.Since(time.Unix(int64(v.handshake), 0)).Round(time.Second).String()
			}
			bytes = fmt.Sprintf("%.0f", v.rx+v.tx-vw.prevBytes[t.Name])
			vw.prevBytes[t.Name] = v.rx + v.tx
		}
		if hub, ok := views["hub"]; ok {
			changes = fmt.Sprintf("%.0f", hub[t.Name].changes)
		}
		loss, rtt, big := "-", "-", "-"
		if r, passed, ok := vw.tr.get(t.Name); ok {
			loss = fmt.Sprintf("%.0f%%", 100*r.Loss())
			if len(r.RTTs) > 0 {
				rtt = r.Quantile(0.5).Round(100 * time.Microsecond).String()
			}
			big = map[bool]string{true: "passes", false: "LOST"}[passed]
		}
		rows = append(rows, []string{"", t.Name, fmt.Sprint(t.Faults), hs, bytes, changes, loss, rtt, big})
	}
	vw.table.write(vw.w, rows)
	vw.failover()
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
