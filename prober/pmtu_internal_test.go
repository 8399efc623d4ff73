package prober

import "testing"

func TestMaxProbes(t *testing.T) {
	for _, tc := range []struct {
		loss float64
		want int
	}{{0, 3}, {0.05, 3}, {0.2, 5}, {0.4, 8}, {0.6, 10}} {
		if got := maxProbes(tc.loss); got != tc.want {
			t.Errorf("maxProbes(%v) = %d, want %d", tc.loss, got, tc.want)
		}
	}
}
