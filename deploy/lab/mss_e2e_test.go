package lab_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// transfer sends n bytes from ns to addr over TCP and waits for the
// receiver's count: nil when all arrived within limit.
func transfer(ns, addr string, n int, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	c, err := lab.DialContextIn(ns)(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(limit))
	if _, err := c.Write(make([]byte, n)); err != nil {
		return time.Since(start), fmt.Errorf("writing: %w", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return time.Since(start), fmt.Errorf("waiting for the receiver: %w", err)
	}
	if got, _ := strconv.Atoi(string(b)); got != n {
		return time.Since(start), fmt.Errorf("receiver got %s bytes of %d", b, n)
	}
	return time.Since(start), nil
}

// sink listens in ns and answers each connection with the byte count it read.
func sink(t *testing.T, ns, addr string) {
	t.Helper()
	var ln net.Listener
	if err := lab.InNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_, _ = c.Write([]byte(strconv.FormatInt(n, 10)))
			}()
		}
	}()
}

var maxseg = regexp.MustCompile(`oifname "([^"]+)" meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size set (\d+)`)

// MSS clamping on a gateway: a LAN host behind dc1 sends 1 MB over TCP to
// the hub, across a primary path that drops underlay packets above 1300
// bytes without an ICMP error. The LAN host sizes its segments for its LAN
// and the hub's SYN-ACK offers 1380: without a clamp the transfer stalls.
// dc1's agent (remediate.mss, the prober's path MTU search) clamps the
// MSS of forwarded SYNs in its own nftables table: the transfer completes.
// A reload to mode off removes the table, and so does a clean exit with
// restore_on_exit.
func TestMSSClampOnTheLab(t *testing.T) {
	t.Parallel()
	nftBin := labtest.Tool(t, "nft", "nftables")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	dc1, _ := l.Site("dc1")
	lanNS := l.Config.Prefix + "-lan1"
	if err := lab.AddNetns(lanNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.DelNetns(lanNS) })
	if err := lab.Veth(dc1.Namespace, "lan1", "10.101.1.1/24", lanNS, "eth0", "10.101.1.2/24"); err != nil {
		t.Fatal(err)
	}
	if err := lab.IP("-n", lanNS, "route", "add", "default", "via", "10.101.1.1"); err != nil {
		t.Fatal(err)
	}
	sink(t, l.HubNamespace, "10.50.0.1:5201")
	if d, err := transfer(lanNS, "10.50.0.1:5201", 1<<20, 20*time.Second); err != nil {
		t.Fatalf("a clean path: %v after %s", err, d)
	}
	if _, err := l.Fault("dc1-primary", "mtu=1300"); err != nil {
		t.Fatal(err)
	}
	if d, err := transfer(lanNS, "10.50.0.1:5201", 1<<20, 10*time.Second); err == nil {
		t.Fatalf("1 MB crossed the 1300-byte black hole without a clamp (%s): the test proves nothing", d)
	} else {
		t.Logf("without a clamp: %v after %s", err, d.Round(100*time.Millisecond))
	}

	p, b := mustTunnel(t, l, "dc1-primary"), mustTunnel(t, l, "dc1-backup")
	clampMissing := func() bool {
		rep, _ := runDiagnose(t, bin, dc1.Namespace)
		for _, f := range rep.Findings {
			if f.Check == diagnose.CheckMSSClampMissing && f.Device == p.Device {
				return true
			}
		}
		return false
	}
	if !clampMissing() {
		t.Errorf("wgpulse diagnose on dc1 does not say a clamp would help %s", p.Device)
	}
	cfg := filepath.Join(t.TempDir(), "dc1.yml")
	yml := l.AgentConfig("dc1", lab.Remediation{Mode: "auto", StateDir: t.TempDir(), RestoreOnExit: true,
		ProberYAML: "pmtu: {min: 1200, interval: 1m, confirm: 10s}"}) + fmt.Sprintf("  mss:\n    enabled: true\n    devices: [%s, %s]\n", p.Device, b.Device)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := labtest.StartAgent(t, bin, dc1.Namespace, agentAddr, "--config.file="+cfg)
	table := func() string {
		out, _ := lab.Command(dc1.Namespace, nftBin, "list", "table", "inet", "wgpulse").CombinedOutput()
		return string(out)
	}
	hasTable := func() bool {
		out, _ := lab.Command(dc1.Namespace, nftBin, "list", "tables").CombinedOutput()
		return strings.Contains(string(out), "table inet wgpulse")
	}
	clampOf := func(dev string) int {
		for _, m := range maxseg.FindAllStringSubmatch(table(), -1) {
			if m[1] == dev {
				n, _ := strconv.Atoi(m[2])
				return n
			}
		}
		return 0
	}
	start := time.Now()
	for clampOf(p.Device) == 0 || clampOf(p.Device) > 1192 {
		if time.Since(start) > 90*time.Second {
			t.Fatalf("no clamp of at most 1192 on %s within 90 s; table:\n%s", p.Device, table())
		}
		time.Sleep(time.Second)
	}
	t.Logf("clamp on %s after %s: %d (IPv4); on %s: %d", p.Device, time.Since(start).Round(time.Second), clampOf(p.Device), b.Device, clampOf(b.Device))
	if c := clampOf(b.Device); c != 1380 {
		t.Errorf("the clean backup's clamp is %d, want 1380 (its device MTU 1420 - 40)", c)
	}
	d, err := transfer(lanNS, "10.50.0.1:5201", 1<<20, 20*time.Second)
	if err != nil {
		t.Fatalf("with the clamp: %v after %s", err, d)
	}
	t.Logf("with the clamp: 1 MB in %s", d.Round(time.Millisecond))
	if clampMissing() {
		t.Errorf("wgpulse diagnose still finds mss_clamp_missing on %s with wgpulse's clamp in force", p.Device)
	}
	if out, _ := lab.Command(dc1.Namespace, nftBin, "list", "tables").CombinedOutput(); strings.Count(string(out), "table") != 1 {
		t.Errorf("tables in dc1: %s; want wgpulse's only", out)
	}

	// mode off: the table goes.
	if err := os.WriteFile(cfg, []byte(strings.Replace(yml, "mode: auto", "mode: off", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := agent.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "no wgpulse table after a reload to mode off", func() (bool, string) {
		return !hasTable(), table()
	})
	// back in auto, then a clean exit with restore_on_exit: the table goes.
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := agent.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the clamp back in auto", func() (bool, string) { return clampOf(p.Device) > 0, table() })
	agent.Stop()
	if hasTable() {
		t.Errorf("after a clean exit with restore_on_exit the table is still there:\n%s", table())
	}
	if !strings.Contains(agent.Logs(), "remove_mss_clamp") {
		t.Error("no audit line for the removal")
	}
}
