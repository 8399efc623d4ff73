package stream_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgpulse/wgpulse/collector/stream"
)

// A reader that never reads must not block the producer, in any policy.
func TestPublishNeverBlocksOnAStuckReader(t *testing.T) {
	for name, p := range map[string]stream.Policy{
		"latest":   {Latest: true},
		"queue":    {Limit: 10},
		"coalesce": {Limit: 10, Key: func(v any) string { return fmt.Sprint(v.(int) % 3) }},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := stream.New[int](p)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				_ = h.Subscribe(ctx) // never read
				done := make(chan struct{})
				go func() {
					for i := range 100_000 {
						h.Publish(i)
					}
					close(done)
				}()
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatal("producer blocked on a subscriber that does not read")
				}
			})
		})
	}
}

func TestLatestSkipsToTheNewestAndStartsWithIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := stream.New[int](stream.Policy{Latest: true})
		h.Publish(1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := h.Subscribe(ctx)
		if got := <-ch; got != 1 {
			t.Fatalf("first value %d, want the newest published before subscribing (1)", got)
		}
		for i := 2; i <= 50; i++ {
			h.Publish(i)
		}
		synctest.Wait()
		if got := <-ch; got != 50 {
			t.Errorf("after a burst got %d, want only the newest (50)", got)
		}
	})
}

// Coalescing never loses the newest value of a key: whatever a slow reader
// misses, the last value it reads of every key is the newest, and nothing is
// both delivered and counted as dropped.
func TestCoalesceKeepsNewestPerKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type change struct {
			key string
			n   int
		}
		var drops atomic.Int64
		h := stream.New[change](stream.Policy{Limit: 3, Key: func(v any) string { return v.(change).key }, OnDrop: func(n int) { drops.Add(int64(n)) }})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := h.Subscribe(ctx)
		for i := range 300 {
			h.Publish(change{key: fmt.Sprint("k", i%3), n: i})
		}
		synctest.Wait()
		last := map[string]int{}
		delivered := 0
		for {
			select {
			case c := <-ch:
				if prev, ok := last[c.key]; ok && c.n <= prev {
					t.Fatalf("key %s went back from %d to %d", c.key, prev, c.n)
				}
				last[c.key] = c.n
				delivered++
				synctest.Wait()
				continue
			default:
			}
			break
		}
		if diff := cmp.Diff(map[string]int{"k0": 297, "k1": 298, "k2": 299}, last); diff != "" {
			t.Errorf("newest per key (-want +got)\n%s", diff)
		}
		if d := int(drops.Load()); delivered+d != 300 || d == 0 {
			t.Errorf("delivered %d + dropped %d, want 300 with some coalesced", delivered, d)
		}
	})
}

func TestQueueDeliversInOrderAndCountsDrops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var drops atomic.Int64
		h := stream.New[int](stream.Policy{Limit: 5, OnDrop: func(n int) { drops.Add(int64(n)) }})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := h.Subscribe(ctx)
		for i := range 8 {
			h.Publish(i)
		}
		synctest.Wait()
		var got []int
		for range 5 {
			got = append(got, <-ch)
		}
		if diff := cmp.Diff([]int{3, 4, 5, 6, 7}, got); diff != "" || drops.Load() != 3 {
			t.Errorf("drops %d, values (-want +got)\n%s", drops.Load(), diff)
		}
	})
}

func TestSubscriptionEndsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := stream.New[int](stream.Policy{})
		ctx, cancel := context.WithCancel(context.Background())
		ch := h.Subscribe(ctx)
		h.Publish(1)
		if v := <-ch; v != 1 {
			t.Fatal(v)
		}
		cancel()
		select {
		case _, ok := <-ch:
			if ok {
				t.Fatal("value after cancel")
			}
		case <-time.After(time.Second):
			t.Fatal("channel not closed after its context ended")
		}
		h.Publish(2) // no subscriber left: must not panic or block
	})
}

// TestQueueAllocatesNothingPerValue: a value published and read in steady
// state allocates nothing, in the hub or in the subscription's goroutine
// (the prober publishes one result per probe).
func TestQueueAllocatesNothingPerValue(t *testing.T) {
	type result struct {
		target string
		rtt    time.Duration
		ok     bool
	}
	h := stream.New[result](stream.Policy{Limit: 16})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := h.Subscribe(ctx)
	v := result{target: "wg0|10.0.0.1", rtt: time.Millisecond, ok: true}
	allocs := testing.AllocsPerRun(1000, func() {
		h.Publish(v)
		if got := <-ch; got != v {
			t.Fatalf("got %+v, want %+v", got, v)
		}
	})
	if allocs != 0 {
		t.Errorf("a published and read value allocates %.2f times, want 0", allocs)
	}
}
