package remediate

import (
	"fmt"
	"math"
	"time"

	"github.com/wgpulse/wgpulse/prober"
)

// The failover policy is a pure function: (group config, group state, path
// signals, now) -> decision. The remediator feeds it and carries decisions
// out; nothing here touches the kernel, a clock or a logger.

// Path names.
const (
	Primary = "primary"
	Backup  = "backup"
)

// Actions of the failover policy.
const (
	ActionSwitchToBackup  = "switch_to_backup"
	ActionReturnToPrimary = "return_to_primary"
)

// Why a wanted action was not taken (the `reason` label of
// wgpulse_remediation_suppressed_total).
const (
	SuppressBothDown      = "both_down"       // the other path is down too
	SuppressUnknown       = "unknown"         // the other path has no verdict yet
	SuppressMargin        = "margin"          // the backup is not better by the margin
	SuppressHoldDown      = "hold_down"       // the primary is not up for hold_down yet
	SuppressPaused        = "paused"          // POST /-/remediate/pause or SIGUSR1
	SuppressBackoff       = "backoff"         // after a conflict or a failed action
	SuppressDamped        = "damped"          // flap damping: no voluntary switch
	SuppressRateLimited   = "rate_limited"    // the group's switch budget is spent
	SuppressDeviceMissing = "device_missing"  // a device of the group does not exist
	SuppressMetricTooHigh = "metric_too_high" // our route would not win over the operator's
	SuppressBelowFloor    = "below_floor"     // MTU: the path MTU is below the floor the policy may set
)

var suppressReasons = []string{SuppressBothDown, SuppressUnknown, SuppressMargin, SuppressHoldDown, SuppressPaused,
	SuppressBackoff, SuppressDamped, SuppressRateLimited, SuppressDeviceMissing, SuppressMetricTooHigh, SuppressBelowFloor}

// pathHealth is one path as the policy sees it: the prober's verdict on its
// target, made down by a handshake older than 180 s on a fresh device read.
type pathHealth struct {
	State  prober.State
	Since  time.Time
	Reason string
	DownBy string // prober.DownBy*, or "handshake"; the margin applies to loss ratio and RTT
	Loss   float64
	RTT    time.Duration // median of recent replies; 0 when unknown
}

type groupSignals struct{ primary, backup pathHealth }

// railState is what the safety rails remember of one unit (a failover
// group, a peer's MTU or keepalive): damping, rate limit, backoff. It is
// persisted with the unit's own state.
type railState struct {
	Penalty      float64   `json:"penalty"` // damping penalty at PenaltyAt
	PenaltyAt    time.Time `json:"penalty_at"`
	Damped       bool      `json:"damped"`
	Tokens       float64   `json:"tokens"` // rate limit bucket at TokensAt
	TokensAt     time.Time `json:"tokens_at"`
	Switches     int       `json:"switches"`          // changes made
	Backoff      Duration  `json:"backoff,omitempty"` // current backoff step
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	BackoffWhy   string    `json:"backoff_why,omitempty"`
}

// groupState is what the remediator remembers of a failover group.
type groupState struct {
	Active string    `json:"active"` // primary or backup
	Since  time.Time `json:"since"`
	// Arrived is when a switch of ours made Active the active path (zero:
	// it was found active): leaving it within hold_down is a flap.
	Arrived time.Time `json:"arrived,omitzero"`
	railState
	// Original is the peer's endpoint before the group first changed it
	// (endpoint mode), restored on exit.
	Original string `json:"original_endpoint,omitempty"`
}

// decision is one verdict of a policy: an action to take, or one wanted
// and suppressed (Suppressed says why), or nothing (Action empty).
type decision struct {
	Policy     string
	Group      string
	Peer       string // the peer acted on, for per-peer policies (MTU, keepalive)
	Action     string
	From, To   string
	Reason     string
	Suppressed string
	Escape     bool // leaving a down path: never damped
}

// decideFailover is the failover policy.
func decideFailover(g FailoverGroup, st groupState, sig groupSignals, now time.Time) decision {
	d := decision{Policy: "failover", Group: g.Name, From: st.Active}
	p, b := sig.primary, sig.backup
	if st.Active != Backup {
		if p.State != prober.StateDown {
			return d // the primary is up or unknown: unknown is never a reason to act
		}
		d.Action, d.To, d.Escape = ActionSwitchToBackup, Backup, true
		switch {
		case b.State == prober.StateDown:
			d.Suppressed = SuppressBothDown
			d.Reason = fmt.Sprintf("primary down (%s) and backup down (%s): staying on the primary", p.Reason, b.Reason)
		case b.State == prober.StateUnknown:
			d.Suppressed = SuppressUnknown
			d.Reason = fmt.Sprintf("primary down (%s) but the backup has no verdict yet: not moving traffic to a path not known to work", p.Reason)
		case !betterBy(b, p, g.Margin):
			d.Suppressed = SuppressMargin
			d.Reason = fmt.Sprintf("primary degraded (%s) but the backup is not better by the margin (loss %.0f%% vs %.0f%%, median RTT %s vs %s)",
				p.Reason, 100*b.Loss, 100*p.Loss, b.RTT, p.RTT)
		default:
			d.Reason = fmt.Sprintf("primary down: %s; backup up", p.Reason)
		}
		return d
	}
	switch {
	case b.State == prober.StateDown:
		d.Action, d.To, d.Escape = ActionReturnToPrimary, Primary, true
		switch p.State {
		case prober.StateUp:
			d.Reason = fmt.Sprintf("backup down (%s); primary up", b.Reason)
		case prober.StateDown:
			d.Suppressed = SuppressBothDown
			d.Reason = fmt.Sprintf("backup down (%s) and primary down (%s): staying on the backup", b.Reason, p.Reason)
		default:
			d.Suppressed = SuppressUnknown
			d.Reason = fmt.Sprintf("backup down (%s) but the primary has no verdict yet", b.Reason)
		}
	case p.State == prober.StateUp:
		d.Action, d.To = ActionReturnToPrimary, Primary
		// Up since we left it, at the earliest: a verdict older than the
		// switch (an underlay target slower to notice than the tunnel) says
		// nothing about the primary since it failed.
		upSince := p.Since
		if st.Since.After(upSince) {
			upSince = st.Since
		}
		up := now.Sub(upSince)
		if up < g.HoldDown {
			d.Suppressed = SuppressHoldDown
			d.Reason = fmt.Sprintf("primary up again, waiting for it to stay up for hold_down %s", g.HoldDown)
		} else {
			d.Reason = fmt.Sprintf("primary up for %s (hold_down %s)", up.Round(time.Second), g.HoldDown)
		}
	}
	return d
}

