package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Config describes a lab. The zero value of every field has a default.
type Config struct {
	// Prefix names everything the lab makes (namespaces "<prefix>-hub",
	// devices "<prefix>dc1p"), so labs with different prefixes coexist.
	Prefix string `yaml:"prefix" json:"prefix"`
	// Sites connect to the hub, each over a primary and a backup path.
	Sites []string `yaml:"sites" json:"sites"`
	// MTU of every WireGuard device (default 1420, wg-quick's for 1500 links).
	MTU int `yaml:"mtu" json:"mtu"`
	// Keepalive is the sites' PersistentKeepalive towards the hub (default
	// 25s, as wg(8) suggests); negative turns it off.
	Keepalive time.Duration `yaml:"keepalive" json:"keepalive"`
	// HandshakeTimeout bounds `up` (default 10s).
	HandshakeTimeout time.Duration `yaml:"handshake_timeout" json:"handshake_timeout"`
	// Kernel uses kernel WireGuard devices instead of wireguard-go.
	Kernel bool `yaml:"kernel" json:"kernel"`
	// Management adds a veth from the host namespace to each site (for a
	// Prometheus on the host to scrape the agents). The CLI turns it on.
	Management bool `yaml:"management" json:"management"`
	// DualWAN gives these sites a second uplink to their primary tunnel's
	// hub device: path "<site>-wan2", with its own faults (endpoint failover).
	DualWAN []string `yaml:"dual_wan" json:"dual_wan,omitempty"`
}

// StateRoot is where labs keep their state files and logs.
const StateRoot = "/run/wgpulse-lab"

const envPrefix = "WGPULSE_LAB_PREFIX"

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)
	siteRE   = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)
)

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "wgl"
	}
	if len(c.Sites) == 0 {
		c.Sites = []string{"dc1", "dc2"}
	}
	if c.MTU == 0 {
		c.MTU = 1420
	}
	if c.Keepalive == 0 {
		c.Keepalive = 25 * time.Second
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
}

// Validate names the offending field.
func (c *Config) Validate() error {
	var errs []error
	if !prefixRE.MatchString(c.Prefix) {
		errs = append(errs, fmt.Errorf("prefix %q: want 1-6 characters a-z0-9 starting with a letter (device names are limited to 15 bytes)", c.Prefix))
	}
	if len(c.Sites) > 20 {
		errs = append(errs, fmt.Errorf("sites: at most 20, got %d", len(c.Sites)))
	}
	for i, s := range c.Sites {
		if !siteRE.MatchString(s) || s == "hub" || s == "wan" {
			errs = append(errs, fmt.Errorf("sites[%d] %q: want 1-6 characters a-z0-9 starting with a letter, not hub or wan", i, s))
		}
		if slices.Index(c.Sites, s) != i {
			errs = append(errs, fmt.Errorf("sites[%d] %q listed twice", i, s))
		}
	}
	for i, s := range c.DualWAN {
		if !slices.Contains(c.Sites, s) {
			errs = append(errs, fmt.Errorf("dual_wan[%d] %q: not one of the sites %v", i, s, c.Sites))
		}
	}
	if c.MTU < 1280 || c.MTU > 9000 {
		errs = append(errs, fmt.Errorf("mtu %d: want 1280..9000", c.MTU))
	}
	return errors.Join(errs...)
}

// Tunnel is one WireGuard tunnel between a site and the hub over one path.
type Tunnel struct {
	Name          string `json:"name"` // "<site>-<path>", e.g. dc1-primary
	Site          string `json:"site"`
	Path          string `json:"path"` // primary or backup
	Namespace     string `json:"namespace"`
	HubNamespace  string `json:"hub_namespace"`
	Device        string `json:"device"`
	HubDevice     string `json:"hub_device"`
	LocalAddress  string `json:"local_address"`  // site end, overlay
	RemoteAddress string `json:"remote_address"` // hub end, overlay
	PublicKey     string `json:"public_key"`
	HubPublicKey  string `json:"hub_public_key"`
	ListenPort    int    `json:"listen_port"`
	HubListenPort int    `json:"hub_listen_port"`
	RelayAddress  string `json:"relay_address"` // the site's endpoint for the hub
	// Underlay is the relay's address on the site's uplink (an underlay
	// target), SiteInterface the site's uplink and WanInterface the relay's
	// end of it (taken down by the fault `down`).
	Underlay      string  `json:"underlay"`
	SiteInterface string  `json:"site_interface"`
	WanInterface  string  `json:"wan_interface"`
	RouteMetric   int     `json:"route_metric"` // of the routes over this tunnel
	MTU           int     `json:"mtu"`
	Faults        *Faults `json:"faults,omitempty"`
	Handshake     string  `json:"last_handshake,omitempty"` // RFC 3339, status only
	index         int
}

