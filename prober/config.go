// Package prober measures every tunnel actively: ICMP echo through the
// tunnel device for RTT, loss and jitter (the SLI), and DF probes of growing
// size for the path MTU. Probes of all targets share one socket per device
// and address family, demultiplexed by ICMP id, sequence and a payload nonce,
// and timed with kernel receive timestamps.
package prober

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Config is the `prober:` section.
type Config struct {
	// Enabled turns probing on (default true).
	Enabled bool `yaml:"enabled"`
	// Interval between probes of one target (default 1s).
	Interval time.Duration `yaml:"interval"`
	// Timeout after which a probe without reply is lost (default 2s).
	Timeout time.Duration `yaml:"timeout"`
	// Window over which wgpulse_probe_loss_ratio is computed (default 1m).
	Window time.Duration `yaml:"window"`
	// AutoTargets probes each peer's host AllowedIP (/32, /128) on every
	// watched device (default true).
	AutoTargets bool `yaml:"auto_targets"`
	// Size is the ICMP payload size of SLI probes (default 56, as ping).
	Size int `yaml:"size"`
	// MaxRate caps the probes per second across all targets (default 1000; 0
	// = no cap). With more targets than MaxRate × interval allows, every
	// target's interval is stretched evenly, so a hub with 10,000 peers is
	// probed every 10 s instead of flooding its tunnels.
	MaxRate float64 `yaml:"max_rate"`
	// Targets are probed in addition to the auto-targets.
	Targets []TargetConfig `yaml:"targets"`
	PMTU    PMTUConfig     `yaml:"pmtu"`
	// RTTBuckets are the classic buckets of wgpulse_probe_rtt_seconds, in
	// seconds (default 2ms, 10ms, 50ms, 250ms). They cost a series each per
	// target. A latency SLO's threshold and alerts.rtt_p99 must be among
	// them. A change takes a restart.
	RTTBuckets []float64 `yaml:"rtt_buckets"`
	// NativeHistograms adds a native histogram (factor 1.1, at most 20
	// buckets) to wgpulse_probe_rtt_seconds for a Prometheus that ingests
	// them: exact-to-10% quantiles as one series (default false: it costs
	// about 6 KB of agent memory per target; README, "Fleet scale"). A
	// change takes a restart.
	NativeHistograms bool `yaml:"native_histograms"`
	// DetailMetrics adds per-target diagnostics (default false):
	// wgpulse_probe_loss_ratio, wgpulse_path_mtu_search_state and the late
	// and duplicate reply counters. Dashboards, alerts and SLOs do not need
	// them; they cost up to 4 more series per target.
	DetailMetrics bool `yaml:"detail_metrics"`
}

// DefaultRTTBuckets keep the default at 12 series per probed target (4
// buckets, +Inf, _sum and _count next to probes, failures, up, jitter and
// path MTU): a factor of 5 apart, up to the 250 ms of the default latency
// SLO and RTT alert, so a same-region, a cross-region and an
// intercontinental tunnel each fall in a bucket of their own.
var DefaultRTTBuckets = []float64{0.002, 0.01, 0.05, 0.25}

// TargetConfig is one explicitly configured target.
type TargetConfig struct {
	Name     string        `yaml:"name"`
	Address  string        `yaml:"address"`
	Device   string        `yaml:"device"`
	Size     int           `yaml:"size"`     // 0 = prober.size
	Interval time.Duration `yaml:"interval"` // 0 = prober.interval
	// TCPPort makes the probe a TCP connect to address:tcp_port through the
	// device (accepted or refused: alive; the connect time is the RTT)
	// instead of an ICMP echo: for paths that pass ICMP and drop TCP.
	TCPPort int `yaml:"tcp_port"`
}

// PMTUConfig is the `prober.pmtu:` section (RFC 8899 style search).
type PMTUConfig struct {
	Enabled bool `yaml:"enabled"` // default true
	// Min is where the search starts (default 1280; 1200 allowed for IPv4).
	Min int `yaml:"min"`
	// Interval between full searches (default 10m, RFC 8899 PMTU_RAISE_TIMER).
	Interval time.Duration `yaml:"interval"`
	// Confirm is how often a found path MTU is probed again (default 30s): a
	// failure is a black hole and starts a new search at once.
	Confirm time.Duration `yaml:"confirm"`
}

