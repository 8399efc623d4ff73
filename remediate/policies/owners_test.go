package policies_test

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// squatter is a policy of this test's own: at its first decision it adds
// the route that failover's exact shape would use (the same kernel key:
// prefix and metric), later it tries to delete failover's halves.
type squatter struct {
	step int
	r    *rig
}

func (s *squatter) Name() string                                 { return "squatter" }
func (s *squatter) Every() time.Duration                         { return time.Second }
func (s *squatter) Targets() []prober.Target                     { return nil }
func (s *squatter) WantsResults() bool                           { return false }
func (s *squatter) Owned() []remediate.Route                     { return []remediate.Route{s.route()} }
func (s *squatter) State() any                                   { return s.step }
func (s *squatter) Reconcile(remediate.Env) []remediate.Conflict { return nil }
func (s *squatter) Describe(chan<- *prometheus.Desc)             {}
func (s *squatter) Collect(chan<- prometheus.Metric)             {}
func (s *squatter) Inherit(env remediate.Env, _ remediate.Policy) {
	env.InitUnit("wg-p", []string{"squat", "evict"}, nil)
}
func (s *squatter) Observe(remediate.Env, remediate.Signal) bool                  { return false }
func (s *squatter) Undo(remediate.Env, string, remediate.Policy) []remediate.Plan { return nil }
func (s *squatter) Status(time.Time) any                                          { return nil }
func (s *squatter) Start(remediate.Env, json.RawMessage) ([]remediate.Plan, error) {
	return nil, nil
}

func (s *squatter) route() remediate.Route {
	return remediate.Route{Prefix: netip.MustParsePrefix(lan), Device: primaryDev, Metric: 10, Protocol: remediate.DefaultRouteProtocol, MTU: 1300}
}

func (s *squatter) Decide(remediate.Env) []remediate.Plan {
	s.step++
	switch {
	case s.step == 1:
		return []remediate.Plan{{Decision: remediate.Decision{Group: "wg-p", Action: "squat", Reason: "test"}, Unrailed: true,
			Changes: []remediate.Change{remediate.AddRoutes{s.route()}}}}
	case slices.Contains(s.r.routes.show(), halves[0]):
		h := remediate.Route{Prefix: netip.MustParsePrefix("10.50.0.0/17"), Device: backupDev, Metric: 10, Protocol: remediate.DefaultRouteProtocol}
		return []remediate.Plan{{Decision: remediate.Decision{Group: "wg-p", Action: "evict", Reason: "test"}, Unrailed: true,
			Changes: []remediate.Change{remediate.DelRoutes{h}}}}
	}
	return nil
}

// Two policies never own one route, and failover gives way by shape, not
// by fighting: another policy holds the key of failover's exact route (the
// MTU policy's route on the primary can, at an operator metric of 11), so
// failover moves the prefix with its halves, which win by longest match.
// The other policy's attempt to delete failover's route is refused.
func TestOnePolicyOwnsEachRoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, config(t, remediate.ModeAuto, group("fast")))
		r.extra = []remediate.Policy{&squatter{r: r}}
		r.start()
		r.run(2 * time.Second)
		if !slices.Contains(r.routes.show(), "10.50.0.0/16 dev wg-p metric 10 proto 117 mtu 1300") {
			t.Fatalf("the other policy's route is not in place: %v", r.routes.show())
		}
		r.fault(primaryTarget, dead)
		waitFor(t, 2*time.Second, "failover by its halves", func() bool {
			rs := r.routes.show()
			return slices.Contains(rs, halves[0]) && slices.Contains(rs, halves[1])
		})
		r.run(3 * time.Second)
		if !slices.Contains(r.routes.show(), halves[0]) || !slices.Contains(r.routes.show(), "10.50.0.0/16 dev wg-p metric 10 proto 117 mtu 1300") {
			t.Errorf("routes %v: want failover's halves and the other policy's route, each kept", r.routes.show())
		}
		var refused bool
		for _, a := range r.audits() {
			refused = refused || (a.Action == "evict" && a.Result == "error")
		}
		if !refused || !strings.Contains(r.logs.String(), "is policy failover's: policy squatter may not change it") {
			t.Errorf("the other policy's delete of failover's route was not refused: %+v", r.audits())
		}
	})
}