// Uplink is a second underlay path of a site to its primary tunnel's hub
// device: the same tunnel, another uplink (dual WAN).
type Uplink struct {
	Name          string  `json:"name"`          // "<site>-wan2"
	Tunnel        string  `json:"tunnel"`        // the tunnel it carries, e.g. dc1-primary
	RelayAddress  string  `json:"relay_address"` // the hub's endpoint over this uplink, for the site
	Underlay      string  `json:"underlay"`      // the relay's address on this uplink (an underlay target)
	SiteInterface string  `json:"site_interface"`
	WanInterface  string  `json:"wan_interface"`
	Faults        *Faults `json:"faults,omitempty"`
	index         int
}

// Site is one site namespace.
type Site struct {
	Name       string `json:"name"`
	Namespace  string `json:"namespace"`
	LAN        string `json:"lan"`                  // prefix routed over the site's tunnels
	Management string `json:"management,omitempty"` // address reachable from the host, if any
}

// State is everything a lab made; `down` removes it, also after a crash.
type State struct {
	Config       Config `json:"config"`
	Dir          string `json:"dir"`
	HubNamespace string `json:"hub_namespace"`
	HubLAN       string `json:"hub_lan"`
	// HubManagement is the hub's address reachable from the host, if any.
	HubManagement string   `json:"hub_management,omitempty"`
	WanNamespace  string   `json:"wan_namespace"`
	Namespaces    []string `json:"namespaces"`
	Sites         []Site   `json:"sites"`
	Tunnels       []Tunnel `json:"tunnels"`
	Uplinks       []Uplink `json:"uplinks,omitempty"`
	Pids          []int    `json:"pids"`
	RelayControl  string   `json:"relay_control"`
	Started       string   `json:"started"`
}

// Lab is a running lab.
type Lab struct {
	State
	procs []*Proc // children started by this process (attached labs)
}

// Options change how Up runs, not what it builds.
type Options struct {
	// Detached children outlive this process (the CLI's `up`).
	Detached bool
	// Progress gets one line per step; nil is silent.
	Progress io.Writer
}

func stateDir(prefix string) string { return filepath.Join(StateRoot, prefix) }

