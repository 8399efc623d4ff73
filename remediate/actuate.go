package remediate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// RouteHandle is the part of a netlink handle the route and link actuators
// use. *netlink.Handle is the real one; tests use a fake routing table.
type RouteHandle interface {
	LinkByName(name string) (netlink.Link, error)
	LinkByIndex(index int) (netlink.Link, error)
	LinkSetMTU(link netlink.Link, mtu int) error
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	// RouteGet is `ip route get`: where the kernel sends a packet to an
	// address, policy rules, more specific routes and VRFs included.
	RouteGet(destination net.IP) ([]netlink.Route, error)
}

var _ RouteHandle = (*netlink.Handle)(nil)

// Route is one route of the main table, as far as the remediator cares.
type Route struct {
	Prefix   netip.Prefix `json:"prefix"`
	Device   string       `json:"device"`
	Metric   int          `json:"metric"`
	Protocol int          `json:"protocol"`
	MTU      int          `json:"mtu,omitempty"` // the route's MTU attribute; 0 = the device's
}

func (r Route) String() string {
	s := fmt.Sprintf("%s dev %s metric %d proto %d", r.Prefix, r.Device, r.Metric, r.Protocol)
	if r.MTU > 0 {
		s += fmt.Sprintf(" mtu %d", r.MTU)
	}
	return s
}

// routes is the route actuator: it reads the main table for a prefix and
// adds or deletes the remediator's own routes, never another's.
type routes struct {
	h     RouteHandle
	proto int
}

// ErrNoDevice says a device named in the config does not exist.
var ErrNoDevice = errors.New("no such device")

// list returns every main-table route whose destination is exactly p.
func (r routes) list(p netip.Prefix) ([]Route, error) {
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	dst := ipNet(p)
	rs, err := r.h.RouteListFiltered(family, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes for %s: %w", p, err)
	}
	out := make([]Route, 0, len(rs))
	names := map[int]string{}
	for _, nr := range rs {
		name, ok := names[nr.LinkIndex]
		if !ok {
			if l, err := r.h.LinkByIndex(nr.LinkIndex); err == nil {
				name = l.Attrs().Name
			} else {
				name = fmt.Sprintf("if%d", nr.LinkIndex)
			}
			names[nr.LinkIndex] = name
		}
		out = append(out, Route{Prefix: p, Device: name, Metric: nr.Priority, Protocol: int(nr.Protocol), MTU: nr.MTU})
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Metric - b.Metric })
	return out, nil
}

// replace sets our route's attributes (its MTU) in place: the kernel key
// (prefix, metric) is ours, so no other route is touched.
func (r routes) replace(rt Route) error {
	nr, err := r.netlinkRoute(rt)
	if err != nil {
		return err
	}
	if err := r.h.RouteReplace(nr); err != nil {
		return fmt.Errorf("replacing %s: %w%s", rt, err, privilegeHint(err))
	}
	return nil
}

// linkMTU returns a device's MTU.
func (r routes) linkMTU(device string) (int, error) {
	l, err := r.h.LinkByName(device)
	if err != nil {
		return 0, fmt.Errorf("device %s: %w", device, ErrNoDevice)
	}
	return l.Attrs().MTU, nil
}

// setLinkMTU sets a device's MTU (the MTU policy's fallback).
func (r routes) setLinkMTU(device string, mtu int) error {
	l, err := r.h.LinkByName(device)
	if err != nil {
		return fmt.Errorf("device %s: %w", device, ErrNoDevice)
	}
	if err := r.h.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("setting the MTU of %s to %d: %w%s", device, mtu, err, privilegeHint(err))
	}
	return nil
}

// add installs our route. An identical route of ours already there (after a
// restart) is success; another route with the same prefix and metric is an
// error naming it.
func (r routes) add(rt Route) error {
	nr, err := r.netlinkRoute(rt)
	if err != nil {
		return err
	}
	err = r.h.RouteAdd(nr)
	if errors.Is(err, syscall.EEXIST) {
		have, lerr := r.list(rt.Prefix)
		if lerr == nil {
			for _, h := range have {
				if h == rt {
					return nil
				}
				if h.Metric == rt.Metric {
					return fmt.Errorf("adding %s: a route with the same prefix and metric exists (%s): pick another route_metric", rt, h)
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("adding %s: %w%s", rt, err, privilegeHint(err))
	}
	return nil
}

// privilegeHint says what to grant when the kernel refuses a route change.
func privilegeHint(err error) string {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return " (route failover needs CAP_NET_ADMIN: run as root or set AmbientCapabilities=CAP_NET_ADMIN)"
	}
	return ""
}

// del removes our route; one already gone is success.
func (r routes) del(rt Route) error {
	nr, err := r.netlinkRoute(rt)
	if errors.Is(err, ErrNoDevice) { // the device is gone, and its routes with it
		return nil
	}
	if err != nil {
		return err
	}
	if err := r.h.RouteDel(nr); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("deleting %s: %w%s", rt, err, privilegeHint(err))
	}
	return nil
}

func (r routes) netlinkRoute(rt Route) (*netlink.Route, error) {
	if rt.Protocol != r.proto {
		return nil, fmt.Errorf("refusing to change %s: not a route of protocol %d (wgpulse's)", rt, r.proto)
	}
	l, err := r.h.LinkByName(rt.Device)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, fmt.Errorf("device %s: %w", rt.Device, ErrNoDevice)
		}
		return nil, fmt.Errorf("device %s: %w", rt.Device, err)
	}
	return &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       ipNet(rt.Prefix),
		Priority:  rt.Metric,
		Protocol:  netlink.RouteProtocol(rt.Protocol),
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_LINK,
		MTU:       rt.MTU,
	}, nil
}

