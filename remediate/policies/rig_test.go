package policies_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// fakeRoutes is a fake of the netlink transport: links and a main routing
// table with the kernel's keys (destination, metric, table) and matching on
// delete (the fields given must match).
type fakeRoutes struct {
	mu      sync.Mutex
	links   map[string]int
	mtus    map[string]int // link MTU, 1420 unless set
	table   []netlink.Route
	calls   []string // every add and del, in order
	failAdd error
	failDel error
	failGet error             // every route dump fails (a netlink error)
	rule    map[string]string // prefix -> device: an ip rule that sends it elsewhere (RouteGet only)
	dumps   int               // route dumps served
	// hang makes a route dump for a destination wait until the channel is
	// closed (a netlink dump on a busy table); hung says one is waiting.
	hang map[string]chan struct{}
	hung chan string
}

func newFakeRoutes(links ...string) *fakeRoutes {
	f := &fakeRoutes{links: map[string]int{}}
	for i, l := range links {
		f.links[l] = i + 1
	}
	return f
}

func (f *fakeRoutes) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.links[name]
	if !ok {
		return nil, netlink.LinkNotFoundError{}
	}
	mtu := 1420
	if m, ok := f.mtus[name]; ok {
		mtu = m
	}
	return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name, Index: i, MTU: mtu}}, nil
}

// LinkList is the collector's view of the links (their MTUs).
func (f *fakeRoutes) LinkList() ([]netlink.Link, error) {
	f.mu.Lock()
	names := make([]string, 0, len(f.links))
	for n := range f.links {
		names = append(names, n)
	}
	f.mu.Unlock()
	var out []netlink.Link
	for _, n := range names {
		l, _ := f.LinkByName(n)
		out = append(out, l)
	}
	return out, nil
}

func (f *fakeRoutes) linkMTU(name string) int {
	l, err := f.LinkByName(name)
	if err != nil {
		return 0
	}
	return l.Attrs().MTU
}

func (f *fakeRoutes) LinkByIndex(index int) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, i := range f.links {
		if i == index {
			return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: n, Index: i}}, nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}

func (f *fakeRoutes) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.mu.Lock()
	f.dumps++
	if f.failGet != nil {
		defer f.mu.Unlock()
		return nil, f.failGet
	}
	if filter.Dst != nil && f.hang[filter.Dst.String()] != nil {
		release := f.hang[filter.Dst.String()]
		f.mu.Unlock()
		select {
		case f.hung <- filter.Dst.String():
		default:
		}
		<-release
		f.mu.Lock()
	}
	defer f.mu.Unlock()
	var out []netlink.Route
	for _, r := range f.table {
		if (family == unix.AF_INET) != (r.Dst.IP.To4() != nil) {
			continue
		}
		if mask&netlink.RT_FILTER_DST != 0 && r.Dst.String() != filter.Dst.String() {
			continue
		}
		if mask&netlink.RT_FILTER_TABLE != 0 && r.Table != filter.Table {
			continue
		}
		if mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol {
			continue
		}
		if mask&netlink.RT_FILTER_OIF != 0 && r.LinkIndex != filter.LinkIndex {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeRoutes) RouteAdd(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("add %s metric %d", r.Dst, r.Priority))
	if f.failAdd != nil {
		return f.failAdd
	}
	for _, have := range f.table {
		if have.Dst.String() == r.Dst.String() && have.Priority == r.Priority && have.Table == r.Table {
			return syscall.EEXIST
		}
	}
	f.table = append(f.table, *r)
	return nil
}

func (f *fakeRoutes) RouteReplace(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("replace %s metric %d mtu %d", r.Dst, r.Priority, r.MTU))
	for i, have := range f.table {
		if have.Dst.String() == r.Dst.String() && have.Priority == r.Priority && have.Table == r.Table {
			f.table[i] = *r
			return nil
		}
	}
	f.table = append(f.table, *r)
	return nil
}

func (f *fakeRoutes) LinkSetMTU(l netlink.Link, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("mtu %s %d", l.Attrs().Name, mtu))
	if f.mtus == nil {
		f.mtus = map[string]int{}
	}
	f.mtus[l.Attrs().Name] = mtu
	return nil
}

func (f *fakeRoutes) RouteDel(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("del %s metric %d", r.Dst, r.Priority))
	if f.failDel != nil {
		return f.failDel
	}
	for i, have := range f.table {
		if have.Dst.String() == r.Dst.String() && have.Priority == r.Priority && have.Table == r.Table &&
			(r.LinkIndex == 0 || r.LinkIndex == have.LinkIndex) && (r.Protocol == 0 || r.Protocol == have.Protocol) {
			f.table = slices.Delete(f.table, i, i+1)
			return nil
		}
	}
	return syscall.ESRCH
}

// operatorRoute adds a route as an operator would (`ip route add`, proto static).
func (f *fakeRoutes) operatorRoute(prefix, dev string, metric int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, dst, _ := net.ParseCIDR(prefix)
	f.table = append(f.table, netlink.Route{Dst: dst, LinkIndex: f.links[dev], Priority: metric, Protocol: 4, Table: unix.RT_TABLE_MAIN})
}

// RouteGet is the main table's longest match (lowest metric among equals),
// unless a rule sends the address elsewhere.
func (f *fakeRoutes) RouteGet(dst net.IP) ([]netlink.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, _ := netip.AddrFromSlice(dst)
	a = a.Unmap()
	for p, dev := range f.rule {
		if netip.MustParsePrefix(p).Contains(a) {
			return []netlink.Route{{LinkIndex: f.links[dev]}}, nil
		}
	}
	var best *netlink.Route
	bestBits := -1
	for i, r := range f.table {
		if r.Dst == nil || !r.Dst.Contains(dst) {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		if bits > bestBits || (bits == bestBits && r.Priority < best.Priority) {
			best, bestBits = &f.table[i], bits
		}
	}
	if best == nil {
		return nil, syscall.ENETUNREACH
	}
	return []netlink.Route{*best}, nil
}

func (f *fakeRoutes) dumpCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dumps
}

// deleteOurs removes our routes behind the remediator's back (a conflict).
func (f *fakeRoutes) deleteOurs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table = slices.DeleteFunc(f.table, func(r netlink.Route) bool { return r.Protocol == remediate.DefaultRouteProtocol })
}

// show renders the table like `ip route`, sorted.
func (f *fakeRoutes) show() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := map[int]string{}
	for n, i := range f.links {
		names[i] = n
	}
	var out []string
	for _, r := range f.table {
		line := fmt.Sprintf("%s dev %s metric %d proto %d", r.Dst, names[r.LinkIndex], r.Priority, r.Protocol)
		if r.MTU > 0 {
			line += fmt.Sprintf(" mtu %d", r.MTU)
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return out
}

func (f *fakeRoutes) writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeWG is a fake of the wgctrl transport: each device has one peer whose
// AllowedIPs hold the far end of its tunnel, with a settable handshake.
type fakeWG struct {
	mu        sync.Mutex
	peers     map[string]string // device -> peer /32
	handshake map[string]time.Time
	fail      map[string]bool
	endpoint  map[string]netip.AddrPort // device -> the peer's endpoint
	allowed   map[string][]string       // device -> more AllowedIPs of its peer
	rx        map[string]int64          // device -> bytes received from its peer
	tx        map[string]int64          // device -> bytes sent to its peer
	keepalive map[string]time.Duration
	more      map[string][]string // device -> the /32 of further peers (keys from moreKey)
	writes    []string            // ConfigureDevice calls
}

// moreKey is the public key of a device's further peer i.
func (f *fakeWG) moreKey(device string, i int) wgtypes.Key {
	k := f.key(device)
	k[2] = byte(i + 1)
	return k
}

// key is the public key of the one peer of a device.
func (f *fakeWG) key(device string) wgtypes.Key {
	var k wgtypes.Key
	k[0] = byte(len(device))
	k[1] = device[len(device)-1]
	return k
}

func (f *fakeWG) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[name] {
		return nil, fmt.Errorf("reading %s: UAPI socket not answering", name)
	}
	if f.peers[name] == "" {
		return &wgtypes.Device{Name: name, Type: wgtypes.Userspace}, nil
	}
	_, ip, _ := net.ParseCIDR(f.peers[name] + "/32")
	p := wgtypes.Peer{PublicKey: f.key(name), AllowedIPs: []net.IPNet{*ip}, LastHandshakeTime: f.handshake[name],
		PersistentKeepaliveInterval: f.keepalive[name], ReceiveBytes: f.rx[name], TransmitBytes: f.tx[name]}
	for _, a := range f.allowed[name] {
		_, n, _ := net.ParseCIDR(a)
		p.AllowedIPs = append(p.AllowedIPs, *n)
	}
	if ep, ok := f.endpoint[name]; ok {
		p.Endpoint = net.UDPAddrFromAddrPort(ep)
	}
	peers := []wgtypes.Peer{p}
	for i, a := range f.more[name] {
		_, ip, _ := net.ParseCIDR(a + "/32")
		peers = append(peers, wgtypes.Peer{PublicKey: f.moreKey(name, i), AllowedIPs: []net.IPNet{*ip}, LastHandshakeTime: f.handshake[name]})
	}
	return &wgtypes.Device{Name: name, Type: wgtypes.Userspace, Peers: peers}, nil
}

func (f *fakeWG) ConfigureDevice(name string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cfg.PrivateKey != nil || cfg.ReplacePeers || cfg.ListenPort != nil {
		return fmt.Errorf("the remediator must change one peer setting only, got %+v", cfg)
	}
	for _, p := range cfg.Peers {
		if !p.UpdateOnly || p.PublicKey != f.key(name) || p.Remove || p.ReplaceAllowedIPs {
			return fmt.Errorf("unexpected peer change %+v", p)
		}
		if p.Endpoint != nil {
			f.endpoint[name] = p.Endpoint.AddrPort()
			f.writes = append(f.writes, "endpoint "+p.Endpoint.String())
		}
		if p.PersistentKeepaliveInterval != nil {
			f.keepalive[name] = *p.PersistentKeepaliveInterval
			f.writes = append(f.writes, "keepalive "+p.PersistentKeepaliveInterval.String())
		}
	}
	return nil
}

func (f *fakeWG) endpointOf(device string) netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.endpoint[device]
}

func (f *fakeWG) setEndpoint(device string, ep netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endpoint[device] = ep
}

func (f *fakeWG) configured() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.writes)
}

// fakeFirewall is a fake of the nftables transport: wgpulse's table as the
// clamps it holds (nil: no table), and every write.
type fakeFirewall struct {
	mu     sync.Mutex
	clamps []remediate.MSSClamp
	writes int
}

func (f *fakeFirewall) SetMSSClamps(c []remediate.MSSClamp) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	f.clamps = slices.Clone(c)
	return nil
}

func (f *fakeFirewall) MSSClamps() ([]remediate.MSSClamp, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.clamps), nil
}

func (f *fakeFirewall) table() []remediate.MSSClamp {
	c, _ := f.MSSClamps()
	return c
}

type noLinks struct{}

func (noLinks) LinkList() ([]netlink.Link, error) { return nil, nil }

// rig is one node: a fake network answering the two paths' targets, the
// real prober and collector on fake transports, and the real remediator
// with a fake routing table.
type rig struct {
	t       *testing.T
	cfg     policies.Config
	net     *probertest.Net
	wg      *fakeWG
	routes  *fakeRoutes
	prober  *prober.Prober
	col     *collector.Collector
	rem     *remediate.Remediator
	spans   *tracetest.SpanRecorder
	logs    *syncBuffer
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	faults  map[string]func(n int) probertest.Reply // by target address
	openErr map[string]error                        // by device
	pmtu    sync.Map                                // target address -> largest inner packet that passes (default 1420)
	// proberInterval of the prober's own targets (0: 1 s).
	proberInterval time.Duration
	sim            chan struct{}      // closed at cleanup: simulations of the test end
	fw             *fakeFirewall      // nftables: wgpulse's table
	extra          []remediate.Policy // policies of the test's own, run beside failover
	stopped        bool
}

