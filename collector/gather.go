package collector

import (
	dto "github.com/prometheus/client_model/go"

	"github.com/wgpulse/wgpulse/collector/expo"
)

// Gather implements prometheus.Gatherer for the wireguard_* families. It
// builds the exposition straight from the latest snapshot: metrics, values
// and label pairs come from a few slabs per family, and a peer's label pairs
// are shared by all of its series, so a scrape of 10,000 peers costs tens of
// allocations per family instead of several per series. Series order is
// device, then peer order as WireGuard reports it.
func (c *Collector) Gather() ([]*dto.MetricFamily, error) {
	s := c.snap.Load()
	if s == nil {
		return nil, nil
	}
	// Stale devices (this poll failed to read them) are not exported: their
	// values are the last read's, and wgpulse_collector_device_up says so.
	var peers, allowed, nd int
	for i := range s.Devices {
		if s.Devices[i].Stale {
			continue
		}
		nd++
		peers += len(s.Devices[i].Peers)
		for j := range s.Devices[i].Peers {
			allowed += len(s.Devices[i].Peers[j].AllowedIPs)
		}
	}
	var (
		devInfo    = expo.NewFamily("wireguard_device_info", "Metadata about a WireGuard device.", dto.MetricType_GAUGE, nd)
		devPeers   = expo.NewFamily("wireguard_device_peers", "Number of peers configured on the device.", dto.MetricType_GAUGE, nd)
		devMTU     = expo.NewFamily("wireguard_device_mtu_bytes", "Link MTU of the device (netlink).", dto.MetricType_GAUGE, nd)
		peerInfo   = expo.NewFamily("wireguard_peer_info", "Metadata about a peer; endpoint is empty until one is known.", dto.MetricType_GAUGE, peers)
		peerIPs    = expo.NewFamily("wireguard_peer_allowed_ips_info", "One series per allowed IP prefix of a peer.", dto.MetricType_GAUGE, allowed)
		rx         = expo.NewFamily("wireguard_peer_receive_bytes_total", "Bytes received from the peer.", dto.MetricType_COUNTER, peers)
		tx         = expo.NewFamily("wireguard_peer_transmit_bytes_total", "Bytes sent to the peer.", dto.MetricType_COUNTER, peers)
		handshake  = expo.NewFamily("wireguard_peer_last_handshake_seconds", "Unix time of the last completed handshake; 0 if the peer never completed one.", dto.MetricType_GAUGE, peers)
		keepalive  = expo.NewFamily("wireguard_peer_persistent_keepalive_seconds", "PersistentKeepalive interval; 0 when off.", dto.MetricType_GAUGE, peers)
		changes    = expo.NewFamily("wireguard_peer_endpoint_changes_total", "Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).", dto.MetricType_COUNTER, peers)
		lastChange = expo.NewFamily("wireguard_peer_last_endpoint_change_seconds", "Unix time of the last endpoint change seen; 0 if never.", dto.MetricType_GAUGE, peers)
		lastPoll   = expo.NewFamily("wgpulse_collector_last_poll_timestamp_seconds", "Unix time the last poll started.", dto.MetricType_GAUGE, 1)
	)
	lastPoll.Add(unixSeconds(s.Time), nil)

	// Label pairs: per device 4 (device, public_key, listen_port, type), per
	// peer 4 (public_key, name, endpoint + the device's), per prefix 2.
	pairs := expo.NewPairs(4*nd + 3*peers + 2*allowed)
	// Label slices: per device 2, per peer 2, per prefix 1; at most 5 long.
	sets := expo.NewSets(2*4*nd + 2*4*peers + 5*allowed)

	for i := range s.Devices {
		d := &s.Devices[i]
		if d.Stale {
			continue
		}
		lDev := pairs.Pair(&lnDevice, &d.Name)
		devOnly := sets.Set(lDev)
		devInfo.Add(1, sets.Set(lDev, pairs.Pair(&lnListenPort, &d.listenPortStr), pairs.Pair(&lnPublicKey, &d.PublicKey), pairs.Pair(&lnType, &d.Type)))
		devPeers.Add(float64(len(d.Peers)), devOnly)
		if d.MTU > 0 {
			devMTU.Add(float64(d.MTU), devOnly)
		}
		for j := range d.Peers {
			p := &d.Peers[j]
			lKey, lName := pairs.Pair(&lnPublicKey, &p.PublicKey), pairs.Pair(&lnName, &p.Name)
			base := sets.Set(lDev, lName, lKey) // sorted: device, name, public_key
			peerInfo.Add(1, sets.Set(lDev, pairs.Pair(&lnEndpoint, &p.endpointStr), lName, lKey))
			for k, a := range p.AllowedIPs {
				fam := &familyIPv4
				if a.Addr().Is6() {
					fam = &familyIPv6
				}
				peerIPs.Add(1, sets.Set(pairs.Pair(&lnAllowedIPs, &p.allowedStr[k]), lDev, pairs.Pair(&lnFamily, fam), lName, lKey))
			}
			rx.Add(float64(p.ReceiveBytes), base)
			tx.Add(float64(p.TransmitBytes), base)
			handshake.Add(unixSeconds(p.LastHandshake), base)
			keepalive.Add(p.PersistentKeepalive.Seconds(), base)
			changes.Add(float64(p.EndpointChanges), base)
			lastChange.Add(unixSeconds(p.LastEndpointChange), base)
		}
	}
	return expo.Families(devInfo, devMTU, devPeers, peerIPs, changes, peerInfo, lastChange, handshake, keepalive, rx, tx, lastPoll), nil
}

var (
	lnDevice, lnPublicKey, lnListenPort, lnType = "device", "public_key", "listen_port", "type"
	lnName, lnEndpoint, lnAllowedIPs, lnFamily  = "name", "endpoint", "allowed_ips", "family"
	familyIPv4, familyIPv6                      = "IPv4", "IPv6" // as mdlayher/wireguard_exporter
)
