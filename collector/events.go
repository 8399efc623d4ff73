package collector

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Event kinds: the stable values of the `event` key of the agent's
// connection-event log lines (for a SIEM).
const (
	EventPeerAdded            = "peer_added"
	EventPeerRemoved          = "peer_removed"
	EventHandshakeEstablished = "handshake_established"
	EventHandshakeLost        = "handshake_lost"
	EventHandshakeRegained    = "handshake_regained"
	EventEndpointChanged      = "endpoint_changed"
	EventAllowedIPsChanged    = "allowed_ips_changed"
	EventDeviceKeyChanged     = "device_key_changed"
)

// Event is one connection event between two polls. Keys are public keys;
// private and preshared keys are never read into a Snapshot.
type Event struct {
	Time      time.Time
	Kind      string
	Device    string
	PublicKey string // the peer's; the device's new key for device_key_changed
	Name      string
	// Old and New are the endpoint (endpoint_changed), the AllowedIPs
	// (allowed_ips_changed, comma-separated) or the device's public key
	// (device_key_changed).
	Old, New string
	// Endpoint is the peer's endpoint (peer_added, handshake_*).
	Endpoint string
	// LastHandshake is the last handshake (handshake_lost, _regained: the
	// one before the gap).
	LastHandshake time.Time
}

// Attrs are the event's log attributes, in a stable order; empty fields are
// left out.
func (e Event) Attrs() []slog.Attr {
	attrs := []slog.Attr{slog.String("event", e.Kind), slog.String("device", e.Device)}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	if e.Kind == EventDeviceKeyChanged {
		add("old_public_key", e.Old)
		add("new_public_key", e.New)
		return attrs
	}
	add("public_key", e.PublicKey)
	add("name", e.Name)
	add("endpoint", e.Endpoint)
	add("old", e.Old)
	add("new", e.New)
	if !e.LastHandshake.IsZero() {
		attrs = append(attrs, slog.Time("last_handshake", e.LastHandshake))
	}
	return attrs
}

// Events returns what changed between two snapshots of the same watched
// devices: peers added and removed, handshakes established, lost (older
// than 180 s) and regained, endpoints and AllowedIPs changed, and a
// device's own key changed. The first snapshot (prev nil) is the baseline:
// no events. Devices not read in either snapshot (stale, or failing) are
// compared once they are read again.
func Events(prev, cur *Snapshot) []Event {
	if prev == nil || cur == nil {
		return nil
	}
	var out []Event
	for _, d := range cur.Devices {
		if d.Stale {
			continue
		}
		pd, ok := prev.Device(d.Name)
		if !ok {
			continue // a device seen for the first time is a baseline too
		}
		ev := func(kind string, p *Peer) Event {
			e := Event{Time: cur.Time, Kind: kind, Device: d.Name}
			if p != nil {
				e.PublicKey, e.Name = p.PublicKey, p.Name
			}
			return e
		}
		if pd.PublicKey != "" && d.PublicKey != pd.PublicKey {
			e := ev(EventDeviceKeyChanged, nil)
			e.PublicKey, e.Old, e.New = d.PublicKey, pd.PublicKey, d.PublicKey
			out = append(out, e)
		}
		before := make(map[string]*Peer, len(pd.Peers))
		for i := range pd.Peers {
			before[pd.Peers[i].PublicKey] = &pd.Peers[i]
		}
		for i := range d.Peers {
			p := &d.Peers[i]
			b, ok := before[p.PublicKey]
			if !ok {
				e := ev(EventPeerAdded, p)
				e.Endpoint, e.New = endpointString(p.Endpoint), prefixList(p.AllowedIPs)
				out = append(out, e)
				if p.Handshake == HandshakeFresh { // added and handshaked between two polls
					e := ev(EventHandshakeEstablished, p)
					e.Endpoint = endpointString(p.Endpoint)
					out = append(out, e)
				}
				continue
			}
			delete(before, p.PublicKey)
			if p.Handshake != b.Handshake {
				kind := Change{From: b.Handshake, To: p.Handshake}.Kind()
				e := ev(kind, p)
				e.Endpoint = endpointString(p.Endpoint)
				if kind != EventHandshakeEstablished {
					e.LastHandshake = b.LastHandshake
				}
				out = append(out, e)
			}
			if p.Endpoint != b.Endpoint && p.Endpoint.IsValid() && b.Endpoint.IsValid() {
				e := ev(EventEndpointChanged, p)
				e.Old, e.New = b.Endpoint.String(), p.Endpoint.String()
				out = append(out, e)
			}
			if !slices.Equal(p.AllowedIPs, b.AllowedIPs) {
				e := ev(EventAllowedIPsChanged, p)
				e.Old, e.New = prefixList(b.AllowedIPs), prefixList(p.AllowedIPs)
				out = append(out, e)
			}
		}
		for i := range pd.Peers { // in the previous order: stable output
			if b := &pd.Peers[i]; before[b.PublicKey] != nil {
				out = append(out, ev(EventPeerRemoved, b))
			}
		}
	}
	return out
}

func endpointString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
