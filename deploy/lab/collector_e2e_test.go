package lab_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// pair is two userspace WireGuard devices in two namespaces joined by a veth.
type pair struct {
	nsA, nsB   string
	devA, devB string
	privA      wgtypes.Key
	privB      wgtypes.Key
	wg         *wgctrl.Client
}

func newPair(t *testing.T) *pair {
	t.Helper()
	labtest.Require(t)
	p := "e" + labtest.UniquePrefix()
	pr := &pair{
		nsA: "wgpl-" + p + "-a", nsB: "wgpl-" + p + "-b",
		devA: "wp" + p + "a", devB: "wp" + p + "b",
	}
	logDir := t.TempDir()
	for _, ns := range []string{pr.nsA, pr.nsB} {
		if err := lab.AddNetns(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := lab.DelNetns(ns); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	if err := lab.Veth(pr.nsA, "vp"+p+"a", "198.18.0.1/30", pr.nsB, "vp"+p+"b", "198.18.0.2/30"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct {
		ns, dev string
		mtu     int
	}{{pr.nsA, pr.devA, 1380}, {pr.nsB, pr.devB, 1420}} {
		proc, err := lab.StartNode(n.ns, n.dev, n.mtu, logDir, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(proc.Stop)
	}
	var err error
	if pr.privA, err = wgtypes.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	if pr.privB, err = wgtypes.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	if pr.wg, err = wgctrl.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.wg.Close() })
	portA, portB := 51820, 51821
	keepalive := 25 * time.Second
	// B learns A's endpoint from A's packets, as a hub learns a NATed site's.
	// B is configured first: A's keepalive starts a handshake at once.
	mustConfigure(t, pr.wg, pr.devB, wgtypes.Config{PrivateKey: &pr.privB, ListenPort: &portB, Peers: []wgtypes.PeerConfig{{
		PublicKey: pr.privA.PublicKey(), AllowedIPs: []net.IPNet{mustCIDR("10.99.0.1/32")},
	}}})
	mustConfigure(t, pr.wg, pr.devA, wgtypes.Config{PrivateKey: &pr.privA, ListenPort: &portA, Peers: []wgtypes.PeerConfig{{
		PublicKey: pr.privB.PublicKey(), Endpoint: &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: portB},
		AllowedIPs: []net.IPNet{mustCIDR("10.99.0.2/32")}, PersistentKeepaliveInterval: &keepalive,
	}}})
	for _, a := range []struct{ ns, dev, addr string }{{pr.nsA, pr.devA, "10.99.0.1/24"}, {pr.nsB, pr.devB, "10.99.0.2/24"}} {
		if err := lab.IP("-n", a.ns, "addr", "add", a.addr, "dev", a.dev); err != nil {
			t.Fatal(err)
		}
	}
	return pr
}

func mustConfigure(t *testing.T, c *wgctrl.Client, dev string, cfg wgtypes.Config) {
	t.Helper()
	if err := c.ConfigureDevice(dev, cfg); err != nil {
		t.Fatalf("configuring %s: %v", dev, err)
	}
}

func mustCIDR(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

// sendUDP sends n datagrams from inside ns to dst through the tunnel.
func sendUDP(t *testing.T, ns, dst string, n int) {
	t.Helper()
	err := lab.InNetns(ns, func() error {
		// Unconnected, so the peer's ICMP port-unreachable does not fail writes.
		c, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		to, err := net.ResolveUDPAddr("udp4", dst)
		if err != nil {
			return err
		}
		for range n {
			if _, err := c.WriteTo(make([]byte, 100), to); err != nil {
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("sending UDP in %s to %s: %v", ns, dst, err)
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// eventually retries f every 100ms until it returns "" or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scrape(t *testing.T, a *lab.Agent) (series, string) {
	t.Helper()
	code, body, err := a.Get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("scraping agent in %s: %d %v", a.NS, code, err)
	}
	return parseScrape(t, body), body
}

// TestCollectorOnRealTunnels runs the real agent binary against two real
// userspace WireGuard devices and checks what it reports over HTTP.
func TestCollectorOnRealTunnels(t *testing.T) {
	start := time.Now() // the handshake may happen as soon as the pair is configured
	pr := newPair(t)
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	dir := t.TempDir()
	pubA, pubB := pr.privA.PublicKey().String(), pr.privB.PublicKey().String()

	// A names its peer in the config; B names its peer through a wg-quick file
	// (which, like a real one, also holds the private key).
	cfgA := writeFile(t, dir, "a.yml", fmt.Sprintf("collector:\n  devices: [%s]\n  poll_interval: 200ms\n  peer_names:\n    %q: site-b\n", pr.devA, pubB))
	writeFile(t, dir, pr.devB+".conf", fmt.Sprintf("[Interface]\nPrivateKey = %s\nListenPort = 51821\n\n[Peer]\n# Name = site-a\nPublicKey = %s\nAllowedIPs = 10.99.0.1/32\n", pr.privB, pubA))
	cfgB := writeFile(t, dir, "b.yml", fmt.Sprintf("collector:\n  devices: [%s]\n  poll_interval: 200ms\n  peer_names_files: %s\n", pr.devB, filepath.Join(dir, "*.conf")))
	agentA := labtest.StartAgent(t, bin, pr.nsA, "127.0.0.1:9586", "--config.file="+cfgA)
	agentB := labtest.StartAgent(t, bin, pr.nsB, "127.0.0.1:9586", "--config.file="+cfgB)

	sendUDP(t, pr.nsA, "10.99.0.2:9999", 20)
	sendUDP(t, pr.nsB, "10.99.0.1:9999", 20)

	peerA := labelsOf("device", pr.devB, "public_key", pubA, "name", "site-a")
	peerB := labelsOf("device", pr.devA, "public_key", pubB, "name", "site-b")
	eventually(t, 10*time.Second, func() string {
		s, _ := scrape(t, agentB)
		if _, ok := s.get("wireguard_peer_info", labelsOf("device", pr.devB, "endpoint", "198.18.0.1:51820", "name", "site-a")); !ok {
			return fmt.Sprintf("B does not report A's endpoint yet: %v", s["wireguard_peer_info"])
		}
		return ""
	})

	// Handshake is recent, on both sides (the initiator's agent may need one
	// more poll to see it).
	for _, c := range []struct {
		a      *lab.Agent
		labels map[string]string
	}{{agentA, peerB}, {agentB, peerA}} {
		eventually(t, 5*time.Second, func() string {
			s, _ := scrape(t, c.a)
			hs := s.mustGet(t, "wireguard_peer_last_handshake_seconds", c.labels)
			if got := time.Unix(int64(hs), 0); got.Before(start.Add(-2*time.Second)) || got.After(time.Now().Add(2*time.Second)) {
				return fmt.Sprintf("%s: last handshake %v, want between %v and now", c.a.NS, got, start)
			}
			return ""
		})
	}

	// Bytes flow and agree across the pair: what A sent to B is what B got from A.
	eventually(t, 10*time.Second, func() string {
		sa, _ := scrape(t, agentA)
		sb, _ := scrape(t, agentB)
		txA, rxA := sa.mustGet(t, "wireguard_peer_transmit_bytes_total", peerB), sa.mustGet(t, "wireguard_peer_receive_bytes_total", peerB)
		txB, rxB := sb.mustGet(t, "wireguard_peer_transmit_bytes_total", peerA), sb.mustGet(t, "wireguard_peer_receive_bytes_total", peerA)
		if txA < 20*100 || txB < 20*100 {
			return fmt.Sprintf("too few bytes: A sent %v, B sent %v, want >= 2000 each", txA, txB)
		}
		if txA != rxB || txB != rxA {
			return fmt.Sprintf("counters disagree: A tx %v vs B rx %v; B tx %v vs A rx %v", txA, rxB, txB, rxA)
		}
		return ""
	})

	sa, bodyA := scrape(t, agentA)
	if got := sa.mustGet(t, "wireguard_peer_persistent_keepalive_seconds", peerB); got != 25 {
		t.Errorf("keepalive = %v, want 25", got)
	}
	if got := sa.mustGet(t, "wireguard_device_mtu_bytes", labelsOf("device", pr.devA)); got != 1380 {
		t.Errorf("device MTU = %v, want 1380", got)
	}
	if got := sa.mustGet(t, "wireguard_device_info", labelsOf("device", pr.devA, "listen_port", "51820", "type", "userspace", "public_key", pr.privA.PublicKey().String())); got != 1 {
		t.Errorf("device info = %v", got)
	}
	if got := sa.mustGet(t, "wireguard_peer_endpoint_changes_total", peerB); got != 0 {
		t.Errorf("A's peer endpoint changes = %v before any change, want 0", got)
	}

	// A rebinds to a new source port, as after a NAT mapping expiry: B must
	// count exactly one endpoint change.
	newPort := 51830
	mustConfigure(t, pr.wg, pr.devA, wgtypes.Config{ListenPort: &newPort})
	sendUDP(t, pr.nsA, "10.99.0.2:9999", 5)
	eventually(t, 10*time.Second, func() string {
		s, _ := scrape(t, agentB)
		if _, ok := s.get("wireguard_peer_info", labelsOf("device", pr.devB, "endpoint", "198.18.0.1:51830")); !ok {
			return fmt.Sprintf("B has not seen A's new port: %v", s["wireguard_peer_info"])
		}
		return ""
	})
	time.Sleep(500 * time.Millisecond) // a few more polls: the change must not be counted again
	sb, bodyB := scrape(t, agentB)
	if got := sb.mustGet(t, "wireguard_peer_endpoint_changes_total", peerA); got != 1 {
		t.Errorf("B's endpoint_changes_total for A = %v, want 1", got)
	}
	if got := sb.mustGet(t, "wireguard_peer_last_endpoint_change_seconds", peerA); time.Since(time.Unix(int64(got), 0)) > 15*time.Second {
		t.Errorf("last endpoint change %v is not recent", time.Unix(int64(got), 0))
	}

	// A real scrape is clean for promtool.
	for _, body := range []string{bodyA, bodyB} {
		promtoolCheckMetrics(t, body)
	}

	// No private key anywhere a user or a log shipper can see it.
	_, landing, err := agentA.Get("/")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(landing, "/metrics") {
		t.Errorf("landing page lacks the metrics link:\n%s", landing)
	}
	for _, where := range []struct{ name, text string }{
		{"A /metrics", bodyA}, {"B /metrics", bodyB}, {"landing page", landing},
		{"A logs", agentA.Logs()}, {"B logs", agentB.Logs()},
	} {
		for _, k := range []wgtypes.Key{pr.privA, pr.privB} {
			if strings.Contains(where.text, k.String()) {
				t.Errorf("private key found in %s", where.name)
			}
		}
	}
	if !strings.Contains(bodyA, pubB) || !strings.Contains(bodyB, pubA) {
		t.Error("public keys missing from scrapes, so the private-key check proves nothing")
	}

	// SIGHUP reloads the config file: a renamed peer shows under its new name;
	// a broken file is refused and the running config stays.
	reloadOK := func() float64 {
		s, _ := scrape(t, agentA)
		return s.mustGet(t, "wgpulse_config_last_reload_successful", nil)
	}
	writeFile(t, dir, "a.yml", fmt.Sprintf("collector:\n  devices: [%s]\n  poll_interval: 200ms\n  peer_names:\n    %q: site-b-renamed\n", pr.devA, pubB))
	if err := agentA.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		s, _ := scrape(t, agentA)
		if _, ok := s.get("wireguard_peer_info", labelsOf("public_key", pubB, "name", "site-b-renamed")); !ok {
			return fmt.Sprintf("rename not applied after SIGHUP: %v", s["wireguard_peer_info"])
		}
		return ""
	})
	if reloadOK() != 1 {
		t.Error("good reload reported as failed")
	}
	writeFile(t, dir, "a.yml", "collector:\n  poll_intervall: 1s\n")
	if err := agentA.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string {
		if reloadOK() != 0 {
			return "bad config not reported by wgpulse_config_last_reload_successful"
		}
		return ""
	})
	if s, _ := scrape(t, agentA); s.mustGet(t, "wireguard_peer_info", labelsOf("public_key", pubB, "name", "site-b-renamed")) != 1 {
		t.Error("running config lost after a bad reload")
	}
	if logs := agentA.Logs(); !strings.Contains(logs, "a.yml:2: unknown field") || !strings.Contains(logs, "poll_intervall") {
		t.Errorf("reload error does not name file, line and field:\n%s", agentA.Logs())
	}
}

func promtoolCheckMetrics(t *testing.T, body string) {
	t.Helper()
	cmd := exec.Command(labtest.Tool(t, "promtool", "prometheus"), "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestAgentTLSAndBasicAuth serves the real agent through --web.config.file.
func TestAgentTLSAndBasicAuth(t *testing.T) {
	labtest.Require(t)
	ns := "wgpl-t" + labtest.UniquePrefix()
	if err := lab.AddNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.DelNetns(ns) })
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := writeFile(t, dir, "web.yml", fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prom: %s\n",
		writeFile(t, dir, "cert.pem", string(certPEM)), writeFile(t, dir, "key.pem", string(keyPEM)), hash))
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	a := labtest.StartAgent(t, bin, ns, "127.0.0.1:9586", "--web.config.file="+webCfg, "--web.enable-remediation-api")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	a.Scheme = "https"
	a.Client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}

	code, _, err := a.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusUnauthorized {
		t.Fatalf("without credentials: status %d, want 401", code)
	}
	req, _ := http.NewRequest("GET", "https://"+a.Addr+"/metrics", nil)
	req.SetBasicAuth("prom", "wrong")
	if resp, err := a.Client.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %v %v, want 401", resp.StatusCode, err)
	}
	req.SetBasicAuth("prom", "s3cret")
	resp, err := a.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with credentials: status %d, want 200", resp.StatusCode)
	}
	// Plain HTTP is refused on a TLS listener.
	a.Scheme = "http"
	if code, _, _ := a.Get("/metrics"); code == http.StatusOK {
		t.Fatal("plain HTTP served metrics on a TLS listener")
	}

	// The status API is behind the same TLS and auth; `wgpulse status`
	// passes both with its --agent.* flags and says what is missing.
	a.Scheme = "https"
	if code, _, _ := a.Get("/api/v1/status"); code != http.StatusUnauthorized {
		t.Errorf("/api/v1/status without credentials: %d, want 401", code)
	}
	status := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin, "status", "--json", "--agent", "https://127.0.0.1:9586",
			"--agent.ca-file", filepath.Join(dir, "cert.pem")}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := status(); err == nil || !strings.Contains(out, "--agent.username and --agent.password-file") {
		t.Errorf("wgpulse status without credentials: %v %s; want it to name the flags", err, out)
	}
	if out, err := status("--agent.username", "prom", "--agent.password-file", writeFile(t, dir, "pw", "s3cret\n")); err != nil || !strings.Contains(out, `"version": 1`) {
		t.Errorf("wgpulse status with credentials: %v %s", err, out)
	}

	// The remediation API, switched on, is behind the same TLS and auth.
	if code, _, _ := a.Do("POST", "/-/remediate/pause"); code != http.StatusUnauthorized {
		t.Errorf("POST /-/remediate/pause without credentials: %d, want 401", code)
	}
	req, _ = http.NewRequest("POST", "https://"+a.Addr+"/-/remediate/pause", nil)
	req.SetBasicAuth("prom", "s3cret")
	if resp, err := a.Client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("POST /-/remediate/pause with credentials: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wgpulse-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// TestAgentWithoutUserspaceDevices: UAPI sockets are files, so an agent in
// any namespace watches every userspace device on the machine; the option
// the prober benchmarks use hides them, and the pid is still the agent's.
func TestAgentWithoutUserspaceDevices(t *testing.T) {
	pr := newPair(t)
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	for _, hide := range []bool{false, true} {
		ns := "wgpl-u" + labtest.UniquePrefix()
		if err := lab.AddNetns(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = lab.DelNetns(ns) })
		a := labtest.StartAgentWith(t, lab.AgentOptions{Bin: bin, NS: ns, Addr: "127.0.0.1:9586", Ready: true, NoUserspaceDevices: hide,
			Args: []string{"--log.level=warn"}})
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", a.Pid())); err != nil || exe != bin {
			t.Errorf("hide=%v: Pid() is %d, running %q (%v), not the agent %s", hide, a.Pid(), exe, err, bin)
		}
		eventually(t, 10*time.Second, func() string {
			_, body := scrape(t, a)
			seen := strings.Contains(body, `device="`+pr.devA+`"`)
			if seen == hide {
				return fmt.Sprintf("hide=%v: the agent in %s sees %s in another namespace: %v", hide, ns, pr.devA, seen)
			}
			return ""
		})
		a.Stop()
	}
}