// Up builds the lab and returns when every tunnel has handshaked. On error
// it removes everything it made.
func Up(ctx context.Context, cfg Config, opts Options) (l *Lab, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	progress := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", a...)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir(cfg.Prefix), "state.json")); err == nil {
		return nil, fmt.Errorf("a lab with prefix %q is already up: run `wgpulse-lab down --prefix %s` first, or pick another --prefix", cfg.Prefix, cfg.Prefix)
	}
	if cfg.Kernel {
		if err := kernelWireGuardAvailable(cfg.Prefix); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	l = &Lab{State: State{Config: cfg, Dir: stateDir(cfg.Prefix), Started: start.UTC().Format(time.RFC3339)}}
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			progress("cleaning up after failure: %v", err)
			_ = l.Down()
			l = nil
		}
	}()
	p := cfg.Prefix
	l.HubNamespace, l.WanNamespace = p+"-hub", p+"-wan"
	l.HubLAN = "10.50.0.0/16"
	l.RelayControl = filepath.Join(l.Dir, "relay.sock")

	progress("creating namespaces and underlay links")
	for _, ns := range append([]string{l.HubNamespace, l.WanNamespace}, prefixAll(p+"-", cfg.Sites)...) {
		if err := l.addNamespace(ns); err != nil {
			return l, err
		}
	}
	// The hub and the sites are gateways of their LANs: they forward, as
	// wgpulse diagnose (forwarding_off) expects of a node that routes LAN
	// prefixes into a tunnel.
	for _, ns := range append([]string{l.HubNamespace}, prefixAll(p+"-", cfg.Sites)...) {
		if out, err := Command(ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward").CombinedOutput(); err != nil {
			return l, fmt.Errorf("enabling IPv4 forwarding in %s: %v: %s", ns, err, out)
		}
	}
	if err := addLANAddress(l.HubNamespace, "10.50.0.1"); err != nil {
		return l, err
	}
	mgmtOctet := freeMgmtOctet(p)
	if cfg.Management {
		hub := Site{Name: "hub", Namespace: l.HubNamespace, Management: fmt.Sprintf("198.18.%d.%d", mgmtOctet, 4*len(cfg.Sites)+2)}
		if err := l.mgmtVeth(p+"mhub", fmt.Sprintf("198.18.%d.%d", mgmtOctet, 4*len(cfg.Sites)+1), hub); err != nil {
			return l, err
		}
		l.HubManagement = hub.Management
	}
	for i, s := range cfg.Sites {
		site := Site{Name: s, Namespace: p + "-" + s, LAN: fmt.Sprintf("10.%d.0.0/16", 101+i)}
		if err := addLANAddress(site.Namespace, fmt.Sprintf("10.%d.0.1", 101+i)); err != nil {
			return l, err
		}
		if cfg.Management {
			host := fmt.Sprintf("198.18.%d.%d", mgmtOctet, 4*i+1)
			site.Management = fmt.Sprintf("198.18.%d.%d", mgmtOctet, 4*i+2)
			if err := l.mgmtVeth(p+"m"+s, host, site); err != nil {
				return l, err
			}
		}
		l.Sites = append(l.Sites, site)
		for j, path := range []string{"primary", "backup"} {
			k := 2*i + j + 1
			t := Tunnel{
				Name: s + "-" + path, Site: s, Path: path, index: k,
				Namespace: site.Namespace, HubNamespace: l.HubNamespace,
				Device: p + s + path[:1], HubDevice: p + "h" + s + path[:1],
				LocalAddress: fmt.Sprintf("10.200.%d.2", k), RemoteAddress: fmt.Sprintf("10.200.%d.1", k),
				ListenPort: 51820 + k, HubListenPort: 51820 + k,
				RelayAddress: fmt.Sprintf("198.18.%d.1:%d", k, 51820+k),
				Underlay:     fmt.Sprintf("198.18.%d.1", k), SiteInterface: "u-" + path, WanInterface: fmt.Sprintf("s%d", k),
				RouteMetric: 100 * (j + 1), MTU: cfg.MTU,
			}
			if err := Veth(site.Namespace, "u-"+path, fmt.Sprintf("198.18.%d.2/24", k), l.WanNamespace, fmt.Sprintf("s%d", k), fmt.Sprintf("198.18.%d.1/24", k)); err != nil {
				return l, err
			}
			if err := Veth(l.HubNamespace, fmt.Sprintf("u%d", k), fmt.Sprintf("198.19.%d.2/24", k), l.WanNamespace, fmt.Sprintf("h%d", k), fmt.Sprintf("198.19.%d.1/24", k)); err != nil {
				return l, err
			}
			l.Tunnels = append(l.Tunnels, t)
			if path == "primary" && slices.Contains(cfg.DualWAN, s) {
				u := Uplink{Name: s + "-wan2", Tunnel: t.Name, index: k,
					RelayAddress: fmt.Sprintf("198.18.%d.1:%d", 100+k, 51820+k), Underlay: fmt.Sprintf("198.18.%d.1", 100+k),
					SiteInterface: "u-wan2", WanInterface: fmt.Sprintf("w%d", k)}
				if err := Veth(site.Namespace, u.SiteInterface, fmt.Sprintf("198.18.%d.2/24", 100+k), l.WanNamespace, u.WanInterface, u.Underlay+"/24"); err != nil {
					return l, err
				}
				l.Uplinks = append(l.Uplinks, u)
			}
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}

	// The relay first: a site sends its first handshake as soon as it is
	// configured, and a lost one costs WireGuard's 5 s retry.
	progress("starting the impairment relay")
	if err := l.startRelay(opts.Detached); err != nil {
		return l, err
	}
	if err := l.save(); err != nil {
		return l, err
	}

	progress("starting %d WireGuard devices (%s)", 2*len(l.Tunnels), map[bool]string{false: "userspace wireguard-go", true: "kernel"}[cfg.Kernel])
	for i := range l.Tunnels {
		if err := l.bringUpTunnel(&l.Tunnels[i], opts.Detached); err != nil {
			return l, err
		}
	}

	progress("waiting for handshakes")
	if err := l.waitHandshakes(ctx, cfg.HandshakeTimeout); err != nil {
		return l, err
	}
	progress("lab %q up in %s: %d tunnels handshaked", p, time.Since(start).Round(10*time.Millisecond), len(l.Tunnels))
	return l, nil
}

