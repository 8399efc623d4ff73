package prober_test

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/prober/probertest"
)

// pmtuResolution is the search's stopping width (20 bytes, as s2n-quic).
const pmtuResolution = 20

// pmtuConfirm is how often a found PMTU is re-probed.
const pmtuConfirm = 30 * time.Second

// fakePath answers DF probes up to limit bytes; above localMTU the local
// stack refuses them (EMSGSIZE). It counts probes per size.
type fakePath struct {
	limit, localMTU atomic.Int64
	mu              sync.Mutex
	sizes           []int
}

func (f *fakePath) probe(ctx context.Context, t prober.Target, size int, timeout time.Duration, _ bool) (bool, bool, error) {
	f.mu.Lock()
	f.sizes = append(f.sizes, size)
	f.mu.Unlock()
	if m := f.localMTU.Load(); m > 0 && int64(size) > m {
		return false, true, nil
	}
	if int64(size) <= f.limit.Load() {
		time.Sleep(time.Millisecond)
		return true, false, nil
	}
	select { // lost: the caller waits its timeout
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	return false, false, nil
}

func pmtuConfig() prober.Config {
	cfg := testConfig()
	cfg.PMTU.Enabled = true
	cfg.PMTU.Min = 1200
	return cfg
}

func TestPMTUSearchBlackHoleAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := &fakePath{}
		path.limit.Store(1232) // what mtu=1300 on a 1420 WireGuard device leaves
		sli := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		p, cancel := runProber(t, pmtuConfig(), sli, path.probe, "10.0.0.1")
		defer cancel()

		time.Sleep(40 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.1")
		if h.PMTUState != "search_complete" || h.PathMTU > 1232 || h.PathMTU < 1232-pmtuResolution {
			t.Fatalf("after the search: state %s PMTU %d, want search_complete within 20 bytes below 1232", h.PMTUState, h.PathMTU)
		}
		if got := p.PeerPathMTUs(); len(got) != 1 || got[0] != (prober.PeerPathMTU{Device: "wg0", PublicKey: "key0", MTU: h.PathMTU}) {
			t.Errorf("PeerPathMTUs() = %+v, want the one target's %d through key0 on wg0", got, h.PathMTU)
		}
		if h.PathMTUCeiling <= h.PathMTU { // the path lost the larger probes: a measurement, bounded by the device
			t.Errorf("ceiling %d for a path that drops above %d, want the device MTU above it", h.PathMTUCeiling, h.PathMTU)
		}
		// PMTU probes are not SLI probes.
		if sent := sli.Sent(netip.MustParseAddr("10.0.0.1")); h.Probes > uint64(sent) || h.Failures != 0 {
			t.Errorf("SLI counts %d probes / %d failures for %d SLI sends: PMTU probes leaked into the SLI", h.Probes, h.Failures, sent)
		}

		// The path MTU drops below the known PMTU: the confirmation probe
		// fails and the search restarts at once, finding the new value.
		path.limit.Store(1250 - 40)
		time.Sleep(pmtuConfirm + 10*time.Second) // the confirmation fails: searching
		synctest.Wait()
		waitState(t, p, "10.0.0.1", "search_complete", 3*time.Minute)
		h = health(t, p, "10.0.0.1")
		if h.PMTUState != "search_complete" || h.PathMTU > 1210 || h.PathMTU < 1210-pmtuResolution {
			t.Fatalf("after a black hole: state %s PMTU %d, want a new search to find <= 1210", h.PMTUState, h.PathMTU)
		}

		// Below prober.pmtu.min: the search says so explicitly, with the floor
		// that did not pass, and no PMTU value.
		path.limit.Store(1100)
		waitState(t, p, "10.0.0.1", "below_min", 3*time.Minute)
		if h = health(t, p, "10.0.0.1"); h.PathMTU != 0 || h.PathMTUBelow != 1200 {
			t.Fatalf("PMTU below min: PMTU %d, below %d; want 0 and the floor 1200", h.PathMTU, h.PathMTUBelow)
		}
		if got := p.PeerPathMTUs(); len(got) != 1 || got[0].MTU != 1199 { // what the checks hold against the device MTU
			t.Errorf("PeerPathMTUs() below the floor = %+v, want 1199 (one under the floor that did not pass)", got)
		}
		if got := exported(t, p, "wgpulse_path_mtu_below_bytes", "10.0.0.1"); got != 1200 {
			t.Errorf("wgpulse_path_mtu_below_bytes = %v, want 1200", got)
		}
	})
}

