package remediate

import (
	"encoding/json"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
)

// Policy is one remediation policy. The core calls its methods from the
// policy's own goroutine, or under that goroutine's lock (Status): never two
// at once, so a policy needs no lock of its own. Describe and Collect are
// the exception: called from a scrape without the lock, they may only read
// the policy's metric vectors (safe for concurrent use), never its state. A policy reads
// through Env and writes nothing: what it wants done, it returns as Plans.
type Policy interface {
	// Name labels the policy's audit lines, metrics and state file part.
	Name() string
	// Every is how often Decide runs (and Observe may ask for a run sooner).
	Every() time.Duration
	// Targets are the probe targets the policy needs while the mode is not off.
	Targets() []prober.Target
	// WantsResults says whether Observe wants every probe result (costly).
	WantsResults() bool
	// Start adopts the policy's saved part of the state file (nil: none)
	// against what the kernel shows; its plans finish work a crash
	// interrupted (run in auto only). An error says the saved part was
	// unusable: the policy started from the kernel alone.
	Start(env Env, saved json.RawMessage) ([]Plan, error)
	// Observe takes one signal; true asks for a Decide now.
	Observe(env Env, s Signal) bool
	// Decide returns the policy's plans at env.Now.
	Decide(env Env) []Plan
	// Reconcile (auto only) checks that the policy's changes are still in
	// force, updates its beliefs, and returns what someone else changed.
	Reconcile(env Env) []Conflict
	// Undo returns the plans that undo the changes next will not own, or
	// every change when next is nil (restore_on_exit). Run in auto only.
	Undo(env Env, why string, next Policy) []Plan
	// Inherit takes over the state of prev, the policy it replaces on a
	// reload, once prev's Undo for it succeeded.
	Inherit(env Env, prev Policy)
	// State is the policy's part of the state file (marshalled to JSON).
	State() any
	// Owned are the routes the policy owns or would own under its config:
	// any other route of wgpulse's protocol is a leftover (logged, left alone).
	Owned() []Route
	// Status is the policy's part of GET /-/remediate: a JSON object whose
	// keys are merged into the top level (nil: none).
	Status(now time.Time) any
	prometheus.Collector
}

// Signal is one input: a collector snapshot, a probe target's state
// change, or (to a policy that wants them) a probe result. Exactly one is set.
type Signal struct {
	Snapshot *collector.Snapshot
	Change   *prober.StateChange
	Result   *prober.Result
}

// Env is what a policy knows at one call: the time, the mode, the latest
// snapshot, and read-only views of the kernel and the prober.
type Env struct {
	Now           time.Time
	Mode          Mode
	RouteProtocol int
	// Snapshot is the collector's latest (nil before the first poll).
	Snapshot *collector.Snapshot
	Kernel   Kernel
	Prober   ProberView
	Logger   *slog.Logger
	metrics  *metrics
	policy   string
}

// ProberView is the prober as a policy reads it.
type ProberView interface {
	HealthOf(key string) (prober.Health, bool)
	// ResetState forgets a target's verdict (traffic moved to another path).
	ResetState(key string)
}

// InitUnit creates the core's series of one unit (a group, a device) at
// zero: actions by result, suppressions by reason (the rails' reasons are
// added), conflicts, and wgpulse_remediation_policy_info.
func (e Env) InitUnit(unit string, actions, reasons []string) {
	e.metrics.initUnit(e.policy, unit, actions, reasons, e.Mode)
}

// DropUnit deletes the core's series of a unit that went away.
func (e Env) DropUnit(unit string) { e.metrics.dropUnit(e.policy, unit) }

// FollowUnits moves a policy's units from was to now (a reload): the
// series of units it no longer has go, those of now exist at zero.
func (e Env) FollowUnits(was, now, actions, reasons []string) {
	for _, u := range was {
		if !slices.Contains(now, u) {
			e.DropUnit(u)
		}
	}
	for _, u := range now {
		e.InitUnit(u, actions, reasons)
	}
}

