package main

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, rate float64
		want       int
	}{
		{0, 0, gcMaxPercent},                  // nothing live yet
		{400 * mib, 0, gcMinPercent},          // idle sessions: a quarter's room
		{400 * mib, 1 * mib, gcMinPercent},    // pings
		{400 * mib, 50 * mib, 50},             // 200 MiB in gcInterval: half the live heap
		{400 * mib, 200 * mib, gcMaxPercent},  // traffic: Go's default
		{20 * mib, 5 * mib, gcMaxPercent},     // a small heap under traffic
		{400 * mib, 1000 * mib, gcMaxPercent}, // never above the default
	} {
		if got := gcPercentFor(c.live, c.rate); got != c.want {
			t.Errorf("gcPercentFor(live %.0f MiB, %.0f MiB/s) = %d, want %d", c.live/mib, c.rate/mib, got, c.want)
		}
	}
}

// tuneGC sets GOGC from each tick's allocation rate, only when it changes,
// collects (and returns memory) when a quiet heap holds more than its
// GOGC allows, at most once a minute, and puts back the GOGC that was set
// before when it ends.
func TestTuneGC(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const mib = 1 << 20
		h := heapSample{live: 400 * mib, inUse: 420 * mib}
		var sets []int
		prev := 77 // what the process had before
		set := func(p int) int {
			sets = append(sets, p)
			old := prev
			prev = p
			return old
		}
		collects := 0
		tick := make(chan time.Time)
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		go tuneGC(ctx, tick, func() heapSample { return h }, set, func() { collects++ })
		synctest.Wait()
		want := func(what string, gogc []int, wantCollects int) {
			t.Helper()
			if !slices.Equal(sets, gogc) || collects != wantCollects {
				t.Fatalf("%s: GOGC set %v and %d collections, want %v and %d", what, sets, collects, gogc, wantCollects)
			}
			sets = nil
		}
		// step changes the heap, ticks at start+at and waits until the
		// tick is handled.
		step := func(at time.Duration, allocated, free uint64) {
			h.allocs += allocated
			h.free = free
			tick <- start.Add(at)
			synctest.Wait()
		}
		want("start", []int{gcMaxPercent}, 0)
		step(1*time.Second, 0, 0)
		want("idle, heap within a quarter over live", []int{gcMinPercent}, 0)
		step(2*time.Second, 0, 300*mib)
		want("idle, 300 MiB free from a busy spell", nil, 1)
		step(3*time.Second, 0, 300*mib)
		want("idle again within the minute", nil, 1)
		step(4*time.Second, 50*mib, 300*mib)
		want("50 MiB/s over 400 MiB live", []int{50}, 1)
		step(5*time.Second, 400*mib, 600*mib) // over even GOGC=100's room
		want("busy: 400 MiB/s", []int{gcMaxPercent}, 1)
		step(70*time.Second, 65*400*mib, 600*mib)
		want("busy a minute after the collection", nil, 1)
		step(71*time.Second, 0, 600*mib)
		want("idle a minute after the collection", []int{gcMinPercent}, 2)
		cancel()
		synctest.Wait()
		want("end", []int{77}, 2)
	})
}
