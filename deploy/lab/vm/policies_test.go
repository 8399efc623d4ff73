package vm_test

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// The lab's remediation e2e on kernel WireGuard, both agents under the
// shipped unit, on the VM pair (pair_test.go):
//   - endpoint failover on the site: the hub drops the first wire; the
//     site's agent moves wgsp's endpoint to the hub's address on the second
//     wire within the fast profile's bound plus TCG, the tunnel carries the
//     hub LAN, and the endpoint comes back after hold_down;
//   - the MTU policy on the site: nftables in the hub drops underlay
//     packets above 1300 bytes on the first wire; the site's agent puts the
//     measured path MTU (within 20 bytes below 1232) in force on wgsp
//     within 60 s plus TCG, and takes it back once the limit is gone;
//   - the keepalive policy on the hub, and the collector's NAT-rebind
//     counter: the site's backup tunnel goes through a real NAT (nftables
//     SNAT to random ports in the site, unsolicited packets to wgsb's own
//     port dropped, conntrack's UDP timeouts at 5 s), the
//     site sends only a 25 s keepalive and the hub probes every 7 s. The hub
//     sees rebinds (each one counted by wireguard_peer_endpoint_changes_total
//     exactly as `wg show hubb endpoints`, polled in the node, changed) and
//     lost probes; its agent sets a keepalive below 5 s, and then the rebinds
//     and lost probes stop.
//
// The keepalive scenario runs beside the other two: it is the hub's agent
// on the second wire's tunnel, which the site's agent leaves alone
// (collector.devices: [wgsp]).
func TestPoliciesOnKernelWireGuard(t *testing.T) {
	img, guest, log := image(t)
	// A NAT in front of wgsb, inside the site, from before the tunnel
	// comes up (the hub never sees wgsb untranslated): its packets leave
	// from a random port, and what arrives for its own port is taken only as
	// the reply of a translated flow (a NAT box's outside has no other way in).
	p := bootPair(t, img, guest, log, 1, fmt.Sprintf(`nft add table ip labnat &&
nft add chain ip labnat post '{ type nat hook postrouting priority srcnat; }' &&
nft add rule ip labnat post oifname eth1 udp sport %[1]d snat to 192.168.72.2:20000-60000 random &&
nft add chain ip labnat in '{ type filter hook input priority 0; }' &&
nft add rule ip labnat in iifname eth1 udp dport %[1]d ct status and snat == 0 drop &&
sysctl -qw net.netfilter.nf_conntrack_udp_timeout=5 net.netfilter.nf_conntrack_udp_timeout_stream=5`, backupPort))
	hub, site := p.hub, p.site
	siteOnHubB := p.siteB.PublicKey().String()
	const holdDown = 5 * time.Second

	phase := time.Now()
	hubConfig := `collector:
  poll_interval: 1s
prober:
  interval: 7s
  window: 70s
  pmtu: {enabled: false}
remediate:
  mode: auto
  state_file: /var/lib/wgpulse/remediate.json
  restore_on_exit: true
  keepalive:
    enabled: true
    devices: [hubb]
    min: 2s
    symptoms: 2
`
	must(t, site, "wg", "set", "wgsb", "peer", p.hubB.PublicKey().String(), "persistent-keepalive", "25")
	nat := time.Now() // the site now sends only every 25 s: its mapping expires between
	startAgent(t, hub, hubConfig)
	waitFor(t, 60*time.Second, "the hub's agent sees the site on hubb", func() bool {
		_, ok := metric(t, hub, "wireguard_peer_endpoint_changes_total", "hubb", siteOnHubB)
		return ok
	}, hub)
	// A watcher of the kernel's view, from the agent's first poll on: the
	// agent's count from c0 on is compared with the changes the watcher
	// saw after the endpoint the agent reported at c0. c0 and e0 come from
	// one scrape taken when the agent's last poll and the watcher's last
	// line agree: the agent polls every second, so a rebind just before
	// the watcher's first line would otherwise be counted by the agent
	// from an endpoint the watcher never saw (a CI run failed that way).
	must(t, hub, "systemd-run", "--unit=epwatch", "sh", "-c", "while :; do wg show hubb endpoints; sleep 0.5; done > /root/endpoints.log")
	var (
		c0 float64
		e0 string
	)
	waitFor(t, 20*time.Second, "the agent and the watcher agree on the site's endpoint on hubb", func() bool {
		sc, ok := scrapeAgent(t, hub)
		if !ok {
			return false
		}
		c0, _ = sc.value("wireguard_peer_endpoint_changes_total", "hubb", siteOnHubB)
		ls := sc.labels("wireguard_peer_info", "hubb", siteOnHubB)
		if len(ls) == 0 {
			return false
		}
		e0 = ls[0]["endpoint"]
		seen := watchedEndpoints(t, hub, siteOnHubB)
		return len(seen) > 0 && seen[len(seen)-1] == e0
	}, hub)

	startAgent(t, site, fmt.Sprintf(`collector:
  devices: [wgsp]
  poll_interval: 1s
prober:
  pmtu: {min: 1200, interval: 1m, confirm: 10s}
remediate:
  mode: auto
  state_file: /var/lib/wgpulse/remediate.json
  restore_on_exit: true
  mtu:
    enabled: true
    devices: [wgsp]
    min: 1200
    hold_down: 20s
  failover:
    - name: wan
      mode: endpoint
      profile: fast
      device: wgsp
      peer: %q
      target: %s
      hold_down: %s
      primary: {endpoint: %s, underlay_target: 192.168.71.1, underlay_device: eth0}
      backup: {endpoint: %s, underlay_target: 192.168.72.1, underlay_device: eth1}
`, p.hubP.PublicKey(), primaryHub, holdDown, primaryEndpoint, secondUplinkToHubP))
	waitFor(t, 60*time.Second, "both uplinks up", func() bool { return countIn(site, "failover path health changed.*to=up") >= 2 }, site)
	t.Logf("phase agents up: %s", time.Since(phase).Round(100*time.Millisecond))

	// Endpoint failover.
	phase = time.Now()
	endpoint := func() string {
		out, _ := site.Run("wg", "show", "wgsp", "endpoints")
		return strings.TrimSpace(strings.TrimPrefix(out, p.hubP.PublicKey().String()))
	}
	cut := time.Now()
	must(t, hub, "ip", "link", "set", "eth0", "down")
	waitFor(t, 30*time.Second, "wgsp's endpoint on the second wire", func() bool { return endpoint() == secondUplinkToHubP }, site)
	took := time.Since(cut)
	bound := time.Second + tcgAllowance
	t.Logf("endpoint failover on kernel WireGuard: %s in %s after the cut (bound %s: fast 1 s + TCG %s)", secondUplinkToHubP, took.Round(10*time.Millisecond), bound, tcgAllowance)
	if took > bound+500*time.Millisecond { // a 250 ms poll, each an exec through the guest agent
		errorf(t, "endpoint failover took %s, above %s (cut at %s); the site's failover lines:\n%s", took, bound, cut.Format("15:04:05.000"), failoverLines(site))
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		errorf(t, "the hub LAN over wgsp on the second wire: %v\n%s", err, out)
	}
	heal := time.Now()
	must(t, hub, "ip", "link", "set", "eth0", "up")
	waitFor(t, holdDown+60*time.Second, "wgsp's endpoint back on the first wire", func() bool { return endpoint() == primaryEndpoint }, site)
	back := time.Since(heal)
	t.Logf("endpoint back %s after the heal (hold_down %s); the site's failover lines:\n%s", back.Round(100*time.Millisecond), holdDown, failoverLines(site))
	if back < holdDown {
		errorf(t, "returned %s after the heal, before hold_down %s (cut at %s, switched %s later, healed at %s); the site's failover lines:\n%s",
			back, holdDown, cut.Format("15:04:05.000"), took.Round(10*time.Millisecond), heal.Format("15:04:05.000"), failoverLines(site))
	}
	if out, err := site.Run("ping", "-c", "2", "-W", "5", "10.50.0.1"); err != nil {
		errorf(t, "the hub LAN over wgsp after the return: %v\n%s", err, out)
	}
	t.Logf("phase endpoint failover: %s", time.Since(phase).Round(100*time.Millisecond))

	// The MTU policy.
	phase = time.Now()
	waitFor(t, 120*time.Second, "the first path MTU search on wgsp", func() bool {
		v, ok := metric(t, site, "wgpulse_path_mtu_bytes", "wgsp", "")
		return ok && v == 1420
	}, site)
	const limit = 1232 // the largest inner IPv4 packet that, padded to 16 and wrapped (32 + 28 bytes), fits in 1300
	fits := func(inner int) bool {
		_, _, code, _ := site.Exec(20*time.Second, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", strconv.Itoa(inner-28), primaryHub)
		return code == 0
	}
	fault := time.Now()
	must(t, hub, "sh", "-c", `nft add table inet lablimit &&
nft add chain inet lablimit in '{ type filter hook input priority 0; }' &&
nft add chain inet lablimit out '{ type filter hook output priority 0; }' &&
nft add rule inet lablimit in iifname eth0 udp dport 51821 meta length gt 1300 drop &&
nft add rule inet lablimit out oifname eth0 udp sport 51821 meta length gt 1300 drop`)
	if fits(limit + 1) {
		fatalf(t, "an inner packet of %d bytes passes the 1300-byte limit: the fault does not bite, the test proves nothing (wgsp's endpoint %s); the site's failover lines:\n%s",
			limit+1, endpoint(), failoverLines(site))
	}
	if !fits(limit) {
		fatalf(t, "an inner packet of %d bytes (the limit) does not pass", limit)
	}
	var mtu float64
	mtuBound := 60*time.Second + 10*tcgAllowance
	waitFor(t, mtuBound, "an MTU in force on wgsp", func() bool {
		mtu, _ = metric(t, site, "wgpulse_remediation_mtu_bytes", "wgsp", "")
		return mtu > 0
	}, site)
	inForce := time.Since(fault)
	kernel := atoi(must(t, site, "cat", "/sys/class/net/wgsp/mtu"))
	routes := strings.TrimSpace(must(t, site, "ip", "route", "show", "proto", "117"))
	t.Logf("MTU %g in force %s after the limit (bound %s); wgsp's MTU %d; our routes: %q", mtu, inForce.Round(100*time.Millisecond), mtuBound, kernel, routes)
	if mtu > limit || mtu < limit-20 {
		errorf(t, "MTU %g in force, want within 20 bytes below %d", mtu, limit)
	}
	// wg-quick's route has metric 0, so there is no room below it for a
	// route MTU, and wgsp has one peer: the policy lowers the device.
	if kernel != int(mtu) && !strings.Contains(routes, fmt.Sprintf("mtu %g", mtu)) {
		errorf(t, "the kernel does not carry MTU %g: wgsp's MTU %d, our routes %q", mtu, kernel, routes)
	}
	// This side of the black hole is gone: what fits the MTU in force
	// crosses, a larger DF packet is refused at once with the MTU named,
	// where before it vanished. (The hub's replies larger than 1232 bytes
	// still vanish: the hub runs no MTU policy.)
	if !fits(int(mtu)) {
		errorf(t, "a DF packet of the MTU in force (%g) does not cross", mtu)
	}
	if out, _, code, _ := site.Exec(20*time.Second, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1272", primaryHub); code == 0 || !strings.Contains(out+"", fmt.Sprintf("mtu=%g", mtu)) {
		out2, errOut, _, _ := site.Exec(20*time.Second, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1272", primaryHub)
		if !strings.Contains(out2+errOut, fmt.Sprintf("mtu=%g", mtu)) {
			errorf(t, "a 1300-byte DF ping is not refused with mtu=%g (exit %d):\n%s%s", mtu, code, out2, errOut)
		}
	}
	cleared := time.Now()
	must(t, hub, "nft", "delete", "table", "inet", "lablimit")
	waitFor(t, 4*time.Minute, "the MTU back up", func() bool {
		_, ok := metric(t, site, "wgpulse_remediation_mtu_bytes", "wgsp", "")
		return !ok && atoi(must(t, site, "cat", "/sys/class/net/wgsp/mtu")) == 1420
	}, site)
	t.Logf("MTU back to 1420 %s after the limit was gone (the next full search, then hold_down 20s)", time.Since(cleared).Round(time.Second))
	t.Logf("phase MTU policy: %s", time.Since(phase).Round(100*time.Millisecond))

	// The keepalive policy, on the hub, running since the NAT went in.
	phase = time.Now()
	var set float64
	waitFor(t, 3*time.Minute-time.Since(nat), "a keepalive set on hubb within 3 minutes of the NAT", func() bool {
		set, _ = metric(t, hub, "wireguard_peer_persistent_keepalive_seconds", "hubb", siteOnHubB)
		return set > 0
	}, hub)
	est, _ := metric(t, hub, "wgpulse_keepalive_nat_timeout_estimate_seconds", "hubb", siteOnHubB)
	m := regexp.MustCompile(`idle gaps kept up to (\S+), expired from (\S+);`).FindStringSubmatch(journal(t, hub))
	if m == nil {
		fatalf(t, "no NAT bracket in the hub's journal:\n%s", journal(t, hub))
	}
	kept, _ := time.ParseDuration(m[1])
	expired, _ := time.ParseDuration(m[2])
	t.Logf("keepalive %gs on hubb; NAT lifetime estimate %.1fs from idle gaps kept up to %s, expired from %s (conntrack: 5 s)", set, est, kept, expired)
	if set >= 5 {
		errorf(t, "keepalive %gs, want below the 5 s conntrack timeout", set)
	}
	if kept > 5500*time.Millisecond || expired < 4500*time.Millisecond {
		errorf(t, "bracket kept %s, expired %s: the true 5 s lifetime lies outside it", kept, expired)
	}
	time.Sleep(30 * time.Second) // the next keepalive of the site recreates the mapping; ours then holds it
	rebinds, _ := metric(t, hub, "wireguard_peer_endpoint_changes_total", "hubb", siteOnHubB)
	failed, _ := metric(t, hub, "wgpulse_probe_failures_total", "hubb", "")
	time.Sleep(60 * time.Second)
	rebinds2, _ := metric(t, hub, "wireguard_peer_endpoint_changes_total", "hubb", siteOnHubB)
	failed2, _ := metric(t, hub, "wgpulse_probe_failures_total", "hubb", "")
	t.Logf("in the minute after: %g rebinds, %g failed probes (before: %g rebinds, %g failed in all)", rebinds2-rebinds, failed2-failed, rebinds, failed)
	if rebinds2 != rebinds || failed2 > failed {
		errorf(t, "symptoms go on with the keepalive set: %g more rebinds, %g more failed probes", rebinds2-rebinds, failed2-failed)
	}
	if rebinds < 2 || failed < 2 {
		errorf(t, "only %g rebinds and %g failed probes: the NAT did not bite, the test proves nothing", rebinds, failed)
	}
	// The rebinds the agent counted are the changes wg show saw.
	must(t, hub, "systemctl", "stop", "epwatch")
	seen := watchedEndpoints(t, hub, siteOnHubB)
	t.Logf("wg show hubb endpoints over the test: %s (the agent at c0 = %g: %s)", strings.Join(seen, " -> "), c0, e0)
	from := slices.Index(seen, e0)
	if from < 0 {
		fatalf(t, "the agent's endpoint %s at c0 is not among those wg show saw", e0)
	}
	if changes := len(seen) - 1 - from; rebinds2-c0 != float64(changes) {
		errorf(t, "wireguard_peer_endpoint_changes_total rose by %g, wg show saw %d changes", rebinds2-c0, changes)
	}
	checkContract(t, hub)
	t.Logf("phase keepalive policy and NAT rebinds: %s", time.Since(phase).Round(100*time.Millisecond))

	for _, n := range []*vm.Node{site, hub} {
		must(t, n, "systemctl", "stop", "wgpulse")
	}
	if v := atoi(must(t, site, "cat", "/sys/class/net/wgsp/mtu")); v != 1420 {
		errorf(t, "wgsp's MTU %d after the agent stopped, want 1420", v)
	}
	for _, n := range []*vm.Node{site, hub} {
		if _, err := n.Shutdown(); err != nil {
			errorf(t, "%v", err)
		}
	}
}

// failoverLines is what the site's agent logged about the failover group
// (decisions, path health, conflicts), a line each with the fields that
// say why, and wgsp's endpoint as the kernel has it: why the endpoint moved
// when it did.
func failoverLines(n *vm.Node) string {
	out, _, _, _ := n.Exec(20*time.Second, "sh", "-c", `journalctl -u wgpulse --no-pager -o cat | grep -E 'group=wan|failover' | tail -40`)
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			b.WriteString(compactLogLine(l) + "\n")
		}
	}
	ep, _, _, _ := n.Exec(20*time.Second, "sh", "-c", `echo "$(date +%T.%3N) wg show wgsp endpoints: $(wg show wgsp endpoints)"`)
	return b.String() + strings.TrimSpace(ep)
}

