package main

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	perSec := func(b float64) float64 { return b / gcInterval.Seconds() } // b in gcInterval
	for _, c := range []struct {
		live, rate float64
		want       int
	}{
		{0, 0, gcMaxPercent},                          // nothing live yet
		{400 * mib, 0, gcMinPercent},                  // idle sessions: a quarter's room
		{400 * mib, 1 * mib, gcMinPercent},            // pings
		{400 * mib, perSec(200 * mib), 50},            // half the live heap in gcInterval
		{400 * mib, perSec(800 * mib), gcMaxPercent},  // traffic: Go's default
		{20 * mib, 5 * mib, gcMaxPercent},             // a small heap under traffic
		{400 * mib, perSec(4000 * mib), gcMaxPercent}, // never above the default
	} {
		if got := gcPercentFor(c.live, c.rate); got != c.want {
			t.Errorf("gcPercentFor(live %.0f MiB, %.0f MiB/s) = %d, want %d", c.live/mib, c.rate/mib, got, c.want)
		}
	}
}

// tuneGC sets GOGC from the highest allocation rate of the last gcWindow
// ticks: up at once, down only after a whole window, or to the floor after
// gcQuiet ticks at the floor's rate. Entering the floor from 50 or more
// with more heap than the new goal allows, it collects, at most once a
// window; never otherwise.
// It puts back the GOGC that was set before when it ends.
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
		read := func() heapSample {
			s := h
			s.goal = h.live * uint64(100+prev) / 100 // as the runtime's, without stacks
			return s
		}
		collects := 0
		tick := make(chan time.Time)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		at := time.Now()
		go tuneGC(ctx, tick, read, set, func() { collects++ })
		synctest.Wait()
		want := func(what string, gogc []int, wantCollects int) {
			t.Helper()
			if !slices.Equal(sets, gogc) || collects != wantCollects {
				t.Fatalf("%s: GOGC set %v and %d collections, want %v and %d", what, sets, collects, gogc, wantCollects)
			}
			sets = nil
		}
		// steps ticks k times, a second apart, allocating rate bytes per
		// second, with free bytes held free; each tick is handled before
		// the next.
		steps := func(k int, rate, free uint64) {
			for range k {
				h.allocs += rate
				h.free = free
				at = at.Add(time.Second)
				tick <- at
				synctest.Wait()
			}
		}
		// pct returns the rate that alone would set GOGC to pct over the
		// 400 MiB live.
		pct := func(p uint64) uint64 { return p * 4 * mib / uint64(gcInterval.Seconds()) }
		want("start", []int{gcMaxPercent}, 0)
		steps(1, 0, 0)
		want("idle, the heap within its goal", []int{gcMinPercent}, 0)
		steps(1, 400*mib, 0)
		want("traffic: up at once", []int{gcMaxPercent}, 0)
		steps(gcQuiet-1, 0, 300*mib)
		want("quiet, for less than gcQuiet ticks", nil, 0)
		steps(1, 0, 300*mib)
		want("quiet for gcQuiet ticks, 300 MiB free from the busy spell", []int{gcMinPercent}, 1)
		steps(1, pct(50), 300*mib)
		want("half the live heap in gcInterval", []int{50}, 1)
		steps(gcWindow-1, pct(30), 300*mib)
		want("less traffic, not quiet, for less than a window", nil, 1)
		steps(1, pct(30), 300*mib)
		want("less traffic for a window", []int{30}, 1)
		steps(gcQuiet, 0, 0)
		want("quiet again, the heap within its goal", []int{gcMinPercent}, 1)
		steps(1, pct(8), 300*mib) // GOGC 8: the floor
		want("at the floor's edge", nil, 1)
		steps(1, pct(30), 300*mib)
		want("just above the floor", []int{30}, 1)
		steps(gcQuiet, 0, 300*mib)
		want("back to the floor from just above it", []int{gcMinPercent}, 1)
		steps(1, 400*mib, 300*mib)
		steps(gcQuiet, 0, 300*mib)
		want("quiet after a burst", []int{gcMaxPercent, gcMinPercent}, 2)
		// Bursts with quiet gaps of gcQuiet ticks: down and up each time,
		// one collection a window at most.
		for range gcWindow / (gcQuiet + 1) {
			steps(1, 400*mib, 300*mib)
			steps(gcQuiet, 0, 300*mib)
		}
		want("bursts with quiet gaps, within a window of the last collection",
			slices.Repeat([]int{gcMaxPercent, gcMinPercent}, gcWindow/(gcQuiet+1)), 2)
		steps(1, 400*mib, 300*mib)
		steps(gcQuiet, 0, 300*mib)
		want("a burst and a quiet gap a window after the last collection", []int{gcMaxPercent, gcMinPercent}, 3)
		for range 3 { // traffic that comes and goes keeps the peaks' GOGC
			steps(1, 400*mib, 300*mib)
			steps(gcQuiet-1, 0, 300*mib)
		}
		want("a burst every gcQuiet ticks", []int{gcMaxPercent}, 3)
		h.live = 4 * mib // the live heap falls: the peak rate now fills it at once
		steps(1, 1*mib, 300*mib)
		want("a small live heap", nil, 3)
		h.live = 400 * mib
		steps(gcQuiet, 0, 300*mib)
		want("back to the floor within a window of the last collection", []int{gcMinPercent}, 3)
		cancel()
		synctest.Wait()
		want("end", []int{77}, 3)
	})
}

// The sampler reads what the runtime reports.
func TestGCSampler(t *testing.T) {
	g, ok := newGCSampler()
	if !ok {
		t.Fatal("this runtime lacks a metric the GC tuning reads")
	}
	sink = make([]byte, 1<<20)
	runtime.GC()
	h := g.read()
	if h.allocs < 1<<20 || h.live == 0 || h.inUse == 0 || h.goal == 0 {
		t.Fatalf("heap sample %+v", h)
	}
}

var sink []byte

// GOGC in the environment turns the tuning off, and a process tunes once.
func TestStartGCTuning(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return v
			}
			return ""
		}
	}
	if startGCTuning(ctx, &wg, env("50")) {
		t.Fatal("tuning with GOGC set")
	}
	if !startGCTuning(ctx, &wg, env("")) {
		t.Fatal("no tuning without GOGC")
	}
	if startGCTuning(ctx, &wg, env("")) {
		t.Fatal("a second tuner in one process")
	}
}
