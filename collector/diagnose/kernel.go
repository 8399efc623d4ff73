package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteHandle is the part of a netlink handle the checks read.
type RouteHandle interface {
	LinkList() ([]netlink.Link, error)
	RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error)
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
}

// Kernel is what ReadKernel reads: the main routing table of both
// families with link names, every link's MTU and every link's addresses.
type Kernel struct {
	Routes  []Route
	LinkMTU map[string]int
	Addrs   map[string][]netip.Prefix
}

var _ RouteHandle = (*netlink.Handle)(nil)

// ReadKernel reads the main routing table, the links and their addresses.
func ReadKernel(h RouteHandle) (Kernel, error) {
	k := Kernel{LinkMTU: map[string]int{}, Addrs: map[string][]netip.Prefix{}}
	links, err := h.LinkList()
	if err != nil {
		return k, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index], k.LinkMTU[a.Name] = a.Name, a.MTU
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return k, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		name, ok := names[a.LinkIndex]
		if !ok || a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok { // the address itself, not its network
			ones, _ := a.Mask.Size()
			k.Addrs[name] = append(k.Addrs[name], netip.PrefixFrom(ip.Unmap(), ones))
		}
	}
	nl, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return k, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range nl {
		if r.Type != unix.RTN_UNICAST && r.Type != unix.RTN_BLACKHOLE && r.Type != unix.RTN_UNREACHABLE && r.Type != unix.RTN_PROHIBIT {
			continue
		}
		out := Route{Dst: prefix(r.Dst, r.Family), Protocol: int(r.Protocol), Priority: r.Priority, MTU: r.MTU}
		if !out.Dst.IsValid() {
			continue
		}
		if r.Type == unix.RTN_UNICAST {
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			out.Device = names[idx]
		}
		k.Routes = append(k.Routes, out)
	}
	return k, nil
}

func prefix(n *net.IPNet, family int) netip.Prefix {
	if n == nil { // the default route
		if family == unix.AF_INET6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked()
}

// ErrNoNft says the nft program is missing: the firewall cannot be read.
var ErrNoNft = errors.New("nft (nftables) is not installed")

// ReadFirewall reads the ruleset of this network namespace with
// `nft -j list ruleset` (needs CAP_NET_ADMIN).
func ReadFirewall(ctx context.Context) (*Ruleset, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, ErrNoNft
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-j", "list", "ruleset")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nft -j list ruleset: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if len(strings.TrimSpace(string(out))) == 0 { // an empty ruleset prints nothing
		return ParseRuleset([]byte(`{"nftables": []}`))
	}
	return ParseRuleset(out)
}
