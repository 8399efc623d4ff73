package vm_test

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// pair is the VM lab's topology: a hub and a site joined by two underlay
// wires (eth0 192.168.71.0/24, eth1 192.168.72.0/24), each carrying one
// kernel WireGuard tunnel brought up by a wg-quick@ unit from a .conf file
// as a user writes it:
//
//	site wgsp 10.200.1.2 (Table = auto: wg-quick's 10.50.0.0/16 route, metric 0,
//	          ListenPort 51830) -> hub hubp 10.200.1.1, 192.168.71.1:51821
//	site wgsb 10.200.2.2 (Table = off, ListenPort 51831) -> hub hubb 10.200.2.1, 192.168.72.1:51822
//
// The hub's LAN is 10.50.0.1/16 on its lo; the site's, 10.101.0.0/16. Both
// nodes have wgpulse installed by `make install DESTDIR=` (binary, shipped
// unit, example config), not started.
type pair struct {
	hub, site                *vm.Node
	hubP, hubB, siteP, siteB wgtypes.Key
}

const (
	hubLAN             = "10.50.0.0/16"
	primaryHub         = "10.200.1.1"
	backupHub          = "10.200.2.1"
	primaryPort        = 51830 // the site's wgsp
	backupPort         = 51831 // the site's wgsb
	primaryEndpoint    = "192.168.71.1:51821"
	secondUplinkToHubP = "192.168.72.1:51821" // hubp over the other wire (endpoint failover)
)

