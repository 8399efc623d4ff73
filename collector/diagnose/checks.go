package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wgpulse/wgpulse/collector"
)

// Node is what the checks read: one look at a node's WireGuard devices,
// its main routing table and its firewall, plus what only a running agent
// knows (endpoint history, measured path MTUs).
type Node struct {
	// Devices are the devices to check. Endpoint changes are counted only
	// by a running agent; from a single read they are 0.
	Devices []collector.Device
	// Errors are devices that could not be read, by name.
	Errors map[string]error
	// Routes is the main routing table, both families.
	Routes []Route
	// LinkMTU is every link's MTU by name (the underlay of endpoints).
	LinkMTU map[string]int
	// Addrs is every link's addresses by name (a LAN a gateway serves).
	Addrs map[string][]netip.Prefix
	// Firewall is the nftables ruleset; nil when it could not be read, and
	// FirewallErr says why.
	Firewall    *Ruleset
	FirewallErr error
	// PathMTU is the prober's measured path MTU by peer (PeerKey); absent
	// when unknown.
	PathMTU map[string]int
	Now     time.Time
	// NeverGrace is how long a peer with an endpoint may go without its
	// first handshake before it is reported (since the agent first saw it;
	// 0 for a one-off diagnose).
	NeverGrace time.Duration
	// Failover are the config's route-mode failover groups.
	Failover []FailoverGroup
	// Host is the node's kernel settings (rp_filter, forwarding, fwmark
	// rules, qdiscs); nil when not read, and the host checks are skipped.
	Host *Host
	// Previous is what the last Check of this node found (a running agent
	// checks on every poll). A finding whose words cannot have changed is
	// taken from it rather than written again: a hub whose 10,000 peers
	// never handshake has 10,000 handshake_never findings, 4 MB of text
	// that was built anew every 5 s while the last poll's was still held.
	Previous []Finding
}

// FailoverGroup is a route-mode failover group: the prefixes it would route
// into its backup device.
type FailoverGroup struct {
	Name     string
	Prefixes []netip.Prefix
	Primary  string
	Backup   string
}

// Route is one route of the main table.
type Route struct {
	Dst      netip.Prefix
	Device   string // output link; "" for blackhole, unreachable and the like
	Protocol int    // rtnetlink protocol: 2 = kernel (connected prefixes)
	Priority int    // metric
	MTU      int    // 0 = the link's
}

// protoKernel is RTPROT_KERNEL: routes the kernel made for an address.
const protoKernel = 2

// PeerKey keys PathMTU: a peer of a device.
func PeerKey(device, publicKey string) string { return device + "|" + publicKey }

// Overhead is WireGuard's per-packet overhead on an IPv4 or IPv6 underlay:
// outer IP header, UDP header, WireGuard data header and tag.
func Overhead(v6 bool) int {
	if v6 {
		return 80
	}
	return 60
}

// allowedCount is the number of AllowedIPs prefixes of a device's peers.
func allowedCount(d *collector.Device) int {
	n := 0
	for j := range d.Peers {
		n += len(d.Peers[j].AllowedIPs)
	}
	return n
}

// Check runs every check and returns the findings, sorted.
func Check(n Node) []Finding {
	c := checker{Node: n, byName: map[string]*collector.Device{}, allowed: map[string]*prefixIndex[*collector.Peer]{},
		out: make([]Finding, 0, len(n.Previous)+8)} // about as many as last time: no regrowing through 10,000
	c.routes = newPrefixIndex(len(n.Routes), func(add func(netip.Prefix, *Route)) {
		for i := range n.Routes {
			add(n.Routes[i].Dst, &n.Routes[i])
		}
	}, func(old, new *Route) bool { return new.Priority < old.Priority })
	for i := range n.Devices {
		d := &n.Devices[i]
		c.byName[d.Name] = d
		c.allowed[d.Name] = newPrefixIndex(allowedCount(d), func(add func(netip.Prefix, *collector.Peer)) {
			for j := range d.Peers {
				for _, pfx := range d.Peers[j].AllowedIPs {
					add(pfx, &d.Peers[j])
				}
			}
		}, func(_, _ *collector.Peer) bool { return false })
	}
	for name, err := range n.Errors {
		c.add(Finding{Severity: Error, Check: CheckDeviceUnreadable, Device: name, Object: "device " + name,
			Evidence: err.Error(), Fix: "check that the device exists and that wgpulse may read it (CAP_NET_ADMIN; /var/run/wireguard for userspace devices)"})
	}
	for i := range n.Previous {
		if f := &n.Previous[i]; f.Check == CheckHandshakeNever {
			if c.never == nil {
				c.never = map[peerRef]*Finding{}
			}
			c.never[peerRef{f.Device, f.PublicKey}] = f
		}
	}
	c.keys()
	for i := range n.Devices {
		d := &n.Devices[i]
		c.overlaps(d)
		c.routedElsewhere(d)
		c.routesNotAllowed(d)
		c.mtu(d)
		c.peers(d)
		c.firewall(d)
		c.host(d)
	}
	for _, g := range n.Failover {
		c.failover(g)
		c.rpFilter(g)
	}
	Sort(c.out)
	return c.out
}

