// Package diagnose runs the WireGuard troubleshooting checklist on one
// node's state: AllowedIPs against each other and against the routing table,
// keepalive behind NAT, MTU against the underlay and the measured path,
// handshakes, the listen port in the nftables input hook, and keys. It is
// pure over a Node (checks.go); kernel.go reads a Node from the kernel, and
// the agent runs the same checks on every poll (wgpulse_config_problem).
package diagnose

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
)

// Severity says how wrong a finding is.
type Severity int

const (
	// Info: something the checks could not tell (no exit code).
	Info Severity = iota
	// Warning: likely to hurt traffic, or hurting part of it (exit code 1).
	Warning
	// Error: traffic is being dropped or cannot flow (exit code 2).
	Error
)

func (s Severity) String() string {
	switch s {
	case Warning:
		return "warning"
	case Error:
		return "error"
	}
	return "info"
}

// MarshalJSON writes the severity's name.
func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a severity's name.
func (s *Severity) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err != nil {
		return err
	}
	for _, v := range []Severity{Info, Warning, Error} {
		if v.String() == name {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("unknown severity %q", name)
}

// Check names: stable, they are the check label of wgpulse_config_problem
// and the "check" field of `wgpulse diagnose --json`.
const (
	CheckAllowedIPsOverlap         = "allowed_ips_overlap"
	CheckAllowedIPsRouted          = "allowed_ips_routed_elsewhere"
	CheckRouteNotAllowed           = "route_not_allowed"
	CheckNATWithoutKeepalive       = "nat_without_keepalive"
	CheckMTUAboveUnderlay          = "mtu_above_underlay"
	CheckPathMTUBelowDevice        = "path_mtu_below_device"
	CheckHandshakeStale            = "handshake_stale"
	CheckHandshakeNever            = "handshake_never"
	CheckListenPortFiltered        = "listen_port_filtered"
	CheckFirewallUnknown           = "firewall_unknown"
	CheckDuplicateKey              = "duplicate_public_key"
	CheckPeerKeyIsOwn              = "peer_key_is_own"
	CheckDeviceUnreadable          = "device_unreadable"
	CheckFailoverBackupNotAllowed  = "failover_backup_not_allowed"
	CheckFailoverEndpointInPrefix  = "failover_endpoint_in_prefix"
	CheckRPFilterStrict            = "rp_filter_strict"
	CheckForwardingOff             = "forwarding_off"
	CheckFwmarkWithoutSrcValidMark = "fwmark_without_src_valid_mark"
	CheckForwardDropsTunnel        = "forward_drops_tunnel"
	CheckQdiscNoAQM                = "qdisc_without_aqm"
	CheckMSSClampMissing           = "mss_clamp_missing"
	CheckHandshakeChecksPattern    = "handshake_.*" // the checks with their own alerts
)

// Finding is one problem: what is wrong, where, the evidence and the fix.
// PublicKey is the peer's, or the device's own for device-wide findings;
// never a private or preshared key.
type Finding struct {
	Severity  Severity `json:"severity"`
	Check     string   `json:"check"`
	Device    string   `json:"device"`
	PublicKey string   `json:"public_key,omitempty"`
	Name      string   `json:"name,omitempty"`
	Object    string   `json:"object"`
	Evidence  string   `json:"evidence"`
	Fix       string   `json:"fix"`
}

func (f Finding) String() string {
	return fmt.Sprintf("%s %s %s: %s (fix: %s)", f.Severity, f.Check, f.Object, f.Evidence, f.Fix)
}

// Sort orders findings worst first, then by device, check and object, so
// output and tests are stable.
func Sort(fs []Finding) {
	slices.SortFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(b.Severity, a.Severity), cmp.Compare(a.Device, b.Device),
			cmp.Compare(a.Check, b.Check), cmp.Compare(a.Object, b.Object), cmp.Compare(a.Evidence, b.Evidence))
	})
}

// ExitCode is 0 when nothing is wrong (info findings only), 1 with
// warnings, 2 with errors.
func ExitCode(fs []Finding) int {
	worst := Info
	for _, f := range fs {
		worst = max(worst, f.Severity)
	}
	return int(worst)
}
