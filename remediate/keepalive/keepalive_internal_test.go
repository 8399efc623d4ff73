package keepalive

import (
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
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

// A reply to our probe after a long idle gap proves nothing when the peer's
// own packet made a new mapping just before it (the site's 25 s keepalive,
// seen in a Debian VM behind a real conntrack NAT: "kept up to 26.2 s,
// expired from 6.4 s" for a true 5 s, and a 5 s keepalive that did not
// hold). The gap counts once a poll after the reply shows no rebind; a
// rebind in that poll drops it.
func TestKeptGapWaitsForAPollWithoutRebind(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	u := &kaUnit{st: kaState{Device: "wg0", Peer: "k"}}
	peer := collector.Peer{PublicKey: "k", ReceiveBytes: 100, LastHandshake: at(-1)}
	u.observeSnapshot(peer, at(0)) // the first poll: the handshake is the last traffic known

	// The peer's keepalive rebinds at 25.0 s; our probe at 25.1 s is answered
	// through the new mapping before the poll at 25.5 s shows the rebind.
	u.observeResult(prober.Result{Sent: at(25.1), Success: true, RTT: time.Millisecond})
	if u.est.lower != 0 {
		t.Fatalf("a kept gap of %s taken before any poll after the reply", u.est.lower)
	}
	peer.ReceiveBytes, peer.EndpointChanges = 300, 1
	u.observeSnapshot(peer, at(25.5))
	if u.est.lower != 0 || u.est.upper != 26500*time.Millisecond {
		t.Fatalf("after the rebind: bracket %s..%s, want no kept gap and expired within 26.5s (handshake to the poll)", u.est.lower, u.est.upper)
	}

	// Answered 3 s after the poll that saw the peer's bytes (they came by
	// then), and the next poll shows no rebind: kept for at least 3 s.
	u.observeResult(prober.Result{Sent: at(28.5), Success: true, RTT: time.Millisecond})
	u.observeSnapshot(peer, at(28.4)) // a poll that read the peer before the reply: still waiting
	if u.est.lower != 0 {
		t.Fatalf("kept %s from a poll older than the reply", u.est.lower)
	}
	u.observeResult(prober.Result{Sent: at(28.6), Success: true, RTT: time.Millisecond}) // 0.1 s later: no gap of its own
	peer.ReceiveBytes = 400
	u.observeSnapshot(peer, at(29))
	if u.est.lower != 3*time.Second || len(u.est.keptGaps) != 1 {
		t.Errorf("kept gaps %v, want only the 3s gap that kept the mapping", u.est.keptGaps)
	}
}

// Samples that disagree: a gap that "kept" the mapping at or above one that
// expired it is dropped from the lower end, and the longest kept gap below
// the upper end stays.
func TestExpiryBoundsTheKeptGaps(t *testing.T) {
	var e natEstimate
	e.kept(4 * time.Second)
	e.kept(26 * time.Second)
	if e.lower != 26*time.Second {
		t.Fatalf("lower %s with no expiry, want the longest kept gap", e.lower)
	}
	e.expired(6400 * time.Millisecond)
	if e.lower != 4*time.Second || e.upper != 6400*time.Millisecond {
		t.Errorf("bracket %s..%s, want 4s..6.4s", e.lower, e.upper)
	}
	if got := e.lifetime(); got != 5200*time.Millisecond {
		t.Errorf("lifetime %s, want the middle 5.2s", got)
	}
}

// Traffic seen in a poll is known only to within the poll interval: a gap
// that kept the mapping counts from the poll that saw the bytes (the
// shortest it can have been), one that expired it from the poll before
// (the longest), so neither claim overstates what the evidence shows. And
// the first poll is no traffic (a probe lost 2.5 s after the agent started
// was once taken for a 2.5 s NAT lifetime).
func TestGapsFromWhatThePollsCanTell(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	u := &kaUnit{st: kaState{Device: "wg0", Peer: "k"}}
	peer := collector.Peer{PublicKey: "k", ReceiveBytes: 100}
	u.observeSnapshot(peer, at(0))
	u.observeResult(prober.Result{Sent: at(2.5), Success: false})
	if len(u.failed) != 0 {
		t.Fatalf("a probe lost after the first poll counted as lost after %s idle", u.failed[0].gap)
	}
	peer.ReceiveBytes = 200 // the peer's bytes, some time in (0 s, 1 s]
	u.observeSnapshot(peer, at(1))
	u.observeSnapshot(peer, at(2)) // nothing new: rx is the same
	peer.ReceiveBytes = 300
	u.observeSnapshot(peer, at(3)) // bytes in (2 s, 3 s]
	u.observeResult(prober.Result{Sent: at(9), Success: false})
	if len(u.failed) != 1 || u.failed[0].gap != 7*time.Second {
		t.Fatalf("lost probe after idle: %v, want one with the longest gap it can have been, 7s (from the poll at 2s)", u.failed)
	}
	peer.ReceiveBytes, peer.EndpointChanges = 400, 1
	u.observeSnapshot(peer, at(12))
	if u.est.upper != 7*time.Second {
		t.Errorf("upper end %s, want the lost probe's 7s (the rebind's gap is longer: 10s)", u.est.upper)
	}
}
