package keepalive

import (
	"testing"
	"time"
)

// The keepalive comes from the bracket of the NAT's lifetime: 80% of its
// middle, but never above the longest idle gap that kept the mapping (the
// middle can lie above the true lifetime: kept 4.8 s, expired 7.8 s, true
// 5 s -> 80% of 6.3 s is 5 s, too long; 4 s is safe), nor, when that gap
// is shorter than keepalive.min, above the floor.
func TestKeepaliveNeverAboveAKeptGap(t *testing.T) {
	c := DefaultConfig()
	c.Min = 2 * time.Second
	for _, tc := range []struct {
		lower, upper, want time.Duration
	}{
		{4800 * time.Millisecond, 7800 * time.Millisecond, 4 * time.Second},
		{0, 10 * time.Second, 5 * time.Second},                 // only an upper bound: half of it
		{0, 6300 * time.Millisecond, 3 * time.Second},          // expired after 6.3 s idle (true 5 s): never the 5 s 80% gives
		{20 * time.Second, 30 * time.Second, 20 * time.Second}, // 80% of 25 s = 20 s, the kept gap agrees
		{3 * time.Second, 40 * time.Second, 3 * time.Second},   // a wide bracket: the kept gap decides
		{12 * time.Second, 10 * time.Second, 8 * time.Second},  // samples disagree: the upper end, 80%
		{0, 100 * time.Second, 25 * time.Second},               // capped at keepalive.max
	} {
		u := &kaUnit{st: kaState{Device: "wg0", Peer: "k"}, symptoms: c.Symptoms, est: natEstimate{lower: tc.lower, upper: tc.upper, samples: 4},
			reasonsSampled: []string{"endpoint changed after 8s idle"}}
		d, want := decideKeepalive(c, u, time.Now())
		if want != tc.want || d.Action != ActionSetKeepalive {
			t.Errorf("kept %s, expired %s: %s %s, want set_keepalive %s", tc.lower, tc.upper, d.Action, want, tc.want)
		}
	}
}