type checker struct {
	Node
	byName  map[string]*collector.Device
	routes  *prefixIndex[*Route]                     // the main table, best route per prefix
	allowed map[string]*prefixIndex[*collector.Peer] // AllowedIPs by device
	lans    [2]*lanAddr                              // IPv4, IPv6: worked out on first use
	never   map[peerRef]*Finding                     // Previous's handshake_never findings
	out     []Finding
}

// peerRef is a peer of a device, as a map key that costs no allocation.
type peerRef struct{ device, publicKey string }

func (c *checker) add(f Finding) { c.out = append(c.out, f) }

func peerObject(d *collector.Device, p *collector.Peer) string {
	name := p.Name
	if name == "" {
		name = short(p.PublicKey)
	}
	return fmt.Sprintf("peer %s on %s", name, d.Name)
}

// short abbreviates a public key for human output (JSON has it whole).
func short(key string) string {
	if len(key) > 8 {
		return key[:8] + "…"
	}
	return key
}

// keys: a peer key on two devices, a device key on two devices, a peer
// whose key is the device's own.
func (c *checker) keys() {
	// Devices per peer key: one device is the common case and costs no
	// slice; the names are collected for keys on several.
	peers := 0
	for _, d := range c.Devices {
		peers += len(d.Peers)
	}
	devKeys, first, peerDevs := map[string][]string{}, make(map[string]string, peers), map[string][]string{}
	for _, d := range c.Devices {
		if d.PublicKey != "" {
			devKeys[d.PublicKey] = append(devKeys[d.PublicKey], d.Name)
		}
		for _, p := range d.Peers {
			switch dev, seen := first[p.PublicKey]; {
			case !seen:
				first[p.PublicKey] = d.Name
			case peerDevs[p.PublicKey] == nil:
				peerDevs[p.PublicKey] = []string{dev, d.Name}
			default:
				peerDevs[p.PublicKey] = append(peerDevs[p.PublicKey], d.Name)
			}
		}
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		if devs := devKeys[d.PublicKey]; len(devs) > 1 {
			c.add(Finding{Severity: Error, Check: CheckDuplicateKey, Device: d.Name, PublicKey: d.PublicKey, Object: "device " + d.Name,
				Evidence: fmt.Sprintf("devices %s have the same private key (public key %s)", strings.Join(devs, ", "), d.PublicKey),
				Fix:      "give each device its own key pair (wg genkey) and update its peers"})
		}
		for j := range d.Peers {
			p := &d.Peers[j]
			if devs := peerDevs[p.PublicKey]; len(devs) > 1 {
				c.add(Finding{Severity: Error, Check: CheckDuplicateKey, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
					Evidence: fmt.Sprintf("the same peer public key is configured on devices %s: one remote key pair terminates two tunnels, whose handshakes and endpoints then fight", strings.Join(devs, ", ")),
					Fix:      "give the remote end one key pair per tunnel, or remove the peer from all but one device"})
			}
			if p.PublicKey == d.PublicKey {
				c.add(Finding{Severity: Error, Check: CheckPeerKeyIsOwn, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
					Evidence: "the peer's public key is this device's own: the tunnel can never handshake",
					Fix:      "replace the peer's key with the remote end's public key (wg show on the remote end)"})
			}
		}
	}
}

type owned struct {
	prefix netip.Prefix
	peer   *collector.Peer
}

