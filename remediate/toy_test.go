package remediate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// beacon is a toy policy, defined here and nowhere else: once it has seen a
// snapshot it wants the peer's keepalive at 7 s, at most once an hour.
type beacon struct {
	device string
	peer   wgtypes.Key
	st     beaconState
	ep     remediate.Episode
	seen   bool
	loaded bool // Start found its part of the state file
	m      *prometheus.GaugeVec
}

type beaconState struct {
	Applied bool `json:"applied"`
	remediate.Rails
}

func newBeacon(peer wgtypes.Key) *beacon {
	return &beacon{device: "wg-toy", peer: peer, m: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "toy_beacon_applied", Help: "1 while the toy's keepalive is in force."}, []string{"device"})}
}

func (b *beacon) Name() string                                 { return "toy" }
func (b *beacon) Every() time.Duration                         { return time.Second }
func (b *beacon) Targets() []prober.Target                     { return nil }
func (b *beacon) WantsResults() bool                           { return false }
func (b *beacon) Owned() []remediate.Route                     { return nil }
func (b *beacon) State() any                                   { return b.st }
func (b *beacon) Reconcile(remediate.Env) []remediate.Conflict { return nil }
func (b *beacon) Describe(ch chan<- *prometheus.Desc)          { b.m.Describe(ch) }
func (b *beacon) Collect(ch chan<- prometheus.Metric)          { b.m.Collect(ch) }
func (b *beacon) Inherit(env remediate.Env, _ remediate.Policy) {
	env.InitUnit(b.device, []string{"set_beacon"}, nil)
}
func (b *beacon) Observe(_ remediate.Env, s remediate.Signal) bool {
	b.seen = true
	return s.Snapshot != nil
}

func (b *beacon) Start(_ remediate.Env, saved json.RawMessage) ([]remediate.Plan, error) {
	if saved == nil {
		return nil, nil
	}
	b.loaded = true
	return nil, json.Unmarshal(saved, &b.st)
}

func (b *beacon) Decide(remediate.Env) []remediate.Plan {
	if !b.seen {
		return nil
	}
	return []remediate.Plan{{
		Decision: remediate.Decision{Group: b.device, Action: "set_beacon", From: "0s", To: "7s", Reason: "the toy wants it"},
		Rails:    &b.st.Rails, Limits: remediate.Limits{Rate: remediate.RateLimit{Burst: 1, Per: time.Hour}}, Episode: &b.ep,
		Changes: []remediate.Change{remediate.SetKeepalive{Device: b.device, Peer: b.peer, Keepalive: 7 * time.Second}},
		Commit: func(time.Time) {
			b.st.Applied = true
			b.m.WithLabelValues(b.device).Set(1)
		},
	}}
}

func (b *beacon) Undo(_ remediate.Env, why string, _ remediate.Policy) []remediate.Plan {
	if !b.st.Applied {
		return nil
	}
	return []remediate.Plan{{
		Decision: remediate.Decision{Group: b.device, Action: "unset_beacon", From: "7s", To: "0s", Reason: why},
		Unrailed: true, Changes: []remediate.Change{remediate.SetKeepalive{Device: b.device, Peer: b.peer}},
		Commit: func(time.Time) { b.st.Applied = false; b.m.WithLabelValues(b.device).Set(0) },
	}}
}

func (b *beacon) Status(time.Time) any {
	return map[string]any{"toy": map[string]bool{"applied": b.st.Applied, "loaded": b.loaded}}
}

// fakeWG is a fake of the wgctrl transport: one device, one peer.
type fakeWG struct {
	mu        sync.Mutex
	peer      wgtypes.Key
	keepalive time.Duration
	writes    int
}

func (f *fakeWG) Device(name string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &wgtypes.Device{Name: name, Peers: []wgtypes.Peer{{PublicKey: f.peer, PersistentKeepaliveInterval: f.keepalive}}}, nil
}

func (f *fakeWG) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range cfg.Peers {
		if p.PersistentKeepaliveInterval != nil {
			f.keepalive, f.writes = *p.PersistentKeepaliveInterval, f.writes+1
		}
	}
	return nil
}

func (f *fakeWG) get() (time.Duration, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.keepalive, f.writes
}

// source is a collector and a prober with nothing to say but the
// snapshots a test sends.
type source struct{ snaps chan *collector.Snapshot }

// sourceProber is the prober side of source (its Subscribe is for results).

func (s source) Subscribe(ctx context.Context) <-chan *collector.Snapshot { return s.snaps }
func (source) SubscribeChanges(context.Context) <-chan prober.StateChange { return nil }
func (source) HealthOf(string) (prober.Health, bool)                      { return prober.Health{}, false }
func (source) SetTargets(string, []prober.Target)                         {}
func (source) ResetState(string)                                          {}
func (source) ResearchPMTU(string)                                        {}

type sourceProber struct{ source }

func (sourceProber) Subscribe(context.Context) <-chan prober.Result { return nil }

