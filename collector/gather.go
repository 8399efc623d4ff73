package collector

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	var peers, allowed int
	for i := range s.Devices {
		peers += len(s.Devices[i].Peers)
		for j := range s.Devices[i].Peers {
			allowed += len(s.Devices[i].Peers[j].AllowedIPs)
		}
	}
	nd := len(s.Devices)
	var (
		devInfo    = newFamily("wireguard_device_info", "Metadata about a WireGuard device.", dto.MetricType_GAUGE, nd)
		devPeers   = newFamily("wireguard_device_peers", "Number of peers configured on the device.", dto.MetricType_GAUGE, nd)
		devMTU     = newFamily("wireguard_device_mtu_bytes", "Link MTU of the device (netlink).", dto.MetricType_GAUGE, nd)
		peerInfo   = newFamily("wireguard_peer_info", "Metadata about a peer; endpoint is empty until one is known.", dto.MetricType_GAUGE, peers)
		peerIPs    = newFamily("wireguard_peer_allowed_ips_info", "One series per allowed IP prefix of a peer.", dto.MetricType_GAUGE, allowed)
		rx         = newFamily("wireguard_peer_receive_bytes_total", "Bytes received from the peer.", dto.MetricType_COUNTER, peers)
		tx         = newFamily("wireguard_peer_transmit_bytes_total", "Bytes sent to the peer.", dto.MetricType_COUNTER, peers)
		handshake  = newFamily("wireguard_peer_last_handshake_seconds", "Unix time of the last completed handshake; 0 if the peer never completed one.", dto.MetricType_GAUGE, peers)
		keepalive  = newFamily("wireguard_peer_persistent_keepalive_seconds", "PersistentKeepalive interval; 0 when off.", dto.MetricType_GAUGE, peers)
		changes    = newFamily("wireguard_peer_endpoint_changes_total", "Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).", dto.MetricType_COUNTER, peers)
		lastChange = newFamily("wireguard_peer_last_endpoint_change_seconds", "Unix time of the last endpoint change seen; 0 if never.", dto.MetricType_GAUGE, peers)
		lastPoll   = newFamily("wgpulse_collector_last_poll_timestamp_seconds", "Unix time the last poll started.", dto.MetricType_GAUGE, 1)
	)
	lastPoll.add(unixSeconds(s.Time), nil)

	// Label pairs: per device 4 (device, public_key, listen_port, type), per
	// peer 4 (public_key, name, endpoint + the device's), per prefix 2.
	pairs := newPairs(4*nd + 3*peers + 2*allowed)
	// Label slices: per device 2, per peer 2, per prefix 1; at most 5 long.
	sets := newSets(2*4*nd + 2*4*peers + 5*allowed)

	for i := range s.Devices {
		d := &s.Devices[i]
		lDev := pairs.pair(&lnDevice, &d.Name)
		devOnly := sets.set(lDev)
		devInfo.add(1, sets.set(lDev, pairs.pair(&lnListenPort, &d.listenPortStr), pairs.pair(&lnPublicKey, &d.PublicKey), pairs.pair(&lnType, &d.Type)))
		devPeers.add(float64(len(d.Peers)), devOnly)
		if d.MTU > 0 {
			devMTU.add(float64(d.MTU), devOnly)
		}
		for j := range d.Peers {
			p := &d.Peers[j]
			lKey, lName := pairs.pair(&lnPublicKey, &p.PublicKey), pairs.pair(&lnName, &p.Name)
			base := sets.set(lDev, lName, lKey) // sorted: device, name, public_key
			peerInfo.add(1, sets.set(lDev, pairs.pair(&lnEndpoint, &p.endpointStr), lName, lKey))
			for k, a := range p.AllowedIPs {
				fam := &familyIPv4
				if a.Addr().Is6() {
					fam = &familyIPv6
				}
				peerIPs.add(1, sets.set(pairs.pair(&lnAllowedIPs, &p.allowedStr[k]), lDev, pairs.pair(&lnFamily, fam), lName, lKey))
			}
			rx.add(float64(p.ReceiveBytes), base)
			tx.add(float64(p.TransmitBytes), base)
			handshake.add(unixSeconds(p.LastHandshake), base)
			keepalive.add(p.PersistentKeepalive.Seconds(), base)
			changes.add(float64(p.EndpointChanges), base)
			lastChange.add(unixSeconds(p.LastEndpointChange), base)
		}
	}
	out := make([]*dto.MetricFamily, 0, 12)
	for _, f := range []*family{devInfo, devMTU, devPeers, peerIPs, changes, peerInfo, lastChange, handshake, keepalive, rx, tx, lastPoll} {
		if len(f.mf.Metric) > 0 {
			out = append(out, f.mf)
		}
	}
	return out, nil
}