// overlaps: AllowedIPs of two peers of one device that overlap. WireGuard
// sends to the peer with the most specific prefix, so the broader peer
// silently loses that part. Default routes (/0) are left out: an exit peer
// plus specific peers is a common, deliberate design.
func (c *checker) overlaps(d *collector.Device) {
	all := make([]owned, 0, allowedCount(d))
	for j := range d.Peers {
		for _, pfx := range d.Peers[j].AllowedIPs {
			if pfx.Bits() > 0 {
				all = append(all, owned{pfx.Masked(), &d.Peers[j]})
			}
		}
	}
	slices.SortFunc(all, func(a, b owned) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		return a.prefix.Bits() - b.prefix.Bits()
	})
	// Sweep: the open prefixes contain the current one's start, so any of
	// them of another peer overlaps it.
	var open []owned
	for _, o := range all {
		for len(open) > 0 && !open[len(open)-1].prefix.Contains(o.prefix.Addr()) {
			open = open[:len(open)-1]
		}
		for _, wide := range open {
			if wide.peer == o.peer {
				continue
			}
			c.add(Finding{Severity: Warning, Check: CheckAllowedIPsOverlap, Device: d.Name, PublicKey: o.peer.PublicKey, Name: o.peer.Name,
				Object: peerObject(d, o.peer),
				Evidence: fmt.Sprintf("AllowedIPs %s lies inside %s of %s: traffic to %s goes to this peer only, never to the other",
					o.prefix, wide.prefix, peerObject(d, wide.peer), o.prefix),
				Fix: "make AllowedIPs of one device's peers disjoint (wg set " + d.Name + " peer <key> allowed-ips ...), unless the overlap is deliberate"})
		}
		open = append(open, o)
	}
}

// lookup is the main table's longest-prefix match (lowest metric among
// equals): where the kernel sends addr, policy routing aside.
func (c *checker) lookup(addr netip.Addr) *Route {
	_, r, _ := c.routes.longest(addr, 128)
	return r
}

// allows says whether device dev has a peer whose AllowedIPs hold addr.
func (c *checker) allows(dev string, addr netip.Addr) bool {
	ix := c.allowed[dev]
	if ix == nil {
		return false
	}
	_, _, ok := ix.longest(addr, 128)
	return ok
}

// routedElsewhere: traffic to a peer's AllowedIPs that the routing table
// sends somewhere else (a connected LAN, a more specific route, nothing),
// so it never enters the tunnel. Another WireGuard device with a peer
// allowing the same addresses (a backup tunnel) is not a problem.
func (c *checker) routedElsewhere(d *collector.Device) {
	if len(c.Routes) == 0 {
		return
	}
	for j := range d.Peers {
		p := &d.Peers[j]
		for _, pfx := range p.AllowedIPs {
			if pfx.Bits() == 0 {
				continue
			}
			pfx = pfx.Masked()
			samples := []netip.Prefix{pfx}
			for _, dst := range c.routes.inside(pfx) {
				if dst.Bits() > pfx.Bits() && c.routes.exact[dst].Device != d.Name {
					samples = append(samples, dst)
				}
			}
			seen := map[string]bool{}
			for _, s := range samples {
				best := c.lookup(s.Addr())
				var where string
				switch {
				case best == nil:
					where = "no route at all"
				case best.Device == d.Name:
					continue
				case best.Device != "" && c.allows(best.Device, s.Addr()):
					continue // a redundant tunnel carries it
				case best.Device == "":
					where = fmt.Sprintf("route %s (blackhole or unreachable)", best.Dst)
				default:
					where = fmt.Sprintf("route %s dev %s", best.Dst, best.Device)
				}
				if seen[where] {
					continue
				}
				seen[where] = true
				part := s.String()
				if s == pfx {
					part = "all of it"
				}
				c.add(Finding{Severity: Warning, Check: CheckAllowedIPsRouted, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
					Evidence: fmt.Sprintf("AllowedIPs %s (%s) is routed by %s, not into %s: that traffic never enters the tunnel", pfx, part, where, d.Name),
					Fix:      fmt.Sprintf("route %s via %s (ip route replace %s dev %s), or narrow the peer's AllowedIPs if the other path is intended", s, d.Name, s, d.Name)})
			}
		}
	}
}

// routesNotAllowed: a route into the device for addresses no peer of it
// allows. WireGuard drops such packets (no peer for the destination) and
// tells no one.
// maxListed is how many prefixes a finding's evidence names.
const maxListed = 5