// betterBy says whether the backup b beats the primary p by the margin on
// what made p down. A dead primary (losses in a row, stale handshake) is
// beaten by any backup that is up; a degraded one only by a clearly better
// backup, so two similar paths never alternate.
func betterBy(b, p pathHealth, m Margin) bool {
	switch p.DownBy {
	case prober.DownByLossRatio:
		return b.Loss <= p.Loss-m.LossRatio
	case prober.DownByRTT:
		return b.RTT > 0 && b.RTT <= p.RTT-m.RTT && b.Loss <= p.Loss+m.LossRatio
	}
	return true
}

// limits are a unit's rail settings: damping (zero: none) and rate limit.
type limits struct {
	damping Damping
	rate    RateLimit
}

// applyRails suppresses an action the safety rails forbid. Leaving a dead
// path is never damped; everything else is.
func applyRails(d *decision, l limits, st railState, now time.Time, paused bool) {
	if d.Action == "" || d.Suppressed != "" {
		return
	}
	switch {
	case paused:
		d.Suppressed, d.Reason = SuppressPaused, "remediation paused: "+d.Reason
	case now.Before(st.BackoffUntil):
		d.Suppressed = SuppressBackoff
		d.Reason = fmt.Sprintf("backing off until %s after %s: %s", st.BackoffUntil.Format(time.RFC3339), st.BackoffWhy, d.Reason)
	case !d.Escape && damped(l.damping, st, now):
		d.Suppressed = SuppressDamped
		d.Reason = fmt.Sprintf("flap damping: penalty %.0f above reuse %.0f after %d changes: %s", penalty(l.damping, st, now), l.damping.Reuse, st.Switches, d.Reason)
	case tokens(l.rate, st, now) < 1:
		d.Suppressed = SuppressRateLimited
		d.Reason = fmt.Sprintf("rate limit: %d changes per %s spent: %s", l.rate.Burst, l.rate.Per, d.Reason)
	}
}

// spend returns the rail state after a change at now.
func spend(l limits, st railState, now time.Time) railState {
	if l.damping.Penalty > 0 {
		st.Penalty, st.PenaltyAt = penalty(l.damping, st, now)+l.damping.Penalty, now
		st.Damped = damped(l.damping, st, now)
	}
	st.Tokens, st.TokensAt = tokens(l.rate, st, now)-1, now
	st.Switches++
	return st
}

// penalty is the damping penalty decayed to now.
func penalty(dm Damping, st railState, now time.Time) float64 {
	if st.Penalty == 0 || st.PenaltyAt.IsZero() || dm.HalfLife == 0 {
		return 0
	}
	return st.Penalty * math.Exp2(-float64(now.Sub(st.PenaltyAt))/float64(dm.HalfLife))
}

// damped: suppressed from reaching Suppress until decaying below Reuse.
func damped(dm Damping, st railState, now time.Time) bool {
	if dm.Penalty == 0 {
		return false
	}
	p := penalty(dm, st, now)
	if st.Damped {
		return p >= dm.Reuse
	}
	return p >= dm.Suppress
}

// tokens is the rate limit bucket at now; a fresh unit has a full one.
func tokens(rl RateLimit, st railState, now time.Time) float64 {
	if st.TokensAt.IsZero() {
		return float64(rl.Burst)
	}
	refill := float64(now.Sub(st.TokensAt)) / float64(rl.Per) * float64(rl.Burst)
	return min(float64(rl.Burst), st.Tokens+refill)
}

// backoff returns the state after a conflict or a failed action: no action
// until the doubled (capped) backoff has passed.
func backoff(st railState, why string, now time.Time) railState {
	const first, limit = 10 * time.Second, 10 * time.Minute
	next := time.Duration(st.Backoff) * 2
	if next == 0 || now.Sub(st.BackoffUntil) > limit*2 { // quiet for a while: start over
		next = first
	}
	st.Backoff = Duration(min(next, limit))
	st.BackoffUntil = now.Add(time.Duration(st.Backoff))
	st.BackoffWhy = why
	return st
}

// Duration is a time.Duration written as "10s" in the state file.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}
