package prober

import (
	"net/netip"

	"github.com/wgpulse/wgpulse/collector"
)

// Targets derives the probe targets from a collector snapshot and the
// configuration: with auto_targets, every /32 or /128 AllowedIP of every
// peer on every watched device (the peer's tunnel address, usually); plus the
// configured targets, labelled with the peer whose AllowedIPs hold their
// address. A configured target replaces an auto-target for the same address
// on the same device.
func Targets(s *collector.Snapshot, cfg Config) []Target {
	if !cfg.Enabled {
		return nil
	}
	byKey := map[string]Target{}
	var order []string
	put := func(t Target) {
		if _, ok := byKey[t.Key()]; !ok {
			order = append(order, t.Key())
		}
		byKey[t.Key()] = t
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
	out := make([]Target, 0, len(order))
	for _, k := range order {
		out = append(out, byKey[k])
	}
	return out
}
