package remediate

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// Why a wanted action was not taken, for the rails every policy shares (the
// `reason` label of wgpulse_remediation_suppressed_total). Policies add
// their own reasons.
const (
	SuppressPaused      = "paused"       // POST /-/remediate/pause or SIGUSR1
	SuppressBackoff     = "backoff"      // after a conflict or a failed action
	SuppressDamped      = "damped"       // flap damping: no voluntary change
	SuppressRateLimited = "rate_limited" // the unit's change budget is spent
	SuppressHoldDown    = "hold_down"    // a better state must hold this long first
	SuppressBelowFloor  = "below_floor"  // the value wanted is below the floor the policy may set
	SuppressBudget      = "budget"       // the node-wide budget of changes is spent
)

// LastingFor is how close together conflicts must come to make a lasting
// conflict: two in a row, each within LastingFor of the one before.
const LastingFor = 20 * time.Minute

var railReasons = []string{SuppressPaused, SuppressBackoff, SuppressDamped, SuppressRateLimited, SuppressBudget}

// Damping is BGP-style flap damping (RFC 2439): every change adds Penalty,
// which decays with HalfLife; at Suppress the unit is damped and makes no
// voluntary change until the penalty decays below Reuse. Leaving a dead
// state (an escape) is never damped.
type Damping struct {
	Penalty  float64       `yaml:"penalty"`
	Suppress float64       `yaml:"suppress"`
	Reuse    float64       `yaml:"reuse"`
	HalfLife time.Duration `yaml:"half_life"`
}

// RateLimit caps changes per unit: a bucket of Burst changes refilled
// evenly over Per. It applies to every change: the last rail against a loop.
type RateLimit struct {
	Burst int           `yaml:"burst"`
	Per   time.Duration `yaml:"per"`
}

// Limits are a unit's rail settings: damping (zero: none) and rate limit.
type Limits struct {
	Damping Damping
	Rate    RateLimit
}

// Rails is what the safety rails remember of one unit (a failover group, a
// peer's MTU or keepalive): damping, rate limit, backoff. A policy persists
// it with the unit's own state and hands the core a pointer to it in each
// Plan; only the core changes it.
type Rails struct {
	Penalty      float64   `json:"penalty"` // damping penalty at PenaltyAt
	PenaltyAt    time.Time `json:"penalty_at"`
	Damped       bool      `json:"damped"`
	Tokens       float64   `json:"tokens"` // rate limit bucket at TokensAt
	TokensAt     time.Time `json:"tokens_at"`
	Switches     int       `json:"switches"`          // changes made
	Backoff      Duration  `json:"backoff,omitempty"` // current backoff step
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	BackoffWhy   string    `json:"backoff_why,omitempty"`
	Failed       bool      `json:"backoff_failed,omitempty"` // the backoff follows a failed change of ours
	Conflicts    int       `json:"conflicts,omitempty"`      // in a row, each within LastingFor of the one before
	ConflictAt   time.Time `json:"conflict_at,omitzero"`
	ConflictWhy  string    `json:"conflict_why,omitempty"` // what the last conflict found
}

// Lasting says whether the unit is in a lasting conflict: something else
// reverted its change twice in a row. An escape then waits out the
// backoff like any change, so two managers cannot fight faster than it.
func (st Rails) Lasting(now time.Time) bool {
	return st.Conflicts >= 2 && now.Sub(st.ConflictAt) < LastingFor
}

// conflicted returns the state after a conflict at now: counted in a row
// (or anew after a quiet LastingFor) and backed off from.
func conflicted(st Rails, why string, now time.Time) Rails {
	if now.Sub(st.ConflictAt) >= LastingFor {
		st.Conflicts = 0
	}
	st.Conflicts++
	st.ConflictAt, st.ConflictWhy = now, why
	st = backoff(st, "a conflict with another manager", now)
	st.Failed = false
	return st
}

