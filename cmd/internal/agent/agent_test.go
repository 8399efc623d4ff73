package agent_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
	"github.com/wgpulse/wgpulse/remediate"
)

type fakeClient struct{}

func (fakeClient) Device(name string) (*wgtypes.Device, error) {
	return &wgtypes.Device{Name: name, Type: wgtypes.Userspace}, nil
}

func newAgent(t *testing.T, cfgFile string, logs *bytes.Buffer, mod ...func(*agent.Options)) *agent.Agent {
	t.Helper()
	opts := agent.Options{
		ConfigFile: cfgFile,
		Logger:     slog.New(slog.NewTextHandler(logs, nil)),
		Collector:  collector.Options{Client: fakeClient{}, ListUAPI: func() ([]string, error) { return []string{"wg0"}, nil }},
	}
	for _, m := range mod {
		m(&opts)
	}
	a, err := agent.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestReadyAfterFirstPoll(t *testing.T) {
	a := newAgent(t, "", new(bytes.Buffer))
	h, err := a.Handler()
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/-/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready before first poll: %d, want 503", code)
	}
	if code, _ := get("/-/healthy"); code != http.StatusOK {
		t.Errorf("healthy: %d", code)
	}
	a.Collector().Poll()
	if code, _ := get("/-/ready"); code != http.StatusOK {
		t.Errorf("ready after first poll: %d, want 200", code)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, `wireguard_device_info{device="wg0"`) || !strings.Contains(body, "wgpulse_build_info") {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	if code, body := get("/"); code != http.StatusOK || !strings.Contains(body, "/metrics") {
		t.Errorf("landing page: %d\n%s", code, body)
	}
}

func TestGzipNegotiation(t *testing.T) {
	a := newAgent(t, "", new(bytes.Buffer))
	a.Collector().Poll()
	h, _ := a.Handler()
	for _, tc := range []struct{ accept, want string }{
		{"gzip", "gzip"}, {"deflate, gzip;q=0.5", "gzip"}, {"gzip;q=0", ""}, {"", ""},
	} {
		req := httptest.NewRequest("GET", "/metrics", nil)
		req.Header.Set("Accept-Encoding", tc.accept)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := rec.Header().Get("Content-Encoding"); got != tc.want {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, want %q", tc.accept, got, tc.want)
		}
		body := rec.Body.Bytes()
		if tc.want == "gzip" { // one member the standard library reads (parallelGzip)
			zr, err := gzip.NewReader(rec.Body)
			if err != nil {
				t.Fatalf("Accept-Encoding %q: %v", tc.accept, err)
			}
			zr.Multistream(false)
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatalf("Accept-Encoding %q: reading the gzip body: %v", tc.accept, err)
			}
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		if _, err := parser.TextToMetricFamilies(bytes.NewReader(body)); err != nil || !bytes.Contains(body, []byte(`wireguard_device_info{device="wg0"`)) {
			t.Errorf("Accept-Encoding %q: body does not parse as the scrape (%v):\n%.300s", tc.accept, err, body)
		}
	}
}

func TestReloadKeepsRunningConfigOnError(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "wgpulse.yml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("collector:\n  devices: [wg0]\n")
	var logs bytes.Buffer
	a := newAgent(t, file, &logs)
	reloadOK := func() float64 {
		mfs, err := a.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "wgpulse_config_last_reload_successful" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no wgpulse_config_last_reload_successful")
		return 0
	}
	write("collector:\n  devices: [wg0]\n  bogus: 1\n")
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "wgpulse.yml:3") {
		t.Fatalf("reload error = %v, want file:line", err)
	}
	if reloadOK() != 0 {
		t.Error("failed reload not reported")
	}
	if got := a.Collector().Poll().Devices; len(got) != 1 || got[0].Name != "wg0" {
		t.Errorf("running config lost after a bad reload: %+v", got)
	}
	write("collector:\n  devices: [wg1]\n")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if reloadOK() != 1 {
		t.Error("good reload not reported")
	}
	if got := a.Collector().Poll().Devices; len(got) != 1 || got[0].Name != "wg1" {
		t.Errorf("reloaded config not applied: %+v", got)
	}
	if n, err := testutil.GatherAndCount(a.Registry(), "wgpulse_config_last_reload_success_timestamp_seconds"); err != nil || n != 1 {
		t.Errorf("reload timestamp series: %d %v", n, err)
	}
}