// A policy the core has never heard of, added without a change to any core
// file: the loop runs it, the rails hold it, the audit (log line, metric,
// span) records it, its part of the state file is kept across a restart,
// and its decisions and status show in GET /-/remediate.
func TestToyPolicyRunsOnTheCore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var key wgtypes.Key
		key[0] = 7
		wg := &fakeWG{peer: key}
		cfg := remediate.DefaultConfig()
		cfg.Mode, cfg.StateFile, cfg.RestoreOnExit = remediate.ModeAuto, t.TempDir()+"/remediate.json", true
		var logs bytes.Buffer
		var logMu sync.Mutex
		logger := slog.New(slog.NewJSONHandler(lockedWriter{&logMu, &logs}, nil))
		spans := tracetest.NewSpanRecorder()
		run := func(toy *beacon, f func(r *remediate.Remediator)) {
			src := source{snaps: make(chan *collector.Snapshot, 1)}
			r, err := remediate.New(cfg, []remediate.Policy{toy}, logger, remediate.Options{Snapshots: src, Prober: sourceProber{src}, Peers: wg,
				Tracer: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { r.Run(ctx); close(done) }()
			synctest.Wait()
			src.snaps <- &collector.Snapshot{Time: time.Now()}
			time.Sleep(3 * time.Second)
			synctest.Wait()
			f(r)
			cancel()
			<-done
		}

		run(newBeacon(key), func(r *remediate.Remediator) {
			if ka, n := wg.get(); ka != 7*time.Second || n != 1 {
				t.Errorf("keepalive %s after %d writes, want 7s after one: the loop did not carry out the toy's plan", ka, n)
			}
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(r)
			for _, c := range []struct {
				name, labels string
				want         float64
			}{
				{"wgpulse_remediation_actions_total", `policy="toy",group="wg-toy",action="set_beacon",result="ok",mode="auto"`, 1},
				{"wgpulse_remediation_suppressed_total", `policy="toy",group="wg-toy",reason="rate_limited"`, 1}, // audited once, not every tick
				{"wgpulse_remediation_policy_info", `policy="toy",group="wg-toy"`, 1},
				{"toy_beacon_applied", `device="wg-toy"`, 1},
			} {
				if got := gauge(t, reg, c.name, c.labels); got != c.want {
					t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
				}
			}
			b, err := json.Marshal(r.Status()) // what GET /-/remediate writes
			if err != nil {
				t.Fatal(err)
			}
			var st struct {
				Toy       map[string]bool            `json:"toy"`
				Decisions []remediate.DecisionStatus `json:"decisions"`
			}
			if err := json.Unmarshal(b, &st); err != nil || !st.Toy["applied"] || len(st.Decisions) != 1 ||
				st.Decisions[0].Policy != "toy" || st.Decisions[0].Suppressed != "rate_limited" {
				t.Errorf("GET /-/remediate: %s (%v); want the toy's status and its last decision (rate-limited)", b, err)
			}
			r.Pause("test")
			time.Sleep(2 * time.Second)
			synctest.Wait()
			if got := gauge(t, reg, "wgpulse_remediation_suppressed_total", `policy="toy",group="wg-toy",reason="paused"`); got != 1 {
				t.Errorf("paused: suppressed{reason=paused} = %v, want 1", got)
			}
			r.Resume("test")
		})
		file, err := os.ReadFile(cfg.StateFile)
		if err != nil {
			t.Fatal(err)
		}
		var saved struct {
			Version  int
			Policies map[string]beaconState
		}
		if err := json.Unmarshal(file, &saved); err != nil || saved.Version != 2 || saved.Policies["toy"].Switches != 1 {
			t.Errorf("state file %s (%v): want version 2 with the toy's part and its one change", file, err)
		}
		if ka, _ := wg.get(); ka != 0 {
			t.Errorf("keepalive %s after a clean exit with restore_on_exit, want the toy's change undone", ka)
		}
		names := map[string]int{}
		for _, s := range spans.Ended() {
			names[s.Name()]++
		}
		if names["remediate.toy.decision"] < 4 { // set, rate-limited, paused, rate-limited after resume, unset
			t.Errorf("spans %v: want each audited decision of the toy", names)
		}
		logMu.Lock()
		audit := strings.Count(logs.String(), `"policy":"toy"`)
		logMu.Unlock()
		if audit < 4 {
			t.Errorf("%d audit lines of the toy, want each decision", audit)
		}

		toy := newBeacon(key)
		run(toy, func(r *remediate.Remediator) {
			b, _ := json.Marshal(r.Status())
			if !strings.Contains(string(b), `"loaded":true`) {
				t.Errorf("after a restart the toy did not get its part of the state file: %s", b)
			}
		})
	})
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// gauge is one series' value (counter or gauge) from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name, labels string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			if strings.Join(ls, ",") == sortLabels(labels) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%s}", name, labels)
	return 0
}

// sortLabels orders `a="x",b="y"` by label name, as the registry does.
func sortLabels(s string) string {
	parts := strings.Split(s, ",")
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
