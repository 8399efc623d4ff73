package prober

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// staleTCP is the real TCP transport whose device the test can make look
// recreated.
type staleTCP struct {
	Conn
	stale *atomic.Bool
}

func (s staleTCP) Stale() bool { return s.stale.Load() }

// A TCP target whose device goes away (and comes back) is unknown, never
// down, while it is away, and its transport is reopened as a TCP one
// (never as an ICMP socket); then it is up again.
func TestTCPTargetDeviceRecreated(t *testing.T) {
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
	var stale atomic.Bool
	var tcpOpens, icmpOpens atomic.Int32
	opts := Options{
		Open: func(string, bool) (Conn, error) {
			icmpOpens.Add(1)
			return nil, errors.New("no ICMP socket in this test")
		},
		OpenTCP: func(device string, v6 bool, port uint16) (Conn, error) {
			tcpOpens.Add(1)
			if stale.Load() {
				return nil, errors.New("device lo: no such device (the test's)")
			}
			c, err := openTCP(device, v6, port)
			if err != nil {
				return nil, err
			}
			return staleTCP{c, &stale}, nil
		},
	}
	cfg := DefaultConfig()
	cfg.Interval, cfg.Timeout, cfg.PMTU.Enabled = 100*time.Millisecond, 500*time.Millisecond, false
	p, err := New(cfg, slog.New(slog.DiscardHandler), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	tgt := Target{Device: "lo", Address: netip.MustParseAddr("127.0.0.1"), TCPPort: uint16(ln.Addr().(*net.TCPAddr).Port), Interval: cfg.Interval}
	p.SetTargets("test", []Target{tgt})
	wait := func(what string, cond func(Health) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if h, _ := p.HealthOf(tgt.Key()); cond(h) {
				return
			}
			if time.Now().After(deadline) {
				h, _ := p.HealthOf(tgt.Key())
				t.Fatalf("%s: not within 10s: %+v", what, h)
			}
		}
	}
	wait("up", func(h Health) bool { return h.State == StateUp })
	stale.Store(true)
	wait("unknown while the device is away", func(h Health) bool {
		if h.State == StateDown {
			t.Fatalf("down while the device is away: %+v", h)
		}
		return h.State == StateUnknown
	})
	time.Sleep(2 * time.Second) // reopens fail meanwhile: still unknown, not down
	if h, _ := p.HealthOf(tgt.Key()); h.State != StateUnknown {
		t.Fatalf("2 s with the device away: %+v, want unknown", h)
	}
	stale.Store(false)
	wait("up on the reopened transport", func(h Health) bool { return h.State == StateUp })
	if n := tcpOpens.Load(); n < 2 {
		t.Errorf("TCP transport opened %d times, want a reopen", n)
	}
	if n := icmpOpens.Load(); n != 0 {
		t.Errorf("an ICMP socket was opened %d times for a TCP target", n)
	}
}
