package vm_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// tcgAllowance is what software emulation adds to a profile's failover
// bound: every probe, timer and netlink call runs on an emulated CPU.
const tcgAllowance = 2 * time.Second

// A real node: a hub VM and a site VM over two underlay wires, kernel
// WireGuard on both, brought up by wg-quick@ units from .conf files (the
// site's primary with the default Table = auto, its backup Table = off),
// and wgpulse installed on the site by `make install DESTDIR=` and started
// by `systemctl enable --now wgpulse` under the shipped unit, unmodified,
// in auto with one failover group. The agent finds the kernel devices
// without collector.devices, fails over when the hub drops the primary's
// underlay (within the fast profile's bound plus a TCG allowance), returns
// after hold_down, keeps its state in /var/lib/wgpulse, applies a
// `systemctl reload`, leaves audit lines in the journal, and on
// `systemctl stop` with restore_on_exit leaves no route of its own.
func TestWgpulseUnderSystemdOnKernelWireGuard(t *testing.T) {
	img, guest, log := image(t)
	phase := time.Now()
	stage := t.TempDir()
	root := repoRoot(t)
	mk := exec.Command("make", "-C", root, "install", "DESTDIR="+stage)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", stage, err, out)
	}
	t.Logf("phase make install: %s", time.Since(phase).Round(100*time.Millisecond))

	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	hubP, hubB, siteP, siteB := key(), key(), key(), key()
	conf := func(priv wgtypes.Key, addr string, port int, table string, peer wgtypes.Key, endpoint, allowed string) []byte {
		var b strings.Builder
		fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s\n", priv, addr)
		if port > 0 {
			fmt.Fprintf(&b, "ListenPort = %d\n", port)
		}
		if table != "" {
			fmt.Fprintf(&b, "Table = %s\n", table)
		}
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n", peer.PublicKey(), allowed)
		if endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\nPersistentKeepalive = 5\n", endpoint)
		}
		return []byte(b.String())
	}
	hubFiles := map[string]vm.File{
		"/etc/wireguard/hubp.conf": {Data: conf(hubP, "10.200.1.1/24", 51821, "off", siteP, "", "10.200.1.2/32, 10.101.0.0/16"), Mode: 0o600},
		"/etc/wireguard/hubb.conf": {Data: conf(hubB, "10.200.2.1/24", 51822, "off", siteB, "", "10.200.2.2/32, 10.101.0.0/16"), Mode: 0o600},
	}
	const holdDown = 5 * time.Second
	agentConfig := func(holdDown time.Duration) []byte {
		return fmt.Appendf(nil, `collector:
  poll_interval: 1s
remediate:
  mode: auto
  state_file: /var/lib/wgpulse/remediate.json
  restore_on_exit: true
  failover:
    - name: hub
      profile: fast
      prefixes: [10.50.0.0/16]
      primary: {device: wgsp, target: 10.200.1.1}
      backup: {device: wgsb, target: 10.200.2.1}
      hold_down: %s
`, holdDown)
	}
	siteFiles := map[string]vm.File{
		"/etc/wireguard/wgsp.conf": {Data: conf(siteP, "10.200.1.2/24", 0, "", hubP, "192.168.71.1:51821", "10.200.1.1/32, 10.50.0.0/16"), Mode: 0o600},
		"/etc/wireguard/wgsb.conf": {Data: conf(siteB, "10.200.2.2/24", 0, "off", hubB, "192.168.72.1:51822", "10.200.2.1/32, 10.50.0.0/16"), Mode: 0o600},
	}
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error { // what make install staged, as it is
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, _ := d.Info()
		siteFiles[strings.TrimPrefix(p, stage)] = vm.File{Data: b, Mode: st.Mode().Perm()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	siteFiles["/etc/wgpulse/wgpulse.yml"] = vm.File{Data: agentConfig(holdDown), Mode: 0o644} // the example config, set to auto with one group

	base := 48000 + os.Getpid()%1000*4
	hp, sp := vm.Wire(base, "52:54:00:71:00:01", "52:54:00:71:00:02")
	hb, sb := vm.Wire(base+2, "52:54:00:72:00:01", "52:54:00:72:00:02")
	phase = time.Now()
	var hub, site *vm.Node
	var herr, serr error
	var wg sync.WaitGroup
	wg.Go(func() {
		hub, herr = vm.Boot(context.Background(), img, vm.Options{Name: "hub", Guest: guest, Dir: t.TempDir(), Log: log, Links: []vm.Link{hp, hb}, Files: hubFiles})
	})
	wg.Go(func() {
		site, serr = vm.Boot(context.Background(), img, vm.Options{Name: "site", Guest: guest, Dir: t.TempDir(), Log: log, Links: []vm.Link{sp, sb}, Files: siteFiles})
	})
	wg.Wait()
	if herr != nil || serr != nil {
		t.Fatalf("booting: hub %v, site %v", herr, serr)
	}
	t.Cleanup(hub.Kill)
	t.Cleanup(site.Kill)
	t.Logf("phase boot: %s (hub %s, site %s, %s)", time.Since(phase).Round(100*time.Millisecond), hub.Booted.Round(100*time.Millisecond), site.Booted.Round(100*time.Millisecond), site.Accel)

	phase = time.Now()
	must := func(n *vm.Node, argv ...string) string {
		t.Helper()
		out, err := n.Run(argv...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, n := range []*vm.Node{hub, site} {
		last := "1"
		if n == site {
			last = "2"
		}
		must(n, "sh", "-c", fmt.Sprintf("ip addr add 192.168.71.%s/24 dev eth0 && ip addr add 192.168.72.%s/24 dev eth1 && ip link set eth0 up && ip link set eth1 up", last, last))
	}
	must(hub, "ip", "addr", "add", "10.50.0.1/16", "dev", "lo") // the hub's LAN
	must(hub, "systemctl", "start", "wg-quick@hubp", "wg-quick@hubb")
	must(site, "systemctl", "start", "wg-quick@wgsp", "wg-quick@wgsb")
	if out := must(site, "ip", "route", "show", "10.50.0.0/16"); !strings.Contains(out, "dev wgsp") || strings.Contains(out, "metric") {
		t.Fatalf("wg-quick's route for the hub LAN: %q, want 10.50.0.0/16 dev wgsp with metric 0", out)
	}
	for _, target := range []string{"10.200.1.1", "10.200.2.1", "10.50.0.1"} {
		if out, err := site.Run("ping", "-c", "2", "-W", "5", target); err != nil {
			t.Fatalf("ping %s before any agent: %v\n%s", target, err, out)
		}
	}
	dump := must(site, "wg", "show", "all", "dump")
	t.Logf("kernel devices from wg-quick@ units:\n%s", redactKeys(dump))

	must(site, "systemctl", "daemon-reload")
	must(site, "systemctl", "enable", "--now", "wgpulse")
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
	waitFor(t, 60*time.Second, "both paths up", func() bool {
		out, _, _, _ := site.Exec(10*time.Second, "sh", "-c", "journalctl -u wgpulse --no-pager | grep -c 'failover path health changed.*to=up'")
		return atoi(out) >= 2
	})
	t.Logf("phase setup (wg-quick@ units, the agent up): %s", time.Since(phase).Round(100*time.Millisecond))

	phase = time.Now()
	cut := time.Now()
	must(hub, "ip", "link", "set", "eth0", "down") // the primary's underlay
	waitFor(t, 30*time.Second, "our halves via the backup", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.Count(out, "dev wgsb") == 2
	})
	took := time.Since(cut)
	bound := time.Second + tcgAllowance
	t.Logf("failover on kernel WireGuard under systemd: our routes in %s after the cut (bound %s: fast 1 s + TCG %s); %s",
		took.Round(10*time.Millisecond), bound, tcgAllowance, strings.TrimSpace(must(site, "ip", "route", "show", "proto", "117")))
	if took > bound+500*time.Millisecond { // a 250 ms poll, each an exec through the guest agent
		t.Errorf("failover took %s, above %s", took, bound)
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		t.Errorf("the hub LAN over the backup: %v\n%s", err, out)
	}
	heal := time.Now()
	must(hub, "ip", "link", "set", "eth0", "up")
	waitFor(t, holdDown+60*time.Second, "the return", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.TrimSpace(out) == ""
	})
	if back := time.Since(heal); back < holdDown {
		t.Errorf("returned %s after the heal, before hold_down %s", back, holdDown)
	}
	t.Logf("phase failover and return: %s", time.Since(phase).Round(100*time.Millisecond))

	if out := must(site, "sh", "-c", "ls -l /var/lib/wgpulse/ && cat /var/lib/wgpulse/remediate.json"); !strings.Contains(out, `"version": 2`) {
		t.Errorf("the state in /var/lib/wgpulse:\n%s", out)
	}
	if err := site.Put("/etc/wgpulse/wgpulse.yml", agentConfig(6*time.Second), 0o644); err != nil {
		t.Fatal(err)
	}
	must(site, "systemctl", "reload", "wgpulse")
	waitFor(t, 20*time.Second, "the reload applied", func() bool {
		out, _ := site.Run("sh", "-c", "journalctl -u wgpulse --no-pager | grep -c 'config reloaded' || true")
		return strings.TrimSpace(out) != "0"
	})
	journal := must(site, "journalctl", "-u", "wgpulse", "--no-pager")
	if n := strings.Count(journal, "remediation decision"); n < 2 {
		t.Errorf("%d audit lines in the journal, want the switch and the return:\n%s", n, journal)
	}
	security := must(site, "sh", "-c", "systemd-analyze security wgpulse --no-pager | tail -1")
	t.Logf("inside the VM: %s", strings.TrimSpace(security))

	must(hub, "ip", "link", "set", "eth0", "down")
	waitFor(t, 30*time.Second, "on the backup again", func() bool {
		out, _ := site.Run("ip", "route", "show", "proto", "117")
		return strings.Count(out, "dev wgsb") == 2
	})
	must(hub, "ip", "link", "set", "eth0", "up")
	waitFor(t, 30*time.Second, "the primary up again, still within hold_down", func() bool {
		out, _ := site.Run("sh", "-c", "journalctl -u wgpulse --no-pager | grep -c 'path=primary.*to=up' || true")
		return atoi(out) >= 2
	})
	must(site, "systemctl", "stop", "wgpulse")
	if out := must(site, "ip", "route", "show", "proto", "117"); strings.TrimSpace(out) != "" {
		t.Errorf("after systemctl stop with restore_on_exit: %s", out)
	}
	for _, n := range []*vm.Node{site, hub} {
		if _, err := n.Shutdown(); err != nil {
			t.Error(err)
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
			t.Fatalf("%s: not within %s%s", what, limit, info)
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
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
	t.Errorf("the collector disagrees with the kernel:\n%s", strings.Join(problems, "\n"))
}

func compareContract(t *testing.T, n *vm.Node) ([]string, int) {
	t.Helper()
	var problems []string
	errorf := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	body, code, err := n.Get("http://127.0.0.1:9586/metrics")
	if err != nil || code != 200 {
		t.Fatalf("scraping the agent in %s: %d %v", n.Name, code, err)
	}
	dump, err := n.Run("wg", "show", "all", "dump")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	value := func(name, device, key string) (float64, bool) {
		for _, m := range mfs[name].GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["device"] == device && (key == "" || l["public_key"] == key) {
				switch {
				case m.Counter != nil:
					return m.GetCounter().GetValue(), true
				default:
					return m.GetGauge().GetValue(), true
				}
			}
		}
		return 0, false
	}
	labelsOf := func(name, device, key string) []map[string]string {
		var out []map[string]string
		for _, m := range mfs[name].GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["device"] == device && l["public_key"] == key {
				out = append(out, l)
			}
		}
		return out
	}
	peers := 0
	for _, line := range strings.Split(strings.TrimSpace(dump), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 5 { // a device: its MTU
			mtu, err := n.Run("cat", "/sys/class/net/"+f[0]+"/mtu")
			if err != nil {
				t.Fatal(err)
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