// deviceExists reports whether the named link exists.
func (r routes) deviceExists(name string) bool {
	_, err := r.h.LinkByName(name)
	return err == nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// listVia returns every main-table route through device.
func (r routes) listVia(device string, v6 bool) ([]Route, error) {
	l, err := r.h.LinkByName(device)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", device, ErrNoDevice)
	}
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	rs, err := r.h.RouteListFiltered(family, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes via %s: %w", device, err)
	}
	out := make([]Route, 0, len(rs))
	for _, nr := range rs {
		p := netip.PrefixFrom(netip.IPv4Unspecified(), 0) // the default route has no Dst
		if v6 {
			p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if nr.Dst != nil {
			a, ok := netip.AddrFromSlice(nr.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := nr.Dst.Mask.Size()
			p = netip.PrefixFrom(a.Unmap(), ones)
		}
		out = append(out, Route{Prefix: p, Device: device, Metric: nr.Priority, Protocol: int(nr.Protocol), MTU: nr.MTU})
	}
	return out, nil
}

// lookup is the output device of a route lookup for addr.
func (r routes) lookup(addr netip.Addr) (string, error) {
	rs, err := r.h.RouteGet(addr.AsSlice())
	if err != nil {
		return "", fmt.Errorf("route lookup for %s: %w", addr, err)
	}
	if len(rs) == 0 || rs[0].LinkIndex == 0 {
		return "", nil // unreachable, blackhole: no device
	}
	l, err := r.h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("route lookup for %s: link %d: %w", addr, rs[0].LinkIndex, err)
	}
	return l.Attrs().Name, nil
}

// listProto returns every main-table route of our protocol in a family
// (unix.AF_INET or unix.AF_INET6).
func (r routes) listProto(family int) ([]Route, error) {
	rs, err := r.h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: netlink.RouteProtocol(r.proto)},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, err
	}
	out := make([]Route, 0, len(rs))
	for _, nr := range rs {
		if nr.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(nr.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := nr.Dst.Mask.Size()
		name := fmt.Sprintf("if%d", nr.LinkIndex)
		if l, err := r.h.LinkByIndex(nr.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		out = append(out, Route{Prefix: netip.PrefixFrom(p.Unmap(), ones), Device: name, Metric: nr.Priority, Protocol: int(nr.Protocol), MTU: nr.MTU})
	}
	return out, nil
}

// PeerHandle is the part of wgctrl the peer actuator uses.
// *wgctrl.Client is the real one; tests use a fake.
type PeerHandle interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

var _ PeerHandle = (*wgctrl.Client)(nil)

// peers is the peer actuator: it changes one setting of one peer with
// UpdateOnly, never anything else of the device (keys stay untouched and
// are never read into logs).
type peers struct{ h PeerHandle }

// ErrNoPeer says the configured peer is not on the device.
var ErrNoPeer = errors.New("no such peer on the device")

// peer returns the current endpoint and keepalive of a peer.
func (p peers) peer(device string, key wgtypes.Key) (netip.AddrPort, time.Duration, error) {
	if p.h == nil {
		return netip.AddrPort{}, 0, errors.New("no wgctrl handle")
	}
	d, err := p.h.Device(device)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netip.AddrPort{}, 0, fmt.Errorf("device %s: %w", device, ErrNoDevice)
		}
		return netip.AddrPort{}, 0, fmt.Errorf("reading device %s: %w", device, err)
	}
	for _, pr := range d.Peers {
		if pr.PublicKey == key {
			var ep netip.AddrPort
			if pr.Endpoint != nil {
				a := pr.Endpoint.AddrPort()
				ep = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			}
			return ep, pr.PersistentKeepaliveInterval, nil
		}
	}
	return netip.AddrPort{}, 0, fmt.Errorf("peer %s on %s: %w", key, device, ErrNoPeer)
}