func TestPMTUCappedByEMSGSIZE(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := &fakePath{}
		path.limit.Store(1400)
		path.localMTU.Store(1350) // a route MTU below the device MTU
		sli := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		p, cancel := runProber(t, pmtuConfig(), sli, path.probe, "10.0.0.1")
		defer cancel()
		time.Sleep(40 * time.Second)
		synctest.Wait()
		h := health(t, p, "10.0.0.1")
		if h.PMTUState != "search_complete" || h.PathMTU > 1350 || h.PathMTU < 1350-pmtuResolution {
			t.Fatalf("state %s PMTU %d, want within 20 bytes below the local limit 1350", h.PMTUState, h.PathMTU)
		}
		// The local stack bounded the search, not the path: the result is
		// its own ceiling (the path passes that or more).
		if h.PathMTUCeiling != h.PathMTU {
			t.Errorf("ceiling %d for a search capped by EMSGSIZE at %d, want the result itself", h.PathMTUCeiling, h.PathMTU)
		}
		path.mu.Lock()
		defer path.mu.Unlock()
		tried := map[int]int{}
		for _, s := range path.sizes {
			if s > 1350 {
				tried[s]++
			}
		}
		for size, n := range tried {
			if n > 1 {
				t.Errorf("size %d refused with EMSGSIZE was probed %d times: a refused size must not be retried", size, n)
			}
		}
	})
}

func TestPMTUWaitsWhileThePathIsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := &fakePath{}
		path.limit.Store(1420)
		sli := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Drop: true} })
		p, cancel := runProber(t, pmtuConfig(), sli, path.probe, "10.0.0.1")
		defer cancel()
		time.Sleep(40 * time.Second)
		synctest.Wait()
		if h := health(t, p, "10.0.0.1"); h.PMTUState != "base" {
			t.Errorf("state %s while the path is down, want base (no verdict on a dead path)", h.PMTUState)
		}
		if len(path.sizes) != 0 {
			t.Errorf("%d PMTU probes sent into a dead path", len(path.sizes))
		}
	})
}

// waitState advances fake time in steps until the target's PMTU state is want.
func waitState(t *testing.T, p *prober.Prober, addr, want string, limit time.Duration) {
	t.Helper()
	for waited := time.Duration(0); waited < limit; waited += time.Second {
		if health(t, p, addr).PMTUState == want {
			return
		}
		time.Sleep(time.Second)
		synctest.Wait()
	}
	t.Fatalf("PMTU state %s after %s, want %s", health(t, p, addr).PMTUState, limit, want)
}

// TestPMTUOffThenOnAtRuntime: with prober.pmtu off nothing is probed and
// every target says disabled; turned on by a reload, the search starts
// within seconds, not at the next idle recheck.
func TestPMTUOffThenOnAtRuntime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := &fakePath{}
		path.limit.Store(1232)
		sli := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		off := pmtuConfig()
		off.PMTU.Enabled = false
		p, cancel := runProber(t, off, sli, path.probe, "10.0.0.1", "10.0.0.2")
		defer cancel()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		path.mu.Lock()
		n := len(path.sizes)
		path.mu.Unlock()
		if n != 0 {
			t.Fatalf("%d PMTU probes with prober.pmtu off", n)
		}
		for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
			if h := health(t, p, a); h.PMTUState != "disabled" {
				t.Errorf("%s: PMTU state %s with prober.pmtu off, want disabled", a, h.PMTUState)
			}
		}
		if err := p.ApplyConfig(pmtuConfig()); err != nil {
			t.Fatal(err)
		}
		on := time.Now()
		for {
			path.mu.Lock()
			n = len(path.sizes)
			path.mu.Unlock()
			if n > 0 {
				break
			}
			if time.Since(on) > 6*time.Second { // a phase of up to 5 s, then a tick
				t.Fatalf("no PMTU probe %s after prober.pmtu was turned on", time.Since(on))
			}
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
		}
		for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
			waitState(t, p, a, "search_complete", time.Minute)
		}
	})
}

// TestPMTUResearchStartsAtOnce: ResearchPMTU (the MTU policy calls it after
// it set a device's MTU) searches again within a tick, not at the next
// confirmation.
func TestPMTUResearchStartsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := &fakePath{}
		path.limit.Store(1232)
		sli := probertest.New(func(string, netip.Addr, int) probertest.Reply { return probertest.Reply{Delay: time.Millisecond} })
		p, cancel := runProber(t, pmtuConfig(), sli, path.probe, "10.0.0.1")
		defer cancel()
		waitState(t, p, "10.0.0.1", "search_complete", time.Minute)
		time.Sleep(pmtuConfirm / 3) // between two confirmations
		synctest.Wait()
		path.limit.Store(1380)
		path.mu.Lock()
		before := len(path.sizes)
		path.mu.Unlock()
		p.ResearchPMTU(tgt("10.0.0.1").Key())
		time.Sleep(time.Second)
		synctest.Wait()
		path.mu.Lock()
		after := len(path.sizes)
		path.mu.Unlock()
		if after == before {
			t.Fatalf("no PMTU probe within 1 s of ResearchPMTU")
		}
		waitState(t, p, "10.0.0.1", "search_complete", time.Minute)
		if h := health(t, p, "10.0.0.1"); h.PathMTU < 1380-pmtuResolution || h.PathMTU > 1380 {
			t.Errorf("PMTU %d after the research, want within 20 bytes below 1380", h.PathMTU)
		}
	})
}
