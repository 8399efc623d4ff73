package lab_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// One outage, one page, with the real programs: the hub loses every tunnel
// at once (both paths of both sites), so the hub and each site lose most of
// their tunnels together. Exactly one page goes out in all: one
// WireGuardNodeTunnelsDown notification listing the three nodes. No
// per-tunnel page (WireGuardHandshakeMissing would have fired for each of
// the eight tunnel ends 181 s after the cut, the SLO's fast burn sooner),
// and after the heal every alert resolves without another page.
func TestOnePageWhenTheHubLosesEveryTunnel(t *testing.T) {
	t.Parallel()
	promBin, amBin := labtest.Tool(t, "prometheus", "prometheus"), labtest.Tool(t, "prometheus-alertmanager", "prometheus-alertmanager")
	l := labtest.Start(t, lab.Config{Sites: []string{"dc1", "dc2"}, Management: true})
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	gen := generateStack(t, bin)
	hook := newWebhook(t)
	amAddr := startAlertmanager(t, amBin, hook.URL)
	targets := map[string]string{}
	for _, node := range []string{"hub", "dc1", "dc2"} {
		mgmt := l.HubManagement
		if node != "hub" {
			s, _ := l.Site(node)
			mgmt = s.Management
		}
		cfg := filepath.Join(t.TempDir(), node+".yml")
		if err := os.WriteFile(cfg, []byte(l.AgentConfig(node, lab.Remediation{})), 0o600); err != nil {
			t.Fatal(err)
		}
		targets[node] = net.JoinHostPort(mgmt, "9586")
		labtest.StartAgent(t, bin, nsOf(t, l, node), targets[node], "--config.file="+cfg, "--log.level=info")
	}
	prom := startPrometheus(t, promBin, gen, targets, amAddr)
	// Enough probes in Prometheus for the SLO to page (slo.min_probes: 100 in
	// the 1h window), so holding it back is shown, not assumed.
	waitFor(t, 4*time.Minute, "100 probes of every tunnel in Prometheus", func() (bool, string) {
		v, err := instantQuery(prom, `min(sum by (instance, device) (increase(wgpulse_probes_total[1h])))`)
		if err != nil || len(v) == 0 {
			return false, fmt.Sprint(err)
		}
		return v[0].Value >= 110, fmt.Sprintf("fewest probes of a tunnel: %v", v[0].Value)
	})

	cut := time.Now()
	for _, tn := range l.Tunnels {
		if _, err := l.Fault(tn.Name, "down"); err != nil {
			t.Fatal(err)
		}
	}
	pages := func(status string) []notification {
		var out []notification
		for _, n := range hook.all() {
			if n.Receiver == "pager" && n.Status == status {
				out = append(out, n)
			}
		}
		return out
	}
	waitFor(t, 2*time.Minute, "the node page", func() (bool, string) { return len(pages("firing")) > 0, "" })
	page := pages("firing")[0]
	var nodes []string
	for _, a := range page.Alerts {
		nodes = append(nodes, a.Labels["instance"])
	}
	slices.Sort(nodes)
	t.Logf("cut -> page %s: %s, nodes %v", page.At.Sub(cut).Round(time.Second), page.GroupLabels["alertname"], nodes)
	if page.GroupLabels["alertname"] != "WireGuardNodeTunnelsDown" || !slices.Equal(nodes, []string{"dc1", "dc2", "hub"}) {
		t.Errorf("first page %v for %v, want WireGuardNodeTunnelsDown for dc1, dc2 and hub", page.GroupLabels, nodes)
	}
	for _, a := range page.Alerts {
		want := map[string]string{"hub": "4 of 4 tunnels on hub", "dc1": "2 of 2 tunnels on dc1", "dc2": "2 of 2 tunnels on dc2"}[a.Labels["instance"]]
		if !strings.Contains(a.Annotations["description"], want) {
			t.Errorf("%s: description %q, want it to say %q and name the devices", a.Labels["instance"], a.Annotations["description"], want)
		}
	}
	// Past the time every tunnel end would have paged on its own.
	time.Sleep(time.Until(cut.Add(181*time.Second + 10*time.Second + 40*time.Second)))
	if p := pages("firing"); len(p) != 1 {
		for _, n := range p {
			t.Logf("page: %v (%d alerts)", n.GroupLabels, len(n.Alerts))
		}
		t.Errorf("%d pages during the outage, want exactly 1", len(p))
	}
	v, err := instantQuery(prom, `count(ALERTS{alertname="WireGuardHandshakeMissing"}) or vector(0)`)
	if err != nil || len(v) == 0 {
		t.Fatal(err)
	}
	t.Logf("%d tickets during the outage; HandshakeMissing held back in the rules: %v firing or pending", len(hook.all())-len(pages("firing")), v[0].Value)

	heal := time.Now()
	for _, tn := range l.Tunnels {
		if _, err := l.Fault(tn.Name, "up"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 6*time.Minute, "every alert of the outage resolved", func() (bool, string) {
		v, err := instantQuery(prom, `ALERTS{alertstate="firing", alertname=~"WireGuard.+"}`)
		if err != nil {
			return false, err.Error()
		}
		var firing []string
		for _, s := range v {
			firing = append(firing, string(s.Metric["alertname"])+"/"+string(s.Metric["instance"]))
		}
		return len(firing) == 0 && len(pages("resolved")) > 0, fmt.Sprintf("firing %v, resolved pages %d", firing, len(pages("resolved")))
	})
	t.Logf("heal -> every alert resolved, the page's resolved notification %s after", pages("resolved")[0].At.Sub(heal).Round(time.Second))
	if p := pages("firing"); len(p) != 1 {
		t.Errorf("%d pages in all, want exactly 1", len(p))
	}
}
