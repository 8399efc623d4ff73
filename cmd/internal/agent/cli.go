package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
)

// AgentClient reaches a running agent's status API, with the same TLS and
// basic auth as its /metrics (exporter-toolkit web config).
type AgentClient struct {
	URL          string // e.g. http://localhost:9586
	Username     string
	PasswordFile string
	CAFile       string
	Insecure     bool // skip TLS verification
}

// Status fetches the agent's status document.
func (c AgentClient) Status(ctx context.Context) (Status, error) {
	var st Status
	tlsCfg := &tls.Config{InsecureSkipVerify: c.Insecure} //nolint:gosec // only when asked for
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return st, fmt.Errorf("--agent.ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return st, fmt.Errorf("--agent.ca-file %s: no PEM certificate in it", c.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.URL, "/")+StatusPath, nil)
	if err != nil {
		return st, fmt.Errorf("--agent %q: %w", c.URL, err)
	}
	if c.Username != "" {
		pw, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return st, fmt.Errorf("--agent.password-file: %w", err)
		}
		req.SetBasicAuth(c.Username, strings.TrimSpace(string(pw)))
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("no wgpulse agent at %s (start one, or point --agent at it): %w", c.URL, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return st, fmt.Errorf("the agent at %s wants credentials: --agent.username and --agent.password-file", c.URL)
	case resp.StatusCode != http.StatusOK:
		return st, fmt.Errorf("the agent at %s answered %s for %s (an agent older than the status API?)", c.URL, resp.Status, StatusPath)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("the agent at %s: bad status document: %w", c.URL, err)
	}
	return st, nil
}

// Report is the result of `wgpulse diagnose`.
type Report struct {
	Findings []diagnose.Finding `json:"findings"`
	Devices  []string           `json:"devices"` // checked
	// Notes say what could not be checked and why.
	Notes []string `json:"notes"`
}

// DiagnoseOptions are the transports of Diagnose; zero values use the real
// ones (wgctrl, netlink, nft, the agent's HTTP API).
type DiagnoseOptions struct {
	Collector collector.Options
	Routes    diagnose.RouteHandle
	Firewall  func(context.Context) (*diagnose.Ruleset, error)
	// Agent gives the running agent's view (endpoint history, path MTU);
	// nil skips it.
	Agent func(context.Context) (Status, error)
}

// Diagnose runs the checklist on this node from the kernel's own state:
// one read of the devices (those of collector.devices in cfg, or every
// device whose link is in this network namespace), the main routing table
// and the nftables ruleset, plus what the agent knows when it runs.
func Diagnose(ctx context.Context, cfg Config, opts DiagnoseOptions) (Report, error) {
	rep := Report{Findings: []diagnose.Finding{}, Devices: []string{}, Notes: []string{}}
	if opts.Collector.Client == nil {
		c, err := wgctrl.New()
		if err != nil {
			return rep, fmt.Errorf("opening wgctrl (WireGuard control; run as root or with CAP_NET_ADMIN): %w", err)
		}
		defer c.Close()
		opts.Collector.Client = c
	}
	if opts.Collector.Links == nil || opts.Routes == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return rep, fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		if opts.Routes == nil {
			opts.Routes = h
		}
		if opts.Collector.Links == nil {
			opts.Collector.Links = h
		}
	}
	col, err := collector.New(cfg.Collector, slog.New(slog.DiscardHandler), opts.Collector)
	if err != nil {
		return rep, err
	}
	snap := col.Poll()
	n := diagnose.Node{Now: time.Now(), Errors: map[string]error{}, PathMTU: map[string]int{}, Failover: failoverGroups(cfg)}
	var elsewhere []string
	for _, d := range snap.Devices {
		if d.MTU == 0 && len(cfg.Collector.Devices) == 0 {
			elsewhere = append(elsewhere, d.Name)
			continue
		}
		n.Devices = append(n.Devices, d)
		rep.Devices = append(rep.Devices, d.Name)
	}
	if len(elsewhere) > 0 {
		rep.Notes = append(rep.Notes, "skipped devices whose link is in another network namespace: "+strings.Join(elsewhere, ", "))
	}
	for name, err := range snap.Errors {
		switch {
		case name == "":
			rep.Notes = append(rep.Notes, "listing devices: "+err.Error())
		case len(cfg.Collector.Devices) == 0:
			// Found, not asked for: a stale socket of a dead userspace
			// device, say. A device named in the config is a finding.
			rep.Notes = append(rep.Notes, fmt.Sprintf("device %s skipped: %v", name, err))
		default:
			n.Errors[name] = err
		}
	}
	if k, err := diagnose.ReadKernel(opts.Routes); err != nil {
		rep.Notes = append(rep.Notes, "routes not checked: "+err.Error())
	} else {
		n.Routes, n.LinkMTU, n.Addrs = k.Routes, k.LinkMTU, k.Addrs
	}
	if hh, ok := opts.Routes.(diagnose.HostHandle); ok {
		h, err := diagnose.ReadHost(hh, "/proc/sys")
		if err != nil {
			rep.Notes = append(rep.Notes, "host settings read in part: "+err.Error())
		}
		n.Host = &h
	}
	fw := opts.Firewall
	if fw == nil {
		fw = diagnose.ReadFirewall
	}
	n.Firewall, n.FirewallErr = fw(ctx)
	if opts.Agent == nil {
		rep.Notes = append(rep.Notes, "no agent asked: endpoint changes (NAT) and path MTU not checked")
	} else if st, err := opts.Agent(ctx); err != nil {
		rep.Notes = append(rep.Notes, "endpoint changes (NAT) and path MTU not checked: "+err.Error())
	} else {
		mergeAgentView(&n, st)
	}
	rep.Findings = diagnose.Check(n)
	if rep.Findings == nil {
		rep.Findings = []diagnose.Finding{}
	}
	return rep, nil
}