// Decision is one verdict of a policy: an action to take, or one wanted
// and suppressed (Suppressed says why), or nothing (Action empty).
type Decision struct {
	Policy   string // set by the core
	Group    string // the unit: a failover group, or the device of a per-peer policy
	Peer     string // the peer acted on, for per-peer policies
	Action   string
	From, To string
	Reason   string // prose, for the log line and the status
	// Code is what made the policy decide, from a small fixed set
	// (primary_down, path_mtu_measured, ...): the metric's reason label. A
	// suppressed decision's code is its Suppressed reason; empty: the action.
	Code       string
	Suppressed string
	Escape     bool // leaving a dead state: never damped
}

// ReasonCode is the bounded code of a decision (the metric's reason label).
func (d Decision) ReasonCode() string {
	switch {
	case d.Suppressed != "":
		return d.Suppressed
	case d.Code != "":
		return d.Code
	}
	return d.Action
}

// Why an undo runs: Undo's why, and the audit's reason code.
const (
	UndoReload        = "reload"          // the successor does not configure the change the same way
	UndoLeaveAuto     = "leave_auto"      // the mode leaves auto: nothing would maintain the change
	UndoRestoreOnExit = "restore_on_exit" // a clean exit with remediate.restore_on_exit
	UndoProtocol      = "route_protocol"  // the route protocol changed: every route of ours changes owner
	UndoOutOfScope    = "out_of_scope"    // found at start: the config no longer covers the change
)

// UndoReason is the prose of an undo's code, for the audit line.
func UndoReason(code string) string {
	switch code {
	case UndoLeaveAuto:
		return "the mode leaves auto, so nothing would maintain the change: handing it back"
	case UndoRestoreOnExit:
		return "restore_on_exit: undoing every change on a clean exit"
	case UndoProtocol:
		return "remediate.route_protocol changed: every route of ours changes owner"
	case UndoOutOfScope:
		return "a change of ours in the state file that the config no longer covers: undoing it"
	}
	return "the config no longer covers this change the same way after a reload: undoing it"
}

// Plan is a decision with what carrying it out means. The core runs every
// plan the same way: the rails (unless Unrailed), the Changes in auto
// (nothing in dry-run), the audit, then Commit or Failed, After, and a save.
type Plan struct {
	Decision
	Rails   *Rails   // the unit's rail state; nil with Unrailed
	Limits  Limits   // the unit's rail settings
	Episode *Episode // the unit's last audited suppression; nil: audit every time
	Changes []Change
	// Unrailed plans undo or complete changes of ours (restore, reload, an
	// interrupted switch): no rail holds them and they spend nothing.
	Unrailed bool
	// Handback plans undo a change of ours that nothing maintains any more
	// (its group removed, or the mode left auto): carried out in dry-run
	// too, since what they remove is in the kernel. Unrailed as well.
	Handback bool
	// Quiet plans re-assert a decision already audited (a roam pulled an
	// endpoint back): carried out in auto, logged at debug, not audited.
	Quiet bool
	// Prepare, when set, runs once the rails let the decision through and
	// before the budget is spent: the kernel reads the change needs (route
	// dumps, preflight checks), so none runs while a rail holds the unit.
	// It returns the Changes, or suppresses d with the policy's reason.
	Prepare func(d *Decision) []Change
	Commit  func(now time.Time)             // after success in auto, and in dry-run
	Failed  func(now time.Time)             // after a failure in auto
	After   func(d Decision, result string) // whatever the result, once audited
}

// Episode is a unit's memory of the last suppression it audited, so a
// wanted action held back for minutes is audited once, not every tick. A
// pause or resume starts a new episode everywhere.
type Episode struct {
	suppressed string
	epoch      uint64
}

// Conflict is something else changing what a policy owns: counted, logged
// and backed off from (the unit's Rails), never fought.
type Conflict struct {
	Group   string // the unit
	Peer    string
	Problem string
	Rails   *Rails
	Attrs   []any // more for the log line
}

// PeerKey is a per-peer policy's unit key: device/public key.
func PeerKey(device, peer string) string { return device + "/" + peer }

// PeerLabel names a peer in audit lines: its friendly name and key.
func PeerLabel(key, name string) string {
	if name == "" {
		return key
	}
	return name + " (" + key + ")"
}
