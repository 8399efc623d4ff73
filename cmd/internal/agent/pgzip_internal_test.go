package agent

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"
	kgzip "github.com/klauspost/compress/gzip"
)

// scrapeLike is text shaped like a large scrape: repeated names and labels
// with random keys, so blocks both match across their boundary (through the
// dictionary) and do not compress to nothing.
func scrapeLike(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "wireguard_peer_receive_bytes_total{device=\"wg0\",name=\"\",public_key=\"%016x%016x\"} %d\n", r.Uint64(), r.Uint64(), r.IntN(1<<40))
	}
	return b.Bytes()[:n]
}

// TestParallelGzipRoundTrip: whatever the size and however it is written,
// the standard library's reader gets the body back from one gzip member
// (checked with multistream off: the blocks form one deflate stream), CRC
// and size included.
func TestParallelGzipRoundTrip(t *testing.T) {
	pool := newGzPool(runtime.GOMAXPROCS(0))
	body := scrapeLike(5*gzBlockSize + 12345)
	for _, size := range []int{0, 1, 100, gzBlockSize - 1, gzBlockSize, gzBlockSize + 1, 3 * gzBlockSize, len(body)} {
		for _, chunk := range []int{1 << 20, 64 << 10, 777} {
			t.Run(fmt.Sprintf("size=%d/chunk=%d", size, chunk), func(t *testing.T) {
				var out bytes.Buffer
				z := newParallelGzip(pool, &out)
				for p := body[:size]; len(p) > 0; {
					n := min(chunk, len(p))
					if _, err := z.Write(p[:n]); err != nil {
						t.Fatal(err)
					}
					p = p[n:]
				}
				if err := z.Close(); err != nil {
					t.Fatal(err)
				}
				zr, err := gzip.NewReader(&out)
				if err != nil {
					t.Fatal(err)
				}
				zr.Multistream(false)
				got, err := io.ReadAll(zr)
				if err != nil {
					t.Fatalf("reading it back: %v", err)
				}
				if !bytes.Equal(got, body[:size]) {
					t.Fatalf("got %d bytes back, want the %d written", len(got), size)
				}
				if rest, _ := io.ReadAll(&out); len(rest) != 0 {
					t.Fatalf("%d bytes after the gzip member", len(rest))
				}
			})
		}
	}
}

// TestParallelGzipRatio: blocks that start with an empty window, each
// deflated statelessly (an 8 KB window), stay within 4% of one stream's size
// at BestSpeed (3% here; blocks of a few KB would not).
func TestParallelGzipRatio(t *testing.T) {
	body := scrapeLike(4 << 20)
	var one, par bytes.Buffer
	w, _ := kgzip.NewWriterLevel(&one, flate.BestSpeed)
	_, _ = w.Write(body)
	_ = w.Close()
	z := newParallelGzip(newGzPool(runtime.GOMAXPROCS(0)), &par)
	_, _ = z.Write(body)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("parallel %d bytes, one stream %d", par.Len(), one.Len())
	if float64(par.Len()) > 1.04*float64(one.Len()) {
		t.Errorf("parallel gzip %d bytes, one stream %d: more than 4%% larger", par.Len(), one.Len())
	}
}

// BenchmarkParallelGzip: one stream against the blocks on every core, for
// an 11 MB scrape-like body (make bench).
func BenchmarkParallelGzip(b *testing.B) {
	body := scrapeLike(11 << 20)
	b.Run("one-stream", func(b *testing.B) {
		w, _ := kgzip.NewWriterLevel(io.Discard, flate.BestSpeed)
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			w.Reset(io.Discard)
			_, _ = w.Write(body)
			_ = w.Close()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		pool := newGzPool(runtime.GOMAXPROCS(0))
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		cw := &countingWriter{}
		for b.Loop() {
			cw.n = 0
			z := newParallelGzip(pool, cw)
			for p := body; len(p) > 0; p = p[min(len(p), 64<<10):] {
				_, _ = z.Write(p[:min(len(p), 64<<10)])
			}
			_ = z.Close()
		}
		b.ReportMetric(float64(cw.n)/1e6, "out-MB")
	})
}

type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errors.New("client went away")
	}
	return len(p), nil
}

// TestParallelGzipWriteError: a client that goes away stops the stream:
// the error comes back from Write and Close, nothing hangs, and the pool
// serves the next response.
func TestParallelGzipWriteError(t *testing.T) {
	pool := newGzPool(runtime.GOMAXPROCS(0))
	body := scrapeLike(20 * gzBlockSize)
	z := newParallelGzip(pool, &failAfter{n: 1000})
	var werr error
	for p := body; len(p) > 0 && werr == nil; p = p[min(len(p), 64<<10):] {
		_, werr = z.Write(p[:min(len(p), 64<<10)])
	}
	if werr == nil || !strings.Contains(werr.Error(), "went away") {
		t.Fatalf("Write: %v, want the client's error", werr)
	}
	if err := z.Close(); err == nil {
		t.Fatal("Close: nil, want the client's error")
	}
	var out bytes.Buffer
	z = newParallelGzip(pool, &out)
	_, _ = z.Write(body[:3*gzBlockSize])
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	zr, _ := gzip.NewReader(&out)
	if got, err := io.ReadAll(zr); err != nil || !bytes.Equal(got, body[:3*gzBlockSize]) {
		t.Fatalf("after a failed response: %d bytes, %v", len(got), err)
	}
}

type countingWriter struct{ n int }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }
