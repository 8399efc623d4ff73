package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector/stream"
)

// WGClient is the part of wgctrl the collector uses. *wgctrl.Client reads
// kernel devices over generic netlink and userspace devices over UAPI.
type WGClient interface {
	Device(name string) (*wgtypes.Device, error)
}

// LinkHandle is the part of a netlink handle the collector uses: listing
// links finds kernel WireGuard devices and every link's MTU.
type LinkHandle interface {
	LinkList() ([]netlink.Link, error)
}

var (
	_ WGClient   = (*wgctrl.Client)(nil)
	_ LinkHandle = (*netlink.Handle)(nil)
)

// UAPIDir is where userspace WireGuard implementations put their sockets.
const UAPIDir = "/var/run/wireguard"

// Options are the transports of a Collector. Zero fields get the real ones.
type Options struct {
	Client WGClient
	Links  LinkHandle
	// ListUAPI lists userspace device names (default: sockets in UAPIDir).
	ListUAPI func() ([]string, error)
	Now      func() time.Time
}

// Collector polls WireGuard devices, tracks per-peer endpoint changes and
// publishes Snapshots. It is also a prometheus.Collector (see metrics.go).
type Collector struct {
	logger   *slog.Logger
	client   WGClient
	links    LinkHandle
	listUAPI func() ([]string, error)
	now      func() time.Time

	mu    sync.Mutex // guards cfg and files (changed by ApplyConfig)
	cfg   Config
	files PeerFiles

	snap    atomic.Pointer[Snapshot]
	snaps   *stream.Hub[*Snapshot]
	changes *stream.Hub[Change]

	// Owned by the poll goroutine.
	polls   uint64 // numbers polls: peers not seen in the current one are forgotten
	tracks  map[string]*deviceTrack
	errKind map[string]string // device -> last logged error kind, "" = ok

	self selfMetrics
}

type deviceTrack struct {
	peers map[wgtypes.Key]*peerTrack
	// placed is how many peers the positions (peerTrack.pos) were given
	// for: the snapshot lists peers by public key, whatever order the
	// device reads in (wireguard-go's is Go map order, another on every
	// read), and the order is computed again only when the set changes.
	placed int
	read   []*peerTrack // the tracks in the read's order (scratch, kept between polls)
	last   Device       // the last successful read, carried forward while reads fail
}

type peerTrack struct {
	key        string
	endpoint   netip.AddrPort
	endpointS  string
	changes    uint64
	lastChange time.Time
	allowed    []netip.Prefix
	allowedS   []string
	seen       uint64
	pos        int // index in the snapshot's peers, by public key
	hs         HandshakeState
	hsSince    time.Time
}

// New returns a Collector for cfg. It does not poll until Run or Poll is called.
func New(cfg Config, logger *slog.Logger, opts Options) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	files, err := LoadPeerFiles(cfg.PeerNames, cfg.PeerNamesFiles)
	if err != nil {
		return nil, err
	}
	c := &Collector{
		logger:   logger,
		client:   opts.Client,
		links:    opts.Links,
		listUAPI: opts.ListUAPI,
		now:      opts.Now,
		cfg:      cfg,
		files:    files,
		tracks:   make(map[string]*deviceTrack),
		errKind:  make(map[string]string),
		self:     newSelfMetrics(),
		snaps:    stream.New[*Snapshot](stream.Policy{Latest: true}),
		changes:  stream.New[Change](stream.Policy{Key: func(v any) string { c := v.(Change); return c.Device + "|" + c.PublicKey }}),
	}
	if c.listUAPI == nil {
		c.listUAPI = listUAPISockets
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// ApplyConfig swaps the configuration (on SIGHUP). Names files are re-read.
// On error the old configuration stays in force.
func (c *Collector) ApplyConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	files, err := LoadPeerFiles(cfg.PeerNames, cfg.PeerNamesFiles)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.cfg, c.files = cfg, files
	c.mu.Unlock()
	return nil
}

// Latest returns the newest snapshot, or nil before the first poll.
func (c *Collector) Latest() *Snapshot { return c.snap.Load() }

// Subscribe returns the snapshots of polls from now on, starting with the
// newest one; a slow reader skips intermediate snapshots instead of blocking
// the poller. The channel closes when ctx ends.
func (c *Collector) Subscribe(ctx context.Context) <-chan *Snapshot {
	return c.snaps.Subscribe(ctx)
}

// SubscribeChanges returns every handshake state change from now on. It
// never blocks the poller; a reader that falls far behind gets at least the
// newest change of every peer. The channel closes when ctx ends.
func (c *Collector) SubscribeChanges(ctx context.Context) <-chan Change {
	return c.changes.Subscribe(ctx)
}

// Run polls at the configured interval until ctx is done.
func (c *Collector) Run(ctx context.Context) {
	for {
		c.Poll()
		c.mu.Lock()
		interval := c.cfg.PollInterval
		c.mu.Unlock()
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Poll reads every watched device once and publishes a new Snapshot.
// It must not be called concurrently with itself or Run.
func (c *Collector) Poll() *Snapshot {
	start := c.now()
	c.mu.Lock()
	cfg, files := c.cfg, c.files
	c.mu.Unlock()

	snap := &Snapshot{Time: start, Errors: map[string]error{}}
	mtus, kernel, linkErr := c.readLinks()
	devices, enumErr := c.deviceNames(cfg.Devices, kernel, linkErr)
	if enumErr != nil {
		snap.Errors[""] = enumErr
		c.noteError("", enumErr)
	} else {
		c.noteOK("")
	}

	c.polls++
	gen := c.polls
	for _, name := range devices {
		d, err := c.client.Device(name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				err = fmt.Errorf("device %q not found (check collector.devices and that the interface exists): %w", name, err)
			}
			snap.Errors[name] = err
			c.noteError(name, err)
			if dt := c.tracks[name]; dt != nil && dt.last.Name != "" {
				stale := dt.last
				stale.Stale = true
				snap.Devices = append(snap.Devices, stale)
			}
			continue
		}
		c.noteOK(name)
		dev := c.track(d, mtus[name], files, start, gen)
		c.tracks[name].last = dev
		snap.Devices = append(snap.Devices, dev)
	}
	// Forget tracking state of devices no longer watched or present.
	for name := range c.tracks {
		if !slices.Contains(devices, name) {
			delete(c.tracks, name)
		}
	}
	for name := range c.errKind {
		if name != "" && !slices.Contains(devices, name) {
			delete(c.errKind, name)
			c.self.up.DeleteLabelValues(name)
			c.self.errors.DeleteLabelValues(name)
		}
	}
	slices.SortFunc(snap.Devices, func(a, b Device) int { return strings.Compare(a.Name, b.Name) })

	c.self.pollDuration.Observe(c.now().Sub(start).Seconds())
	c.snap.Store(snap)
	c.snaps.Publish(snap)
	return snap
}

// track converts a wgctrl device into a Device, updating change detection.
func (c *Collector) track(d *wgtypes.Device, mtu int, files PeerFiles, now time.Time, gen uint64) Device {
	dt := c.tracks[d.Name]
	if dt == nil {
		dt = &deviceTrack{peers: make(map[wgtypes.Key]*peerTrack, len(d.Peers))}
		c.tracks[d.Name] = dt
	}
	out := Device{
		Name:          d.Name,
		Type:          deviceType(d.Type),
		PublicKey:     d.PublicKey.String(),
		ListenPort:    d.ListenPort,
		FirewallMark:  d.FirewallMark,
		MTU:           mtu,
		ReadAt:        now,
		listenPortStr: strconv.Itoa(d.ListenPort),
	}
	dt.read = slices.Grow(dt.read[:0], len(d.Peers))
	fresh := false
	for i := range d.Peers {
		p := &d.Peers[i]
		pt := dt.peers[p.PublicKey]
		if pt == nil {
			pt = &peerTrack{key: p.PublicKey.String(), hs: handshakeState(lastHandshake(p), now), hsSince: now}
			dt.peers[p.PublicKey] = pt
			fresh = true
		}
		pt.seen = gen
		dt.read = append(dt.read, pt)
	}
	if fresh || len(d.Peers) != dt.placed {
		dt.place(gen)
	}
	out.Peers = make([]Peer, dt.placed) // a key read twice is one peer, the last read
	for i := range d.Peers {
		p, pt := &d.Peers[i], dt.read[i]
		hs := lastHandshake(p)
		state := handshakeState(hs, now)
		if state != pt.hs {
			c.changes.Publish(Change{Time: now, Device: d.Name, PublicKey: pt.key, Name: files.Names[pt.key], From: pt.hs, To: state})
			pt.hs, pt.hsSince = state, now
		}
		ep := udpAddrPort(p.Endpoint)
		if ep != pt.endpoint {
			if pt.endpoint.IsValid() && ep.IsValid() {
				pt.changes++
				pt.lastChange = now
			}
			pt.endpoint = ep
			pt.endpointS = ""
			if ep.IsValid() {
				pt.endpointS = ep.String()
			}
		}
		if !sameAllowed(pt.allowed, p.AllowedIPs) {
			pt.allowed, pt.allowedS = allowedPrefixes(p.AllowedIPs)
		}
		out.Peers[pt.pos] = Peer{
			PublicKey:           pt.key,
			Name:                files.Names[pt.key],
			EndpointHost:        files.Hosts[pt.key],
			Endpoint:            ep,
			LastHandshake:       hs,
			Handshake:           pt.hs,
			HandshakeSince:      pt.hsSince,
			ReceiveBytes:        p.ReceiveBytes,
			TransmitBytes:       p.TransmitBytes,
			PersistentKeepalive: p.PersistentKeepaliveInterval,
			AllowedIPs:          pt.allowed,
			EndpointChanges:     pt.changes,
			LastEndpointChange:  pt.lastChange,
			endpointStr:         pt.endpointS,
			allowedStr:          pt.allowedS,
		}
	}
	clear(dt.read) // no track kept alive by the scratch
	return out
}

// place forgets the peers the read of generation gen did not hold and
// gives the others their positions, by public key.
func (dt *deviceTrack) place(gen uint64) {
	order := make([]*peerTrack, 0, len(dt.read))
	for k, pt := range dt.peers {
		if pt.seen != gen {
			delete(dt.peers, k)
			continue
		}
		order = append(order, pt)
	}
	slices.SortFunc(order, func(a, b *peerTrack) int { return strings.Compare(a.key, b.key) })
	for i, pt := range order {
		pt.pos = i
	}
	dt.placed = len(order)
}

// lastHandshake is p's last handshake, zero for none (WireGuard's 0, or
// a time before 1970 from a bad read).
func lastHandshake(p *wgtypes.Peer) time.Time {
	if p.LastHandshakeTime.Unix() <= 0 {
		return time.Time{}
	}
	return p.LastHandshakeTime
}

func deviceType(t wgtypes.DeviceType) string {
	if t == wgtypes.Userspace {
		return "userspace"
	}
	return "kernel"
}

func udpAddrPort(a *net.UDPAddr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func sameAllowed(have []netip.Prefix, ips []net.IPNet) bool {
	if len(have) != len(ips) {
		return false
	}
	for i := range ips {
		if prefixOf(ips[i]) != have[i] {
			return false
		}
	}
	return true
}

func prefixOf(n net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func allowedPrefixes(ips []net.IPNet) ([]netip.Prefix, []string) {
	ps := make([]netip.Prefix, len(ips))
	ss := make([]string, len(ips))
	for i := range ips {
		ps[i] = prefixOf(ips[i])
		ss[i] = ps[i].String()
	}
	return ps, ss
}

// readLinks lists links once per poll: every link's MTU, and the names of
// kernel WireGuard devices (link type "wireguard").
func (c *Collector) readLinks() (mtus map[string]int, kernel []string, err error) {
	if c.links == nil {
		return nil, nil, errors.New("no netlink handle")
	}
	links, err := c.links.LinkList()
	if err != nil {
		return nil, nil, err
	}
	mtus = make(map[string]int, len(links))
	for _, l := range links {
		a := l.Attrs()
		mtus[a.Name] = a.MTU
		if l.Type() == "wireguard" {
			kernel = append(kernel, a.Name)
		}
	}
	return mtus, kernel, nil
}

// deviceNames returns the devices to poll: the configured list, or every
// kernel WireGuard link plus every userspace UAPI socket.
func (c *Collector) deviceNames(configured, kernel []string, linkErr error) ([]string, error) {
	var errs []error
	if linkErr != nil {
		errs = append(errs, fmt.Errorf("listing network links (device MTUs unknown): %w", linkErr))
	}
	if len(configured) > 0 {
		return configured, errors.Join(errs...)
	}
	user, err := c.listUAPI()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing userspace WireGuard sockets in %s: %w", UAPIDir, err))
	}
	names := append(slices.Clip(kernel), user...)
	slices.Sort(names)
	return slices.Compact(names), errors.Join(errs...)
}

func listUAPISockets() ([]string, error) {
	entries, err := os.ReadDir(UAPIDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 && filepath.Ext(e.Name()) == ".sock" {
			names = append(names, strings.TrimSuffix(e.Name(), ".sock"))
		}
	}
	return names, nil
}

// noteError counts a failed read and logs it when the kind of failure
// changes, not on every poll.
func (c *Collector) noteError(device string, err error) {
	c.self.errors.WithLabelValues(device).Inc()
	c.self.deviceUp(device, 0)
	kind := err.Error()
	if errors.Is(err, os.ErrPermission) {
		kind = "permission"
	}
	if c.errKind[device] == kind {
		return
	}
	c.errKind[device] = kind
	switch {
	case kind == "permission":
		c.logger.Error("permission denied reading WireGuard state: run wgpulse as root or grant CAP_NET_ADMIN (kernel devices) and read/write access to "+UAPIDir+" (userspace devices)",
			"device", device, "err", err)
	case device == "":
		c.logger.Warn("cannot list WireGuard devices; polling what can be found", "err", err)
	default:
		c.logger.Warn("cannot read WireGuard device; other devices are still polled", "device", device, "err", err)
	}
}

func (c *Collector) noteOK(device string) {
	c.self.errors.WithLabelValues(device) // exported as 0 from the first poll
	if device != "" {
		c.self.deviceUp(device, 1)
	}
	if k, ok := c.errKind[device]; ok && k != "" {
		c.logger.Info("WireGuard device readable again", "device", device)
	}
	c.errKind[device] = ""
}