// applyRails suppresses an action the rails forbid. Leaving a dead state
// (an escape) is never damped, rate limited or backed off, except from a
// backoff after its own failure (the kernel refused: retrying at once
// fails again) or in a lasting conflict; everything else is held by each
// rail.
func applyRails(d *Decision, l Limits, st Rails, now time.Time, paused bool) {
	if d.Action == "" || d.Suppressed != "" {
		return
	}
	switch {
	case paused:
		d.Suppressed, d.Reason = SuppressPaused, "remediation paused: "+d.Reason
	case now.Before(st.BackoffUntil) && (!d.Escape || st.Failed || st.Lasting(now)):
		d.Suppressed = SuppressBackoff
		d.Reason = fmt.Sprintf("backing off until %s after %s: %s", st.BackoffUntil.Format(time.RFC3339), st.BackoffWhy, d.Reason)
	case !d.Escape && Damped(l.Damping, st, now):
		d.Suppressed = SuppressDamped
		d.Reason = fmt.Sprintf("flap damping: penalty %.0f above reuse %.0f after %d changes: %s", Penalty(l.Damping, st, now), l.Damping.Reuse, st.Switches, d.Reason)
	case !d.Escape && Tokens(l.Rate, st, now) < 1:
		d.Suppressed = SuppressRateLimited
		d.Reason = fmt.Sprintf("rate limit: %d changes per %s spent: %s", l.Rate.Burst, l.Rate.Per, d.Reason)
	}
}

// spend returns the rail state after a change at now (an escape past an
// empty bucket leaves it empty, not in debt).
func spend(l Limits, st Rails, now time.Time) Rails {
	if l.Damping.Penalty > 0 {
		st.Penalty, st.PenaltyAt = Penalty(l.Damping, st, now)+l.Damping.Penalty, now
		st.Damped = Damped(l.Damping, st, now)
	}
	st.Tokens, st.TokensAt = max(0, Tokens(l.Rate, st, now)-1), now
	st.Switches++
	return st
}

// Penalty is the damping penalty decayed to now.
func Penalty(dm Damping, st Rails, now time.Time) float64 {
	if st.Penalty == 0 || st.PenaltyAt.IsZero() || dm.HalfLife == 0 {
		return 0
	}
	return st.Penalty * math.Exp2(-float64(now.Sub(st.PenaltyAt))/float64(dm.HalfLife))
}

// Damped says whether damping holds the unit: from reaching Suppress until
// decaying below Reuse.
func Damped(dm Damping, st Rails, now time.Time) bool {
	if dm.Penalty == 0 {
		return false
	}
	p := Penalty(dm, st, now)
	if st.Damped {
		return p >= dm.Reuse
	}
	return p >= dm.Suppress
}

// Tokens is the rate limit bucket at now; a fresh unit has a full one.
func Tokens(rl RateLimit, st Rails, now time.Time) float64 {
	if st.TokensAt.IsZero() {
		return float64(rl.Burst)
	}
	refill := float64(now.Sub(st.TokensAt)) / float64(rl.Per) * float64(rl.Burst)
	return min(float64(rl.Burst), st.Tokens+refill)
}

// backoff returns the state after a conflict or a failed action: no action
// until the doubled (capped) backoff has passed.
func backoff(st Rails, why string, now time.Time) Rails {
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

// budget is the node-wide bucket, shared by every policy's goroutine.
type budget struct {
	mu     sync.Mutex
	cfg    Budget
	tokens float64
	at     time.Time
}

func (b *budget) level(now time.Time) float64 {
	if b.at.IsZero() {
		return float64(b.cfg.Changes)
	}
	return min(float64(b.cfg.Changes), b.tokens+float64(now.Sub(b.at))/float64(b.cfg.Per)*float64(b.cfg.Changes))
}

// take spends one change, or says why not: a voluntary change may not dip
// into the quarter kept for escapes.
func (b *budget) take(d *Decision, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	reserve := 0.0
	if !d.Escape {
		reserve = float64((b.cfg.Changes + 3) / 4)
	}
	if l := b.level(now); l < 1+reserve {
		d.Suppressed = SuppressBudget
		d.Reason = fmt.Sprintf("node-wide budget: %d changes per %s spent (the last %d are kept for escapes from dead paths; raise remediate.budget if this node has more units): %s",
			b.cfg.Changes, b.cfg.Per, (b.cfg.Changes+3)/4, d.Reason)
		return
	}
	b.tokens, b.at = b.level(now)-1, now
}

func (b *budget) remaining(now time.Time) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.level(now)
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
