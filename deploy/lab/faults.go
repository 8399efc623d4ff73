package lab

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Faults are the impairments of one underlay path, applied by the relay.
//
// Loss, Delay and Jitter are round-trip quantities, so what a ping through the
// tunnel measures is what was asked for: each direction gets half the delay,
// a uniform jitter of ±Jitter/2 (so the RTT spreads over Delay±Jitter), and
// drops with probability 1-sqrt(1-Loss/100). MTU drops underlay IPv4 packets
// (outer IP + UDP + WireGuard) larger than MTU bytes in both directions, as a
// link with that MTU whose ICMP never arrives would: a black hole.
type Faults struct {
	Loss       float64  `json:"loss"`            // percent, 0..100, round trip
	Delay      Duration `json:"delay"`           // added to the RTT
	Jitter     Duration `json:"jitter"`          // RTT spread ±Jitter
	MTU        int      `json:"mtu"`             // 0 = no limit
	Down       bool     `json:"down"`            // drop everything
	NATTimeout Duration `json:"nat_timeout"`     // 0 = no NAT expiry
	Rebinds    uint64   `json:"rebinds"`         // NAT mappings replaced so far (read-only)
	Dropped    uint64   `json:"dropped"`         // datagrams dropped so far (read-only)
	Forwarded  uint64   `json:"forwarded"`       // datagrams forwarded so far (read-only)
	Endpoint   string   `json:"relay,omitempty"` // current relay source address towards the hub (read-only)
}

// Duration is a time.Duration that reads and writes as "20ms" in JSON.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// FaultChange is a parsed `fault` command line.
type FaultChange struct {
	set    []func(*Faults)
	Rebind bool
}

// Apply returns f with the change applied.
func (c FaultChange) Apply(f Faults) Faults {
	for _, s := range c.set {
		s(&f)
	}
	return f
}

// ParseFaultArgs parses key=value arguments of `wgpulse-lab fault PATH ...`:
// loss=PCT delay=DUR jitter=DUR mtu=BYTES down up nat-timeout=DUR rebind.
// Zero clears a property (loss=0, delay=0, mtu=0, nat-timeout=0).
func ParseFaultArgs(args []string) (FaultChange, error) {
	var c FaultChange
	if len(args) == 0 {
		return c, fmt.Errorf("no fault given: use loss=PCT delay=DUR jitter=DUR mtu=BYTES down up nat-timeout=DUR rebind")
	}
	for _, a := range args {
		k, v, hasV := strings.Cut(a, "=")
		bad := func(format string, x ...any) error {
			return fmt.Errorf("%s: %s", a, fmt.Sprintf(format, x...))
		}
		switch k {
		case "loss":
			p, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if err != nil || p < 0 || p > 100 {
				return c, bad("loss must be a percentage from 0 to 100")
			}
			c.set = append(c.set, func(f *Faults) { f.Loss = p })
		case "delay", "jitter", "nat-timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return c, bad("%s must be a duration such as 20ms or 0", k)
			}
			if d > time.Minute {
				return c, bad("%s above 1m is not a network, it is an outage: use down", k)
			}
			switch k {
			case "delay":
				c.set = append(c.set, func(f *Faults) { f.Delay = Duration(d) })
			case "jitter":
				c.set = append(c.set, func(f *Faults) { f.Jitter = Duration(d) })
			default:
				c.set = append(c.set, func(f *Faults) { f.NATTimeout = Duration(d) })
			}
		case "mtu":
			n, err := strconv.Atoi(v)
			if err != nil || (n != 0 && (n < 128 || n > 65535)) {
				return c, bad("mtu must be 0 (no limit) or bytes from 128 to 65535")
			}
			c.set = append(c.set, func(f *Faults) { f.MTU = n })
		case "down", "up", "rebind":
			if hasV {
				return c, bad("%s takes no value", k)
			}
			switch k {
			case "down":
				c.set = append(c.set, func(f *Faults) { f.Down = true })
			case "up":
				c.set = append(c.set, func(f *Faults) { f.Down = false })
			default:
				c.Rebind = true
			}
		default:
			return c, fmt.Errorf("%s: unknown fault %q: use loss=PCT delay=DUR jitter=DUR mtu=BYTES down up nat-timeout=DUR rebind", a, k)
		}
	}
	return c, nil
}

// String renders the active faults compactly, e.g. "loss=20% delay=30ms".
func (f Faults) String() string {
	var parts []string
	if f.Down {
		parts = append(parts, "DOWN")
	}
	if f.Loss > 0 {
		parts = append(parts, fmt.Sprintf("loss=%g%%", f.Loss))
	}
	if f.Delay > 0 {
		parts = append(parts, "delay="+time.Duration(f.Delay).String())
	}
	if f.Jitter > 0 {
		parts = append(parts, "jitter="+time.Duration(f.Jitter).String())
	}
	if f.MTU > 0 {
		parts = append(parts, fmt.Sprintf("mtu=%d", f.MTU))
	}
	if f.NATTimeout > 0 {
		parts = append(parts, "nat-timeout="+time.Duration(f.NATTimeout).String())
	}
	if len(parts) == 0 {
		return "clean"
	}
	return strings.Join(parts, " ")
}
