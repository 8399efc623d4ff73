package lab_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// dnsFixture is a site behind a stateful firewall (it takes in nothing for
// its WireGuard ports but replies, as behind a NAT) and a hub whose
// address is in DNS: dnsmasq from Debian serves the lab.test zone to the
// site's namespace through /etc/netns/<ns>/resolv.conf, which `ip netns
// exec` mounts over /etc/resolv.conf for the agent.
type dnsFixture struct {
	site, hub string
	hosts     string // dnsmasq's hosts file
	dnsmasq   *exec.Cmd
	dnsLog    *lockedBuffer
	wg        *wgctrl.Client
	keys      map[string]wgtypes.Key // device -> its private key
	confDir   string                 // the site's wg-quick files
}

// rrTunnel is one tunnel of the fixture: a site device, its hub device, and
// the name the site's peer is configured by.
type rrTunnel struct {
	site, hub  string // device names
	port       int    // the hub device's listen port
	hubAddr    string // the hub's underlay address the record holds
	inner      string // the hub end's tunnel address (/32)
	host       string // host:port
	fromFile   bool   // the hostname is in a wg-quick file (else in remediate.reresolve.endpoints)
	dead       bool   // no hub device answers at the configured endpoint
	hubPublic  wgtypes.Key
	sitePublic wgtypes.Key
}

