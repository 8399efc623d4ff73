package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// HostHandle is the part of a netlink handle the host checks read.
type HostHandle interface {
	LinkList() ([]netlink.Link, error)
	RuleList(family int) ([]netlink.Rule, error)
	QdiscList(link netlink.Link) ([]netlink.Qdisc, error)
}

var _ HostHandle = (*netlink.Handle)(nil)

// Host is the node's settings that drop tunnel traffic silently when
// wrong: reverse-path filtering, forwarding, src_valid_mark, the fwmark
// rules and each link's root qdisc.
type Host struct {
	// RPFilter is each link's effective IPv4 rp_filter: the larger of
	// net.ipv4.conf.all and net.ipv4.conf.<link> (0 off, 1 strict, 2 loose).
	RPFilter map[string]int
	// RPFilterAll is net.ipv4.conf.all.rp_filter.
	RPFilterAll int
	// Forward4 is net.ipv4.ip_forward; Forward6 net.ipv6.conf.all.forwarding.
	Forward4, Forward6 bool
	// SrcValidMark is net.ipv4.conf.all.src_valid_mark.
	SrcValidMark bool
	// MarkRules are the policy routing rules that match an fwmark.
	MarkRules []MarkRule
	// Qdisc is each link's root qdisc kind ("noqueue", "fq_codel", ...).
	Qdisc map[string]string
	// Unread are the sysctls (dotted names) that could not be read: the
	// checks that need them are skipped rather than fed a zero.
	Unread map[string]bool
}

// MarkRule is an ip rule matching an fwmark (wg-quick's full tunnel:
// "not from all fwmark 0xca6c lookup 51820").
type MarkRule struct {
	Priority int
	Mark     uint32
	Invert   bool
	Table    int
	V6       bool
}

// ReadHost reads the host settings from proc (normally "/proc/sys") and
// netlink. A setting that cannot be read is left at its zero value and
// named in the error; the rest is still read.
func ReadHost(h HostHandle, proc string) (Host, error) {
	hs := Host{RPFilter: map[string]int{}, Qdisc: map[string]string{}, Unread: map[string]bool{}}
	var errs []error
	sysctl := func(path string) int {
		b, err := os.ReadFile(filepath.Join(proc, path))
		var v int
		if err == nil {
			v, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if err != nil {
			hs.Unread[strings.ReplaceAll(path, "/", ".")] = true
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
		return v
	}
	hs.RPFilterAll = sysctl("net/ipv4/conf/all/rp_filter")
	hs.Forward4 = sysctl("net/ipv4/ip_forward") == 1
	hs.Forward6 = sysctl("net/ipv6/conf/all/forwarding") == 1
	hs.SrcValidMark = sysctl("net/ipv4/conf/all/src_valid_mark") == 1
	links, err := h.LinkList()
	if err != nil {
		return hs, fmt.Errorf("list links: %w", err)
	}
	qs, qerr := h.QdiscList(nil) // every link's, in one dump
	if qerr != nil {
		errs = append(errs, fmt.Errorf("list qdiscs: %w", qerr))
	}
	root := map[int]string{}
	for _, q := range qs {
		if a := q.Attrs(); a.Parent == netlink.HANDLE_ROOT {
			root[a.LinkIndex] = q.Type()
		}
	}
	for _, l := range links {
		name := l.Attrs().Name
		if b, err := os.ReadFile(filepath.Join(proc, "net/ipv4/conf", name, "rp_filter")); err == nil {
			v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			hs.RPFilter[name] = max(v, hs.RPFilterAll)
		}
		switch q, ok := root[l.Attrs().Index]; {
		case qerr != nil:
		case ok:
			hs.Qdisc[name] = q
		default:
			hs.Qdisc[name] = "noqueue" // no root qdisc listed: the device queues nothing
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleList(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules: %w", err))
			continue
		}
		for _, r := range rules {
			if r.Mark != 0 {
				hs.MarkRules = append(hs.MarkRules, MarkRule{Priority: r.Priority, Mark: r.Mark, Invert: r.Invert, Table: r.Table, V6: fam == netlink.FAMILY_V6})
			}
		}
	}
	return hs, errors.Join(errs...)
}