var (
	lnDevice, lnPublicKey, lnListenPort, lnType = "device", "public_key", "listen_port", "type"
	lnName, lnEndpoint, lnAllowedIPs, lnFamily  = "name", "endpoint", "allowed_ips", "family"
	familyIPv4, familyIPv6                      = "ipv4", "ipv6"
)

// family fills one MetricFamily from slabs sized up front.
type family struct {
	mf       *dto.MetricFamily
	metrics  []dto.Metric
	values   []float64
	gauges   []dto.Gauge
	counters []dto.Counter
}

func newFamily(name, help string, typ dto.MetricType, n int) *family {
	f := &family{
		mf:      &dto.MetricFamily{Name: &name, Help: &help, Type: typ.Enum(), Metric: make([]*dto.Metric, 0, n)},
		metrics: make([]dto.Metric, n),
		values:  make([]float64, n),
	}
	if typ == dto.MetricType_COUNTER {
		f.counters = make([]dto.Counter, n)
	} else {
		f.gauges = make([]dto.Gauge, n)
	}
	return f
}

func (f *family) add(v float64, labels []*dto.LabelPair) {
	i := len(f.mf.Metric)
	m := &f.metrics[i]
	f.values[i] = v
	if f.counters != nil {
		f.counters[i].Value = &f.values[i]
		m.Counter = &f.counters[i]
	} else {
		f.gauges[i].Value = &f.values[i]
		m.Gauge = &f.gauges[i]
	}
	m.Label = labels
	f.mf.Metric = append(f.mf.Metric, m)
}

// pairSlab hands out label pairs pointing at strings owned by the snapshot.
type pairSlab struct{ buf []dto.LabelPair }

func newPairs(n int) *pairSlab { return &pairSlab{buf: make([]dto.LabelPair, 0, n)} }

func (s *pairSlab) pair(name, value *string) *dto.LabelPair {
	if len(s.buf) == cap(s.buf) { // sizing is exact; this only guards a miscount
		s.buf = make([]dto.LabelPair, 0, 64)
	}
	s.buf = append(s.buf, dto.LabelPair{Name: name, Value: value})
	return &s.buf[len(s.buf)-1]
}

// setSlab hands out label slices (already sorted by label name).
type setSlab struct{ buf []*dto.LabelPair }

func newSets(n int) *setSlab { return &setSlab{buf: make([]*dto.LabelPair, 0, n)} }

func (s *setSlab) set(pairs ...*dto.LabelPair) []*dto.LabelPair {
	if cap(s.buf)-len(s.buf) < len(pairs) {
		s.buf = make([]*dto.LabelPair, 0, 64)
	}
	start := len(s.buf)
	s.buf = append(s.buf, pairs...)
	return s.buf[start:len(s.buf):len(s.buf)]
}

// Gatherers joins the agent registry with collectors that gather on their
// own. Family names must not overlap; the collector's never do with the
// registry's, so the per-series consistency checks of prometheus.Gatherers
// (the most expensive part of a large scrape) are skipped.
type Gatherers []prometheus.Gatherer

// Gather implements prometheus.Gatherer.
func (gs Gatherers) Gather() ([]*dto.MetricFamily, error) {
	var (
		out  []*dto.MetricFamily
		errs prometheus.MultiError
	)
	for _, g := range gs {
		mfs, err := g.Gather()
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, mfs...)
	}
	return out, errs.MaybeUnwrap()
}
