package collector

import (
	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "wireguard"

var (
	peerLabels = []string{"device", "public_key", "name"}

	descDeviceInfo = prometheus.NewDesc(prometheus.BuildFQName(namespace, "device", "info"),
		"Metadata about a WireGuard device.", []string{"device", "public_key", "listen_port", "type"}, nil)
	descDevicePeers = prometheus.NewDesc(prometheus.BuildFQName(namespace, "device", "peers"),
		"Number of peers configured on the device.", []string{"device"}, nil)
	descDeviceMTU = prometheus.NewDesc(prometheus.BuildFQName(namespace, "device", "mtu_bytes"),
		"Link MTU of the device (netlink).", []string{"device"}, nil)
	descPeerInfo = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "info"),
		"Metadata about a peer; endpoint is empty until one is known.", []string{"device", "public_key", "name", "endpoint"}, nil)
	descPeerAllowedIPs = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "allowed_ips_info"),
		"One series per allowed IP prefix of a peer.", []string{"device", "public_key", "name", "allowed_ips", "family"}, nil)
	descPeerRx = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "receive_bytes_total"),
		"Bytes received from the peer.", peerLabels, nil)
	descPeerTx = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "transmit_bytes_total"),
		"Bytes sent to the peer.", peerLabels, nil)
	descPeerHandshake = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "last_handshake_seconds"),
		"Unix time of the last completed handshake; 0 if the peer never completed one.", peerLabels, nil)
	descPeerKeepalive = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "persistent_keepalive_seconds"),
		"PersistentKeepalive interval; 0 when off.", peerLabels, nil)
	descPeerEndpointChanges = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "endpoint_changes_total"),
		"Times the peer's endpoint differed from the previous poll (NAT rebind or roaming).", peerLabels, nil)
	descPeerLastEndpointChange = prometheus.NewDesc(prometheus.BuildFQName(namespace, "peer", "last_endpoint_change_seconds"),
		"Unix time of the last endpoint change seen; 0 if never.", peerLabels, nil)
	descLastPoll = prometheus.NewDesc(prometheus.BuildFQName("wgpulse", "collector", "last_poll_timestamp_seconds"),
		"Unix time the last poll started.", nil, nil)
)

type selfMetrics struct {
	errors       *prometheus.CounterVec
	up           *prometheus.GaugeVec
	pollDuration prometheus.Histogram
}

func newSelfMetrics() selfMetrics {
	return selfMetrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "errors_total",
			Help: `Failed reads per device; device="" counts failures to list devices.`,
		}, []string{"device"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "device_up",
			Help: "1 if the device was read in the last poll, 0 if reading it failed.",
		}, []string{"device"}),
		pollDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "wgpulse", Subsystem: "collector", Name: "poll_duration_seconds",
			Help:    "Time to read all watched devices once.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
}

func (s selfMetrics) deviceUp(device string, v float64) {
	if device != "" {
		s.up.WithLabelValues(device).Set(v)
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDeviceInfo, descDevicePeers, descDeviceMTU, descPeerInfo,
		descPeerAllowedIPs, descPeerRx, descPeerTx, descPeerHandshake, descPeerKeepalive,
		descPeerEndpointChanges, descPeerLastEndpointChange, descLastPoll} {
		ch <- d
	}
	c.self.errors.Describe(ch)
	c.self.up.Describe(ch)
	c.self.pollDuration.Describe(ch)
}

// Collect implements prometheus.Collector. It reads the latest snapshot and
// never touches the kernel.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.self.errors.Collect(ch)
	c.self.up.Collect(ch)
	c.self.pollDuration.Collect(ch)
	s := c.snap.Load()
	if s == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descLastPoll, prometheus.GaugeValue, unixSeconds(s.Time))
	for i := range s.Devices {
		d := &s.Devices[i]
		ch <- prometheus.MustNewConstMetric(descDeviceInfo, prometheus.GaugeValue, 1, d.Name, d.PublicKey, d.listenPortStr, d.Type)
		ch <- prometheus.MustNewConstMetric(descDevicePeers, prometheus.GaugeValue, float64(len(d.Peers)), d.Name)
		if d.MTU > 0 {
			ch <- prometheus.MustNewConstMetric(descDeviceMTU, prometheus.GaugeValue, float64(d.MTU), d.Name)
		}
		for j := range d.Peers {
			p := &d.Peers[j]
			ch <- prometheus.MustNewConstMetric(descPeerInfo, prometheus.GaugeValue, 1, d.Name, p.PublicKey, p.Name, p.endpointStr)
			for k, a := range p.AllowedIPs {
				fam := "ipv4"
				if a.Addr().Is6() {
					fam = "ipv6"
				}
				ch <- prometheus.MustNewConstMetric(descPeerAllowedIPs, prometheus.GaugeValue, 1, d.Name, p.PublicKey, p.Name, p.allowedStr[k], fam)
			}
			ch <- prometheus.MustNewConstMetric(descPeerRx, prometheus.CounterValue, float64(p.ReceiveBytes), d.Name, p.PublicKey, p.Name)
			ch <- prometheus.MustNewConstMetric(descPeerTx, prometheus.CounterValue, float64(p.TransmitBytes), d.Name, p.PublicKey, p.Name)
			ch <- prometheus.MustNewConstMetric(descPeerHandshake, prometheus.GaugeValue, unixSeconds(p.LastHandshake), d.Name, p.PublicKey, p.Name)
			ch <- prometheus.MustNewConstMetric(descPeerKeepalive, prometheus.GaugeValue, p.PersistentKeepalive.Seconds(), d.Name, p.PublicKey, p.Name)
			ch <- prometheus.MustNewConstMetric(descPeerEndpointChanges, prometheus.CounterValue, float64(p.EndpointChanges), d.Name, p.PublicKey, p.Name)
			ch <- prometheus.MustNewConstMetric(descPeerLastEndpointChange, prometheus.GaugeValue, unixSeconds(p.LastEndpointChange), d.Name, p.PublicKey, p.Name)
		}
	}
}
