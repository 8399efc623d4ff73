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
// device, then peer by public key (the snapshot's order).
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
		devInfo    = fDevInfo.family(nd)
		devPeers   = fDevPeers.family(nd)
		devMTU     = fDevMTU.family(nd)
		peerInfo   = fPeerInfo.family(peers)
		peerIPs    = fPeerIPs.family(allowed)
		rx         = fRx.family(peers)
		tx         = fTx.family(peers)
		handshake  = fHandshake.family(peers)
		keepalive  = fKeepalive.family(peers)
		changes    = fChanges.family(peers)
		lastChange = fLastChange.family(peers)
		lastPoll   = fLastPoll.family(1)
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

// WriteText implements expo.TextGatherer: the same families as Gather, in the
// same order, written family by family straight from the snapshot.
func (c *Collector) WriteText(w *expo.TextWriter) error {
	s := c.snap.Load()
	if s == nil {
		return nil
	}
	devices := func(each func(d *Device)) {
		for i := range s.Devices {
			if !s.Devices[i].Stale {
				each(&s.Devices[i])
			}
		}
	}
	peers := func(each func(d *Device, p *Peer)) {
		devices(func(d *Device) {
			for j := range d.Peers {
				each(d, &d.Peers[j])
			}
		})
	}
	base := func(d *Device, p *Peer) [3]expo.Label {
		return [3]expo.Label{{Name: lnDevice, Value: d.Name}, {Name: lnName, Value: p.Name}, {Name: lnPublicKey, Value: p.PublicKey, Verbatim: true}}
	}
	perPeer := func(f famDef, value func(p *Peer) float64) {
		f.start(w)
		peers(func(d *Device, p *Peer) {
			l := base(d, p)
			w.Series(value(p), l[:]...)
		})
	}

	fDevInfo.start(w)
	devices(func(d *Device) {
		w.Series(1, expo.Label{Name: lnDevice, Value: d.Name}, expo.Label{Name: lnListenPort, Value: d.listenPortStr},
			expo.Label{Name: lnPublicKey, Value: d.PublicKey, Verbatim: true}, expo.Label{Name: lnType, Value: d.Type})
	})
	fDevMTU.start(w)
	devices(func(d *Device) {
		if d.MTU > 0 {
			w.Series(float64(d.MTU), expo.Label{Name: lnDevice, Value: d.Name})
		}
	})
	fDevPeers.start(w)
	devices(func(d *Device) { w.Series(float64(len(d.Peers)), expo.Label{Name: lnDevice, Value: d.Name}) })
	fPeerIPs.start(w)
	peers(func(d *Device, p *Peer) {
		for k, a := range p.AllowedIPs {
			fam := familyIPv4
			if a.Addr().Is6() {
				fam = familyIPv6
			}
			w.Series(1, expo.Label{Name: lnAllowedIPs, Value: p.allowedStr[k]}, expo.Label{Name: lnDevice, Value: d.Name},
				expo.Label{Name: lnFamily, Value: fam}, expo.Label{Name: lnName, Value: p.Name}, expo.Label{Name: lnPublicKey, Value: p.PublicKey, Verbatim: true})
		}
	})
	perPeer(fChanges,
		func(p *Peer) float64 { return float64(p.EndpointChanges) })
	fPeerInfo.start(w)
	peers(func(d *Device, p *Peer) {
		w.Series(1, expo.Label{Name: lnDevice, Value: d.Name}, expo.Label{Name: lnEndpoint, Value: p.endpointStr},
			expo.Label{Name: lnName, Value: p.Name}, expo.Label{Name: lnPublicKey, Value: p.PublicKey, Verbatim: true})
	})
	perPeer(fLastChange,
		func(p *Peer) float64 { return unixSeconds(p.LastEndpointChange) })
	perPeer(fHandshake,
		func(p *Peer) float64 { return unixSeconds(p.LastHandshake) })
	perPeer(fKeepalive,
		func(p *Peer) float64 { return p.PersistentKeepalive.Seconds() })
	perPeer(fRx,
		func(p *Peer) float64 { return float64(p.ReceiveBytes) })
	perPeer(fTx,
		func(p *Peer) float64 { return float64(p.TransmitBytes) })
	fLastPoll.start(w)
	w.Series(unixSeconds(s.Time))
	return nil
}

// famDef is one family: Gather and WriteText both use it.
type famDef struct {
	name, help string
	typ        dto.MetricType
}

func (f famDef) family(n int) *expo.Family { return expo.NewFamily(f.name, f.help, f.typ, n) }
func (f famDef) start(w *expo.TextWriter)  { w.Family(f.name, f.help, f.typ) }

var (
	fDevInfo    = famDef{"wireguard_device_info", "Metadata about a WireGuard device.", dto.MetricType_GAUGE}
	fDevPeers   = famDef{"wireguard_device_peers", "Number of peers configured on the device.", dto.MetricType_GAUGE}
	fDevMTU     = famDef{"wireguard_device_mtu_bytes", "Link MTU of the device (netlink).", dto.MetricType_GAUGE}
	fPeerInfo   = famDef{"wireguard_peer_info", "Metadata about a peer; endpoint is empty until one is known.", dto.MetricType_GAUGE}
	fPeerIPs    = famDef{"wireguard_peer_allowed_ips_info", "One series per allowed IP prefix of a peer.", dto.MetricType_GAUGE}
	fRx         = famDef{"wireguard_peer_receive_bytes_total", "Bytes received from the peer.", dto.MetricType_COUNTER}
	fTx         = famDef{"wireguard_peer_transmit_bytes_total", "Bytes sent to the peer.", dto.MetricType_COUNTER}
	fHandshake  = famDef{"wireguard_peer_last_handshake_seconds", "Unix time of the last completed handshake; 0 if the peer never completed one.", dto.MetricType_GAUGE}
	fKeepalive  = famDef{"wireguard_peer_persistent_keepalive_seconds", "PersistentKeepalive interval; 0 when off.", dto.MetricType_GAUGE}
	fChanges    = famDef{"wireguard_peer_endpoint_changes_total", "Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).", dto.MetricType_COUNTER}
	fLastChange = famDef{"wireguard_peer_last_endpoint_change_seconds", "Unix time of the last endpoint change seen; 0 if never.", dto.MetricType_GAUGE}
	fLastPoll   = famDef{"wgpulse_collector_last_poll_timestamp_seconds", "Unix time the last poll started.", dto.MetricType_GAUGE}
)
