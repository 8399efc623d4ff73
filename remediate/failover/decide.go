package failover

import (
	"fmt"
	"time"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
)

// The failover decision is a pure function: (group config, group state, path
// signals, now) -> decision. The policy feeds it and the core carries
// decisions out; nothing here touches the kernel, a clock or a logger.

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

// Why a wanted switch was not taken (the `reason` label of
// wgpulse_remediation_suppressed_total), besides the core's rails.
const (
	SuppressBothDown      = "both_down" // the other path is down too
	SuppressUnknown       = "unknown"   // the other path has no verdict yet
	SuppressMargin        = "margin"    // the backup is not better by the margin
	SuppressHoldDown      = remediate.SuppressHoldDown
	SuppressDeviceMissing = "device_missing"  // a device of the group does not exist
	SuppressMetricTooHigh = "metric_too_high" // our route would not win over the operator's
	// A return would leave a prefix with no route via the primary (its
	// tunnel's routes gone: wg-quick down): staying on the backup.
	SuppressNoPrimaryRoute = "no_primary_route"
	// The backup's peers do not allow a prefix: WireGuard would drop what
	// is routed to them.
	SuppressBackupNotAllowed = "backup_not_allowed"
	// A prefix holds the endpoint of the tunnel's own peer: routing it into
	// the tunnel would send the tunnel's packets into itself.
	SuppressEndpointInPrefix = "endpoint_in_prefix"
	// Every failover target of the node is down or losing at once, backups
	// and underlay targets included: the probe plane broke (a host firewall
	// dropping ICMP, a socket problem), not the paths. Unknown, node-wide.
	SuppressProbePlaneDown = "probe_plane_down"
	// A group handed back (removed, or the mode left auto) keeps its
	// routes while its primary is not up: returning would drop the traffic.
	SuppressPrimaryNotUp = "primary_not_up"
	// A route lookup sends the prefix by neither path's device: a route of
	// ours would not carry it.
	SuppressLookupElsewhere = "lookup_elsewhere"
)

var suppressReasons = []string{SuppressBothDown, SuppressUnknown, SuppressMargin, SuppressHoldDown, SuppressDeviceMissing, SuppressMetricTooHigh,
	SuppressNoPrimaryRoute, SuppressBackupNotAllowed, SuppressEndpointInPrefix, SuppressProbePlaneDown, SuppressPrimaryNotUp, SuppressLookupElsewhere}

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

// groupState is what the remediator remembers of a failover group.
type groupState struct {
	Active string    `json:"active"` // primary or backup
	Since  time.Time `json:"since"`
	// Arrived is when a switch of ours made Active the active path (zero:
	// it was found active): leaving it within hold_down is a flap.
	Arrived time.Time `json:"arrived,omitzero"`
	remediate.Rails
	// Routes are a route group's routes in force while on the backup (the
	// prefixes, or their halves where another route would beat them).
	Routes []remediate.Route `json:"routes,omitempty"`
	// Original is the peer's endpoint before the group first changed it
	// (endpoint mode), restored on exit.
	Original string `json:"original_endpoint,omitempty"`
	// Handback says why nothing maintains the group's change any more (an
	// Undo* code: removed from the config, the mode left auto): it is
	// handed back once the primary is up and routed, kept until then.
	Handback string `json:"handback,omitempty"`
	// Config is the group's config while it is on the backup, so a start
	// that no longer configures it can still hand it back.
	Config *Group `json:"config,omitempty"`
}

// decideFailover is the failover policy.
func decideFailover(g Group, st groupState, sig groupSignals, now time.Time) remediate.Decision {
	d := remediate.Decision{Group: g.Name, From: st.Active}
	p, b := sig.primary, sig.backup
	if st.Active != Backup {
		if p.State != prober.StateDown {
			return d // the primary is up or unknown: unknown is never a reason to act
		}
		d.Action, d.To, d.Escape, d.Code = ActionSwitchToBackup, Backup, true, "primary_down"
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
		d.Action, d.To, d.Escape, d.Code = ActionReturnToPrimary, Primary, true, "backup_down"
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
		d.Action, d.To, d.Code = ActionReturnToPrimary, Primary, "primary_up"
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
