package prober

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/wgpulse/wgpulse/collector"
)

// Targets derives the probe targets from a collector snapshot and the
// configuration: with auto_targets, every /32 or /128 AllowedIP of every
// peer on every watched device (the peer's tunnel address, usually); plus the
// configured targets, labelled with the peer whose AllowedIPs hold their
// address. A configured target replaces an auto-target for the same address
// on the same device.
//
// The targets are sorted by device, address and port, so a snapshot whose
// peers come in another order gives an equal list (the collector lists
// them by key, but a snapshot is not bound to that): SetTargets merges a
// list that is not equal to the last one again (at 10,000 peers, 8 MB of
// garbage a poll). The list and its index are sized from the snapshot.
func Targets(s *collector.Snapshot, cfg Config) []Target {
	if !cfg.Enabled {
		return nil
	}
	// By what Key names, without building its string three times a target
	// on every snapshot: a later target with the same key replaces the
	// earlier one.
	type id struct {
		device string
		addr   netip.Addr
		port   uint16
	}
	n := len(cfg.Targets)
	if cfg.AutoTargets && s != nil {
		for _, d := range s.Devices {
			for _, p := range d.Peers {
				for _, a := range p.AllowedIPs {
					if a.IsSingleIP() {
						n++
					}
				}
			}
		}
	}
	index := make(map[id]int, n)
	out := make([]Target, 0, n)
	put := func(t Target) {
		k := id{t.Device, t.Address, t.TCPPort}
		if i, ok := index[k]; ok {
			out[i] = t
			return
		}
		index[k] = len(out)
		out = append(out, t)
	}
	if cfg.AutoTargets && s != nil {
		for _, d := range s.Devices {
			for _, p := range d.Peers {
				for _, a := range p.AllowedIPs {
					if a.IsSingleIP() {
						put(Target{Device: d.Name, Address: a.Addr(), PublicKey: p.PublicKey, Name: p.Name,
							Size: cfg.Size, Interval: cfg.Interval, DeviceMTU: d.MTU})
					}
				}
			}
		}
	}
	for _, tc := range cfg.Targets {
		addr, err := netip.ParseAddr(tc.Address)
		if err != nil {
			continue // rejected by Validate
		}
		t := Target{Device: tc.Device, Address: addr, Name: tc.Name, Size: tc.Size, Interval: tc.Interval, TCPPort: uint16(tc.TCPPort)}
		if t.Size == 0 {
			t.Size = cfg.Size
		}
		if t.Interval == 0 {
			t.Interval = cfg.Interval
		}
		if s != nil {
			if d, ok := s.Device(tc.Device); ok {
				t.DeviceMTU = d.MTU
				for _, p := range d.Peers {
					for _, a := range p.AllowedIPs {
						if a.Contains(addr) {
							t.PublicKey = p.PublicKey
							if t.Name == "" {
								t.Name = p.Name
							}
						}
					}
				}
			}
		}
		put(t)
	}
	slices.SortFunc(out, func(a, b Target) int {
		return cmp.Or(strings.Compare(a.Device, b.Device), a.Address.Compare(b.Address), cmp.Compare(a.TCPPort, b.TCPPort))
	})
	return out
}