// The remediation controls: status JSON, pause and resume by POST only and
// only with --web.enable-remediation-api, never from another site; the
// paused state on the landing page and in the metrics.
func TestRemediationControls(t *testing.T) {
	do := func(h http.Handler, method, path string, hdr map[string]string) (int, string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	off := newAgent(t, "", new(bytes.Buffer))
	h, err := off.Handler()
	if err != nil {
		t.Fatal(err)
	}
	if code, body := do(h, "POST", "/-/remediate/pause", nil); code != http.StatusForbidden || off.Remediator().Paused() ||
		!strings.Contains(body, "--web.enable-remediation-api") {
		t.Errorf("POST pause without the flag: %d %q, paused %v; want 403 naming the flag", code, body, off.Remediator().Paused())
	}
	off.Remediator().TogglePause("SIGUSR1") // the signal works without the flag
	if !off.Remediator().Paused() {
		t.Error("SIGUSR1's toggle did not pause")
	}

	a := newAgent(t, "", new(bytes.Buffer), func(o *agent.Options) { o.RemediationAPI = true })
	h, err = a.Handler()
	if err != nil {
		t.Fatal(err)
	}
	if code, body := do(h, "GET", "/-/remediate", nil); code != http.StatusOK || !strings.Contains(body, `"mode": "dry-run"`) || !strings.Contains(body, `"paused": false`) {
		t.Fatalf("status: %d %s", code, body)
	}
	if code, _ := do(h, "GET", "/-/remediate/pause", nil); code != http.StatusMethodNotAllowed {
		t.Errorf("GET pause: %d, want 405 (a crawler must not pause remediation)", code)
	}
	for _, hdr := range []map[string]string{
		{"Content-Type": "application/x-www-form-urlencoded"}, // an HTML form on any site
		{"Content-Type": "text/plain; charset=utf-8"},
		{"Content-Type": "multipart/form-data; boundary=x"},
		{"Sec-Fetch-Site": "cross-site"}, // a browser says where the request comes from
		{"Origin": "https://evil.example"},
	} {
		if code, _ := do(h, "POST", "/-/remediate/pause", hdr); code < 400 || a.Remediator().Paused() {
			t.Errorf("POST pause with %v: %d, paused %v; want refused", hdr, code, a.Remediator().Paused())
		}
	}
	if code, _ := do(h, "POST", "/-/remediate/pause", nil); code != http.StatusOK || !a.Remediator().Paused() {
		t.Fatalf("POST pause: %d, paused %v", code, a.Remediator().Paused())
	}
	if _, body := do(h, "GET", "/", nil); !strings.Contains(body, "Remediation: mode dry-run, PAUSED") {
		t.Errorf("landing page does not show the pause:\n%s", body)
	}
	if _, body := do(h, "GET", "/metrics", nil); !strings.Contains(body, "wgpulse_remediation_paused 1") {
		t.Errorf("metrics do not show the pause")
	}
	if code, _ := do(h, "POST", "/-/remediate/resume", map[string]string{"Content-Type": "application/json"}); code != http.StatusOK || a.Remediator().Paused() {
		t.Fatalf("POST resume: %d, paused %v", code, a.Remediator().Paused())
	}
	if _, body := do(h, "GET", "/", nil); !strings.Contains(body, "Remediation: mode dry-run, running") {
		t.Errorf("landing page after resume:\n%s", body)
	}
}

func TestRemediateModeFlagOverridesFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "wgpulse.yml")
	if err := os.WriteFile(file, []byte("remediate:\n  mode: auto\n  state_file: "+filepath.Join(dir, "remediate.json")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ flag, want string }{{"", "auto"}, {"off", "off"}, {"dry-run", "dry-run"}} {
		a, err := agent.New(agent.Options{ConfigFile: file, RemediateMode: tc.flag, Logger: slog.New(slog.DiscardHandler),
			Collector: collector.Options{Client: fakeClient{}, ListUAPI: func() ([]string, error) { return nil, nil }}})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(a.Remediator().Mode()); got != tc.want {
			t.Errorf("--remediate.mode=%q over a file saying auto: %s, want %s", tc.flag, got, tc.want)
		}
		a.Close()
	}
	if _, err := agent.New(agent.Options{ConfigFile: file, RemediateMode: "yolo", Logger: slog.New(slog.DiscardHandler)}); err == nil || !strings.Contains(err.Error(), "--remediate.mode") {
		t.Errorf("bad flag value: %v", err)
	}
}

// noRoutes is a route transport that must not be used.
type noRoutes struct{ remediate.RouteHandle }