// pathMTU is the fake of the PMTU transport: a DF probe passes up to the
// target's path limit; above the device's MTU the local stack refuses it.
func (r *rig) pathMTU(ctx context.Context, t prober.Target, size int, timeout time.Duration, _ bool) (bool, bool, error) {
	if mtu := r.routes.linkMTU(t.Device); mtu > 0 && size > mtu {
		return false, true, nil
	}
	limit := 1420
	if v, ok := r.pmtu.Load(t.Address.String()); ok {
		limit = v.(int)
	}
	if size <= limit {
		time.Sleep(time.Millisecond)
		return true, false, nil
	}
	select {
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	return false, false, nil
}

const (
	primaryDev, backupDev       = "wg-p", "wg-b"
	primaryTarget, backupTarget = "10.200.1.1", "10.201.1.1"
	lan                         = "10.50.0.0/16"
)

// group is a failover group of the rig's two paths with the given profile.
func group(profile string) failover.Group {
	return failover.Group{
		Name: "dc1-to-aws", Profile: profile, Prefixes: []string{lan},
		Primary: failover.Path{Device: primaryDev, Target: primaryTarget},
		Backup:  failover.Path{Device: backupDev, Target: backupTarget},
	}
}

// The dual-WAN node: one tunnel device whose peer is reached over two
// uplinks, each with an underlay target probed outside the tunnel.
const (
	tunnelDev, tunnelTarget = "wg0", "10.200.9.1"
	uplink1Dev, uplink2Dev  = "eth1", "eth2"
	underlay1, underlay2    = "198.18.1.1", "198.19.1.1"
)

var (
	uplink1 = netip.MustParseAddrPort("198.18.1.1:51821")
	uplink2 = netip.MustParseAddrPort("198.19.1.1:51821")
)

// dualWAN is an endpoint-mode group for the rig's tunnel device.
func dualWAN(r *rig, profile string) failover.Group {
	return failover.Group{
		Name: "dc1-dual-wan", Mode: "endpoint", Profile: profile, Device: tunnelDev, Peer: r.wg.key(tunnelDev).String(), Target: tunnelTarget,
		Primary: failover.Path{Endpoint: uplink1.String(), UnderlayTarget: underlay1, UnderlayDevice: uplink1Dev},
		Backup:  failover.Path{Endpoint: uplink2.String(), UnderlayTarget: underlay2, UnderlayDevice: uplink2Dev},
	}
}

// wan makes the rig's network behave like two uplinks: an uplink that is
// down drops its underlay target's probes and the tunnel's while the
// peer's endpoint points at it.
func (r *rig) wan(down1, down2 *atomic.Bool) {
	r.fault(underlay1, func(int) probertest.Reply {
		if down1.Load() {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: time.Millisecond}
	})
	r.fault(underlay2, func(int) probertest.Reply {
		if down2.Load() {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: time.Millisecond}
	})
	r.fault(tunnelTarget, func(int) probertest.Reply {
		ep := r.wg.endpointOf(tunnelDev)
		if (ep == uplink1 && down1.Load()) || (ep == uplink2 && down2.Load()) {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: 2 * time.Millisecond}
	})
}

func config(t *testing.T, mode remediate.Mode, groups ...failover.Group) policies.Config {
	cfg := policies.DefaultConfig()
	cfg.Mode = mode
	cfg.StateFile = t.TempDir() + "/remediate.json"
	cfg.Failover = groups
	return cfg
}

// newRig builds a node with the operator's routes (primary metric 100,
// backup metric 200) and both paths answering in 1 ms.
func newRig(t *testing.T, cfg policies.Config) *rig {
	t.Helper()
	r := &rig{t: t, cfg: cfg, routes: newFakeRoutes(primaryDev, backupDev), faults: map[string]func(int) probertest.Reply{}, logs: &syncBuffer{},
		sim: make(chan struct{})}
	r.routes.operatorRoute(lan, primaryDev, 100)
	r.routes.operatorRoute(lan, backupDev, 200)
	now := time.Now()
	r.wg = &fakeWG{peers: map[string]string{primaryDev: primaryTarget, backupDev: backupTarget, tunnelDev: tunnelTarget},
		handshake: map[string]time.Time{primaryDev: now, backupDev: now, tunnelDev: now}, fail: map[string]bool{},
		endpoint: map[string]netip.AddrPort{tunnelDev: uplink1}, keepalive: map[string]time.Duration{}, rx: map[string]int64{}, tx: map[string]int64{},
		allowed: map[string][]string{backupDev: {lan}}} // the backup's far end allows the LAN it carries on failover
	return r
}

// start runs the node; with a previous rig's routes it is a restart.
func (r *rig) start() {
	r.t.Helper()
	r.net = probertest.New(func(_ string, dst netip.Addr, n int) probertest.Reply {
		r.mu.Lock()
		f := r.faults[dst.String()]
		r.mu.Unlock()
		if f != nil {
			return f(n)
		}
		return probertest.Reply{Delay: time.Millisecond}
	})
	for dev, err := range r.openErr {
		r.net.SetOpenError(dev, err)
	}
	pcfg := prober.DefaultConfig()
	pcfg.PMTU = prober.PMTUConfig{Enabled: true, Min: 1200, Interval: time.Minute, Confirm: 5 * time.Second}
	if r.proberInterval > 0 {
		pcfg.Interval, pcfg.Window = r.proberInterval, 10*r.proberInterval
	}
	logger := slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	r.prober, err = prober.New(pcfg, logger, prober.Options{Open: r.net.Open, PMTUProbe: r.pathMTU})
	if err != nil {
		r.t.Fatal(err)
	}
	r.col, err = collector.New(collector.Config{PollInterval: time.Second, Devices: []string{primaryDev, backupDev, tunnelDev}}, logger,
		collector.Options{Client: r.wg, Links: r.routes})
	if err != nil {
		r.t.Fatal(err)
	}
	r.spans = tracetest.NewSpanRecorder()
	if r.fw == nil {
		r.fw = &fakeFirewall{}
	}
	opts := remediate.Options{Snapshots: r.col, Prober: r.prober, Routes: r.routes, Peers: r.wg, Firewall: r.fw, Tracer: newTracerProvider(r.spans)}
	if r.extra == nil {
		r.rem, err = policies.New(r.cfg, logger, opts)
	} else { // the failover policy and the test's own
		r.rem, err = remediate.New(r.cfg.Config, append([]remediate.Policy{failover.New(r.cfg.Failover)}, r.extra...), logger, opts)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done, r.stopped = cancel, make(chan struct{}), false
	var wg sync.WaitGroup
	wg.Go(func() { r.col.Run(ctx) })
	wg.Go(func() { r.prober.Run(ctx) })
	snaps := r.col.Subscribe(ctx)
	wg.Go(func() { // the agent's prober component: auto-targets from every snapshot
		for s := range snaps {
			r.prober.SetTargets(prober.OwnTargets, prober.Targets(s, r.prober.Config()))
		}
	})
	wg.Go(func() { r.rem.Run(ctx) })
	go func() { wg.Wait(); close(r.done) }()
	r.t.Cleanup(r.stop)
}

// stop ends the node cleanly (SIGTERM) and waits for it. Every test of
// the rig checks on the way that the last decisions' reason labels are
// codes from a small set, never prose.
func (r *rig) stop() {
	if r.stopped {
		return
	}
	r.stopped = true
	r.cancel()
	<-r.done
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.rem)
	mfs, err := reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "wgpulse_remediation_last_decision_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && !reasonCode.MatchString(l.GetValue()) {
					r.t.Errorf("last decision's reason label %q is not a code", l.GetValue())
				}
			}
		}
	}
}

