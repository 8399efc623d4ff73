package remediate

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Status is the remediator's state for humans and tools (GET /-/remediate,
// `wgpulse status`). The JSON field names are stable; each policy's status
// object is merged into the top level (the failover policy's "groups").
type Status struct {
	Mode   Mode `json:"mode"`
	Paused bool `json:"paused"`
	// PausedReason says why it started paused (an unusable state file).
	PausedReason  string `json:"paused_reason,omitempty"`
	RouteProtocol int    `json:"route_protocol"`
	// Decisions are the last audited decision of every unit (and peer), by
	// policy, group and peer.
	Decisions []DecisionStatus `json:"decisions"`
	// Busy are the policies that did not answer within a second (a kernel
	// call that hangs): their part is the last one they gave.
	Busy []string `json:"busy,omitempty"`
	// Policies are the policies' own status objects, by policy name.
	Policies map[string]any `json:"-"`
}

// DecisionStatus is an audited decision.
type DecisionStatus struct {
	Policy     string    `json:"policy,omitempty"`
	Group      string    `json:"group,omitempty"`
	Peer       string    `json:"peer,omitempty"`
	At         time.Time `json:"at"`
	Action     string    `json:"action"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	Reason     string    `json:"reason"`
	Code       string    `json:"code"`
	Result     string    `json:"result"`
	Suppressed string    `json:"suppressed,omitempty"`
}

// MarshalJSON writes the core's fields and every policy's keys at the top
// level; a policy key that collides with another is an error.
func (s Status) MarshalJSON() ([]byte, error) {
	type core Status
	b, err := json.Marshal(core(s))
	if err != nil {
		return nil, err
	}
	top := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(s.Policies)) {
		if s.Policies[name] == nil {
			continue
		}
		pb, err := json.Marshal(s.Policies[name])
		if err != nil {
			return nil, fmt.Errorf("status of policy %s: %w", name, err)
		}
		var part map[string]json.RawMessage
		if err := json.Unmarshal(pb, &part); err != nil {
			return nil, fmt.Errorf("status of policy %s is not a JSON object: %w", name, err)
		}
		for k, v := range part {
			if _, dup := top[k]; dup {
				return nil, fmt.Errorf("status of policy %s: key %q is taken", name, k)
			}
			top[k] = v
		}
	}
	return json.Marshal(top)
}

func decisionKey(d DecisionStatus) string {
	return strings.Join([]string{d.Policy, d.Group, d.Peer}, "\x00")
}