func prefixAll(p string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = p + s
	}
	return out
}

// freeMgmtOctet picks X for the management subnet 198.18.X.0/24: starting
// from a hash of the prefix, the first X no host interface already uses, so
// labs with different prefixes (parallel test packages) do not collide.
func freeMgmtOctet(prefix string) int {
	used := map[int]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip4 := ipn.IP.To4(); ip4 != nil && ip4[0] == 198 && ip4[1] == 18 {
					used[int(ip4[2])] = true
				}
			}
		}
	}
	start := int(hash8(prefix) % 50)
	for i := range 50 {
		if x := 200 + (start+i)%50; !used[x] {
			return x
		}
	}
	return 200 + start
}

func hash8(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

func (l *Lab) addNamespace(ns string) error {
	l.Namespaces = append(l.Namespaces, ns) // recorded before it exists: down removes it either way
	if err := l.save(); err != nil {
		return err
	}
	return AddNetns(ns)
}

// addLANAddress gives a namespace one address of its LAN prefix, on its
// loopback (not every kernel has the dummy link type).
func addLANAddress(ns, addr string) error {
	return IP("-n", ns, "addr", "add", addr+"/32", "dev", "lo")
}

// mgmtVeth joins the host namespace to a site. The host end is removed with
// the site namespace.
func (l *Lab) mgmtVeth(hostIf, hostAddr string, site Site) error {
	for _, s := range [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", "mgmt0", "netns", site.Namespace},
		{"addr", "add", hostAddr + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", site.Namespace, "addr", "add", site.Management + "/30", "dev", "mgmt0"},
		{"-n", site.Namespace, "link", "set", "mgmt0", "up"},
	} {
		if err := IP(s...); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) bringUpTunnel(t *Tunnel, detached bool) error {
	for _, end := range []struct{ ns, dev string }{{t.HubNamespace, t.HubDevice}, {t.Namespace, t.Device}} {
		if err := l.startDevice(end.ns, end.dev, detached); err != nil {
			return err
		}
	}
	hubKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	siteKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	t.HubPublicKey, t.PublicKey = hubKey.PublicKey().String(), siteKey.PublicKey().String()
	siteLAN, hubLAN := mustCIDR(l.siteByName(t.Site).LAN), mustCIDR(l.HubLAN)
	// The hub learns each site's endpoint from its packets (through the NAT).
	hubPort := t.HubListenPort
	if err := configure(t.HubNamespace, t.HubDevice, wgtypes.Config{PrivateKey: &hubKey, ListenPort: &hubPort, ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{{PublicKey: siteKey.PublicKey(), ReplaceAllowedIPs: true,
			AllowedIPs: []net.IPNet{host32(t.LocalAddress), siteLAN}}}}); err != nil {
		return err
	}
	sitePort := t.ListenPort
	relay, _ := net.ResolveUDPAddr("udp4", t.RelayAddress)
	peer := wgtypes.PeerConfig{PublicKey: hubKey.PublicKey(), Endpoint: relay, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{host32(t.RemoteAddress), hubLAN}}
	if l.Config.Keepalive > 0 {
		ka := l.Config.Keepalive
		peer.PersistentKeepaliveInterval = &ka
	}
	if err := configure(t.Namespace, t.Device, wgtypes.Config{PrivateKey: &siteKey, ListenPort: &sitePort, ReplacePeers: true, Peers: []wgtypes.PeerConfig{peer}}); err != nil {
		return err
	}
	metric := strconv.Itoa(t.RouteMetric)
	for _, s := range [][]string{
		{"-n", t.HubNamespace, "addr", "add", t.RemoteAddress + "/24", "dev", t.HubDevice},
		{"-n", t.Namespace, "addr", "add", t.LocalAddress + "/24", "dev", t.Device},
		{"-n", t.HubNamespace, "route", "add", siteLAN.String(), "dev", t.HubDevice, "metric", metric},
		{"-n", t.Namespace, "route", "add", hubLAN.String(), "dev", t.Device, "metric", metric},
	} {
		if err := IP(s...); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) siteByName(name string) Site {
	for _, s := range l.Sites {
		if s.Name == name {
			return s
		}
	}
	return Site{}
}

func (l *Lab) startDevice(ns, dev string, detached bool) error {
	if l.Config.Kernel {
		for _, s := range [][]string{
			{"-n", ns, "link", "add", dev, "type", "wireguard"},
			{"-n", ns, "link", "set", dev, "mtu", strconv.Itoa(l.Config.MTU), "up"},
		} {
			if err := IP(s...); err != nil {
				return err
			}
		}
		return nil
	}
	p, err := StartNode(ns, dev, l.Config.MTU, l.Dir, detached, envPrefix+"="+l.Config.Prefix)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, p)
	l.Pids = append(l.Pids, p.Pid())
	return l.save()
}

// configure runs wgctrl inside ns, so kernel devices (visible only through
// their namespace's generic netlink) work as well as userspace ones.
func configure(ns, dev string, cfg wgtypes.Config) error {
	return withWG(ns, func(c *wgctrl.Client) error {
		if err := c.ConfigureDevice(dev, cfg); err != nil {
			return fmt.Errorf("configuring %s in %s: %w", dev, ns, err)
		}
		return nil
	})
}

func withWG(ns string, fn func(*wgctrl.Client) error) error {
	var c *wgctrl.Client
	if err := InNetns(ns, func() (err error) { c, err = wgctrl.New(); return err }); err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func host32(a string) net.IPNet {
	return net.IPNet{IP: net.ParseIP(a).To4(), Mask: net.CIDRMask(32, 32)}
}

func mustCIDR(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

func (l *Lab) startRelay(detached bool) error {
	cfg := RelayConfig{Control: l.RelayControl}
	for _, t := range l.Tunnels {
		cfg.Paths = append(cfg.Paths, RelayPath{
			Name: t.Name, Listen: t.RelayAddress,
			Out: fmt.Sprintf("198.19.%d.1", t.index), Hub: fmt.Sprintf("198.19.%d.2:%d", t.index, t.HubListenPort),
		})
	}
	for _, u := range l.Uplinks { // another NAT mapping towards the same hub device
		t, _ := l.Tunnel(u.Tunnel)
		cfg.Paths = append(cfg.Paths, RelayPath{
			Name: u.Name, Listen: u.RelayAddress,
			Out: fmt.Sprintf("198.19.%d.1", u.index), Hub: fmt.Sprintf("198.19.%d.2:%d", u.index, t.HubListenPort),
		})
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(l.Dir, "relay.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return err
	}
	p, err := startChild(l.WanNamespace, "relay", []string{envRelayConfig + "=" + cfgPath, envPrefix + "=" + l.Config.Prefix},
		filepath.Join(l.Dir, "relay.log"), detached)
	if err != nil {
		return err
	}
	l.procs = append(l.procs, p)
	l.Pids = append(l.Pids, p.Pid())
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := RelayControl(l.RelayControl, "", nil, false); err == nil {
			return nil
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.Log)
			return fmt.Errorf("relay exited: %s", b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("relay control socket not answering after 5s")
		}
	}
}

// waitHandshakes nudges every tunnel with a datagram and waits until both
// ends report a handshake.
func (l *Lab) waitHandshakes(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	nudged := time.Time{}
	for {
		var pending []string
		for _, t := range l.Tunnels {
			ok, err := l.handshaked(t)
			if err != nil {
				return err
			}
			if !ok {
				pending = append(pending, t.Name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Since(nudged) > time.Second {
			for _, name := range pending {
				t, _ := l.Tunnel(name)
				_ = InNetns(t.Namespace, func() error { return nudge(t.RemoteAddress) })
			}
			nudged = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no handshake within %s on: %s (logs in %s)", timeout, strings.Join(pending, ", "), l.Dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func nudge(addr string) error {
	c, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WriteTo([]byte("wgpulse-lab"), &net.UDPAddr{IP: net.ParseIP(addr), Port: 9})
	return err
}

func (l *Lab) handshaked(t Tunnel) (bool, error) {
	ok := true
	for _, end := range []struct{ ns, dev string }{{t.Namespace, t.Device}, {t.HubNamespace, t.HubDevice}} {
		hs, err := lastHandshake(end.ns, end.dev)
		if err != nil {
			return false, err
		}
		ok = ok && !hs.IsZero()
	}
	return ok, nil
}

func lastHandshake(ns, dev string) (time.Time, error) {
	var hs time.Time
	err := withWG(ns, func(c *wgctrl.Client) error {
		d, err := c.Device(dev)
		if err != nil {
			return fmt.Errorf("reading %s in %s: %w", dev, ns, err)
		}
		for _, p := range d.Peers {
			if p.LastHandshakeTime.Unix() > 0 {
				hs = p.LastHandshakeTime
			}
		}
		return nil
	})
	return hs, err
}

// Tunnel returns the named tunnel.
func (l *Lab) Tunnel(name string) (Tunnel, error) {
	for _, t := range l.Tunnels {
		if t.Name == name {
			return t, nil
		}
	}
	names := make([]string, len(l.Tunnels))
	for i, t := range l.Tunnels {
		names[i] = t.Name
	}
	return Tunnel{}, fmt.Errorf("unknown path %q: the lab's paths are %s", name, strings.Join(names, ", "))
}

// Site returns the named site.
func (l *Lab) Site(name string) (Site, error) {
	for _, s := range l.Sites {
		if s.Name == name {
			return s, nil
		}
	}
	return Site{}, fmt.Errorf("unknown site %q: the lab's sites are %s", name, strings.Join(l.Config.Sites, ", "))
}

// Fault changes the faults of one path (a tunnel, or a second uplink) while
// the lab runs. Bad input is rejected before anything changes. `down` also
// takes the relay's end of the path's uplink down, so the underlay target
// stops answering too, as on a real uplink failure.
func (l *Lab) Fault(path string, args ...string) (Faults, error) {
	wanIf, err := l.wanInterface(path)
	if err != nil {
		return Faults{}, err
	}
	change, err := ParseFaultArgs(args)
	if err != nil {
		return Faults{}, err
	}
	cur, err := RelayControl(l.RelayControl, "", nil, false)
	if err != nil {
		return Faults{}, err
	}
	next := change.Apply(cur[path])
	after, err := RelayControl(l.RelayControl, path, &next, change.Rebind)
	if err != nil {
		return Faults{}, err
	}
	if after[path].Down != cur[path].Down {
		state := map[bool]string{true: "down", false: "up"}[after[path].Down]
		if err := IP("-n", l.WanNamespace, "link", "set", wanIf, state); err != nil {
			return after[path], err
		}
	}
	return after[path], nil
}

// wanInterface is the relay's end of a path's uplink.
func (l *Lab) wanInterface(path string) (string, error) {
	if t, err := l.Tunnel(path); err == nil {
		return t.WanInterface, nil
	}
	for _, u := range l.Uplinks {
		if u.Name == path {
			return u.WanInterface, nil
		}
	}
	names := make([]string, 0, len(l.Tunnels)+len(l.Uplinks))
	for _, t := range l.Tunnels {
		names = append(names, t.Name)
	}
	for _, u := range l.Uplinks {
		names = append(names, u.Name)
	}
	return "", fmt.Errorf("unknown path %q: the lab's paths are %s", path, strings.Join(names, ", "))
}

// Status returns the tunnels with their current faults and handshakes.
func (l *Lab) Status() ([]Tunnel, error) {
	faults, err := RelayControl(l.RelayControl, "", nil, false)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(l.Tunnels)
	for i := range out {
		f := faults[out[i].Name]
		out[i].Faults = &f
		if hs, err := lastHandshake(out[i].Namespace, out[i].Device); err == nil && !hs.IsZero() {
			out[i].Handshake = hs.UTC().Format(time.RFC3339)
		}
	}
	return out, nil
}

// UplinkStatus returns the second uplinks with their current faults.
func (l *Lab) UplinkStatus() ([]Uplink, error) {
	if len(l.Uplinks) == 0 {
		return nil, nil
	}
	faults, err := RelayControl(l.RelayControl, "", nil, false)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(l.Uplinks)
	for i := range out {
		f := faults[out[i].Name]
		out[i].Faults = &f
	}
	return out, nil
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.State, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(l.Dir, "state.json"))
}

// Load opens the lab with this prefix from its state file.
func Load(prefix string) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(stateDir(prefix), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab with prefix %q is up (no %s): run `wgpulse-lab up` first", prefix, filepath.Join(stateDir(prefix), "state.json"))
	}
	if err != nil {
		return nil, err
	}
	l := &Lab{}
	if err := json.Unmarshal(b, &l.State); err != nil {
		return nil, fmt.Errorf("corrupt lab state %s: %w (wgpulse-lab down --prefix %s still cleans up)", filepath.Join(stateDir(prefix), "state.json"), err, prefix)
	}
	return l, nil
}

// Down removes everything the lab made.
func (l *Lab) Down() error {
	for _, p := range l.procs {
		p.Stop()
	}
	return DownPrefix(l.Config.Prefix, &l.State)
}

// DownPrefix removes everything a lab with this prefix made, from its state
// file when there is one and by its names otherwise: processes (found by
// their environment, so also after a crash), namespaces (their veths go with
// them), UAPI sockets and the state directory.
func DownPrefix(prefix string, st *State) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("prefix %q: want 1-6 characters a-z0-9 starting with a letter", prefix)
	}
	if st == nil {
		if l, err := Load(prefix); err == nil {
			st = &l.State
		}
	}
	var errs []error
	killLabProcesses(prefix)
	namespaces := map[string]bool{}
	if st != nil {
		for _, ns := range st.Namespaces {
			namespaces[ns] = true
		}
	}
	if entries, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix+"-") {
				namespaces[e.Name()] = true
			}
		}
	}
	// Host ends of management veths: deleted explicitly, because the kernel
	// tears namespaces down asynchronously.
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, prefix+"m") && isLabMgmtLink(prefix, i.Name, st) {
				if err := IP("link", "del", i.Name); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for ns := range namespaces {
		if err := DelNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if st != nil {
		for _, t := range st.Tunnels {
			for _, dev := range []string{t.Device, t.HubDevice} {
				_ = os.Remove(filepath.Join("/var/run/wireguard", dev+".sock"))
			}
		}
	}
	removeDeadSockets(prefix)
	if err := os.RemoveAll(stateDir(prefix)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isLabMgmtLink tells whether a host link is one of this lab's management
// veths: named "<prefix>m<site>" for a site in the state, or, without a
// state file, any veth named like one.
func isLabMgmtLink(prefix, name string, st *State) bool {
	site := strings.TrimPrefix(name, prefix+"m")
	if st != nil {
		return site == "hub" || slices.Contains(st.Config.Sites, site)
	}
	out, err := run("ip", "-d", "link", "show", name)
	return err == nil && siteRE.MatchString(site) && strings.Contains(out, "veth")
}

// killLabProcesses ends every process whose environment carries this lab's
// prefix: SIGTERM, then SIGKILL for those still there after 3 s.
func killLabProcesses(prefix string) {
	find := func() []int {
		var pids []int
		entries, _ := os.ReadDir("/proc")
		marker := []byte(envPrefix + "=" + prefix + "\x00")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
			if err == nil && slices.ContainsFunc(strings.SplitAfter(string(env), "\x00"), func(kv string) bool { return kv == string(marker) }) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	pids := find()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	for deadline := time.Now().Add(3 * time.Second); len(pids) > 0 && time.Now().Before(deadline); pids = find() {
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// removeDeadSockets removes UAPI sockets named like this lab's devices that
// nothing listens on any more (left by a killed wireguard-go).
func removeDeadSockets(prefix string) {
	entries, _ := os.ReadDir("/var/run/wireguard")
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) || !strings.HasSuffix(e.Name(), ".sock") {
			continue
		}
		p := filepath.Join("/var/run/wireguard", e.Name())
		if c, err := net.DialTimeout("unix", p, 200*time.Millisecond); err == nil {
			c.Close()
			continue
		}
		_ = os.Remove(p)
	}
}

func kernelWireGuardAvailable(prefix string) error {
	ns := prefix + "-probe"
	if err := AddNetns(ns); err != nil {
		return err
	}
	defer DelNetns(ns)
	if err := IP("-n", ns, "link", "add", "wgprobe", "type", "wireguard"); err != nil {
		return fmt.Errorf("--kernel: this kernel has no WireGuard module (%v); run without --kernel to use userspace wireguard-go", err)
	}
	return nil
}

// stopSiteDevice stops the wireguard-go of a tunnel's site end (its device
// goes, with its address and routes) and returns what it was.
func (l *Lab) stopSiteDevice(tunnel string) (Tunnel, *wgtypes.Device, error) {
	t, err := l.Tunnel(tunnel)
	if err != nil {
		return t, nil, err
	}
	var dev *wgtypes.Device
	if err := withWG(t.Namespace, func(c *wgctrl.Client) (err error) { dev, err = c.Device(t.Device); return err }); err != nil {
		return t, nil, fmt.Errorf("reading %s before stopping it: %w", t.Device, err)
	}
	i := slices.IndexFunc(l.procs, func(p *Proc) bool { return p.Name == t.Device })
	if i < 0 {
		return t, nil, fmt.Errorf("%s was not started by this process (a detached lab): cannot stop it", t.Device)
	}
	p := l.procs[i]
	p.Stop()
	l.procs = slices.Delete(l.procs, i, i+1)
	l.Pids = slices.DeleteFunc(l.Pids, func(pid int) bool { return pid == p.Pid() })
	for deadline := time.Now().Add(5 * time.Second); IP("-n", t.Namespace, "link", "show", t.Device) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return t, nil, fmt.Errorf("%s still exists 5s after its wireguard-go stopped", t.Device)
		}
	}
	return t, dev, nil
}

// Release hands the site's end of a tunnel to wg-quick: the lab's device
// stops, and the wg-quick configuration that brings it back (same keys,
// listen port, address, MTU and peer, with the given Table: auto, off or a
// number) is returned, for `wg-quick up <dir>/<device>.conf`. The lab no
// longer owns the device; whoever brings it up takes it down.
func (l *Lab) Release(tunnel, table string) (string, error) {
	t, dev, err := l.stopSiteDevice(tunnel)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nListenPort = %d\nAddress = %s/24\nMTU = %d\nTable = %s\n", dev.PrivateKey, dev.ListenPort, t.LocalAddress, t.MTU, table)
	for _, pr := range dev.Peers {
		fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\n", pr.PublicKey)
		if pr.Endpoint != nil {
			fmt.Fprintf(&b, "Endpoint = %s\n", pr.Endpoint)
		}
		var allowed []string
		for _, a := range pr.AllowedIPs {
			allowed = append(allowed, a.String())
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(allowed, ", "))
		if ka := pr.PersistentKeepaliveInterval; ka > 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", int(ka.Seconds()))
		}
	}
	return b.String(), nil
}

// Recreate restarts the site's end of a tunnel as `systemctl restart
// wg-quick@<dev>` does: the device is deleted and created again under the
// same name (a new ifindex), with the same keys, listen port and peer, and
// its address and route added again. Only for a lab this process started.
func (l *Lab) Recreate(tunnel string) error {
	t, dev, err := l.stopSiteDevice(tunnel)
	if err != nil {
		return err
	}
	if err := l.startDevice(t.Namespace, t.Device, false); err != nil {
		return err
	}
	cfg := wgtypes.Config{PrivateKey: &dev.PrivateKey, ListenPort: &dev.ListenPort, ReplacePeers: true}
	for _, pr := range dev.Peers {
		ka := pr.PersistentKeepaliveInterval
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: pr.PublicKey, Endpoint: pr.Endpoint, ReplaceAllowedIPs: true,
			AllowedIPs: pr.AllowedIPs, PersistentKeepaliveInterval: &ka})
	}
	if err := configure(t.Namespace, t.Device, cfg); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"-n", t.Namespace, "addr", "add", t.LocalAddress + "/24", "dev", t.Device},
		{"-n", t.Namespace, "route", "add", l.HubLAN, "dev", t.Device, "metric", strconv.Itoa(t.RouteMetric)},
	} {
		if err := IP(s...); err != nil {
			return err
		}
	}
	return nil
}