var reasonCode = regexp.MustCompile(`^[a-z][a-z_]{0,30}$`)

// fault sets how a target answers: nil restores 1 ms replies.
func (r *rig) fault(target string, f func(n int) probertest.Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults[target] = f
}

func dead(int) probertest.Reply { return probertest.Reply{Drop: true} }

// lossySeconds drops every probe sent in the given seconds of each period:
// a loss ratio of len(drop)/period over regular probes (1/s), with runs no
// longer than the probes that fit in one second.
func lossySeconds(period int64, drop ...int64) func(int) probertest.Reply {
	return func(int) probertest.Reply {
		if slices.Contains(drop, time.Now().Unix()%period) {
			return probertest.Reply{Drop: true}
		}
		return probertest.Reply{Delay: time.Millisecond}
	}
}

// run lets fake time pass.
func (r *rig) run(d time.Duration) {
	time.Sleep(d)
	waitIdle()
}

func waitIdle() { synctestWait() }

// ours is our route for the LAN prefix via the backup, as `ip route` shows it.
const ours = "10.50.0.0/16 dev wg-b metric 10 proto 117"

// failedOver is a rig on cfg whose primary died at start, once it is on
// the backup.
func failedOver(t *testing.T, cfg policies.Config) *rig {
	t.Helper()
	r := newRig(t, cfg)
	r.fault(primaryTarget, dead)
	r.start()
	waitFor(t, 5*time.Second, "switch", r.onBackup)
	return r
}

