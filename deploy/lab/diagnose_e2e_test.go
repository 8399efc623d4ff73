package lab_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// report is the JSON of `wgpulse diagnose --json`.
type diagnoseReport struct {
	Findings []diagnose.Finding `json:"findings"`
	Devices  []string           `json:"devices"`
	Notes    []string           `json:"notes"`
}

// runDiagnose runs `wgpulse diagnose --json` in a namespace (without an
// agent) and returns its report and exit code.
func runDiagnose(t *testing.T, bin, ns string) (diagnoseReport, int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, bin, "diagnose", "--json", "--no-agent").Output()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("wgpulse diagnose in %s: %v", ns, err)
	}
	var rep diagnoseReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("wgpulse diagnose in %s: %v\n%s", ns, err, out)
	}
	return rep, code
}

// The checklist on a real lab: clean, it finds nothing on the hub or a
// site; each fault made for real gives its finding, and the exit code
// says how bad.
func TestDiagnoseFindsEachFaultOnTheLab(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	tun := func(name string) lab.Tunnel { return mustTunnel(t, l, name) }
	dc1, _ := l.Site("dc1")
	p, b := tun("dc1-primary"), tun("dc1-backup")

	for _, ns := range []string{l.HubNamespace, dc1.Namespace} {
		rep, code := runDiagnose(t, bin, ns)
		// This machine's kernel has no fq_codel, cake or fq ("Specified
		// qdisc kind is unknown"), so every tunnel keeps its default qdisc
		// and gets the qdisc_without_aqm info. The lab's gateways forward
		// their LANs into the tunnels and clamp no MSS: the
		// mss_clamp_missing info, on each device with a LAN routed into it.
		// Nothing else may show.
		var others, infos []diagnose.Finding
		for _, f := range rep.Findings {
			if (f.Check == diagnose.CheckQdiscNoAQM || f.Check == diagnose.CheckMSSClampMissing) && f.Severity == diagnose.Info {
				infos = append(infos, f)
			} else {
				others = append(others, f)
			}
		}
		if code != 0 || len(others) != 0 || len(rep.Devices) == 0 {
			t.Fatalf("clean lab, %s: exit %d, devices %v, findings %v", ns, code, rep.Devices, others)
		}
		t.Logf("clean lab, %s: %d devices (%s), no findings but %d qdisc and MSS infos; notes %v", ns, len(rep.Devices), strings.Join(rep.Devices, " "), len(infos), rep.Notes)
	}

	run := func(ns string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v\n%s", strings.Join(args, " "), ns, err, out)
		}
	}
	lan := netip.MustParsePrefix(dc1.LAN)
	inLAN := netip.PrefixFrom(lan.Addr(), lan.Bits()+1) // half of dc1's LAN
	ghost, _ := wgtypes.GeneratePrivateKey()
	for _, tc := range []struct {
		name, ns    string
		fault, undo [][]string
		check       string
		device      string
		code        int
		evidence    string
	}{
		{"a route into the tunnel no peer allows", dc1.Namespace,
			[][]string{{"ip", "route", "add", "10.99.0.0/16", "dev", p.Device}}, [][]string{{"ip", "route", "del", "10.99.0.0/16", "dev", p.Device}},
			diagnose.CheckRouteNotAllowed, p.Device, 2, "no peer of " + p.Device + " has 10.99.0.0/16"},
		{"overlapping AllowedIPs", l.HubNamespace,
			[][]string{{"wg", "set", p.HubDevice, "peer", ghost.PublicKey().String(), "allowed-ips", inLAN.String()}},
			[][]string{{"wg", "set", p.HubDevice, "peer", ghost.PublicKey().String(), "remove"}},
			diagnose.CheckAllowedIPsOverlap, p.HubDevice, 1, fmt.Sprintf("%s lies inside %s", inLAN, lan)},
		{"a device MTU too large for the underlay", dc1.Namespace,
			[][]string{{"ip", "link", "set", "dev", b.Device, "mtu", "1480"}}, [][]string{{"ip", "link", "set", "dev", b.Device, "mtu", fmt.Sprint(b.MTU)}},
			diagnose.CheckMTUAboveUnderlay, b.Device, 1, "MTU 1480, but the underlay"},
		{"the listen port dropped by nftables", l.HubNamespace,
			[][]string{{"nft", "add", "table", "inet", "wgpulse_test"},
				{"nft", "add", "chain", "inet", "wgpulse_test", "input", "{ type filter hook input priority 0; }"},
				{"nft", "add", "rule", "inet", "wgpulse_test", "input", "udp", "dport", fmt.Sprint(p.HubListenPort), "drop"}},
			[][]string{{"nft", "delete", "table", "inet", "wgpulse_test"}},
			diagnose.CheckListenPortFiltered, p.HubDevice, 2, "dropped by rule handle"},
		{"forwarding off on a gateway", dc1.Namespace,
			[][]string{{"sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"}}, [][]string{{"sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"}},
			diagnose.CheckForwardingOff, p.Device, 1, "net.ipv4.ip_forward is 0"},
		{"fwmark rules without src_valid_mark", dc1.Namespace,
			[][]string{{"wg", "set", p.Device, "fwmark", "0xca6c"}, {"ip", "rule", "add", "not", "fwmark", "0xca6c", "table", "51820", "priority", "32000"},
				{"sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/all/src_valid_mark"}},
			[][]string{{"ip", "rule", "del", "priority", "32000"}, {"wg", "set", p.Device, "fwmark", "0"}},
			diagnose.CheckFwmarkWithoutSrcValidMark, p.Device, 1, "src_valid_mark is 0"},
		{"a forward hook that drops the tunnel's traffic", dc1.Namespace,
			[][]string{{"nft", "add", "table", "inet", "wgpulse_test"},
				{"nft", "add", "chain", "inet", "wgpulse_test", "forward", "{ type filter hook forward priority 0; }"},
				{"nft", "add", "rule", "inet", "wgpulse_test", "forward", "iifname", p.Device, "drop"}},
			[][]string{{"nft", "delete", "table", "inet", "wgpulse_test"}},
			diagnose.CheckForwardDropsTunnel, p.Device, 1, "new forwarded packets from " + p.Device + " are dropped by rule handle"},
		{"a FIFO qdisc on the tunnel", dc1.Namespace,
			[][]string{{"tc", "qdisc", "replace", "dev", p.Device, "root", "pfifo"}}, [][]string{{"tc", "qdisc", "del", "dev", p.Device, "root"}},
			diagnose.CheckQdiscNoAQM, p.Device, 0, "root qdisc pfifo:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range tc.fault {
				run(tc.ns, c...)
			}
			rep, code := runDiagnose(t, bin, tc.ns)
			for _, c := range tc.undo {
				run(tc.ns, c...)
			}
			var hit *diagnose.Finding
			for i, f := range rep.Findings {
				if f.Check == tc.check && f.Device == tc.device {
					hit = &rep.Findings[i]
				}
			}
			if hit == nil || code != tc.code || !strings.Contains(hit.Evidence, tc.evidence) || hit.Fix == "" {
				t.Fatalf("exit %d (want %d); want a %s finding on %s with evidence ~ %q and a fix; got %v", code, tc.code, tc.check, tc.device, tc.evidence, rep.Findings)
			}
			t.Logf("exit %d: %s", code, hit)
			if rep, code := runDiagnose(t, bin, tc.ns); code != 0 {
				t.Errorf("after undoing the fault: exit %d, %v", code, rep.Findings)
			}
		})
	}
}