func (c *checker) routesNotAllowed(d *collector.Device) {
	allowed := c.allowed[d.Name]
	for _, r := range c.Routes {
		if r.Device != d.Name || r.Protocol == protoKernel {
			continue
		}
		if _, _, covered := allowed.longest(r.Dst.Addr(), r.Dst.Bits()); covered {
			continue
		}
		// The evidence names the first few allowed prefixes inside the route
		// (a hub's subnet route covers thousands).
		inside := allowed.inside(r.Dst)
		var parts []string
		for _, pfx := range inside[:min(len(inside), maxListed)] {
			parts = append(parts, pfx.String())
		}
		if len(inside) > maxListed {
			parts = append(parts, fmt.Sprintf("and %d more", len(inside)-maxListed))
		}
		f := Finding{Severity: Error, Check: CheckRouteNotAllowed, Device: d.Name, PublicKey: d.PublicKey, Object: fmt.Sprintf("route %s dev %s", r.Dst, d.Name),
			Evidence: fmt.Sprintf("no peer of %s has %s in its AllowedIPs: WireGuard silently drops what this route sends", d.Name, r.Dst),
			Fix:      fmt.Sprintf("add %s to the AllowedIPs of the peer that serves it (wg set %s peer <key> allowed-ips ...), or delete the route (ip route del %s dev %s)", r.Dst, d.Name, r.Dst, d.Name)}
		if len(parts) > 0 {
			f.Severity = Warning
			f.Evidence = fmt.Sprintf("peers of %s allow only %s of %s: WireGuard silently drops the rest of what this route sends", d.Name, strings.Join(parts, ", "), r.Dst)
		}
		c.add(f)
	}
}

// mtu: the device MTU against the underlay route to its peers' endpoints
// (one finding per underlay link and family), and against each peer's
// measured path MTU.
func (c *checker) mtu(d *collector.Device) {
	if d.MTU == 0 {
		return
	}
	seen := map[string]bool{}
	for _, p := range d.Peers {
		if !p.Endpoint.IsValid() {
			continue
		}
		ep := p.Endpoint.Addr().Unmap()
		r := c.lookup(ep)
		if r == nil || r.Device == "" {
			continue
		}
		under := r.MTU
		if under == 0 {
			under = c.LinkMTU[r.Device]
		}
		v6 := ep.Is6()
		limit := under - Overhead(v6)
		key := fmt.Sprint(r.Device, v6)
		if under == 0 || d.MTU <= limit || seen[key] {
			continue
		}
		seen[key] = true
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		c.add(Finding{Severity: Warning, Check: CheckMTUAboveUnderlay, Device: d.Name, PublicKey: d.PublicKey,
			Object: fmt.Sprintf("device %s over %s (%s)", d.Name, r.Device, family),
			Evidence: fmt.Sprintf("MTU %d, but the underlay to %s leaves %d (MTU %d of %s minus %d bytes of WireGuard over %s): full-size packets are fragmented or, with DF, dropped",
				d.MTU, ep, limit, under, r.Device, Overhead(v6), family),
			Fix: fmt.Sprintf("ip link set dev %s mtu %d (MTU = %d in wg-quick), or enable remediate.mtu", d.Name, limit, limit)})
	}
	for j := range d.Peers {
		p := &d.Peers[j]
		pmtu, ok := c.PathMTU[PeerKey(d.Name, p.PublicKey)]
		if !ok || pmtu >= d.MTU || c.routeMTUFits(d, p, pmtu) {
			continue
		}
		c.add(Finding{Severity: Warning, Check: CheckPathMTUBelowDevice, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
			Evidence: fmt.Sprintf("the measured path passes inner packets of at most %d bytes; %s's MTU is %d: larger packets to this peer are lost (a black hole when ICMP is filtered)", pmtu, d.Name, d.MTU),
			Fix:      fmt.Sprintf("lower the MTU for this peer's prefixes to %d (ip route replace <prefix> dev %s mtu %d) or the device's, or enable remediate.mtu", pmtu, d.Name, pmtu)})
	}
}