// mergeAgentView adds what only the running agent knows: endpoint changes
// seen over time and measured path MTUs.
func mergeAgentView(n *diagnose.Node, st Status) {
	for _, ds := range st.Devices {
		for i := range n.Devices {
			d := &n.Devices[i]
			if d.Name != ds.Name {
				continue
			}
			for _, ps := range ds.Peers {
				for j := range d.Peers {
					if p := &d.Peers[j]; p.PublicKey == ps.PublicKey {
						p.EndpointChanges = ps.EndpointChanges
						if p.Name == "" {
							p.Name = ps.Name
						}
					}
				}
				if ps.Probe != nil && ps.Probe.PathMTU > 0 {
					n.PathMTU[diagnose.PeerKey(ds.Name, ps.PublicKey)] = ps.Probe.PathMTU
				}
			}
		}
	}
}

// WriteReport prints a diagnose report for a human.
func WriteReport(w io.Writer, rep Report, color bool) {
	paint := painter(color)
	for _, f := range rep.Findings {
		word := strings.ToUpper(f.Severity.String())
		fmt.Fprintf(w, "%s %s: %s\n", paint(f.Severity.String(), fmt.Sprintf("%-7s", word)), f.Check, f.Object)
		fmt.Fprintf(w, "        %s\n        fix: %s\n", f.Evidence, f.Fix)
	}
	for _, note := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", note)
	}
	counts := map[diagnose.Severity]int{}
	for _, f := range rep.Findings {
		counts[f.Severity]++
	}
	fmt.Fprintf(w, "%d errors, %d warnings, %d cannot-tell on %d devices (%s)\n", counts[diagnose.Error], counts[diagnose.Warning], counts[diagnose.Info],
		len(rep.Devices), strings.Join(rep.Devices, ", "))
}

