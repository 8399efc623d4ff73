// Package stream fans values out from one producer to any number of
// subscribers without ever blocking the producer: each subscriber has its own
// pending queue and a goroutine that hands values to it, and a subscription
// ends (its channel closes) when its context does. The collector publishes
// snapshots through it, the prober its results and state changes.
package stream

import (
	"context"
	"sync"
)

// Policy says what a subscriber that falls behind misses.
type Policy struct {
	// Latest keeps only the newest value: a slow reader skips intermediate
	// ones (snapshots, where only the newest matters).
	Latest bool
	// Limit bounds the values pending per subscriber (0 = 4096). Beyond it,
	// with Key set, older pending values of the same key are dropped (the
	// newest state of every key always arrives); without Key the oldest
	// pending value is dropped.
	Limit int
	// Key groups values for coalescing (state changes by target).
	Key func(any) string
	// OnDrop is called (under no lock of the producer) for every dropped value.
	OnDrop func(n int)
}

// Hub is one producer's fan-out point.
type Hub[T any] struct {
	policy Policy
	mu     sync.Mutex
	subs   map[*sub[T]]struct{}
	// last is the newest value, handed to new subscribers under Latest. A
	// value, not a pointer: &v in Publish moved every published value to
	// the heap, one allocation per probe result.
	last    T
	hasLast bool
}

type sub[T any] struct {
	mu      sync.Mutex
	pending []T
	wake    chan struct{}
}

// New returns a hub with the given policy.
func New[T any](p Policy) *Hub[T] {
	if p.Limit <= 0 {
		p.Limit = 4096
	}
	if p.Latest {
		p.Limit = 1
	}
	return &Hub[T]{policy: p, subs: map[*sub[T]]struct{}{}}
}

// Subscribe returns a channel of values published from now on (under Latest,
// starting with the newest one already published). It is closed when ctx ends.
func (h *Hub[T]) Subscribe(ctx context.Context) <-chan T {
	s := &sub[T]{wake: make(chan struct{}, 1)}
	out := make(chan T)
	h.mu.Lock()
	h.subs[s] = struct{}{}
	if h.policy.Latest && h.hasLast {
		s.pending = append(s.pending, h.last)
		s.wake <- struct{}{}
	}
	h.mu.Unlock()
	go func() {
		defer close(out)
		defer func() {
			h.mu.Lock()
			delete(h.subs, s)
			h.mu.Unlock()
		}()
		// held is what this goroutine took but the reader has not yet; a
		// newer value merges into it under the policy, so a blocked send
		// never delivers something the policy would have replaced. buf is
		// held's array, reused once everything in it was delivered (and
		// zeroed).
		var held, buf []T
		for {
			if len(held) == 0 {
				select {
				case <-ctx.Done():
					return
				case <-s.wake:
					held = s.take(buf[:0], h.policy)
					buf = held
				}
				continue
			}
			select {
			case out <- held[0]:
				var zero T
				held[0] = zero
				held = held[1:]
			case <-s.wake:
				held = s.take(held, h.policy)
				buf = held
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// take returns held followed by the pending values, reduced by the policy.
func (s *sub[T]) take(held []T, p Policy) []T {
	s.mu.Lock()
	all := append(held, s.pending...)
	clear(s.pending) // its array is reused by the next values
	s.pending = s.pending[:0]
	s.mu.Unlock()
	all, dropped := reduce(all, p)
	if dropped > 0 && p.OnDrop != nil {
		p.OnDrop(dropped)
	}
	return all
}

// reduce applies the policy's limit to vs (oldest first) and returns what
// is left and how many values it dropped.
func reduce[T any](vs []T, p Policy) ([]T, int) {
	n := len(vs)
	if n <= p.Limit {
		return vs, 0
	}
	if p.Key != nil {
		vs = coalesce(vs, p.Key)
	}
	if len(vs) > p.Limit { // more distinct keys than the limit: keep the newest
		clear(vs[:len(vs)-p.Limit]) // the array lives on: hold no dropped value
		vs = vs[len(vs)-p.Limit:]
	}
	return vs, n - len(vs)
}

// Publish hands v to every subscriber. It never waits for a reader.
func (h *Hub[T]) Publish(v T) {
	dropped := 0
	h.mu.Lock()
	if h.policy.Latest {
		h.last, h.hasLast = v, true
	}
	for s := range h.subs {
		dropped += s.add(v, h.policy)
	}
	h.mu.Unlock()
	if dropped > 0 && h.policy.OnDrop != nil {
		h.policy.OnDrop(dropped)
	}
}

// add queues v and returns how many pending values it displaced.
func (s *sub[T]) add(v T, p Policy) int {
	s.mu.Lock()
	var dropped int
	s.pending, dropped = reduce(append(s.pending, v), p)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return dropped
}

// coalesce keeps the last value of each key, in the order of those values.
func coalesce[T any](vs []T, key func(any) string) []T {
	last := make(map[string]int, len(vs))
	for i, v := range vs {
		last[key(v)] = i
	}
	out := vs[:0]
	for i, v := range vs {
		if last[key(v)] == i {
			out = append(out, v)
		}
	}
	clear(vs[len(out):]) // the array lives on: hold no replaced value
	return out
}