// logField is one key=value of a slog text line (a quoted value whole).
var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// compactLogLine is a slog text line of the agent cut to the fields a
// failover's story needs, the time as hh:mm:ss.mmm and a reason to 100 bytes.
func compactLogLine(l string) string {
	keep := map[string]bool{"msg": true, "action": true, "path": true, "from": true, "to": true, "suppressed": true,
		"result": true, "reason": true, "conflict": true, "code": true}
	var when string
	var parts []string
	for _, m := range logField.FindAllStringSubmatch(l, -1) {
		k, v := m[1], m[2]
		switch {
		case k == "time":
			if ts, err := time.Parse(time.RFC3339Nano, v); err == nil {
				when = ts.Format("15:04:05.000")
			}
		case keep[k]:
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			if len(v) > 100 {
				v = v[:100] + "..."
			}
			if k == "msg" {
				parts = append(parts, v)
			} else {
				parts = append(parts, k+"="+v)
			}
		}
	}
	if len(parts) == 0 {
		return l
	}
	return strings.TrimSpace(when + " " + strings.Join(parts, " "))
}

// watchedEndpoints is the endpoints of peer in the epwatch log on n, in
// order, repeats dropped.
func watchedEndpoints(t *testing.T, n *vm.Node, peer string) []string {
	t.Helper()
	out, _ := n.Run("cat", "/root/endpoints.log")
	var seen []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == peer && (len(seen) == 0 || seen[len(seen)-1] != f[1]) {
			seen = append(seen, f[1])
		}
	}
	return seen
}

// metric is one series of the agent in n: the first of name on device (and
// peer, when given).
func metric(t *testing.T, n *vm.Node, name, device, peer string) (float64, bool) {
	t.Helper()
	sc, ok := scrapeAgent(t, n)
	if !ok {
		return 0, false
	}
	return sc.value(name, device, peer)
}