// setEndpoint points the peer at ep (UpdateOnly: nothing else changes).
func (p peers) setEndpoint(device string, key wgtypes.Key, ep netip.AddrPort) error {
	err := p.h.ConfigureDevice(device, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: key, UpdateOnly: true, Endpoint: net.UDPAddrFromAddrPort(ep)}}})
	if err != nil {
		return fmt.Errorf("setting the endpoint of peer %s on %s to %s: %w%s", key, device, ep, err, wgPrivilegeHint(err))
	}
	return nil
}

// setKeepalive sets the peer's PersistentKeepalive (0 = off).
func (p peers) setKeepalive(device string, key wgtypes.Key, d time.Duration) error {
	err := p.h.ConfigureDevice(device, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: &d}}})
	if err != nil {
		return fmt.Errorf("setting PersistentKeepalive of peer %s on %s to %s: %w%s", key, device, d, err, wgPrivilegeHint(err))
	}
	return nil
}

func wgPrivilegeHint(err error) string {
	if errors.Is(err, os.ErrPermission) {
		return " (changing WireGuard peers needs CAP_NET_ADMIN, and write access to /var/run/wireguard for userspace devices)"
	}
	return ""
}

// Kernel is what a policy may read of the kernel: the main table for one
// prefix, a link's MTU and existence, and a peer's endpoint and keepalive.
// It never writes; a policy returns Changes for that.
type Kernel interface {
	// Routes returns every main-table route whose destination is exactly p,
	// lowest metric first.
	Routes(p netip.Prefix) ([]Route, error)
	// RoutesVia returns every main-table route through device in a family.
	RoutesVia(device string, v6 bool) ([]Route, error)
	LinkMTU(device string) (int, error)
	LinkExists(device string) bool
	// Peer returns a peer's endpoint and PersistentKeepalive.
	Peer(device string, key wgtypes.Key) (netip.AddrPort, time.Duration, error)
	// Lookup is the device the kernel sends a packet to addr through (a
	// route lookup: rules, more specific routes and VRFs included).
	Lookup(addr netip.Addr) (string, error)
	// MSSClamps are the clamps in wgpulse's nftables table (nil: none).
	MSSClamps() ([]MSSClamp, error)
}

// actuators are the core's transports: the only code that writes the kernel
// or resets the prober's view of a target.
type actuators struct {
	routes   routes
	peers    peers
	prober   Prober
	firewall FirewallHandle
}

func (a actuators) Routes(p netip.Prefix) ([]Route, error) {
	if a.routes.h == nil {
		return nil, errors.New("no netlink handle (CAP_NET_ADMIN)")
	}
	return a.routes.list(p)
}
func (a actuators) RoutesVia(device string, v6 bool) ([]Route, error) {
	if a.routes.h == nil {
		return nil, errors.New("no netlink handle (CAP_NET_ADMIN)")
	}
	return a.routes.listVia(device, v6)
}
func (a actuators) LinkMTU(device string) (int, error) {
	if a.routes.h == nil {
		return 0, errors.New("no netlink handle (CAP_NET_ADMIN)")
	}
	return a.routes.linkMTU(device)
}
func (a actuators) LinkExists(device string) bool {
	return a.routes.h != nil && a.routes.deviceExists(device)
}
func (a actuators) Peer(device string, key wgtypes.Key) (netip.AddrPort, time.Duration, error) {
	return a.peers.peer(device, key)
}
func (a actuators) MSSClamps() ([]MSSClamp, error) {
	if a.firewall == nil {
		return nil, errors.New("no nftables handle")
	}
	return a.firewall.MSSClamps()
}
func (a actuators) Lookup(addr netip.Addr) (string, error) {
	if a.routes.h == nil {
		return "", errors.New("no netlink handle (CAP_NET_ADMIN)")
	}
	return a.routes.lookup(addr)
}

// A Change is one write a plan wants, carried out by the core in auto only,
// in the order the plan lists them; the first failure ends the plan.
type Change interface {
	apply(a actuators) error
	String() string
}

// AddRoutes adds routes of ours all or none: on a failure the routes added
// so far are removed again.
type AddRoutes []Route

func (c AddRoutes) apply(a actuators) error {
	for i, rt := range c {
		if err := a.routes.add(rt); err != nil {
			for _, done := range c[:i] {
				if derr := a.routes.del(done); derr != nil {
					err = errors.Join(err, fmt.Errorf("undoing: %w", derr))
				}
			}
			return err
		}
	}
	return nil
}
func (c AddRoutes) String() string { return fmt.Sprintf("add %v", []Route(c)) }

