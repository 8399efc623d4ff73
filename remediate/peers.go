package remediate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

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

// errNoPeer says the configured peer is not on the device.
var errNoPeer = errors.New("no such peer on the device")

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
	return netip.AddrPort{}, 0, fmt.Errorf("peer %s on %s: %w", key, device, errNoPeer)
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