// DefaultConfig returns the defaults: every peer probed once a second.
func DefaultConfig() Config {
	return Config{
		Enabled: true, Interval: time.Second, Timeout: 2 * time.Second, Window: time.Minute,
		AutoTargets: true, Size: 56, MaxRate: 1000,
		PMTU:       PMTUConfig{Enabled: true, Min: 1280, Interval: 10 * time.Minute, Confirm: 30 * time.Second},
		RTTBuckets: slices.Clone(DefaultRTTBuckets),
	}
}

// Validate names the offending field.
func (c Config) Validate() error {
	var errs []error
	fe := func(field, format string, a ...any) {
		errs = append(errs, &fieldError{field, fmt.Sprintf(format, a...)})
	}
	if c.Interval < 10*time.Millisecond {
		fe("interval", "must be at least 10ms, got %s", c.Interval)
	}
	if c.Timeout <= 0 || c.Timeout > time.Minute {
		fe("timeout", "must be between 1ns and 1m, got %s", c.Timeout)
	}
	if c.Window < c.Interval || c.Window > 24*time.Hour {
		fe("window", "must be between prober.interval and 24h, got %s", c.Window)
	}
	if c.Size < 16 || c.Size > 65000 {
		fe("size", "ICMP payload must be 16..65000 bytes, got %d", c.Size)
	}
	if c.MaxRate < 0 {
		fe("max_rate", "must be 0 (no cap) or positive, got %v", c.MaxRate)
	}
	seen := map[string]bool{}
	for i, t := range c.Targets {
		f := func(sub string) string { return fmt.Sprintf("targets[%d].%s", i, sub) }
		// Duplicates by the prober's own key, so fd00:0::1 and fd00::1 are one.
		a, err := netip.ParseAddr(t.Address)
		key := Target{Device: t.Device, Address: a, TCPPort: uint16(t.TCPPort)}.Key()
		switch {
		case err != nil:
			fe(f("address"), "%q is not an IP address", t.Address)
		case t.TCPPort < 0 || t.TCPPort > 65535:
			fe(f("tcp_port"), "must be 1-65535 (0: an ICMP echo), got %d", t.TCPPort)
		case seen[key]:
			fe(f("address"), "%s on %s listed twice", Target{Address: a, TCPPort: uint16(t.TCPPort)}.Label(), t.Device)
		}
		seen[key] = err == nil
		if t.Device == "" {
			fe(f("device"), "required: the WireGuard device the probe must leave through")
		}
		if t.Size != 0 && (t.Size < 16 || t.Size > 65000) {
			fe(f("size"), "ICMP payload must be 16..65000 bytes, got %d", t.Size)
		}
		if t.Interval != 0 && t.Interval < 10*time.Millisecond {
			fe(f("interval"), "must be at least 10ms, got %s", t.Interval)
		}
	}
	switch {
	case len(c.RTTBuckets) == 0 || len(c.RTTBuckets) > 20:
		fe("rtt_buckets", "must list 1 to 20 bucket boundaries in seconds, got %d", len(c.RTTBuckets))
	case !slices.IsSorted(c.RTTBuckets) || c.RTTBuckets[0] <= 0 || c.RTTBuckets[len(c.RTTBuckets)-1] > 60 || len(slices.Compact(slices.Clone(c.RTTBuckets))) != len(c.RTTBuckets):
		fe("rtt_buckets", "must be increasing boundaries in seconds between 0 and 60 (e.g. [0.002, 0.01, 0.05, 0.25]), got %v", c.RTTBuckets)
	}
	if c.PMTU.Min < 1200 || c.PMTU.Min > 9000 {
		fe("pmtu.min", "must be 1200..9000 (1280 is the IPv6 minimum), got %d", c.PMTU.Min)
	}
	if c.PMTU.Confirm < 5*time.Second || c.PMTU.Confirm > c.PMTU.Interval {
		fe("pmtu.confirm", "must be 5s..pmtu.interval (default 30s), got %s", c.PMTU.Confirm)
	}
	if c.PMTU.Interval < time.Minute {
		fe("pmtu.interval", "must be at least 1m (RFC 8899 suggests 10m), got %s", c.PMTU.Interval)
	}
	return errors.Join(errs...)
}

// fieldError is a configuration problem at a YAML path relative to the
// section; the agent's config loader maps it to the file's line.
type fieldError struct{ path, problem string }

func (e *fieldError) Error() string        { return e.path + ": " + e.problem }
func (e *fieldError) FieldPath() string    { return e.path }
func (e *fieldError) FieldProblem() string { return e.problem }