// With the agent's config, diagnose also checks the failover groups: on a
// site whose backup peer stops allowing the hub's LAN (the far end's
// AllowedIPs narrowed to the tunnel address), the group's backup could not
// carry it, and diagnose says so before any failover is tried.
func TestDiagnoseChecksFailoverGroupsOnTheLab(t *testing.T) {
	t.Parallel()
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1"}})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	dc1, _ := l.Site("dc1")
	b := mustTunnel(t, l, "dc1-backup")
	cfg := filepath.Join(t.TempDir(), "dc1.yml")
	if err := os.WriteFile(cfg, []byte(l.AgentConfig("dc1", lab.Remediation{Mode: "dry-run", Profiles: map[string]string{"dc1": "fast"}})), 0o600); err != nil {
		t.Fatal(err)
	}
	diag := func() (diagnoseReport, int) {
		out, err := exec.Command("ip", "netns", "exec", dc1.Namespace, bin, "diagnose", "--json", "--no-agent", "--config.file="+cfg).Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var rep diagnoseReport
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return rep, code
	}
	if rep, code := diag(); code != 0 {
		t.Fatalf("clean lab with the failover group: exit %d, %v", code, rep.Findings)
	}
	set := func(allowed string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", dc1.Namespace, "wg", "set", b.Device, "peer", b.HubPublicKey, "allowed-ips", allowed).CombinedOutput(); err != nil {
			t.Fatalf("wg set: %v\n%s", err, out)
		}
	}
	set(b.RemoteAddress + "/32")
	rep, code := diag()
	set(b.RemoteAddress + "/32," + l.HubLAN)
	var hit *diagnose.Finding
	for i, f := range rep.Findings {
		if f.Check == diagnose.CheckFailoverBackupNotAllowed && f.Device == b.Device {
			hit = &rep.Findings[i]
		}
	}
	if hit == nil || code != 2 || !strings.Contains(hit.Object, "failover group hub, prefix "+l.HubLAN) {
		t.Fatalf("exit %d; want a %s finding for group hub on %s; got %v", code, diagnose.CheckFailoverBackupNotAllowed, b.Device, rep.Findings)
	}
	t.Logf("exit %d: %s", code, hit)
	if rep, code := diag(); code != 0 {
		t.Errorf("after restoring AllowedIPs: exit %d, %v", code, rep.Findings)
	}

	// Strict reverse-path filtering on the group's backup.
	rpFilter := "/proc/sys/net/ipv4/conf/" + b.Device + "/rp_filter"
	if out, err := lab.Command(dc1.Namespace, "sh", "-c", "echo 1 > "+rpFilter).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	rep, code = diag()
	if out, err := lab.Command(dc1.Namespace, "sh", "-c", "echo 0 > "+rpFilter).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	hit = nil
	for i, f := range rep.Findings {
		if f.Check == diagnose.CheckRPFilterStrict && f.Device == b.Device {
			hit = &rep.Findings[i]
		}
	}
	if hit == nil || code != 1 || !strings.Contains(hit.Object, "failover group hub, device "+b.Device) || hit.Fix == "" {
		t.Fatalf("exit %d; want a %s finding for group hub on %s; got %v", code, diagnose.CheckRPFilterStrict, b.Device, rep.Findings)
	}
	t.Logf("exit %d: %s", code, hit)
	if rep, code := diag(); code != 0 {
		t.Errorf("after loosening rp_filter: exit %d, %v", code, rep.Findings)
	}
}
