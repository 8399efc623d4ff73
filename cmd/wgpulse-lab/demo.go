package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wgpulse/wgpulse/deploy/lab"
)

type demoCommand struct {
	cmd   *kingpin.CmdClause
	agent *string
	step  *time.Duration
	hold  *bool
}

func addDemoCommand(app *kingpin.Application) *demoCommand {
	d := &demoCommand{cmd: app.Command("demo", "Build the lab, run a wgpulse agent in each site, and play a fault timeline showing what the agents report. Ctrl-C cleans up.")}
	d.agent = d.cmd.Flag("agent", "wgpulse binary (default: next to wgpulse-lab, then $PATH).").String()
	d.step = d.cmd.Flag("step", "How long each step of the timeline lasts.").Default("10s").Duration()
	d.hold = d.cmd.Flag("hold", "Keep the lab and agents up after the timeline, for Prometheus/Grafana, until Ctrl-C.").Bool()
	return d
}

// demoStep is one line of the fault timeline.
type demoStep struct {
	title  string
	faults [][]string // each: path, key=value...
}

var timeline = []demoStep{
	{"clean network: every tunnel handshaked, traffic flowing", nil},
	{"20% loss and 40ms delay on dc1-primary", [][]string{{"dc1-primary", "loss=20", "delay=40ms"}}},
	{"jitter: 30ms ± 20ms on dc2-primary; dc1-primary clean again", [][]string{{"dc1-primary", "loss=0", "delay=0"}, {"dc2-primary", "delay=30ms", "jitter=20ms"}}},
	{"NAT rebinds on dc2-primary: the hub sees a new endpoint", [][]string{{"dc2-primary", "delay=0", "jitter=0", "rebind"}}},
	{"MTU black hole on dc1-primary: underlay drops packets > 1300 bytes", [][]string{{"dc1-primary", "mtu=1300"}}},
	{"dc1-primary DOWN: handshakes age, the backup still carries", [][]string{{"dc1-primary", "mtu=0", "down"}}},
	{"dc1-primary back UP", [][]string{{"dc1-primary", "up"}}},
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

	fmt.Fprintln(stdout, "== starting a wgpulse agent in each site")
	var agents []*demoAgent
	hub := lab.Site{Name: "hub", Namespace: l.HubNamespace, Management: l.HubManagement}
	for _, s := range append([]lab.Site{hub}, l.Sites...) {
		a, err := startDemoAgent(l, s, agentBin)
		if err != nil {
			return fail(err)
		}
		defer a.stop()
		agents = append(agents, a)
		fmt.Fprintf(stdout, "   %s: http://%s/metrics   (log %s)\n", s.Name, a.addr, a.log)
	}
	for _, a := range agents {
		if err := a.waitReady(ctx); err != nil {
			return fail(err)
		}
	}

	traffic := startTraffic(ctx, l)
	fmt.Fprintf(stdout, "== fault timeline (%d steps of %s; Ctrl-C stops and cleans up)\n", len(timeline), *d.step)
	start := time.Now()
	vw := &view{w: stdout, start: start, l: l, agents: agents, tr: traffic, prevBytes: map[string]float64{}}
	for i, st := range timeline {
		for _, f := range st.faults {
			if _, err := l.Fault(f[0], f[1:]...); err != nil {
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
	if *d.hold {
		fmt.Fprintf(stdout, "\n== holding the lab up; agents stay at the addresses above. Ctrl-C to clean up.\n")
		<-ctx.Done()
	}
	return 0
}

func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }

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
// host through the site's management veth.
type demoAgent struct {
	site  lab.Site
	addr  string
	log   string
	cmd   *exec.Cmd
	names map[string]string // hub public key -> tunnel name
}

func startDemoAgent(l *lab.Lab, s lab.Site, bin string) (*demoAgent, error) {
	a := &demoAgent{site: s, addr: s.Management + ":9586", log: filepath.Join(l.Dir, "agent-"+s.Name+".log"), names: map[string]string{}}
	var devices, names []string
	for _, t := range l.Tunnels {
		switch {
		case s.Name == "hub": // the hub watches every site: NAT rebinds show here
			devices = append(devices, t.HubDevice)
			names = append(names, fmt.Sprintf("    %q: %s", t.PublicKey, t.Name))
			a.names[t.PublicKey] = t.Name
		case t.Site == s.Name:
			devices = append(devices, t.Device)
			names = append(names, fmt.Sprintf("    %q: hub-%s", t.HubPublicKey, t.Path))
			a.names[t.HubPublicKey] = t.Name
		}
	}
	cfg := fmt.Sprintf("collector:\n  devices: [%s]\n  poll_interval: 1s\n  peer_names:\n%s\n", strings.Join(devices, ", "), strings.Join(names, "\n"))
	cfgPath := filepath.Join(l.Dir, "agent-"+s.Name+".yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(a.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	a.cmd = lab.Command(s.Namespace, bin, "--config.file="+cfgPath, "--web.listen-address="+a.addr)
	a.cmd.Env = append(os.Environ(), "WGPULSE_LAB_PREFIX="+l.Config.Prefix) // so `down` finds it after a crash
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting agent in %s: %w", s.Namespace, err)
	}
	return a, nil
}

func (a *demoAgent) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + a.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(a.log)
	return fmt.Errorf("agent in %s not ready after 10s; its log:\n%s", a.site.Name, b)
}

func (a *demoAgent) stop() {
	_ = a.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = a.cmd.Process.Kill()
	}
}

// peerView is what an agent reports for one tunnel.
type peerView struct {
	handshake, rx, tx, changes float64
}

func (a *demoAgent) scrape() (map[string]peerView, error) {
	resp, err := http.Get("http://" + a.addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
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
	l         *lab.Lab
	agents    []*demoAgent
	tr        *traffic
	prevBytes map[string]float64
}

func (vw *view) tick() {
	tw := tabwriter.NewWriter(vw.w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  %s\ttunnel\tfaults\tsite agent: handshake age\tbytes/tick\thub agent: endpoint changes\tping: loss\trtt p50\t1400B DF\n", since(vw.start))
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
		fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Faults, hs, bytes, changes, loss, rtt, big)
	}
	_ = tw.Flush()
}