// routeMTUFits says whether a route MTU no larger than pmtu already
// applies to one of the peer's prefixes (what remediate.mtu sets).
func (c *checker) routeMTUFits(d *collector.Device, p *collector.Peer, pmtu int) bool {
	for _, pfx := range p.AllowedIPs {
		for _, dst := range c.routes.inside(pfx) {
			if r := c.routes.exact[dst]; r.Device == d.Name && r.MTU > 0 && r.MTU <= pmtu {
				return true
			}
		}
	}
	return false
}

// peers: handshakes, and a NAT in front of a peer without keepalive.
func (c *checker) peers(d *collector.Device) {
	for j := range d.Peers {
		p := &d.Peers[j]
		switch p.Handshake {
		case collector.HandshakeStale:
			c.add(Finding{Severity: Error, Check: CheckHandshakeStale, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
				Evidence: fmt.Sprintf("last handshake %s ago (%s), older than 180 s: the session cannot carry data", c.Now.Sub(p.LastHandshake).Round(time.Second), p.LastHandshake.UTC().Format(time.RFC3339)),
				Fix:      "check the far end is up, its endpoint reachable over UDP (firewall, NAT) and the keys on both ends; wgpulse status shows loss and RTT"})
		case collector.HandshakeNever:
			if p.Endpoint.IsValid() && c.Now.Sub(p.HandshakeSince) >= c.NeverGrace {
				if f := c.never[peerRef{d.Name, p.PublicKey}]; f != nil && f.Name == p.Name && neverEndpoint(f.Evidence, p.Endpoint) {
					c.add(*f) // the same peer, name and endpoint: the same words
					break
				}
				c.add(Finding{Severity: Warning, Check: CheckHandshakeNever, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
					Evidence: "endpoint " + p.Endpoint.String() + neverEvidence,
					Fix:      "check the keys on both ends (this device's public key must be the far end's peer), the far end's AllowedIPs, and that UDP reaches that endpoint (firewall, NAT)"})
			}
		}
		if p.EndpointChanges > 0 && p.PersistentKeepalive == 0 {
			c.add(Finding{Severity: Warning, Check: CheckNATWithoutKeepalive, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name, Object: peerObject(d, p),
				Evidence: fmt.Sprintf("the endpoint changed %d times (last %s): the peer is behind a NAT that rebinds, and PersistentKeepalive is off", p.EndpointChanges, p.LastEndpointChange.UTC().Format(time.RFC3339)),
				Fix:      "set PersistentKeepalive = 25 on the peer behind the NAT (the side whose mapping expires), or enable remediate.keepalive; see README \"Which side of a NAT must act\""})
		}
	}
}

const neverEvidence = " is set but no handshake ever completed"

// neverEndpoint says whether a handshake_never evidence names endpoint ep,
// without building the text.
func neverEndpoint(evidence string, ep netip.AddrPort) bool {
	rest, ok := strings.CutPrefix(evidence, "endpoint ")
	if !ok {
		return false
	}
	rest, ok = strings.CutSuffix(rest, neverEvidence)
	var buf [64]byte
	return ok && string(ep.AppendTo(buf[:0])) == rest
}

// firewall: the listen port against the nftables prerouting and input
// hooks, for the families the peers' endpoints use (both when none is
// known yet).
func (c *checker) firewall(d *collector.Device) {
	if d.ListenPort == 0 {
		return
	}
	if c.Firewall == nil {
		reason := "no ruleset read"
		if c.FirewallErr != nil {
			reason = c.FirewallErr.Error()
		}
		c.add(Finding{Severity: Info, Check: CheckFirewallUnknown, Device: d.Name, PublicKey: d.PublicKey, Object: fmt.Sprintf("listen port %d/udp of %s", d.ListenPort, d.Name),
			Evidence: "cannot tell whether the firewall accepts it: " + reason,
			Fix:      "install nftables (nft) and run as root, or check the input chain by hand (nft list ruleset; iptables-legacy rules are not read)"})
		return
	}
	fams := map[bool]bool{}
	for _, p := range d.Peers {
		if p.Endpoint.IsValid() {
			fams[p.Endpoint.Addr().Unmap().Is6()] = true
		}
	}
	if len(fams) == 0 {
		fams = map[bool]bool{false: true, true: true}
	}
	for _, v6 := range []bool{false, true} {
		if !fams[v6] {
			continue
		}
		family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
		v := c.Firewall.UDPInput(d.ListenPort, v6)
		obj := fmt.Sprintf("listen port %d/udp of %s (%s)", d.ListenPort, d.Name, family)
		switch {
		case v.Drop && !v.Unless:
			c.add(Finding{Severity: Error, Check: CheckListenPortFiltered, Device: d.Name, PublicKey: d.PublicKey, Object: obj,
				Evidence: "new packets to it are dropped by " + v.Where,
				Fix:      fmt.Sprintf("accept it before that rule, e.g. nft insert rule %s udp dport %d accept", v.Chain, d.ListenPort)})
		case v.Drop:
			c.add(Finding{Severity: Warning, Check: CheckListenPortFiltered, Device: d.Name, PublicKey: d.PublicKey, Object: obj,
				Evidence: fmt.Sprintf("new packets to it are dropped by %s unless an earlier rule this check cannot evaluate matches them (%s)", v.Where, v.UnlessWhere),
				Fix:      fmt.Sprintf("accept the port explicitly, e.g. nft insert rule %s udp dport %d accept", v.Chain, d.ListenPort)})
		}
	}
}

