package remediate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// crowd is a policy of this test's own with many units, each wanting one
// change at once (a voluntary one, or an escape from a dead path).
type crowd struct {
	units  []string
	escape map[string]bool
	done   map[string]bool
	rails  map[string]*remediate.Rails
	ep     map[string]*remediate.Episode
	peer   wgtypes.Key
}

func newCrowd(peer wgtypes.Key, n int, escapes ...string) *crowd {
	c := &crowd{escape: map[string]bool{}, done: map[string]bool{}, rails: map[string]*remediate.Rails{}, ep: map[string]*remediate.Episode{}, peer: peer}
	for i := range n {
		u := fmt.Sprintf("unit%d", i)
		c.units, c.rails[u], c.ep[u] = append(c.units, u), &remediate.Rails{}, &remediate.Episode{}
	}
	for _, e := range escapes {
		c.escape[e] = true
	}
	return c
}

func (c *crowd) Name() string                                 { return "crowd" }
func (c *crowd) Every() time.Duration                         { return time.Second }
func (c *crowd) Targets() []prober.Target                     { return nil }
func (c *crowd) WantsResults() bool                           { return false }
func (c *crowd) Owned() []remediate.Route                     { return nil }
func (c *crowd) State() any                                   { return c.done }
func (c *crowd) Status(time.Time) any                         { return nil }
func (c *crowd) Reconcile(remediate.Env) []remediate.Conflict { return nil }
func (c *crowd) Describe(chan<- *prometheus.Desc)             {}
func (c *crowd) Collect(chan<- prometheus.Metric)             {}
func (c *crowd) Observe(remediate.Env, remediate.Signal) bool { return false }
func (c *crowd) Undo(remediate.Env, string, remediate.Policy) []remediate.Plan {
	return nil
}
func (c *crowd) Start(remediate.Env, json.RawMessage) ([]remediate.Plan, error) { return nil, nil }
func (c *crowd) Inherit(env remediate.Env, _ remediate.Policy) {
	for _, u := range c.units {
		env.InitUnit(u, []string{"act"}, nil)
	}
}

// Decide: the voluntary units first, so they would spend everything.
func (c *crowd) Decide(remediate.Env) []remediate.Plan {
	var plans []remediate.Plan
	for _, escapes := range []bool{false, true} {
		for _, u := range c.units {
			if c.done[u] || c.escape[u] != escapes {
				continue
			}
			plans = append(plans, remediate.Plan{
				Decision: remediate.Decision{Group: u, Action: "act", Reason: "test", Escape: escapes},
				Rails:    c.rails[u], Limits: remediate.Limits{Rate: remediate.RateLimit{Burst: 10, Per: time.Hour}}, Episode: c.ep[u],
				Changes: []remediate.Change{remediate.SetKeepalive{Device: "wg-toy", Peer: c.peer, Keepalive: time.Second}},
				Commit:  func(time.Time) { c.done[u] = true },
			})
		}
	}
	return plans
}

// A node-wide budget of 4: three of five voluntary changes pass and the
// rest are suppressed (audited once each); the escape still finds the
// quarter kept for it. An hour later the budget is back.
func TestNodeWideBudgetKeepsRoomForEscapes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var key wgtypes.Key
		key[0] = 9
		cfg := remediate.DefaultConfig()
		cfg.Mode, cfg.StateFile, cfg.Budget = remediate.ModeAuto, t.TempDir()+"/remediate.json", remediate.Budget{Changes: 4, Per: time.Hour}
		c := newCrowd(key, 6, "unit5")
		src := source{snaps: make(chan *collector.Snapshot, 1)}
		r, err := remediate.New(cfg, []remediate.Policy{c}, slog.New(slog.DiscardHandler), remediate.Options{Snapshots: src, Prober: sourceProber{src}, Peers: &fakeWG{peer: key}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { r.Run(ctx); close(done) }()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(r)
		var acted, held int
		for _, u := range c.units[:5] {
			acted += int(gauge(t, reg, "wgpulse_remediation_actions_total", fmt.Sprintf(`policy="crowd",group="%s",action="act",result="ok",mode="auto"`, u)))
			held += int(gauge(t, reg, "wgpulse_remediation_suppressed_total", fmt.Sprintf(`policy="crowd",group="%s",reason="budget"`, u)))
		}
		if acted != 3 || held != 2 {
			t.Errorf("voluntary changes: %d carried out, %d suppressed by the budget; want 3 and 2 (once each, not every tick)", acted, held)
		}
		if got := gauge(t, reg, "wgpulse_remediation_actions_total", `policy="crowd",group="unit5",action="act",result="ok",mode="auto"`); got != 1 {
			t.Errorf("the escape: %v carried out, want 1 (the kept quarter)", got)
		}
		if got := gauge(t, reg, "wgpulse_remediation_budget_remaining", ""); got >= 1 {
			t.Errorf("budget remaining %v after 4 changes, want below 1", got)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		for _, u := range c.units {
			if !c.done[u] {
				t.Errorf("%s not done an hour later: the budget did not refill", u)
			}
		}
		cancel()
		<-done
	})
}
