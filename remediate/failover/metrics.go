package failover

import "github.com/prometheus/client_golang/prometheus"

var (
	paths  = []string{Primary, Backup}
	states = []string{"unknown", "up", "down"}
)

type metrics struct {
	active    *prometheus.GaugeVec
	healthy   *prometheus.GaugeVec
	pathState *prometheus.GaugeVec
	flaps     *prometheus.CounterVec
	penalty   *prometheus.GaugeVec
	damped    *prometheus.GaugeVec
}

func newMetrics() *metrics {
	return &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_active_path",
			Help: "1 for the path carrying the group's prefixes (in dry-run: the path auto would have made active).",
		}, []string{"group", "path"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_path_healthy",
			Help: "1 while the path is up, 0 while it is down or unknown (see wgpulse_failover_path_state).",
		}, []string{"group", "path"}),
		pathState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_path_state",
			Help: "1 for the path's current health: unknown, up or down.",
		}, []string{"group", "path", "state"}),
		flaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgpulse_failover_flaps_total",
			Help: "Switches that left a path less than hold_down after arriving on it (e.g. a return the tunnel did not confirm).",
		}, []string{"group"}),
		penalty: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_damping_penalty",
			Help: "The group's flap damping penalty (BGP style); at or above suppress the group makes no voluntary switch.",
		}, []string{"group"}),
		damped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wgpulse_failover_damped",
			Help: "1 while flap damping holds the group: no voluntary switch until the penalty decays below reuse.",
		}, []string{"group"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.active, m.healthy, m.pathState, m.flaps, m.penalty, m.damped}
}

// initGroup creates every series of a group at zero, so dashboards and
// alerts see them from the start.
func (m *metrics) initGroup(name string) {
	for _, p := range paths {
		m.active.WithLabelValues(name, p)
		m.healthy.WithLabelValues(name, p)
		for _, s := range states {
			m.pathState.WithLabelValues(name, p, s)
		}
	}
	m.flaps.WithLabelValues(name)
	m.penalty.WithLabelValues(name)
	m.damped.WithLabelValues(name)
}

func (m *metrics) deleteGroup(name string) {
	l := prometheus.Labels{"group": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.active, m.healthy, m.pathState, m.flaps, m.penalty, m.damped} {
		v.DeletePartialMatch(l)
	}
}