func (f *dnsFixture) setHosts(t *testing.T, lines ...string) {
	t.Helper()
	if err := os.WriteFile(f.hosts, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f.dnsmasq != nil {
		if err := f.dnsmasq.Process.Signal(syscall.SIGHUP); err != nil { // dnsmasq re-reads its hosts files
			t.Fatal(err)
		}
	}
}

func newDNSFixture(t *testing.T, p string, tunnels []*rrTunnel) *dnsFixture {
	t.Helper()
	labtest.Require(t)
	labtest.Tool(t, "dnsmasq", "dnsmasq-base")
	labtest.Tool(t, "nft", "nftables")
	f := &dnsFixture{site: p + "-site", hub: p + "-hub", hosts: filepath.Join(t.TempDir(), "hosts"), keys: map[string]wgtypes.Key{},
		confDir: t.TempDir(), dnsLog: &lockedBuffer{}}
	var procs []*lab.Proc
	t.Cleanup(func() {
		if f.dnsmasq != nil {
			_ = f.dnsmasq.Process.Kill()
			_ = f.dnsmasq.Wait()
			if t.Failed() {
				t.Logf("dnsmasq:\n%s", f.dnsLog)
			}
		}
		for _, pr := range procs {
			pr.Stop()
		}
		if f.wg != nil {
			f.wg.Close()
		}
		for _, ns := range []string{f.site, f.hub} {
			if err := lab.DelNetns(ns); err != nil {
				t.Error(err)
			}
		}
		if err := os.RemoveAll(filepath.Join("/etc/netns", f.site)); err != nil {
			t.Error(err)
		}
		_ = os.Remove("/etc/netns") // only when empty: ours, or left by nobody else
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{f.site, f.hub} {
		must(lab.AddNetns(ns))
	}
	// One underlay link per hub address: a reply leaves from the only
	// address of its link, whichever source selection the hub makes.
	for i, tn := range tunnels {
		hub := netip.MustParseAddr(tn.hubAddr)
		must(lab.Veth(f.site, fmt.Sprintf("u%d", i+1), hub.Next().String()+"/24", f.hub, fmt.Sprintf("u%d", i+1), tn.hubAddr+"/24"))
	}
	must(lab.IP("-n", f.site, "addr", "add", "2001:db8:1::2/64", "dev", "u1", "nodad"))
	// The site's firewall: WireGuard's ports take replies only.
	var ports []string
	for i := range tunnels {
		ports = append(ports, fmt.Sprint(51911+i))
	}
	nft := fmt.Sprintf(`table inet rrfw {
  chain in {
    type filter hook input priority 0; policy accept;
    ct state established,related counter accept
    udp dport { %s } counter drop
  }
}`, strings.Join(ports, ", "))
	cmd := lab.Command(f.site, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}

	// DNS: dnsmasq answers lab.test from its hosts file with a 30 s TTL,
	// NXDOMAIN for any other name of the zone, and forwards nothing.
	must(os.MkdirAll(filepath.Join("/etc/netns", f.site), 0o755))
	must(os.WriteFile(filepath.Join("/etc/netns", f.site, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644))
	var hosts []string
	for _, tn := range tunnels {
		if h, _, _ := net.SplitHostPort(tn.host); h != "nowhere.lab.test" {
			hosts = append(hosts, tn.hubAddr+" "+h)
		}
	}
	f.setHosts(t, hosts...)
	f.dnsmasq = lab.Command(f.site, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--addn-hosts="+f.hosts, "--local=/lab.test/", "--local-ttl=30", "--listen-address=127.0.0.1", "--bind-interfaces",
		"--user=root", "--pid-file="+filepath.Join(t.TempDir(), "dnsmasq.pid"), "--log-queries", "--log-facility=-")
	f.dnsmasq.Stdout, f.dnsmasq.Stderr = f.dnsLog, f.dnsLog
	f.dnsmasq.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	must(f.dnsmasq.Start())

	var err error
	f.wg, err = wgctrl.New()
	must(err)
	for i, tn := range tunnels {
		for _, end := range []struct{ ns, dev string }{{f.hub, tn.hub}, {f.site, tn.site}} {
			k, err := wgtypes.GeneratePrivateKey()
			must(err)
			f.keys[end.dev] = k
			if end.ns == f.hub && tn.dead {
				continue
			}
			pr, err := lab.StartNode(end.ns, end.dev, 1420, t.TempDir(), false)
			must(err)
			procs = append(procs, pr)
		}
		tn.hubPublic, tn.sitePublic = f.keys[tn.hub].PublicKey(), f.keys[tn.site].PublicKey()
		inner := netip.MustParseAddr(tn.inner)
		siteInner := inner.Next()
		hk, sk, hp, sp := f.keys[tn.hub], f.keys[tn.site], tn.port, 51911+i
		if !tn.dead {
			must(f.wg.ConfigureDevice(tn.hub, wgtypes.Config{PrivateKey: &hk, ListenPort: &hp, ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
				PublicKey: tn.sitePublic, AllowedIPs: []net.IPNet{{IP: siteInner.AsSlice(), Mask: net.CIDRMask(32, 32)}}}}}))
			must(lab.IP("-n", f.hub, "addr", "add", tn.inner+"/24", "dev", tn.hub))
		}
		// The site's peer is configured as wg-quick does it: with the
		// address the name resolved to when the tunnel came up.
		ep := &net.UDPAddr{IP: net.ParseIP(tn.hubAddr), Port: tn.port}
		must(f.wg.ConfigureDevice(tn.site, wgtypes.Config{PrivateKey: &sk, ListenPort: &sp, ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
			PublicKey: tn.hubPublic, Endpoint: ep, AllowedIPs: []net.IPNet{{IP: inner.AsSlice(), Mask: net.CIDRMask(32, 32)}}}}}))
		must(lab.IP("-n", f.site, "addr", "add", siteInner.String()+"/24", "dev", tn.site))
		if tn.fromFile {
			conf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nListenPort = %d\n\n[Peer]\n# Name = hub-%s\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s/32\n",
				sk, sp, tn.site, tn.hubPublic, tn.host, tn.inner)
			must(os.WriteFile(filepath.Join(f.confDir, tn.site+".conf"), []byte(conf), 0o600))
		}
	}
	return f
}

func (f *dnsFixture) peer(t *testing.T, dev string) wgtypes.Peer {
	t.Helper()
	d, err := f.wg.Device(dev)
	if err != nil || len(d.Peers) != 1 {
		t.Fatalf("reading %s: %v", dev, err)
	}
	return d.Peers[0]
}

