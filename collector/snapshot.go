package collector

import (
	"net/netip"
	"time"
)

// Snapshot is one poll of every watched device. It is immutable once
// published: consumers (the exporter, the prober's auto-targets, the
// remediator) may keep and read it from any goroutine.
type Snapshot struct {
	// Time is when the poll started.
	Time time.Time
	// Devices holds the watched devices, sorted by name: those read in this
	// poll, and those that failed this poll but were read before, carried
	// forward with Stale set (one UAPI hiccup is not a vanished device).
	Devices []Device
	// Errors holds the devices that could not be read in this poll, by name.
	Errors map[string]error
}

// Device is one WireGuard interface. Private keys are never copied here.
type Device struct {
	Name       string
	Type       string // "kernel" or "userspace"
	PublicKey  string // base64
	ListenPort int
	// FirewallMark is the device's fwmark (wg-quick's full tunnel sets it
	// and routes by it); 0 when none.
	FirewallMark int
	// MTU is the link MTU read through netlink; 0 when the link is not visible
	// from this network namespace.
	MTU int
	// Peers are sorted by public key, whatever order the device reads in.
	Peers []Peer
	// Stale is set when this poll failed to read the device: the rest is the
	// last successful read, from ReadAt. Stale devices keep their probe
	// targets but are not exported as current state.
	Stale  bool
	ReadAt time.Time

	listenPortStr string
}

// Peer is one peer of a device. Preshared keys are never copied here.
type Peer struct {
	PublicKey string // base64
	// Name is the friendly name from collector.peer_names or a wg-quick file;
	// empty when the peer is unnamed.
	Name string
	// Endpoint is the peer's current UDP endpoint; invalid when unknown.
	Endpoint netip.AddrPort
	// EndpointHost is the host:port of the peer's `Endpoint` in a wg-quick
	// file of collector.peer_names_files when it names a host; empty
	// otherwise (remediate.reresolve resolves it again).
	EndpointHost string
	// LastHandshake is zero when the peer never completed a handshake.
	LastHandshake time.Time
	// Handshake is the session's state as of the poll and HandshakeSince
	// when it entered it (the poll that first saw it; for a peer seen for the
	// first time, that poll).
	Handshake           HandshakeState
	HandshakeSince      time.Time
	ReceiveBytes        int64
	TransmitBytes       int64
	PersistentKeepalive time.Duration // 0 = off
	AllowedIPs          []netip.Prefix
	// EndpointChanges counts polls in which the endpoint differed from the
	// previous poll (NAT rebind or roaming). The first endpoint seen is not a
	// change. Changes that revert between two polls are not seen.
	EndpointChanges    uint64
	LastEndpointChange time.Time // zero when never changed

	// Exposition cache, shared with the peer's tracking state and rebuilt only
	// when the underlying value changes, so a scrape does not format strings.
	endpointStr string
	allowedStr  []string
}

// HandshakeState says whether a peer's session can carry data.
type HandshakeState uint8

const (
	// HandshakeNever: no handshake completed since the peer was configured.
	HandshakeNever HandshakeState = iota
	// HandshakeFresh: the last handshake is at most RejectAfterTime old.
	HandshakeFresh
	// HandshakeStale: older than RejectAfterTime (180 s), so the session
	// cannot carry data until a new handshake completes.
	HandshakeStale
)

// RejectAfterTime is WireGuard's session lifetime (wireguard-go
// device/constants.go): a session older than this cannot carry data.
const RejectAfterTime = 180 * time.Second

func (s HandshakeState) String() string {
	return [...]string{"never", "fresh", "stale"}[s]
}

func handshakeState(last, now time.Time) HandshakeState {
	switch {
	case last.IsZero():
		return HandshakeNever
	case now.Sub(last) > RejectAfterTime:
		return HandshakeStale
	}
	return HandshakeFresh
}

// Change is a peer's handshake state changing between two polls:
// established (never -> fresh), lost (fresh -> stale) or regained
// (stale -> fresh). A peer's first poll is not a change.
type Change struct {
	Time      time.Time // the poll that saw it
	Device    string
	PublicKey string
	Name      string
	From, To  HandshakeState
}

// Kind names the change: "handshake_established", "handshake_lost" or
// "handshake_regained".
func (c Change) Kind() string {
	switch {
	case c.From == HandshakeNever && c.To == HandshakeFresh:
		return "handshake_established"
	case c.To == HandshakeFresh:
		return "handshake_regained"
	}
	return "handshake_lost"
}

// Device returns the named device and true, or false when it was not read.
func (s *Snapshot) Device(name string) (*Device, bool) {
	for i := range s.Devices {
		if s.Devices[i].Name == name {
			return &s.Devices[i], true
		}
	}
	return nil, false
}

// HandshakeAge returns how long ago the last handshake completed, and false
// when the peer never completed one.
func (p *Peer) HandshakeAge(now time.Time) (time.Duration, bool) {
	if p.LastHandshake.IsZero() {
		return 0, false
	}
	return now.Sub(p.LastHandshake), true
}

// unixSeconds is t as fractional Unix seconds, and 0 for the zero time
// (a peer that never handshook is 0, never "now minus the epoch").
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