// WriteStatus prints one table per device for a human.
func WriteStatus(w io.Writer, st Status, color bool) {
	paint := painter(color)
	if len(st.Devices) == 0 {
		fmt.Fprintln(w, "no WireGuard devices (yet): check collector.devices and that the agent can read /var/run/wireguard")
	}
	for i, d := range st.Devices {
		if i > 0 {
			fmt.Fprintln(w)
		}
		head := fmt.Sprintf("%s  key %s  port %d  mtu %d  %d peers", d.Name, d.PublicKey, d.ListenPort, d.MTU, len(d.Peers))
		if d.Error != "" {
			head += "  STALE: " + d.Error
		}
		fmt.Fprintln(w, head)
		rows := [][]string{{"PEER", "ENDPOINT", "HANDSHAKE", "RX/s", "TX/s", "LOSS", "RTT p50/p99", "JITTER", "PMTU/MTU", "KEEPALIVE", "EP CHANGES", "FAILOVER", "HEALTH"}}
		words := []string{""}
		for _, p := range d.Peers {
			name := p.Name
			if name == "" {
				name = p.PublicKey[:min(len(p.PublicKey), 12)] + "…"
			}
			hs := "never"
			if p.HandshakeAgeSeconds != nil {
				hs = seconds(*p.HandshakeAgeSeconds)
			}
			loss, rtt, jitter, pmtu := "-", "-", "-", fmt.Sprintf("-/%d", d.MTU)
			if pr := p.Probe; pr != nil {
				loss = fmt.Sprintf("%.1f%%", 100*pr.LossRatio)
				if pr.RTTP50Seconds > 0 {
					rtt = seconds(pr.RTTP50Seconds) + "/" + seconds(pr.RTTP99Seconds)
				}
				jitter = seconds(pr.JitterSeconds)
				if pr.PathMTU > 0 {
					pmtu = fmt.Sprintf("%d/%d", pr.PathMTU, d.MTU)
				}
			}
			ka := "off"
			if p.KeepaliveSeconds > 0 {
				ka = seconds(p.KeepaliveSeconds)
			}
			fo := "-"
			if f := p.Failover; f != nil {
				fo = fmt.Sprintf("%s %s", f.Group, f.Path)
				if f.Path == f.Active {
					fo += " (active)"
				}
			}
			endpoint := p.Endpoint
			if endpoint == "" {
				endpoint = "-"
			}
			rows = append(rows, []string{name, endpoint, hs, bytesRate(p.ReceiveBytesPerSec), bytesRate(p.TransmitBytesPerSec), loss, rtt, jitter, pmtu, ka,
				fmt.Sprint(p.EndpointChanges), fo, p.Health + "  " + p.Reason})
			words = append(words, p.Health)
		}
		writeColumns(w, rows, func(r int, cell string) string {
			if r == 0 {
				return cell
			}
			word, rest, _ := strings.Cut(cell, "  ")
			return paint(words[r], word) + "  " + rest
		})
	}
	if len(st.Problems) > 0 {
		fmt.Fprintln(w, "\nproblems (wgpulse diagnose explains each):")
		for _, f := range st.Problems {
			fmt.Fprintf(w, "  %s %s: %s\n", paint(f.Severity.String(), fmt.Sprintf("%-7s", strings.ToUpper(f.Severity.String()))), f.Check, f.Object)
		}
	}
}

// writeColumns aligns rows; last formats the last cell of row r (which
// may carry colour, so it is not measured).
func writeColumns(w io.Writer, rows [][]string, last func(r int, cell string) string) {
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row[:len(row)-1] {
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	for r, row := range rows {
		var b strings.Builder
		b.WriteString("  ")
		for i, cell := range row[:len(row)-1] {
			b.WriteString(cell + strings.Repeat(" ", widths[i]-len([]rune(cell))+2))
		}
		b.WriteString(last(r, row[len(row)-1]))
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func bytesRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1f MB", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f kB", v/1e3)
	}
	return fmt.Sprintf("%.0f B", v)
}

// painter colours health words and severities when color is set.
func painter(color bool) func(word, s string) string {
	codes := map[string]string{"ok": "32", "degraded": "33", "down": "31", "never": "35", "error": "31", "warning": "33", "info": "36"}
	return func(word, s string) string {
		if c, ok := codes[word]; ok && color {
			return "\x1b[" + c + "m" + s + "\x1b[0m"
		}
		return s
	}
}

// IsTerminal says whether f is a terminal that wants colour (NO_COLOR
// unset, TERM not dumb).
func IsTerminal(f *os.File) bool {
	if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
