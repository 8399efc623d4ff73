package vm_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// tcgAllowance is what software emulation adds to a profile's failover
// bound: every probe, timer and netlink call runs on an emulated CPU.
const tcgAllowance = 2 * time.Second

// A real node: the VM pair (pair_test.go), kernel WireGuard from wg-quick@
// units (the site's primary with the default Table = auto, its backup
// Table = off), and wgpulse on the site installed by `make install
// DESTDIR=` and started by `systemctl enable --now wgpulse` under the
// shipped unit, unmodified, in auto with one failover group. The agent
// finds the kernel devices without collector.devices; survives
// `systemctl restart wg-quick@wgsb` (a new device, a new ifindex: probed
// again, the backup never believed down); fails over when the hub drops the
// primary's underlay (within the fast profile's bound plus a TCG
// allowance); survives `systemctl restart wg-quick@wgsp` while on the
// backup (wg-quick puts its metric-0 route back) and returns after
// hold_down; keeps its state in /var/lib/wgpulse; applies a `systemctl
// reload`; leaves audit lines in the journal; on `systemctl stop` with
// restore_on_exit leaves no route of its own, and after wg-quick down of
// both tunnels nothing of wgpulse is left.
func TestWgpulseUnderSystemdOnKernelWireGuard(t *testing.T) {
	img, guest, log := image(t)
	p := bootPair(t, img, guest, log, 0, "")
	hub, site := p.hub, p.site
	const holdDown = 5 * time.Second
	agentConfig := func(holdDown time.Duration) string { // the example config, set to auto with one group
		return fmt.Sprintf(`collector:
  poll_interval: 1s
remediate:
  mode: auto
  state_file: /var/lib/wgpulse/remediate.json
  restore_on_exit: true
  failover:
    - name: hub
      profile: fast
      prefixes: [%s]
      primary: {device: wgsp, target: %s}
      backup: {device: wgsb, target: %s}
      hold_down: %s
`, hubLAN, primaryHub, backupHub, holdDown)
	}

	// The qdisc check on a kernel that has fair queueing: kernel WireGuard
	// devices come up with noqueue (info); fq_codel answers it.
	findings := func() map[string]bool { // "check device" of wgpulse diagnose in the site
		out, errOut, _, err := site.Exec(time.Minute, "wgpulse", "diagnose", "--json", "--no-agent")
		var rep struct {
			Findings []struct{ Check, Device string }
		}
		if err != nil || json.Unmarshal([]byte(out), &rep) != nil {
			fatalf(t, "wgpulse diagnose in the site: %v\n%s%s", err, out, errOut)
		}
		m := map[string]bool{}
		for _, f := range rep.Findings {
			m[f.Check+" "+f.Device] = true
		}
		return m
	}
	if f := findings(); !f["qdisc_without_aqm wgsp"] || f["forwarding_off wgsp"] {
		errorf(t, "wgpulse diagnose on the site: %v, want qdisc_without_aqm on wgsp (noqueue) and no forwarding_off (no LAN)", f)
	}
	must(t, site, "tc", "qdisc", "replace", "dev", "wgsp", "root", "fq_codel")
	if f := findings(); f["qdisc_without_aqm wgsp"] || !f["qdisc_without_aqm wgsb"] {
		errorf(t, "after tc qdisc replace dev wgsp root fq_codel: %v, want the info on wgsb only", f)
	}

	phase := time.Now()
	startAgent(t, site, agentConfig(holdDown))
	var metrics string
	waitFor(t, 60*time.Second, "the agent reports both tunnels as kernel devices (no collector.devices)", func() bool {
		metrics, _, _ = site.Get("http://127.0.0.1:9586/metrics")
		return strings.Count(metrics, `wireguard_device_info{`) == 2 && strings.Count(metrics, `type="kernel"`) >= 2
	}, site)
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "wireguard_device_info{") {
			t.Logf("the agent under the shipped unit: %s", l)
		}
	}
	checkContract(t, site)
	waitFor(t, 60*time.Second, "both paths up", func() bool { return countIn(site, "failover path health changed.*to=up") >= 2 })
	t.Logf("phase agent up: %s", time.Since(phase).Round(100*time.Millisecond))

	// Churn: wg-quick deletes the backup's device and creates a new one.
	phase = time.Now()
	before := strings.TrimSpace(must(t, site, "cat", "/sys/class/net/wgsb/ifindex"))
	up := must(t, site, "sh", "-c", "systemctl restart wg-quick@wgsb && date +%s.%N")
	after := strings.TrimSpace(must(t, site, "cat", "/sys/class/net/wgsb/ifindex"))
	if before == after {
		fatalf(t, "wgsb kept ifindex %s across the restart: no churn, the test proves nothing", before)
	}
	const reopened = "probing through device again.*device=wgsb"
	waitFor(t, 30*time.Second, "the backup's ICMP socket reopened", func() bool { return countIn(site, reopened) >= 1 }, site)
	at := must(t, site, "sh", "-c", "journalctl -u wgpulse --no-pager -o short-unix | grep -E '"+reopened+"' | tail -1 | cut -d' ' -f1")
	took := time.Duration((parseFloat(at) - parseFloat(up)) * float64(time.Second))
	// The prober checks its sockets' ifindex every second, then probes at
	// once; two fast intervals (0.1 s) on top, and TCG.
	churnBound := time.Second + 200*time.Millisecond + tcgAllowance
	t.Logf("wgsb recreated (ifindex %s -> %s): probing again %s relative to the end of systemctl restart wg-quick@wgsb (negative: before it returned; bound %s)", before, after, took.Round(10*time.Millisecond), churnBound)
	if took > churnBound {
		errorf(t, "the backup was probed again %s after its device came back, above %s", took, churnBound)
	}
	waitFor(t, 10*time.Second, "the backup target up again", func() bool {
		m, _, _ := site.Get("http://127.0.0.1:9586/metrics")
		return strings.Contains(m, `wgpulse_probe_up{device="wgsb",`) && strings.Contains(m, `target="`+backupHub+`"} 1`)
	}, site)
	if n := countIn(site, "path=backup.*to=down"); n != 0 {
		errorf(t, "the backup was believed down %d times across its own device's churn:\n%s", n, journal(t, site))
	}
	t.Logf("phase churn of the backup: %s", time.Since(phase).Round(100*time.Millisecond))

	phase = time.Now()
	cut := time.Now()
	must(t, hub, "ip", "link", "set", "eth0", "down") // the primary's underlay
	waitFor(t, 30*time.Second, "our halves via the backup", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.Count(out, "dev wgsb") == 2
	})
	took = time.Since(cut)
	bound := time.Second + tcgAllowance
	t.Logf("failover on kernel WireGuard under systemd: our routes in %s after the cut (bound %s: fast 1 s + TCG %s); %s",
		took.Round(10*time.Millisecond), bound, tcgAllowance, strings.TrimSpace(must(t, site, "ip", "route", "show", "proto", "117")))
	if took > bound+500*time.Millisecond { // a 250 ms poll, each an exec through the guest agent
		errorf(t, "failover took %s, above %s", took, bound)
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		errorf(t, "the hub LAN over the backup: %v\n%s", err, out)
	}
	// Churn of the primary while on the backup: wg-quick puts its metric-0
	// route back; ours, more specific, still carry the traffic.
	must(t, site, "systemctl", "restart", "wg-quick@wgsp")
	if out := must(t, site, "ip", "route", "show", hubLAN); !strings.Contains(out, "dev wgsp") {
		errorf(t, "wg-quick's route after the restart: %q", out)
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		errorf(t, "the hub LAN over the backup after wg-quick@wgsp restarted: %v\n%s", err, out)
	}
	heal := time.Now()
	must(t, hub, "ip", "link", "set", "eth0", "up")
	waitFor(t, holdDown+60*time.Second, "the return", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.TrimSpace(out) == ""
	}, site)
	back := time.Since(heal)
	t.Logf("returned %s after the heal of the recreated primary (hold_down %s)", back.Round(100*time.Millisecond), holdDown)
	if back < holdDown {
		errorf(t, "returned %s after the heal, before hold_down %s", back, holdDown)
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		errorf(t, "the hub LAN over the recreated primary: %v\n%s", err, out)
	}
	t.Logf("phase failover and return: %s", time.Since(phase).Round(100*time.Millisecond))

	if out := must(t, site, "sh", "-c", "ls -l /var/lib/wgpulse/ && cat /var/lib/wgpulse/remediate.json"); !strings.Contains(out, `"version": 2`) {
		errorf(t, "the state in /var/lib/wgpulse:\n%s", out)
	}
	if err := site.Put("/etc/wgpulse/wgpulse.yml", []byte(agentConfig(6*time.Second)), 0o644); err != nil {
		fatalf(t, "%v", err)
	}
	must(t, site, "systemctl", "reload", "wgpulse")
	waitFor(t, 20*time.Second, "the reload applied", func() bool { return countIn(site, "config reloaded") > 0 })
	// 10 s after start the agent dropped its start-up pages (madvise, which
	// the unit's SystemCallFilter=@system-service allows) and ran on: one
	// start in the journal, not a restart after a SIGSYS.
	if countIn(site, "released the program pages only start-up used") != 1 || countIn(site, "starting wgpulse") != 1 {
		errorf(t, "want one start and one release of the start-up pages in the journal:\n%s", journal(t, site))
	}
	if n := strings.Count(journal(t, site), "remediation decision"); n < 2 {
		errorf(t, "%d audit lines in the journal, want the switch and the return:\n%s", n, journal(t, site))
	}
	security := must(t, site, "sh", "-c", "systemd-analyze security wgpulse --no-pager | tail -1")
	t.Logf("inside the VM: %s", strings.TrimSpace(security))

	must(t, hub, "ip", "link", "set", "eth0", "down")
	waitFor(t, 30*time.Second, "on the backup again", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.Count(out, "dev wgsb") == 2
	})
	must(t, hub, "ip", "link", "set", "eth0", "up")
	waitFor(t, 30*time.Second, "the primary up again, still within hold_down", func() bool { return countIn(site, "path=primary.*to=up") >= 3 })
	must(t, site, "systemctl", "stop", "wgpulse")
	if out := must(t, site, "ip", "route", "show", "proto", "117"); strings.TrimSpace(out) != "" {
		errorf(t, "after systemctl stop with restore_on_exit: %s", out)
	}
	must(t, site, "systemctl", "stop", "wg-quick@wgsp", "wg-quick@wgsb")
	if out := must(t, site, "sh", "-c", "ip route show proto 117; ip -6 route show proto 117; ip rule | grep -v -E '^(0|32766|32767):' || true; nft list ruleset | grep -i wgpulse || true"); strings.TrimSpace(out) != "" {
		errorf(t, "after wg-quick down of both tunnels, wgpulse left:\n%s", out)
	}
	for _, n := range []*vm.Node{site, hub} {
		if _, err := n.Shutdown(); err != nil {
			errorf(t, "%v", err)
		}
	}
}

