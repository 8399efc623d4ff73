package failover

import (
	"slices"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// Status is the failover policy's part of GET /-/remediate.
type Status struct {
	Groups []GroupStatus `json:"groups"`
}

// Report is GET /-/remediate decoded with the failover groups typed.
type Report struct {
	Mode          remediate.Mode `json:"mode"`
	Paused        bool           `json:"paused"`
	RouteProtocol int            `json:"route_protocol"`
	Groups        []GroupStatus  `json:"groups"`
}

// GroupStatus is one failover group. The JSON field names are stable.
type GroupStatus struct {
	Name         string                `json:"name"`
	Mode         string                `json:"mode"` // route or endpoint
	Profile      string                `json:"profile"`
	Prefixes     []string              `json:"prefixes,omitempty"`
	Device       string                `json:"device,omitempty"` // endpoint mode
	Peer         string                `json:"peer,omitempty"`   // endpoint mode: public key
	Active       string                `json:"active"`
	ActiveSince  time.Time             `json:"active_since"`
	Paths        map[string]PathStatus `json:"paths"`
	Switches     int                   `json:"switches"`
	Penalty      float64               `json:"damping_penalty"`
	Damped       bool                  `json:"damped"`
	SwitchesLeft float64               `json:"rate_limit_switches_left"`
	BackoffUntil *time.Time            `json:"backoff_until,omitempty"`
	Conflicts    int                   `json:"conflicts_in_a_row"`
	Conflict     string                `json:"conflict,omitempty"` // what the last conflict (within 20m) found
	Lasting      bool                  `json:"conflict_lasting"`   // reverted twice in a row: even escapes wait out the backoff
	// Handback says why nothing maintains the group's change any more
	// (removed from the config: retired; the mode left auto): it returns
	// once its primary is up and routed.
	Handback string                    `json:"handback,omitempty"`
	Retired  bool                      `json:"retired,omitempty"` // no longer configured
	Last     *remediate.DecisionStatus `json:"last_decision,omitempty"`
}

// PathStatus is one path of a group.
type PathStatus struct {
	Device   string    `json:"device,omitempty"` // route mode: the tunnel; endpoint mode: the uplink probed, if named
	Target   string    `json:"target"`           // route mode: through the tunnel; endpoint mode: the underlay target
	Endpoint string    `json:"endpoint,omitempty"`
	State    string    `json:"state"` // unknown, up, down
	Since    time.Time `json:"since,omitzero"`
	Reason   string    `json:"reason,omitempty"`
	Loss     float64   `json:"loss_ratio"`
	RTT      float64   `json:"median_rtt_seconds"`
}

// Status implements remediate.Policy.
func (p *Policy) Status(now time.Time) any {
	s := Status{Groups: []GroupStatus{}}
	for _, g := range p.all() {
		mode := g.cfg.Mode
		if mode == "" {
			mode = "route"
		}
		gs := GroupStatus{
			Name: g.cfg.Name, Mode: mode, Profile: g.cfg.Profile, Device: g.cfg.Device, Peer: g.cfg.Peer, Prefixes: g.cfg.Prefixes,
			Active: g.st.Active, ActiveSince: g.st.Since, Paths: map[string]PathStatus{}, Switches: g.st.Switches,
			Penalty: remediate.Penalty(g.cfg.Damping, g.st.Rails, now), Damped: remediate.Damped(g.cfg.Damping, g.st.Rails, now),
			SwitchesLeft: remediate.Tokens(g.cfg.RateLimit, g.st.Rails, now), Handback: g.st.Handback, Retired: slices.Contains(p.retired, g), Lasting: g.st.Rails.Lasting(now),
		}
		if now.Sub(g.st.ConflictAt) < remediate.LastingFor {
			gs.Conflicts, gs.Conflict = g.st.Rails.Conflicts, g.st.Rails.ConflictWhy
		}
		if now.Before(g.st.BackoffUntil) {
			until := g.st.BackoffUntil
			gs.BackoffUntil = &until
		}
		for i, path := range []Path{g.cfg.Primary, g.cfg.Backup} {
			h := g.health[i]
			ps := PathStatus{Device: path.Device, Target: string(path.Target), State: h.State.String(), Since: h.Since,
				Reason: h.Reason, Loss: h.Loss, RTT: h.RTT.Seconds()}
			if g.endpoint() {
				ps.Device, ps.Target, ps.Endpoint = path.UnderlayDevice, path.UnderlayTarget, path.Endpoint
			}
			gs.Paths[paths[i]] = ps
		}
		if g.last.Action != "" {
			gs.Last = &remediate.DecisionStatus{At: g.lastAt, Action: g.last.Action, From: g.last.From, To: g.last.To,
				Reason: g.last.Reason, Result: g.lastRes, Suppressed: g.last.Suppressed}
		}
		s.Groups = append(s.Groups, gs)
	}
	return s
}
