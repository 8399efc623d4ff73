package prober_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/prober"
)

// TCP liveness on loopback with the real transport: a port that accepts
// and one that refuses are both alive (the far host answered), with the
// connect time as the RTT; a destination that never answers is down. The
// targets' series carry address:port.
func TestTCPTargets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	open := ln.Addr().(*net.TCPAddr).Port
	cfg := prober.DefaultConfig()
	cfg.Interval, cfg.Timeout, cfg.PMTU.Enabled = 100*time.Millisecond, 500*time.Millisecond, false
	p, err := prober.New(cfg, slog.New(slog.DiscardHandler), prober.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	lo := netip.MustParseAddr("127.0.0.1")
	// 192.0.2.1 (TEST-NET-1) through lo: nothing there answers.
	accepting := prober.Target{Device: "lo", Address: lo, TCPPort: uint16(open), Interval: cfg.Interval}
	refusing := prober.Target{Device: "lo", Address: lo, TCPPort: uint16(closedPort), Interval: cfg.Interval}
	silent := prober.Target{Device: "lo", Address: netip.MustParseAddr("192.0.2.1"), TCPPort: 9, Interval: cfg.Interval}
	p.SetTargets("test", []prober.Target{accepting, refusing, silent})
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, _ := p.HealthOf(accepting.Key())
		r, _ := p.HealthOf(refusing.Key())
		s, _ := p.HealthOf(silent.Key())
		if a.State == prober.StateUp && r.State == prober.StateUp && s.State == prober.StateDown && a.Probes >= 10 {
			if a.RTT <= 0 || a.RTT > 100*time.Millisecond || r.RTT <= 0 {
				t.Errorf("RTTs %s (accepted) and %s (refused), want a loopback connect time", a.RTT, r.RTT)
			}
			if a.Failures != 0 {
				t.Errorf("%d of %d probes to the listening port failed", a.Failures, a.Probes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: accepting %+v, refusing %+v, silent %+v; want up, up, down", a, r, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if k := accepting.Key(); k != "lo|127.0.0.1:"+strconv.Itoa(open) {
		t.Errorf("key %q, want the address and port", k)
	}
}