// One failed read of a device (a UAPI hiccup) must not drop its probe
// targets: they keep their counts and their state, so a remediator never
// sees a healthy path turn unknown or down because of a read error.
func TestOneFailedReadKeepsProbeTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var failing atomic.Bool
		peer := wgtypes.Key{1}
		_, host, _ := net.ParseCIDR("10.200.1.1/32")
		client := clientFunc(func(name string) (*wgtypes.Device, error) {
			if failing.Load() {
				return nil, errors.New("read /var/run/wireguard/wg0.sock: connection reset")
			}
			return &wgtypes.Device{Name: name, Type: wgtypes.Userspace, Peers: []wgtypes.Peer{{PublicKey: peer, AllowedIPs: []net.IPNet{*host}}}}, nil
		})
		fn := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		a, err := agent.New(agent.Options{Logger: slog.New(slog.DiscardHandler),
			Collector: collector.Options{Client: client, ListUAPI: func() ([]string, error) { return []string{"wg0"}, nil },
				Links: linksFunc(func() ([]netlink.Link, error) { return nil, nil })},
			Prober: prober.Options{Open: fn.Open},
			Routes: noRoutes{}, // no failover group: never called
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go a.Collector().Run(ctx)
		go a.Prober().Run(ctx)
		snaps := a.Collector().Subscribe(ctx)
		go func() { // what the agent's prober component does with every snapshot
			for s := range snaps {
				a.Prober().SetTargets(prober.OwnTargets, prober.Targets(s, a.Prober().Config()))
			}
		}()
		time.Sleep(20 * time.Second)
		synctest.Wait()
		before := a.Prober().Health()
		if len(before) != 1 || before[0].State != prober.StateUp {
			t.Fatalf("before the hiccup: %+v, want one target up", before)
		}
		failing.Store(true)
		time.Sleep(6 * time.Second) // one poll (every 5 s) fails
		failing.Store(false)
		synctest.Wait()
		after := a.Prober().Health()
		if len(after) != 1 || after[0].State != prober.StateUp || after[0].Probes < before[0].Probes || !after[0].Since.Equal(before[0].Since) {
			t.Fatalf("after one failed read: %+v; want the same target, up since %v, counts kept", after, before[0].Since)
		}
	})
}

// A reload the remediator refuses (here: its new state file is locked by
// another agent in auto) changes no component: the collector keeps the
// devices it watched.
func TestReloadRefusedByTheRemediatorChangesNothing(t *testing.T) {
	dir := t.TempDir()
	file, state := filepath.Join(dir, "wgpulse.yml"), filepath.Join(dir, "remediate.json")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("collector:\n  devices: [wg0]\n")
	a := newAgent(t, file, new(bytes.Buffer))
	other, err := agent.New(agent.Options{ConfigFile: writeTemp(t, "remediate:\n  mode: auto\n  state_file: "+state+"\n"),
		Logger: slog.New(slog.DiscardHandler), Collector: collector.Options{Client: fakeClient{}, ListUAPI: func() ([]string, error) { return nil, nil }}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close() // holds the state file's lock
	write("collector:\n  devices: [wg1]\nremediate:\n  mode: auto\n  state_file: " + state + "\n")
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "locked by another wgpulse") {
		t.Fatalf("reload = %v, want the remediator's refusal", err)
	}
	if got := a.Collector().Poll().Devices; len(got) != 1 || got[0].Name != "wg0" {
		t.Errorf("after a refused reload the collector watches %+v, want wg0 still", got)
	}
	if m := a.Remediator().Mode(); m != "dry-run" {
		t.Errorf("mode %s after a refused reload, want dry-run still", m)
	}
}

func writeTemp(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wgpulse.yml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A text scrape (written straight from the snapshots) and a protobuf scrape
// (promhttp over Gather) carry the same families and series; the text one
// says text/plain 0.0.4.
func TestTextAndProtobufScrapesAgree(t *testing.T) {
	a := newAgent(t, "", new(bytes.Buffer))
	a.Collector().Poll()
	h, _ := a.Handler()
	scrape := func(accept string) (string, map[string]int) {
		req := httptest.NewRequest("GET", "/metrics", nil)
		req.Header.Set("Accept", accept)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("Accept %q: %d", accept, rec.Code)
		}
		ct := rec.Header().Get("Content-Type")
		dec := expfmt.NewDecoder(rec.Body, expfmt.Format(ct))
		series := map[string]int{}
		for {
			var mf dto.MetricFamily
			if err := dec.Decode(&mf); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("Accept %q (%s): %v", accept, ct, err)
			}
			series[mf.GetName()] = len(mf.GetMetric())
		}
		return ct, series
	}
	textCT, text := scrape("text/plain;version=0.0.4")
	protoCT, proto := scrape("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	if !strings.HasPrefix(textCT, "text/plain; version=0.0.4") || !strings.Contains(protoCT, "protobuf") {
		t.Errorf("content types %q and %q", textCT, protoCT)
	}
	if text["wireguard_device_info"] != 1 {
		t.Errorf("text scrape has no wireguard_device_info: %v", text)
	}
	// Go runtime families may differ between two gathers; ours may not.
	for name, n := range proto {
		if !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "promhttp_") && text[name] != n {
			t.Errorf("%s: %d series in the text scrape, %d in protobuf", name, text[name], n)
		}
	}
	if len(text) != len(proto) {
		t.Errorf("%d families in the text scrape, %d in protobuf", len(text), len(proto))
	}
}
