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
}

var _ RouteHandle = (*netlink.Handle)(nil)

// ReadRoutes returns the main routing table of both families, with link
// names, and every link's MTU.
func ReadRoutes(h RouteHandle) ([]Route, map[string]int, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	names, mtus := map[int]string{}, map[string]int{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index], mtus[a.Name] = a.Name, a.MTU
	}
	nl, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, mtus, fmt.Errorf("list routes: %w", err)
	}
	routes := make([]Route, 0, len(nl))
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
		routes = append(routes, out)
	}
	return routes, mtus, nil
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
