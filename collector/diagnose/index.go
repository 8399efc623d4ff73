package diagnose

import (
	"cmp"
	"net/netip"
	"slices"
)

// prefixIndex answers the checks' prefix questions in O(log n) or
// O(prefix lengths) instead of a scan: the most specific entry containing
// an address, and the entries inside a prefix. A hub with 10,000 peers and
// as many routes is checked on every poll.
type prefixIndex[T any] struct {
	exact  map[netip.Prefix]T
	lens   [2][]int // distinct lengths present, longest first, per family (0: IPv4, 1: IPv6)
	sorted []netip.Prefix
}

// newPrefixIndex indexes values by prefix; keep decides between two values
// of the same prefix (true: the new one wins).
func newPrefixIndex[T any](n int, each func(add func(netip.Prefix, T)), keep func(old, new T) bool) *prefixIndex[T] {
	ix := &prefixIndex[T]{exact: make(map[netip.Prefix]T, n), sorted: make([]netip.Prefix, 0, n)}
	seen := [2]map[int]bool{{}, {}}
	each(func(p netip.Prefix, v T) {
		p = p.Masked()
		if old, ok := ix.exact[p]; ok && !keep(old, v) {
			return
		} else if !ok {
			ix.sorted = append(ix.sorted, p)
		}
		ix.exact[p] = v
		f := family(p.Addr())
		if !seen[f][p.Bits()] {
			seen[f][p.Bits()] = true
			ix.lens[f] = append(ix.lens[f], p.Bits())
		}
	})
	for f := range ix.lens {
		slices.SortFunc(ix.lens[f], func(a, b int) int { return b - a })
	}
	slices.SortFunc(ix.sorted, comparePrefix)
	return ix
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// longest returns the entry with the longest prefix containing a, no
// longer than maxBits.
func (ix *prefixIndex[T]) longest(a netip.Addr, maxBits int) (netip.Prefix, T, bool) {
	for _, b := range ix.lens[family(a)] {
		if b > maxBits {
			continue
		}
		p, _ := a.Prefix(b)
		if v, ok := ix.exact[p]; ok {
			return p, v, true
		}
	}
	var zero T
	return netip.Prefix{}, zero, false
}

// inside returns the prefixes that lie within p (p itself included), in
// address order.
func (ix *prefixIndex[T]) inside(p netip.Prefix) []netip.Prefix {
	p = p.Masked()
	i, _ := slices.BinarySearchFunc(ix.sorted, p, comparePrefix)
	var out []netip.Prefix
	for ; i < len(ix.sorted) && p.Contains(ix.sorted[i].Addr()); i++ {
		if ix.sorted[i].Bits() >= p.Bits() {
			out = append(out, ix.sorted[i])
		}
	}
	return out
}