// failover checks that a group's backup could carry its prefixes: a peer
// of the backup device allows each (else WireGuard drops what failover
// routes there), and no prefix holds the endpoint of a backup peer (the
// tunnel's own packets would be routed into it).
func (c *checker) failover(g FailoverGroup) {
	d := c.byName[g.Backup]
	if d == nil {
		return // not read: device_unreadable says so
	}
	for _, pf := range g.Prefixes {
		allowed := false
		for i := range d.Peers {
			allowed = allowed || slices.ContainsFunc(d.Peers[i].AllowedIPs, func(a netip.Prefix) bool { return a.Bits() <= pf.Bits() && a.Contains(pf.Addr()) })
		}
		if !allowed {
			c.add(Finding{Severity: Error, Check: CheckFailoverBackupNotAllowed, Device: d.Name, PublicKey: d.PublicKey,
				Object:   fmt.Sprintf("failover group %s, prefix %s", g.Name, pf),
				Evidence: fmt.Sprintf("no peer of the backup %s allows %s in its AllowedIPs: WireGuard would drop what a failover routes there", d.Name, pf),
				Fix:      fmt.Sprintf("add %s to AllowedIPs of the far end's peer on %s (wg set %s peer <key> allowed-ips ...), or take it out of the group", pf, d.Name, d.Name)})
		}
		for i := range d.Peers {
			p := &d.Peers[i]
			if p.Endpoint.IsValid() && pf.Contains(p.Endpoint.Addr()) {
				c.add(Finding{Severity: Error, Check: CheckFailoverEndpointInPrefix, Device: d.Name, PublicKey: p.PublicKey, Name: p.Name,
					Object:   fmt.Sprintf("failover group %s, prefix %s", g.Name, pf),
					Evidence: fmt.Sprintf("the prefix holds the endpoint %s of %s: routing it into the tunnel would send the tunnel's own packets into itself", p.Endpoint, peerObject(d, p)),
					Fix:      "take the endpoint's address out of the group's prefixes (split the prefix around it), or reach the peer over another address"})
			}
		}
	}
}

// rpFilter: strict reverse-path filtering on a device of a failover group.
// While only one end of a tunnel pair has switched, replies arrive on the
// other tunnel, where the kernel's route back to their source is not: a
// strict filter drops them.
func (c *checker) rpFilter(g FailoverGroup) {
	if c.Host == nil {
		return
	}
	for _, dev := range []string{g.Primary, g.Backup} {
		v, ok := c.Host.RPFilter[dev]
		if !ok || v != 1 {
			continue
		}
		d := c.byName[dev]
		key := ""
		if d != nil {
			key = d.PublicKey
		}
		fix := fmt.Sprintf("sysctl -w net.ipv4.conf.%s.rp_filter=2 (loose: the source must be reachable by some route)", dev)
		if c.Host.RPFilterAll == 1 {
			fix = fmt.Sprintf("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2 (the larger of all and the device's applies; loose: the source must be reachable by some route)", dev)
		}
		c.add(Finding{Severity: Warning, Check: CheckRPFilterStrict, Device: dev, PublicKey: key, Object: fmt.Sprintf("failover group %s, device %s", g.Name, dev),
			Evidence: fmt.Sprintf("reverse-path filtering on %s is strict (rp_filter 1, net.ipv4.conf.all.rp_filter %d): while only one end of the group has switched, replies come in on the other tunnel and are dropped", dev, c.Host.RPFilterAll),
			Fix:      fix + ", and the same in /etc/sysctl.d/ to keep it"})
	}
}