// waitFor polls cond; on a timeout the test fails with the agent's
// journal and status, when a node is given.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool, diag ...*vm.Node) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			var info string
			for _, n := range diag {
				j, _, _, _ := n.Exec(20*time.Second, "sh", "-c", "systemctl status wgpulse --no-pager; journalctl -u wgpulse --no-pager | tail -40; wgpulse status --json | head -60; ip route")
				info += "\n" + n.Name + ":\n" + j
			}
			fatalf(t, "%s: not within %s%s", what, limit, info)
		}
	}
}

func parseFloat(s string) float64 {
	f, _ := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return f
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		fatalf(t, "%v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// redactKeys drops the private keys `wg show all dump` prints on device
// lines, so a test log never holds one.
func redactKeys(dump string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(dump), "\n") {
		f := strings.Split(l, "\t")
		if len(f) == 5 { // interface line: name, private key, public key, port, fwmark
			f[1] = "(hidden)"
		}
		out = append(out, strings.Join(f, "\t"))
	}
	return strings.Join(out, "\n")
}

// checkContract compares the agent's per-peer series on kernel devices with
// `wg show all dump` and the devices' MTU in the same node: endpoint and
// AllowedIPs exactly, keepalive exactly, the last handshake within a poll
// (1 s) of the dump, rx and tx no more than the dump read just after and
// within the traffic of a few seconds.
func checkContract(t *testing.T, n *vm.Node) {
	t.Helper()
	var problems []string
	for range 3 { // a rekey or a poll between the scrape and the dump: compare again
		var peers int
		if problems, peers = compareContract(t, n); len(problems) == 0 {
			t.Logf("collector contract on kernel devices: %d peers compared with wg show all dump (endpoint, AllowedIPs, keepalive, handshake, rx, tx; device MTU)", peers)
			return
		}
		time.Sleep(2 * time.Second)
	}
	errorf(t, "the collector disagrees with the kernel:\n%s", strings.Join(problems, "\n"))
}

func compareContract(t *testing.T, n *vm.Node) ([]string, int) {
	t.Helper()
	var problems []string
	errorf := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	sc, ok := scrapeAgent(t, n)
	if !ok {
		fatalf(t, "scraping the agent in %s failed", n.Name)
	}
	dump, err := n.Run("wg", "show", "all", "dump")
	if err != nil {
		fatalf(t, "%v", err)
	}
	value, labelsOf := sc.value, sc.labels
	peers := 0
	for _, line := range strings.Split(strings.TrimSpace(dump), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 5 { // a device: its MTU
			mtu, err := n.Run("cat", "/sys/class/net/"+f[0]+"/mtu")
			if err != nil {
				fatalf(t, "%v", err)
			}
			if v, ok := value("wireguard_device_mtu_bytes", f[0], ""); !ok || fmt.Sprint(v) != strings.TrimSpace(mtu) {
				errorf("%s: wireguard_device_mtu_bytes %v (present %v), the kernel says %s", f[0], v, ok, strings.TrimSpace(mtu))
			}
			continue
		}
		if len(f) != 9 {
			continue
		}
		peers++
		dev, key, endpoint, allowed := f[0], f[1], f[3], strings.Split(f[4], ",")
		hs, _ := strconv.ParseFloat(f[5], 64)
		rx, _ := strconv.ParseFloat(f[6], 64)
		tx, _ := strconv.ParseFloat(f[7], 64)
		ka, _ := strconv.ParseFloat(f[8], 64)
		info := labelsOf("wireguard_peer_info", dev, key)
		if len(info) != 1 || info[0]["endpoint"] != endpoint {
			errorf("%s peer %s: wireguard_peer_info %v, want endpoint %s", dev, key, info, endpoint)
		}
		var got []string
		for _, l := range labelsOf("wireguard_peer_allowed_ips_info", dev, key) {
			got = append(got, l["allowed_ips"])
		}
		if strings.Join(sorted(got), ",") != strings.Join(sorted(allowed), ",") {
			errorf("%s peer %s: AllowedIPs %v in the metrics, %v in the kernel", dev, key, got, allowed)
		}
		if v, _ := value("wireguard_peer_persistent_keepalive_seconds", dev, key); v != ka {
			errorf("%s peer %s: keepalive %v, the kernel says %v", dev, key, v, ka)
		}
		if v, _ := value("wireguard_peer_last_handshake_seconds", dev, key); hs == 0 || v < hs-2 || v >= hs+1 { // the dump has whole seconds
			errorf("%s peer %s: last handshake %v, the kernel says %v", dev, key, v, hs)
		}
		for _, c := range []struct {
			name string
			dump float64
		}{{"wireguard_peer_receive_bytes_total", rx}, {"wireguard_peer_transmit_bytes_total", tx}} {
			if v, _ := value(c.name, dev, key); v > c.dump || c.dump-v > 256<<10 {
				errorf("%s peer %s: %s %v, the kernel says %v just after", dev, key, c.name, v, c.dump)
			}
		}
	}
	if peers != 2 {
		errorf("%d peers in wg show all dump, want 2:\n%s", peers, redactKeys(dump))
	}
	return problems, peers
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return s
}
