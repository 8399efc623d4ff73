// Package alerts generates wgpulse's Prometheus alerting and recording rules,
// mixin style, from the same metric contract the agent exports: tunnel
// alerts with thresholds from the `alerts:` section, and multiwindow
// multi-burn-rate SLO rules from the `slo:` section.
package alerts

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Config is the `alerts:` section. Every threshold has a default justified in
// alerts/RUNBOOK.md.
type Config struct {
	// Job is the Prometheus job label of the agents (for AgentDown/Absent).
	Job string `yaml:"job"`
	// RunbookURL is the base of every runbook_url annotation.
	RunbookURL string `yaml:"runbook_url"`

	// HandshakeGrace is added to WireGuard's 180 s RejectAfterTime before a
	// handshake counts as missing.
	HandshakeGrace      time.Duration `yaml:"handshake_grace"`
	HandshakeFor        time.Duration `yaml:"handshake_for"`
	NeverEstablishedFor time.Duration `yaml:"never_established_for"`

	LossRatio    float64       `yaml:"loss_ratio"`
	LossFor      time.Duration `yaml:"loss_for"`
	RTTP99       time.Duration `yaml:"rtt_p99"`
	RTTFor       time.Duration `yaml:"rtt_for"`
	Jitter       time.Duration `yaml:"jitter"`
	JitterFor    time.Duration `yaml:"jitter_for"`
	ProbeDownFor time.Duration `yaml:"probe_down_for"`

	// EndpointChanges in EndpointWindow means the peer's NAT mapping or
	// address keeps changing.
	EndpointChanges int           `yaml:"endpoint_changes"`
	EndpointWindow  time.Duration `yaml:"endpoint_window"`

	PathMTUFor   time.Duration `yaml:"path_mtu_for"`
	ProberFor    time.Duration `yaml:"prober_for"`
	AgentDownFor time.Duration `yaml:"agent_down_for"`
	// ConfigProblemFor: a problem the agent's diagnose checks find, or one
	// end's AllowedIPs missing the other end's address, for this long.
	ConfigProblemFor time.Duration `yaml:"config_problem_for"`
	// NodeDownRatio: more than this share of a node's tunnels broken at
	// once (handshake missing or every probe lost), and at least
	// NodeDownMin of them, is one outage of the node: one page
	// (WireGuardNodeTunnelsDown) instead of one per tunnel.
	NodeDownRatio float64       `yaml:"node_down_ratio"`
	NodeDownMin   int           `yaml:"node_down_min"`
	NodeDownFor   time.Duration `yaml:"node_down_for"`
	// KeyRotation warns when a device's public key is older than this
	// (wireguard_device_key_first_seen_seconds), e.g. 90d; 0 = no rule.
	KeyRotation Duration `yaml:"key_rotation"`

	// Remediation alerts.
	FailoverActiveFor time.Duration `yaml:"failover_active_for"` // on the backup this long: someone should fix the primary
	PausedFor         time.Duration `yaml:"paused_for"`          // remediation paused this long: forgotten?
	DampedFor         time.Duration `yaml:"damped_for"`
	NATUnfixableFor   time.Duration `yaml:"nat_unfixable_for"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Job:                 "wgpulse",
		RunbookURL:          "https://github.com/wgpulse/wgpulse/blob/main/alerts/RUNBOOK.md",
		HandshakeGrace:      time.Minute,
		HandshakeFor:        time.Minute,
		NeverEstablishedFor: 10 * time.Minute,
		LossRatio:           0.05,
		LossFor:             5 * time.Minute,
		RTTP99:              250 * time.Millisecond,
		RTTFor:              10 * time.Minute,
		Jitter:              30 * time.Millisecond,
		JitterFor:           10 * time.Minute,
		ProbeDownFor:        2 * time.Minute,
		EndpointChanges:     6,
		EndpointWindow:      time.Hour,
		PathMTUFor:          30 * time.Minute,
		ProberFor:           10 * time.Minute,
		AgentDownFor:        2 * time.Minute,
		ConfigProblemFor:    10 * time.Minute,
		NodeDownRatio:       0.5,
		NodeDownMin:         2,
		NodeDownFor:         30 * time.Second,
		FailoverActiveFor:   time.Hour,
		PausedFor:           time.Hour,
		DampedFor:           time.Minute,
		NATUnfixableFor:     10 * time.Minute,
	}
}

// Validate names the offending field.
func (c Config) Validate() error {
	var errs []error
	fe := func(field, format string, a ...any) {
		errs = append(errs, &fieldError{field, fmt.Sprintf(format, a...)})
	}
	if c.Job == "" {
		fe("job", "must not be empty")
	}
	if c.LossRatio <= 0 || c.LossRatio >= 1 {
		fe("loss_ratio", "must be between 0 and 1 (0.05 = 5%%), got %v", c.LossRatio)
	}
	if c.EndpointChanges < 1 {
		fe("endpoint_changes", "must be at least 1, got %d", c.EndpointChanges)
	}
	if c.NodeDownRatio < 0 || c.NodeDownRatio >= 1 {
		fe("node_down_ratio", "must be 0 (any share) up to below 1: more than this share of a node's tunnels down is one outage (default 0.5), got %v", c.NodeDownRatio)
	}
	if c.NodeDownMin < 2 {
		fe("node_down_min", "must be at least 2 (one broken tunnel pages on its own), got %d", c.NodeDownMin)
	}
	// In the file's order, so errors come in a stable order.
	type field struct {
		name string
		d    time.Duration
	}
	for _, f := range []field{
		{"handshake_for", c.HandshakeFor}, {"never_established_for", c.NeverEstablishedFor}, {"loss_for", c.LossFor},
		{"rtt_for", c.RTTFor}, {"jitter_for", c.JitterFor}, {"probe_down_for", c.ProbeDownFor}, {"path_mtu_for", c.PathMTUFor},
		{"prober_for", c.ProberFor}, {"agent_down_for", c.AgentDownFor}, {"config_problem_for", c.ConfigProblemFor}, {"node_down_for", c.NodeDownFor}, {"failover_active_for", c.FailoverActiveFor},
		{"paused_for", c.PausedFor}, {"damped_for", c.DampedFor}, {"nat_unfixable_for", c.NATUnfixableFor},
	} {
		if f.d < 0 {
			fe(f.name, "must not be negative, got %s", f.d)
		}
	}
	if c.KeyRotation < 0 || (c.KeyRotation > 0 && time.Duration(c.KeyRotation) < 24*time.Hour) {
		fe("key_rotation", "must be 0 (off) or at least 1d, got %s", time.Duration(c.KeyRotation))
	}
	for _, f := range []field{{"handshake_grace", c.HandshakeGrace}, {"rtt_p99", c.RTTP99}, {"jitter", c.Jitter}, {"endpoint_window", c.EndpointWindow}} {
		if f.d <= 0 {
			fe(f.name, "must be positive, got %s", f.d)
		}
	}
	return errors.Join(errs...)
}

// SLOConfig is the `slo:` section: per-tunnel objectives and how their
// error budgets are alerted on.
type SLOConfig struct {
	// Period is the SLO window (7d to 90d); burn-rate factors derive from it.
	Period Duration `yaml:"period"`
	// MinProbes is the minimum number of probes in a burn window for a
	// tunnel to be alerted on, so a quiet tunnel does not page.
	MinProbes  int         `yaml:"min_probes"`
	Page       TierConfig  `yaml:"page"`
	Ticket     TierConfig  `yaml:"ticket"`
	Objectives []Objective `yaml:"objectives"`
}

// TierConfig enables a burn-rate tier and sets its severity.
type TierConfig struct {
	Enabled  bool   `yaml:"enabled"`
	Severity string `yaml:"severity"`
}

// Objective is one SLO, evaluated per tunnel (device, peer, target).
type Objective struct {
	Name string `yaml:"name"`
	// SLI is "availability" (failed probes / probes) or "latency" (probes
	// lost or slower than Threshold / probes).
	SLI       string        `yaml:"sli"`
	Objective float64       `yaml:"objective"` // percent, e.g. 99.9
	Threshold time.Duration `yaml:"threshold"` // latency only; must be an RTT bucket boundary
}

// DefaultSLOConfig returns a 30 d availability SLO of 99.9% and a latency SLO
// of 99% of probes under 250 ms.
func DefaultSLOConfig() SLOConfig {
	return SLOConfig{
		Period:    Duration(30 * 24 * time.Hour),
		MinProbes: 100,
		Page:      TierConfig{Enabled: true, Severity: "critical"},
		Ticket:    TierConfig{Enabled: true, Severity: "warning"},
		Objectives: []Objective{
			{Name: "tunnel-availability", SLI: "availability", Objective: 99.9},
			{Name: "tunnel-latency", SLI: "latency", Objective: 99, Threshold: 250 * time.Millisecond},
		},
	}
}

var severities = []string{"critical", "warning", "info"}

// Validate names the offending field.
func (c SLOConfig) Validate() error {
	var errs []error
	fe := func(field, format string, a ...any) {
		errs = append(errs, &fieldError{field, fmt.Sprintf(format, a...)})
	}
	if p := time.Duration(c.Period); p < 7*24*time.Hour || p > 90*24*time.Hour {
		fe("period", "must be 7d to 90d, got %s", c.Period)
	}
	if c.MinProbes < 0 {
		fe("min_probes", "must not be negative")
	}
	for i, t := range []TierConfig{c.Page, c.Ticket} {
		if t.Enabled && !slices.Contains(severities, t.Severity) {
			fe([]string{"page", "ticket"}[i]+".severity", "must be one of %v, got %q", severities, t.Severity)
		}
	}
	seen := map[string]bool{}
	for i, o := range c.Objectives {
		f := func(s string) string { return fmt.Sprintf("objectives[%d].%s", i, s) }
		if o.Name == "" || seen[o.Name] {
			fe(f("name"), "must be unique and not empty, got %q", o.Name)
		}
		seen[o.Name] = true
		if o.Objective <= 0 || o.Objective >= 100 {
			fe(f("objective"), "must be a percentage between 0 and 100 exclusive, got %v", o.Objective)
		}
		switch o.SLI {
		case "availability":
		case "latency":
			if o.Threshold <= 0 {
				fe(f("threshold"), "must be positive (and one of prober.rtt_buckets), got %s", o.Threshold)
			}
		default:
			fe(f("sli"), `must be "availability" or "latency", got %q`, o.SLI)
		}
	}
	return errors.Join(errs...)
}

// Duration is a time.Duration that also reads Prometheus-style days ("30d").
type Duration time.Duration

// UnmarshalYAML accepts Go durations and whole days ("30d").
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	var days int
	if _, err := fmt.Sscanf(s, "%dd", &days); err == nil && fmt.Sprintf("%dd", days) == s {
		*d = Duration(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. 30d or 720h)", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return promDuration(time.Duration(d)) }

// fieldError is a configuration problem at a YAML path relative to the
// section; the agent's config loader maps it to the file's line.
type fieldError struct{ path, problem string }

func (e *fieldError) Error() string        { return e.path + ": " + e.problem }
func (e *fieldError) FieldPath() string    { return e.path }
func (e *fieldError) FieldProblem() string { return e.problem }

// BucketError is a latency threshold that is not a boundary of the RTT
// histogram's classic buckets: rules would interpolate instead of counting.
type BucketError struct {
	Path      string // e.g. slo.objectives[1].threshold
	Threshold time.Duration
	Buckets   []float64
}

func (e *BucketError) Error() string { return e.Path + ": " + e.Problem() }

// Problem is the error without its path.
func (e *BucketError) Problem() string {
	return fmt.Sprintf("%s is not one of prober.rtt_buckets %v (seconds): add %g there so the rules count exactly", e.Threshold, e.Buckets, e.Threshold.Seconds())
}

// CheckRTTBuckets finds the latency thresholds of the rules (the latency
// SLOs' thresholds and rtt_p99) that are not classic bucket boundaries of
// wgpulse_probe_rtt_seconds.
func CheckRTTBuckets(c Config, slo SLOConfig, buckets []float64) []*BucketError {
	var errs []*BucketError
	for i, o := range slo.Objectives {
		if o.SLI == "latency" && !slices.Contains(buckets, o.Threshold.Seconds()) {
			errs = append(errs, &BucketError{fmt.Sprintf("slo.objectives[%d].threshold", i), o.Threshold, buckets})
		}
	}
	if !slices.Contains(buckets, c.RTTP99.Seconds()) {
		errs = append(errs, &BucketError{"alerts.rtt_p99", c.RTTP99, buckets})
	}
	return errs
}
