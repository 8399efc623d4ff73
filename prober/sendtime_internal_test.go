package prober

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

// loopConn answers every echo request inside Send and returns only once the
// prober has read and credited the reply, as loopback (or any path faster
// than the rest of sendto) does: the kernel queues the reply before sendto
// returns, and the receiving goroutine may credit it first.
type loopConn struct {
	replies chan Reply
	handled chan struct{}
	done    chan struct{}
	gave    bool // guarded by the one receiving goroutine
}

func (c *loopConn) Send(dst netip.Addr, id, seq uint16, payload []byte) error {
	c.replies <- Reply{Src: dst, ID: id, Seq: seq, Payload: append([]byte(nil), payload...), At: time.Now()}
	<-c.handled
	return nil
}

func (c *loopConn) Recv([]byte) (Reply, error) {
	if c.gave { // back for the next one: the last is credited
		c.handled <- struct{}{}
	}
	c.gave = true
	select {
	case r := <-c.replies:
		return r, nil
	case <-c.done:
		return Reply{}, ErrClosed
	}
}

func (c *loopConn) EchoID() uint16   { return 0x4242 }
func (c *loopConn) Privileged() bool { return true }
func (c *loopConn) Close() error     { close(c.done); return nil }

// TestRTTTimedFromTheSend: a probe sent late in the scheduler's batch (here
// 5 ms after the batch began) and answered before its Send returns is timed
// from when it was sent, not from when the batch began.
func TestRTTTimedFromTheSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn := &loopConn{replies: make(chan Reply), handled: make(chan struct{}), done: make(chan struct{})}
		cfg := DefaultConfig()
		cfg.PMTU.Enabled = false
		p, err := New(cfg, slog.New(slog.DiscardHandler), Options{Open: func(string, bool) (Conn, error) { return conn, nil }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		results := p.Subscribe(ctx)
		p.SetTargets(OwnTargets, []Target{{Device: "wg0", Address: netip.MustParseAddr("10.0.0.1"), Name: "a"}})

		p.mu.Lock()
		batch := p.sched[0].t.sendFrom()
		p.mu.Unlock()
		time.Sleep(time.Until(batch) + 5*time.Millisecond)
		p.step(batch) // a batch that began 5 ms ago reaches this probe now

		r := <-results
		if !r.Success || r.RTT != 0 {
			t.Errorf("answered at once: success %v, RTT %v; want true, 0 (timed from the send, not from the batch 5 ms before)", r.Success, r.RTT)
		}
		p.mu.Lock()
		for _, e := range p.engines {
			e.close()
		}
		p.mu.Unlock()
	})
}