// reload applies cfg to the running node, as SIGHUP does.
func (r *rig) reload(cfg policies.Config) {
	r.t.Helper()
	if err := policies.Apply(context.Background(), r.rem, cfg); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) onBackup() bool { return slices.Contains(r.routes.show(), ours) }

// auditLine is one "remediation decision" log line.
type auditLine struct {
	Group, Peer, Action, From, To, Reason, Mode, Result, Suppressed string
}

func (r *rig) audits() []auditLine {
	var out []auditLine
	s := bufio.NewScanner(strings.NewReader(r.logs.String()))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		var m map[string]any
		if json.Unmarshal(s.Bytes(), &m) != nil || m["msg"] != "remediation decision" {
			continue
		}
		str := func(k string) string { v, _ := m[k].(string); return v }
		out = append(out, auditLine{str("group"), str("peer"), str("action"), str("from"), str("to"), str("reason"), str("mode"), str("result"), str("suppressed")})
	}
	return out
}

// taken are the audited actions that were carried out or dry-run.
func (r *rig) taken() []auditLine {
	return slices.DeleteFunc(r.audits(), func(a auditLine) bool { return a.Result == "suppressed" })
}

func (r *rig) suppressed(reason string) []auditLine {
	return slices.DeleteFunc(r.audits(), func(a auditLine) bool { return a.Suppressed != reason })
}

// metric returns the value of one series of the remediator's metrics.
func (r *rig) metric(name string, labels map[string]string) float64 {
	r.t.Helper()
	v, ok := r.lookup(name, labels)
	if !ok {
		r.t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

// has says whether the remediator exports a series of name with labels.
func (r *rig) has(name string, labels map[string]string) bool {
	r.t.Helper()
	_, ok := r.lookup(name, labels)
	return ok
}

func (r *rig) lookup(name string, labels map[string]string) (float64, bool) {
	r.t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.rem)
	mfs, err := reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func fmtSscanf(s, format string, a ...any) (int, error) { return fmt.Sscanf(s, format, a...) }

// status is the failover policy's part of the remediator's status.
func (r *rig) status() failover.Status {
	r.t.Helper()
	st, err := failover.StatusOf(r.rem.Status())
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}