// bootPair boots the pair; tag keeps the wires' ports and MACs apart from
// another test's, and siteSetup (a shell script, "" for none) runs in the
// site before its tunnels come up. Both nodes are killed when the test ends.
func bootPair(t *testing.T, img vm.Image, guest string, log *slog.Logger, tag int, siteSetup string) *pair {
	t.Helper()
	phase := time.Now()
	stage := t.TempDir()
	mk := exec.Command("make", "-C", repoRoot(t), "install", "DESTDIR="+stage)
	if out, err := mk.CombinedOutput(); err != nil {
		fatalf(t, "make install DESTDIR=%s: %v\n%s", stage, err, out)
	}
	installed := map[string]vm.File{}
	err := filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error { // what make install staged, as it is
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, _ := d.Info()
		installed[strings.TrimPrefix(p, stage)] = vm.File{Data: b, Mode: st.Mode().Perm()}
		return nil
	})
	if err != nil {
		fatalf(t, "%v", err)
	}
	t.Logf("phase make install: %s", time.Since(phase).Round(100*time.Millisecond))

	key := func() wgtypes.Key {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			fatalf(t, "%v", err)
		}
		return k
	}
	p := &pair{hubP: key(), hubB: key(), siteP: key(), siteB: key()}
	conf := func(priv wgtypes.Key, addr string, port int, table string, peer wgtypes.Key, endpoint, allowed string) vm.File {
		var b strings.Builder
		fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s\nListenPort = %d\n", priv, addr, port)
		if table != "" {
			fmt.Fprintf(&b, "Table = %s\n", table)
		}
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n", peer.PublicKey(), allowed)
		if endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\nPersistentKeepalive = 5\n", endpoint)
		}
		return vm.File{Data: []byte(b.String()), Mode: 0o600}
	}
	files := func(extra map[string]vm.File) map[string]vm.File {
		out := map[string]vm.File{}
		for k, v := range installed {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	hubFiles := files(map[string]vm.File{
		"/etc/wireguard/hubp.conf": conf(p.hubP, "10.200.1.1/24", 51821, "off", p.siteP, "", "10.200.1.2/32, 10.101.0.0/16"),
		"/etc/wireguard/hubb.conf": conf(p.hubB, "10.200.2.1/24", 51822, "off", p.siteB, "", "10.200.2.2/32, 10.101.0.0/16"),
	})
	siteFiles := files(map[string]vm.File{
		"/etc/wireguard/wgsp.conf": conf(p.siteP, "10.200.1.2/24", primaryPort, "", p.hubP, primaryEndpoint, "10.200.1.1/32, "+hubLAN),
		"/etc/wireguard/wgsb.conf": conf(p.siteB, "10.200.2.2/24", backupPort, "off", p.hubB, "192.168.72.1:51822", "10.200.2.1/32, "+hubLAN),
	})

	base := 48000 + os.Getpid()%1000*8 + tag*4
	hp, sp := vm.Wire(base, fmt.Sprintf("52:54:00:71:%02x:01", tag), fmt.Sprintf("52:54:00:71:%02x:02", tag))
	hb, sb := vm.Wire(base+2, fmt.Sprintf("52:54:00:72:%02x:01", tag), fmt.Sprintf("52:54:00:72:%02x:02", tag))
	phase = time.Now()
	var herr, serr error
	var wg sync.WaitGroup
	wg.Go(func() {
		p.hub, herr = vm.Boot(context.Background(), img, vm.Options{Name: "hub", Guest: guest, Dir: t.TempDir(), Log: log, Links: []vm.Link{hp, hb}, Files: hubFiles})
	})
	wg.Go(func() {
		p.site, serr = vm.Boot(context.Background(), img, vm.Options{Name: "site", Guest: guest, Dir: t.TempDir(), Log: log, Links: []vm.Link{sp, sb}, Files: siteFiles})
	})
	wg.Wait()
	if p.hub != nil {
		t.Cleanup(p.hub.Kill)
	}
	if p.site != nil {
		t.Cleanup(p.site.Kill)
	}
	if herr != nil || serr != nil {
		fatalf(t, "booting: hub %v, site %v", herr, serr)
	}
	t.Logf("phase boot: %s (hub %s, site %s, %s)", time.Since(phase).Round(100*time.Millisecond), p.hub.Booted.Round(100*time.Millisecond), p.site.Booted.Round(100*time.Millisecond), p.site.Accel)

	phase = time.Now()
	for _, n := range []*vm.Node{p.hub, p.site} {
		last := "1"
		if n == p.site {
			last = "2"
		}
		must(t, n, "sh", "-c", fmt.Sprintf("ip addr add 192.168.71.%s/24 dev eth0 && ip addr add 192.168.72.%s/24 dev eth1 && ip link set eth0 up && ip link set eth1 up", last, last))
	}
	must(t, p.hub, "ip", "addr", "add", "10.50.0.1/16", "dev", "lo") // the hub's LAN
	must(t, p.hub, "systemctl", "start", "wg-quick@hubp", "wg-quick@hubb")
	if siteSetup != "" {
		must(t, p.site, "sh", "-c", siteSetup)
	}
	must(t, p.site, "systemctl", "start", "wg-quick@wgsp", "wg-quick@wgsb")
	if out := must(t, p.site, "ip", "route", "show", hubLAN); !strings.Contains(out, "dev wgsp") || strings.Contains(out, "metric") {
		fatalf(t, "wg-quick's route for the hub LAN: %q, want %s dev wgsp with metric 0", out, hubLAN)
	}
	for _, target := range []string{primaryHub, backupHub, "10.50.0.1"} {
		if out, err := p.site.Run("ping", "-c", "2", "-W", "5", target); err != nil {
			fatalf(t, "ping %s before any agent: %v\n%s", target, err, out)
		}
	}
	t.Logf("kernel devices from wg-quick@ units on the site:\n%s", redactKeys(must(t, p.site, "wg", "show", "all", "dump")))
	t.Logf("phase wg-quick@ units up: %s", time.Since(phase).Round(100*time.Millisecond))
	return p
}

// startAgent writes the node's /etc/wgpulse/wgpulse.yml and starts the
// shipped unit.
func startAgent(t *testing.T, n *vm.Node, config string) {
	t.Helper()
	if err := n.Put("/etc/wgpulse/wgpulse.yml", []byte(config), 0o644); err != nil {
		fatalf(t, "%v", err)
	}
	must(t, n, "systemctl", "daemon-reload")
	must(t, n, "systemctl", "enable", "--now", "wgpulse")
}

// must runs a command in n and fails the test unless it exits 0.
func must(t *testing.T, n *vm.Node, argv ...string) string {
	t.Helper()
	out, err := n.Run(argv...)
	if err != nil {
		fatalf(t, "%v", err)
	}
	return out
}

// journal is the agent's journal in n.
func journal(t *testing.T, n *vm.Node) string {
	t.Helper()
	return must(t, n, "journalctl", "-u", "wgpulse", "--no-pager", "-o", "cat")
}

// countIn counts the lines of the agent's journal in n that match the
// extended regular expression re.
func countIn(n *vm.Node, re string) int {
	out, _, _, _ := n.Exec(20*time.Second, "sh", "-c", "journalctl -u wgpulse --no-pager -o cat | grep -cE '"+re+"' || true")
	return atoi(out)
}

// scrape is one scrape of an agent, by metric family.
type scrape map[string]*dto.MetricFamily

// scrapeAgent scrapes the agent in n (false when it does not answer).
func scrapeAgent(t *testing.T, n *vm.Node) (scrape, bool) {
	t.Helper()
	body, code, err := n.Get("http://127.0.0.1:9586/metrics")
	if err != nil || code != 200 {
		return nil, false
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		fatalf(t, "parsing the agent's metrics in %s: %v", n.Name, err)
	}
	return mfs, true
}

func labelMap(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

// value is the first series of name on device (and peer, when given).
func (s scrape) value(name, device, peer string) (float64, bool) {
	for _, m := range s[name].GetMetric() {
		if l := labelMap(m); l["device"] == device && (peer == "" || l["public_key"] == peer) {
			if m.Counter != nil {
				return m.GetCounter().GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// labels are the label sets of name's series for a peer of device.
func (s scrape) labels(name, device, peer string) []map[string]string {
	var out []map[string]string
	for _, m := range s[name].GetMetric() {
		if l := labelMap(m); l["device"] == device && l["public_key"] == peer {
			out = append(out, l)
		}
	}
	return out
}