// The hub moves to a new underlay address and its record changes (TTL
// 30 s): the site's tunnel handshakes again within stale_after (135 s)
// plus the TTL plus a poll, after trying the record's IPv6 address (a
// blackhole) and falling back to IPv4 within try_for. A second tunnel,
// whose record stays and whose handshake stays fresh, sees no lookup and
// no endpoint change in 5 minutes. A third, whose name does not resolve,
// gets a warning naming it and a metric, and keeps its endpoint.
func TestReresolveOnTheLab(t *testing.T) {
	t.Parallel()
	moving := &rrTunnel{port: 51901, hubAddr: "198.51.101.1", inner: "10.201.1.1", host: "hub1.lab.test:51901", fromFile: true}
	steady := &rrTunnel{port: 51902, hubAddr: "198.51.102.1", inner: "10.201.2.1", host: "hub2.lab.test:51902"}
	// Configured at an address of the hub where no WireGuard listens.
	unknown := &rrTunnel{port: 51903, hubAddr: "198.51.103.1", inner: "10.201.3.1", host: "nowhere.lab.test:51903", dead: true}
	tunnels := []*rrTunnel{moving, steady, unknown}
	p := "r" + labtest.UniquePrefix()
	for i, tn := range tunnels {
		tn.site, tn.hub = fmt.Sprintf("%ss%d", p, i+1), fmt.Sprintf("%sh%d", p, i+1)
	}
	f := newDNSFixture(t, p, tunnels)
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	cfg := filepath.Join(t.TempDir(), "site.yml")
	yml := fmt.Sprintf(`collector:
  devices: [%s, %s, %s]
  poll_interval: 1s
  peer_names_files: %s/*.conf
remediate:
  mode: auto
  state_file: %s/site.json
  reresolve:
    enabled: true
    devices: [%s, %s, %s]
    endpoints:
      %q: %s
      %q: %s
`, moving.site, steady.site, unknown.site, f.confDir, t.TempDir(), moving.site, steady.site, unknown.site,
		steady.hubPublic.String(), steady.host, unknown.hubPublic.String(), unknown.host)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := labtest.StartAgent(t, bin, f.site, agentAddr, "--config.file="+cfg, "--log.format=json")
	start := time.Now()
	// The agent's probes are the traffic that makes the tunnels handshake.
	for _, tn := range []*rrTunnel{moving, steady} {
		deadline := time.Now().Add(30 * time.Second)
		for f.peer(t, tn.site).LastHandshakeTime.IsZero() {
			if time.Now().After(deadline) {
				t.Fatalf("%s never handshaked", tn.site)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// The move: the old address goes, the new one comes, the record follows
	// (an AAAA nobody answers first, in the resolver's order, then the A).
	moved := netip.MustParseAddrPort("198.51.101.7:51901")
	for _, args := range [][]string{{"addr", "del", "198.51.101.1/24", "dev", "u1"}, {"addr", "add", "198.51.101.7/24", "dev", "u1"}} {
		if err := lab.IP(append([]string{"-n", f.hub}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	f.setHosts(t, "198.51.101.7 hub1.lab.test", "2001:db8:1::7 hub1.lab.test", steady.hubAddr+" hub2.lab.test")
	move := time.Now()
	lastBefore := f.peer(t, moving.site).LastHandshakeTime
	var took time.Duration
	for {
		pr := f.peer(t, moving.site)
		if pr.Endpoint != nil && pr.Endpoint.String() == moved.String() && pr.LastHandshakeTime.After(lastBefore) {
			took = time.Since(move)
			break
		}
		if time.Since(move) > 4*time.Minute {
			t.Fatalf("no handshake on %s within 4 minutes of the move (endpoint %v)", moved, pr.Endpoint)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%s handshaked again on %s %s after the move", moving.site, moved, took.Round(100*time.Millisecond))
	if bound := 135*time.Second + 30*time.Second + time.Second + 15*time.Second + 10*time.Second; took > bound {
		t.Errorf("took %s, want <= stale_after 135s + TTL 30s + a poll + try_for 15s (the IPv6 blackhole) + 10s of handshake retries = %s", took, bound)
	}
	var sets []string
	for _, a := range agentAudits(t, agent.Logs()) {
		if a["policy"] == "reresolve" && a["result"] == "ok" && strings.HasPrefix(a["peer"], "hub-"+moving.site) {
			sets = append(sets, a["to"])
		}
	}
	if want := []string{"[2001:db8:1::7]:51901", moved.String()}; strings.Join(sets, " ") != strings.Join(want, " ") {
		t.Errorf("endpoints set %v, want %v (the AAAA first, then the A)", sets, want)
	}

	// The other two, 5 minutes after the agent started.
	time.Sleep(time.Until(start.Add(5 * time.Minute)))
	s := parseScrape(t, scrapeOf(t, agent))
	if pr := f.peer(t, steady.site); pr.Endpoint.String() != net.JoinHostPort(steady.hubAddr, "51902") || time.Since(pr.LastHandshakeTime) > 135*time.Second {
		t.Errorf("%s: endpoint %s, handshake %s ago; want unchanged and fresh", steady.site, pr.Endpoint, time.Since(pr.LastHandshakeTime))
	}
	steadyPeer := map[string]string{"public_key": steady.hubPublic.String()}
	if v := s.mustGet(t, "wireguard_peer_endpoint_changes_total", steadyPeer); v != 0 {
		t.Errorf("%s: %v endpoint changes in 5 minutes, want 0", steady.site, v)
	}
	for _, r := range []string{"ok", "error", "empty"} {
		if v := s.mustGet(t, "wgpulse_reresolve_lookups_total", map[string]string{"public_key": steady.hubPublic.String(), "result": r}); v != 0 {
			t.Errorf("%s: %v lookups (%s) with a fresh handshake, want 0", steady.site, v, r)
		}
	}
	unknownPeer := map[string]string{"public_key": unknown.hubPublic.String()}
	if v := s.mustGet(t, "wgpulse_reresolve_lookups_total", map[string]string{"public_key": unknown.hubPublic.String(), "result": "error"}); v < 1 {
		t.Errorf("%s: %v failed lookups, want >= 1", unknown.site, v)
	}
	if v := s.mustGet(t, "wgpulse_reresolve_handshake_stale", unknownPeer); v != 1 {
		t.Errorf("%s: handshake_stale %v, want 1", unknown.site, v)
	}
	if pr := f.peer(t, unknown.site); pr.Endpoint.String() != "198.51.103.1:51903" {
		t.Errorf("%s: endpoint %s, want it unchanged", unknown.site, pr.Endpoint)
	}
	logs := agent.Logs()
	if !strings.Contains(logs, `"msg":"reresolve: cannot resolve the peer's endpoint hostname: its endpoint stays"`) || !strings.Contains(logs, `"host":"nowhere.lab.test"`) {
		t.Error("no warning naming the unresolvable host")
	}
	for dev, k := range f.keys {
		if strings.Contains(logs, k.String()) || strings.Contains(scrapeOf(t, agent), k.String()) {
			t.Errorf("the private key of %s is in the agent's logs or metrics", dev)
		}
	}
	if !strings.Contains(f.dnsLog.String(), "hub1.lab.test") {
		t.Error("dnsmasq saw no query for hub1.lab.test: the agent did not use the namespace's resolver")
	}
}

// agentAudits are the agent's audit lines ("remediation decision", JSON
// logs), each as its string fields.
func agentAudits(t *testing.T, logs string) []map[string]string {
	t.Helper()
	var out []map[string]string
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil || m["msg"] != "remediation decision" {
			continue
		}
		line := map[string]string{}
		for k, v := range m {
			if s, ok := v.(string); ok {
				line[k] = s
			}
		}
		out = append(out, line)
	}
	return out
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