// host: the host settings that drop a tunnel's traffic silently.
func (c *checker) host(d *collector.Device) {
	if c.Host == nil {
		return
	}
	h := c.Host
	// Forwarding off on a gateway (a private address on a link that is
	// neither a tunnel nor the way to a peer's endpoint: a LAN) while LAN
	// prefixes (more than one address) are routed into the tunnel: the
	// LAN's hosts cannot use it. A node that only uses the tunnel itself
	// (a laptop, a one-NIC cloud VM) has no such link and needs no
	// forwarding.
	for _, v6 := range []bool{false, true} {
		on, sysctl := h.forwarding(v6)
		if on || h.Unread[sysctl] {
			continue
		}
		lan := c.lan(v6)
		if !lan.addr.IsValid() {
			continue
		}
		for _, r := range c.Routes {
			if r.Device != d.Name || r.Protocol == protoKernel || r.Dst.Addr().Is6() != v6 || r.Dst.IsSingleIP() {
				continue
			}
			c.add(Finding{Severity: Warning, Check: CheckForwardingOff, Device: d.Name, PublicKey: d.PublicKey, Object: fmt.Sprintf("route %s dev %s", r.Dst, d.Name),
				Evidence: fmt.Sprintf("%s is routed into %s and %s holds %s (a LAN this node is the gateway of), but %s is 0: packets of the LAN's hosts to %s, and from the tunnel to them, are dropped here", r.Dst, d.Name, lan.link, lan.addr, sysctl, r.Dst),
				Fix:      fmt.Sprintf("sysctl -w %s=1 (and in /etc/sysctl.d/) if this node routes for that LAN; nothing, if only this node itself uses the tunnel", sysctl)})
			break
		}
	}
	// wg-quick's full tunnel: rules by the device's fwmark need
	// src_valid_mark, or reverse-path filtering checks the tunnel's replies
	// against the main table and drops them.
	if d.FirewallMark != 0 && !h.SrcValidMark && !h.Unread["net.ipv4.conf.all.src_valid_mark"] {
		for _, r := range h.MarkRules {
			if r.V6 || r.Mark != uint32(d.FirewallMark) {
				continue
			}
			not := ""
			if r.Invert {
				not = "not "
			}
			c.add(Finding{Severity: Warning, Check: CheckFwmarkWithoutSrcValidMark, Device: d.Name, PublicKey: d.PublicKey, Object: fmt.Sprintf("ip rule %d (%sfwmark %#x lookup %d)", r.Priority, not, r.Mark, r.Table),
				Evidence: fmt.Sprintf("%s's fwmark %#x selects routes by an ip rule, but net.ipv4.conf.all.src_valid_mark is 0: reverse-path filtering ignores the mark, checks replies against the main table and can drop them", d.Name, r.Mark),
				Fix:      "sysctl -w net.ipv4.conf.all.src_valid_mark=1 (wg-quick sets it when it adds the rule; something reset it, e.g. sysctl --system)"})
			break
		}
	}
	// A forward hook that drops traffic from or to the tunnel, on a node
	// that forwards.
	if c.Firewall != nil {
		for _, v6 := range []bool{false, true} {
			if on, _ := h.forwarding(v6); !on {
				continue
			}
			family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
			for _, from := range []bool{true, false} {
				v := c.Firewall.Forward(d.Name, from, v6)
				if !v.Drop || v.Unless {
					continue // accepted, or an earlier rule this check cannot evaluate may accept it
				}
				dir, match := "to", "oifname"
				if from {
					dir, match = "from", "iifname"
				}
				c.add(Finding{Severity: Warning, Check: CheckForwardDropsTunnel, Device: d.Name, PublicKey: d.PublicKey, Object: fmt.Sprintf("forwarding %s %s (%s)", dir, d.Name, family),
					Evidence: fmt.Sprintf("new forwarded packets %s %s are dropped by %s", dir, d.Name, v.Where),
					Fix:      fmt.Sprintf("accept them before that rule if this node routes for the tunnel, e.g. nft insert rule %s %s %q accept (narrow it to the prefixes you route)", v.Chain, match, d.Name)})
			}
		}
	}
	// A gateway forwarding its LAN into the tunnel with nothing clamping
	// the MSS: the LAN's hosts size TCP segments for their LAN and rely on
	// PMTUD through the tunnel, which a black hole or an ICMP filter breaks.
	if on, _ := h.forwarding(false); on && c.Firewall != nil && !c.Firewall.ClampsMSS(d.Name) && d.MTU > 0 {
		if lan := c.lan(false); lan.addr.IsValid() {
			for _, r := range c.Routes {
				if r.Device != d.Name || r.Protocol == protoKernel || r.Dst.Addr().Is6() || r.Dst.IsSingleIP() {
					continue
				}
				c.add(Finding{Severity: Info, Check: CheckMSSClampMissing, Device: d.Name, PublicKey: d.PublicKey, Object: "forwarding into " + d.Name,
					Evidence: fmt.Sprintf("%s is routed into %s for the LAN on %s (%s), and no rule clamps the TCP MSS: the LAN's hosts size segments for their LAN (MSS 1460) while %s carries at most %d-byte packets, so they depend on path MTU discovery, which a black hole or filtered ICMP on the path breaks",
						r.Dst, d.Name, lan.link, lan.addr, d.Name, d.MTU),
					Fix: fmt.Sprintf("remediate.mss: {enabled: true, devices: [%s]} (wgpulse keeps the clamp at the MTU in force, in its own table inet wgpulse), or by hand: nft add table inet mss; nft add chain inet mss forward '{ type filter hook forward priority mangle; }'; nft add rule inet mss forward oifname %q tcp flags syn tcp option maxseg size set rt mtu", d.Name, d.Name)})
				break
			}
		}
	}
	// The article: fq_codel or cake on the tunnel for latency-sensitive
	// flows.
	if q, ok := h.Qdisc[d.Name]; ok && q != "fq_codel" && q != "cake" && q != "fq" {
		c.add(Finding{Severity: Info, Check: CheckQdiscNoAQM, Device: d.Name, PublicKey: d.PublicKey, Object: "device " + d.Name,
			Evidence: fmt.Sprintf("root qdisc %s: under load a queue builds in front of the tunnel with no fair queueing or active queue management, and latency-sensitive flows wait behind bulk ones", q),
			Fix:      fmt.Sprintf("tc qdisc replace dev %s root fq_codel (or cake), e.g. in wg-quick's PostUp", d.Name)})
	}
}

