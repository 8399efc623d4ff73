package collector_test

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
)

// wgpulse is a drop-in replacement for mdlayher/wireguard_exporter: on the
// device of that exporter's README example, every series of the example is
// in our exposition with the same label values and value (ours may carry
// more labels), and the family label of allowed IPs reads as its code sets
// it ("IPv4", "IPv6").
func TestWireguardExporterCompatibility(t *testing.T) {
	f, err := os.Open("testdata/wireguard_exporter_readme.prom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	theirs, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatal(err)
	}
	mustKey := func(s string) wgtypes.Key {
		k, err := wgtypes.ParseKey(s)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	foo, bar := mustKey("VWRsPtbdGtcNyaQ+cFAZfZnYL05uj+XINQS6yQY5gQ8="), mustKey("UvwWyMQ1ckLEG82Qdooyr0UzJhqOlzzcx90DXuwMTDA=")
	dev := &wgtypes.Device{
		Name: "wg0", Type: wgtypes.LinuxKernel, PublicKey: mustKey("QwAmAD1v4wMIX/0gKJbr9hv1o3YX0YTk7Mdj0L4dylI="), ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{PublicKey: foo},
			{
				PublicKey: bar, Endpoint: udp("[fd9e:1a04:f01d:20:e5c2:7b69:90d8:ca45]:49203"),
				LastHandshakeTime: time.Unix(1_588_274_629, 0), ReceiveBytes: 76728, TransmitBytes: 76200,
				AllowedIPs: []net.IPNet{cidr("192.168.20.0/24"), cidr("fd9e:1a04:f01d:20::/64")},
			},
		},
	}
	cfg := collector.DefaultConfig()
	cfg.PeerNames = map[string]string{foo.String(): "foo", bar.String(): "bar"}
	col := newCollector(t, cfg, &fakeClient{devices: func(string) (*wgtypes.Device, error) { return dev, nil }},
		&fakeLinks{links: []netlink.Link{&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "wg0", MTU: 1420}}}}, nil, nil)
	col.Poll()
	mfs, err := gatherer(t, col).Gather()
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		ours[mf.GetName()] = mf
	}

	checked := 0
	for name, want := range theirs {
		got := ours[name]
		if got == nil {
			t.Errorf("%s: not exported", name)
			continue
		}
		if got.GetType() != want.GetType() {
			t.Errorf("%s: type %v, theirs %v", name, got.GetType(), want.GetType())
		}
		for _, wm := range want.GetMetric() {
			checked++
			if m := findSeries(got, wm); m == nil {
				t.Errorf("%s%v: no series with these labels", name, wm.GetLabel())
			} else if gv, wv := value(m), value(wm); gv != wv {
				t.Errorf("%s%v = %v, theirs %v", name, wm.GetLabel(), gv, wv)
			}
		}
	}
	if checked != 11 {
		t.Errorf("checked %d series of the example, want its 11", checked)
	}
	for _, m := range ours["wireguard_peer_allowed_ips_info"].GetMetric() {
		l := labels(m)
		want := "IPv4"
		if netip.MustParsePrefix(l["allowed_ips"]).Addr().Is6() {
			want = "IPv6"
		}
		if l["family"] != want {
			t.Errorf("allowed_ips %s: family=%q, wireguard_exporter sets %q", l["allowed_ips"], l["family"], want)
		}
	}
}

// findSeries returns the series of mf that has every label of want.
func findSeries(mf *dto.MetricFamily, want *dto.Metric) *dto.Metric {
next:
	for _, m := range mf.GetMetric() {
		have := labels(m)
		for _, lp := range want.GetLabel() {
			if v, ok := have[lp.GetName()]; !ok || v != lp.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

func labels(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return m.GetUntyped().GetValue()
}
