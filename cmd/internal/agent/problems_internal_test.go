package agent

import (
	"bytes"
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/collector/expo"
	"github.com/wgpulse/wgpulse/collector/expo/expotest"
	"github.com/wgpulse/wgpulse/prober"
)

// problemFindings are a poll's findings: n peers that never handshook, a
// device problem, an info finding, and one problem found twice.
func problemFindings(n int) []diagnose.Finding {
	fs := []diagnose.Finding{
		{Severity: diagnose.Error, Check: diagnose.CheckRouteNotAllowed, Device: "wg0", PublicKey: "devKey=", Object: "route 10.99.0.0/16"},
		{Severity: diagnose.Info, Check: diagnose.CheckFirewallUnknown, Device: "wg0", PublicKey: "devKey="},
		{Severity: diagnose.Warning, Check: diagnose.CheckNATWithoutKeepalive, Device: "wg1", PublicKey: "b+/=", Name: `dc "2"`},
		{Severity: diagnose.Warning, Check: diagnose.CheckNATWithoutKeepalive, Device: "wg1", PublicKey: "b+/=", Name: `dc "2"`},
	}
	for i := range n {
		fs = append(fs, diagnose.Finding{Severity: diagnose.Warning, Check: diagnose.CheckHandshakeNever, Device: "wg0",
			PublicKey: fmt.Sprintf("k%05d=", n-i), Name: fmt.Sprintf("peer-%d", i%7)})
	}
	return fs
}

// The family is what the GaugeVec it replaced exposed, byte for byte, and
// its text path writes what its Gather describes.
func TestProblemFamilyExposesWhatTheGaugeVecDid(t *testing.T) {
	fs := problemFindings(50)
	vec := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: fProblem.name, Help: fProblem.help}, []string{"device", "public_key", "name", "check"})
	for _, f := range fs {
		if f.Severity > diagnose.Info {
			vec.WithLabelValues(f.Device, f.PublicKey, f.Name, f.Check).Set(1)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(vec)
	want := expotest.Text(t, reg)
	var f problemFamily
	f.set(fs)
	got := expotest.TextMatchesGather(t, &f)
	if got != want {
		t.Errorf("wgpulse_config_problem differs from the GaugeVec's exposition:\n--- got\n%s--- want\n%s", got, want)
	}
	if n := strings.Count(got, "\n") - 2; n != 52 { // 50 peers, the route, the NAT problem once; no info
		t.Errorf("%d series, want 52:\n%s", n, got)
	}
}

func TestProblemFamilyEmpty(t *testing.T) {
	var f problemFamily
	if mfs, _ := f.Gather(); len(mfs) != 0 {
		t.Errorf("before any poll: %d families, want none", len(mfs))
	}
	f.set(problemFindings(3))
	f.set([]diagnose.Finding{{Severity: diagnose.Info, Check: diagnose.CheckFirewallUnknown, Device: "wg0"}})
	if got := expotest.TextMatchesGather(t, &f); got != "" {
		t.Errorf("only an info finding left: got\n%s", got)
	}
}

// A scrape of 10,000 problems builds nothing per series: the text path
// writes from the poll's slice, the protobuf path from a few slabs.
func TestProblemFamilyScrapeAllocatesLittle(t *testing.T) {
	var f problemFamily
	f.set(problemFindings(10000))
	var buf bytes.Buffer
	w := expo.NewTextWriter(&buf)
	text := testing.AllocsPerRun(5, func() {
		buf.Reset()
		_ = f.WriteText(w)
		_ = w.Flush()
	})
	gather := testing.AllocsPerRun(5, func() { _, _ = f.Gather() })
	if text > 2 || gather > 20 {
		t.Errorf("allocations per scrape of 10,000 problems: text %.0f (want at most 2), protobuf %.0f (want at most 20)", text, gather)
	}
}

// A peer probed at its /32 and its /128 has the smaller path MTU, in
// either order (the prober lists them in map order).
func TestPeerPathMTUsTakeTheSmaller(t *testing.T) {
	ms := []prober.PeerPathMTU{
		{Device: "wg0", PublicKey: "A", MTU: 1420},
		{Device: "wg0", PublicKey: "A", MTU: 1280},
		{Device: "wg0", PublicKey: "B", MTU: 1400},
		{Device: "wg1", PublicKey: "A", MTU: 1300},
	}
	want := map[string]int{diagnose.PeerKey("wg0", "A"): 1280, diagnose.PeerKey("wg0", "B"): 1400, diagnose.PeerKey("wg1", "A"): 1300}
	for _, order := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}} {
		var in []prober.PeerPathMTU
		for _, i := range order {
			in = append(in, ms[i])
		}
		if got := peerPathMTUs(in); !maps.Equal(got, want) {
			t.Errorf("order %v: %v, want %v", order, got, want)
		}
	}
}