// forwarding is whether the node forwards the family, and the sysctl
// that says so.
func (h *Host) forwarding(v6 bool) (bool, string) {
	if v6 {
		return h.Forward6, "net.ipv6.conf.all.forwarding"
	}
	return h.Forward4, "net.ipv4.ip_forward"
}

// lanAddr is a LAN of the node: a private address on a link.
type lanAddr struct {
	link string
	addr netip.Prefix // invalid: none
}

// lan is a private address of the family on a link that is neither a
// WireGuard device nor the underlay to a peer's endpoint, by link name
// order. It looks up every peer's endpoint, so it is worked out once per
// Check, and only when a check needs it.
func (c *checker) lan(v6 bool) lanAddr {
	i := 0
	if v6 {
		i = 1
	}
	if c.lans[i] == nil {
		c.lans[i] = &lanAddr{}
		c.lans[i].link, c.lans[i].addr = c.findLAN(v6)
	}
	return *c.lans[i]
}

func (c *checker) findLAN(v6 bool) (string, netip.Prefix) {
	under := map[string]bool{}
	for _, d := range c.Devices {
		under[d.Name] = true
		for _, p := range d.Peers {
			if p.Endpoint.IsValid() {
				if r := c.lookup(p.Endpoint.Addr().Unmap()); r != nil && r.Device != "" {
					under[r.Device] = true
				}
			}
		}
	}
	links := make([]string, 0, len(c.Addrs))
	for l := range c.Addrs {
		links = append(links, l)
	}
	slices.Sort(links)
	for _, l := range links {
		if under[l] {
			continue
		}
		for _, a := range c.Addrs[l] {
			if a.Addr().Is6() == v6 && a.Addr().IsPrivate() {
				return l, a
			}
		}
	}
	return "", netip.Prefix{}
}