// DelRoutes deletes routes of ours (one already gone is success).
type DelRoutes []Route

func (c DelRoutes) apply(a actuators) error {
	var errs []error
	for _, rt := range c {
		errs = append(errs, a.routes.del(rt))
	}
	return errors.Join(errs...)
}
func (c DelRoutes) String() string { return fmt.Sprintf("del %v", []Route(c)) }

// ReplaceRoute changes a route of ours in place (its MTU).
type ReplaceRoute Route

func (c ReplaceRoute) apply(a actuators) error { return a.routes.replace(Route(c)) }
func (c ReplaceRoute) String() string          { return "replace " + Route(c).String() }

// SetLinkMTU sets a device's MTU.
type SetLinkMTU struct {
	Device string
	MTU    int
}

func (c SetLinkMTU) apply(a actuators) error { return a.routes.setLinkMTU(c.Device, c.MTU) }
func (c SetLinkMTU) String() string          { return fmt.Sprintf("mtu %s %d", c.Device, c.MTU) }

// SetEndpoint points one peer at an endpoint (UpdateOnly).
type SetEndpoint struct {
	Device   string
	Peer     wgtypes.Key
	Endpoint netip.AddrPort
}

func (c SetEndpoint) apply(a actuators) error {
	return a.peers.setEndpoint(c.Device, c.Peer, c.Endpoint)
}
func (c SetEndpoint) String() string {
	return fmt.Sprintf("endpoint of %s on %s = %s", c.Peer, c.Device, c.Endpoint)
}

// SetKeepalive sets one peer's PersistentKeepalive (UpdateOnly; 0 = off).
type SetKeepalive struct {
	Device    string
	Peer      wgtypes.Key
	Keepalive time.Duration
}

func (c SetKeepalive) apply(a actuators) error {
	return a.peers.setKeepalive(c.Device, c.Peer, c.Keepalive)
}
func (c SetKeepalive) String() string {
	return fmt.Sprintf("keepalive of %s on %s = %s", c.Peer, c.Device, c.Keepalive)
}

// SetMSSClamps makes wgpulse's nftables table hold exactly these clamps
// (empty: the table goes), in one batch.
type SetMSSClamps []MSSClamp

func (c SetMSSClamps) apply(a actuators) error {
	if a.firewall == nil {
		return errors.New("no nftables handle")
	}
	return a.firewall.SetMSSClamps(c)
}
func (c SetMSSClamps) String() string {
	if len(c) == 0 {
		return "nft delete table inet " + MSSTable
	}
	return fmt.Sprintf("nft table inet %s: MSS clamps %v", MSSTable, []MSSClamp(c))
}

// ResearchPMTU asks the prober to search the path MTU of targets again (a
// device MTU change moved the search's ceiling).
type ResearchPMTU []string

func (c ResearchPMTU) apply(a actuators) error {
	for _, k := range c {
		a.prober.ResearchPMTU(k)
	}
	return nil
}
func (c ResearchPMTU) String() string { return fmt.Sprintf("research path MTU of %v", []string(c)) }

// Failure is a plan whose preparation failed (a kernel read): audited as an
// error and backed off from in auto, like a failed write.
type Failure struct{ Err error }

func (c Failure) apply(actuators) error { return c.Err }
func (c Failure) String() string        { return "failed: " + c.Err.Error() }

// routeKey is how the kernel tells routes of the main table apart.
type routeKey struct {
	prefix netip.Prefix
	metric int
}

// routeOwners is the one owner of every route wgpulse holds: the policy
// that added it. A policy can never add, replace or delete a route another
// policy owns (see the package doc for who gives way).
type routeOwners struct {
	mu sync.Mutex
	by map[routeKey]string
}

func routesOf(c Change) []Route {
	switch c := c.(type) {
	case AddRoutes:
		return c
	case DelRoutes:
		return c
	case ReplaceRoute:
		return []Route{Route(c)}
	}
	return nil
}

// check refuses changes to routes another policy owns.
func (o *routeOwners) check(policy string, cs []Change) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range cs {
		for _, rt := range routesOf(c) {
			if owner := o.by[routeKey{rt.Prefix, rt.Metric}]; owner != "" && owner != policy {
				return fmt.Errorf("route %s is policy %s's: policy %s may not change it", rt, owner, policy)
			}
		}
	}
	return nil
}

// record notes what changes that were carried out own now.
func (o *routeOwners) record(policy string, cs []Change) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.by == nil {
		o.by = map[routeKey]string{}
	}
	for _, c := range cs {
		_, del := c.(DelRoutes)
		for _, rt := range routesOf(c) {
			if k := (routeKey{rt.Prefix, rt.Metric}); del {
				delete(o.by, k)
			} else {
				o.by[k] = policy
			}
		}
	}
}
