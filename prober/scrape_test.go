package prober

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector/expo"
)

// BenchmarkScrape measures the exposition of the prober's series for 1,000
// and 10,000 targets that have each finished some probes (fake transport):
// gather through a registry plus text encoding, as a scrape does.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.PMTU.Enabled = false
			p, err := New(cfg, slog.New(slog.DiscardHandler), Options{Open: func(string, bool) (Conn, error) { return silentConn{make(chan struct{})}, nil }})
			if err != nil {
				b.Fatal(err)
			}
			var ts []Target
			for i := range n {
				ts = append(ts, Target{Device: "wg0", Address: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), PublicKey: fmt.Sprintf("%044d", i), Name: fmt.Sprintf("peer-%d", i)})
			}
			p.SetTargets(OwnTargets, ts)
			// Finish a few probes per target directly, without waiting for time.
			now := time.Now()
			for _, t := range p.targets {
				for k := range 3 {
					t.e.sendProbe(t, now, false)
					s := &t.e.slots[int(t.e.seq-1)&(len(t.e.slots)-1)]
					t.e.mu.Lock()
					t.finish(t.e, s, k != 1, time.Duration(k+1)*time.Millisecond, now)
					t.e.mu.Unlock()
				}
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(p)
			b.ReportAllocs()
			for b.Loop() {
				mfs, err := expo.Gatherers{reg, p}.Gather()
				if err != nil {
					b.Fatal(err)
				}
				enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
				for _, mf := range mfs {
					_ = enc.Encode(mf)
				}
			}
		})
	}
}

// silentConn is a transport that sends nowhere and never answers.
type silentConn struct{ done chan struct{} }

func (c silentConn) Send(netip.Addr, uint16, uint16, []byte) error { return nil }
func (c silentConn) Recv([]byte) (Reply, error)                    { <-c.done; return Reply{}, ErrClosed }
func (c silentConn) EchoID() uint16                                { return 1 }
func (c silentConn) Privileged() bool                              { return true }
func (c silentConn) Close() error                                  { close(c.done); return nil }
