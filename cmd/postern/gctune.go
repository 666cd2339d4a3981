package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Garbage collection pace. GOGC=100, Go's default, lets the heap grow to
// twice what is live (and scanned: stacks, globals) before the next
// collection. A relay holding many idle sessions has a large live heap
// (their state) and allocates little, so it held up to twice its live heap
// for nothing. A fixed lower GOGC costs CPU under traffic in proportion
// (GOGC=25 took the relay's CPU per envelope from 60–72 µs to 93–122 µs in
// TestRelayCapacity, https, 64 senders).
//
// So `postern relay serve` sets GOGC, once a second, to make the room
// between collections what it allocated in gcInterval at its highest rate
// of the last gcWindow, between 25 and 100 per cent of the live heap (the
// runtime applies GOGC to stacks and globals too, so the room is somewhat
// larger). It rises at once with traffic and falls only after a whole
// gcWindow, so traffic that comes and goes keeps GOGC where the peaks put
// it; but gcQuiet ticks in a row at the floor's rate (a relay whose
// sessions only ping) end the window at once, so a relay that has gone
// quiet reaches the floor in 10 s, not a minute (19,000 idle https
// sessions 15 s after they opened: 28.8-29.4 KiB each, against 40.0-42.2
// when the window ran its minute). At a steady rate below the threshold a
// collection comes every gcInterval or less often: more often than GOGC=100 would, a mark
// of the live heap per gcInterval at most. gcInterval was 4 s; with 19,000
// idle https sessions (about 330 MB of live heap and stacks) under 500
// envelopes/s that collected 2.5-3 times as often as GOGC=100 for no less
// RSS while the traffic ran (TestScale's traffic phase), so it is 16 s:
// at most one such mark (about 0.9 s of CPU) per 16 s, while a relay that
// only answers its sessions' pings still reaches the floor (29.9-30.1 KiB
// per idle session after a quiet minute, as with 4 s). Entering the floor (25) from a
// busy spell (GOGC of 50 or more), when the heap holds more than its new
// goal allows (objects and free memory over the runtime's goal by a
// tenth), it collects and returns the free memory to the system at once
// (debug.FreeOSMemory; at most once per gcWindow), which the runtime would
// otherwise do over minutes. A GOGC in the environment turns all this off,
// and GOMEMLIMIT (memlimit.go) still bounds the heap either way.
const (
	gcTuneEvery  = time.Second
	gcInterval   = 16 * time.Second
	gcWindow     = 60 // ticks of gcTuneEvery: the rate is the highest over these
	gcQuiet      = 10 // ticks at the floor's rate that end the window early
	gcMinPercent = 25
	gcMaxPercent = 100
)

// gcPercentFor returns the GOGC that makes a heap with live bytes live,
// allocating rate bytes per second, collect about every gcInterval, within
// [gcMinPercent, gcMaxPercent].
func gcPercentFor(live, rate float64) int {
	if live <= 0 {
		return gcMaxPercent
	}
	p := 100 * rate * gcInterval.Seconds() / live
	return int(min(max(p, gcMinPercent), gcMaxPercent))
}

// heapSample is what tuneGC reads of the heap.
type heapSample struct {
	allocs uint64 // allocated so far, cumulative
	live   uint64 // live at the last collection
	inUse  uint64 // held by objects now, live or garbage
	free   uint64 // heap memory held free, not yet returned to the system
	goal   uint64 // the runtime's heap goal
}

// gcMetrics are the runtime/metrics a heapSample is read from, in its
// fields' order.
var gcMetrics = []string{"/gc/heap/allocs:bytes", "/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes", "/memory/classes/heap/free:bytes", "/gc/heap/goal:bytes"}

// gcSampler reads a heapSample from runtime/metrics.
type gcSampler struct{ s []metrics.Sample }

// newGCSampler returns a sampler, or false if this runtime lacks one of
// gcMetrics (then the relay does not tune).
func newGCSampler() (*gcSampler, bool) {
	g := &gcSampler{}
	for _, name := range gcMetrics {
		g.s = append(g.s, metrics.Sample{Name: name})
	}
	metrics.Read(g.s)
	for _, s := range g.s {
		if s.Value.Kind() != metrics.KindUint64 {
			return nil, false
		}
	}
	return g, true
}

func (g *gcSampler) read() heapSample {
	metrics.Read(g.s)
	v := func(i int) uint64 { return g.s[i].Value.Uint64() }
	return heapSample{allocs: v(0), live: v(1), inUse: v(2), free: v(3), goal: v(4)}
}

// tuneGC sets GOGC from the highest allocation rate of the last gcWindow
// ticks (gcPercentFor) until ctx ends, and restores what was set before.
// read samples the heap; set is debug.SetGCPercent; collect is
// debug.FreeOSMemory, called on entering the floor when the heap holds
// more than its goal allows.
func tuneGC(ctx context.Context, tick <-chan time.Time, read func() heapSample, set func(int) int, collect func()) {
	last := read()
	lastAt := time.Now()
	var rates [gcWindow]float64 // per tick, a ring
	n := 0
	cur := gcMaxPercent
	before := set(cur)
	defer set(before)
	collectedAt := -gcWindow // the tick of the last collect
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick:
			h := read()
			rate := 0.0
			if dt := now.Sub(lastAt).Seconds(); dt > 0 && h.allocs >= last.allocs {
				rate = float64(h.allocs-last.allocs) / dt
			}
			last, lastAt = h, now
			rates[n%gcWindow] = rate
			n++
			// gcQuiet ticks in a row at the floor's rate end the busy
			// spell: the rates before them are forgotten.
			if cur > gcMinPercent && n >= gcQuiet && gcPercentFor(float64(h.live), lastMax(rates[:], n, gcQuiet)) == gcMinPercent {
				for i := range gcWindow - gcQuiet {
					rates[(n+i)%gcWindow] = 0
				}
			}
			p := gcPercentFor(float64(h.live), slices.Max(rates[:min(n, gcWindow)]))
			if p == cur {
				continue
			}
			set(p)
			// Entering the floor from a busy spell (GOGC at least twice
			// the floor), not from just above it: a rate at the floor's
			// edge moves GOGC between 25 and 26.
			entered := p == gcMinPercent && cur >= 2*gcMinPercent
			cur = p
			if entered && n-collectedAt >= gcWindow {
				h = read() // the goal for the new GOGC
				if float64(h.inUse+h.free) > float64(h.goal)*1.1 {
					collect()
					collectedAt = n
				}
			}
		}
	}
}

// lastMax returns the highest of the last k of the n values written to the
// ring r so far (k <= n, k <= len(r)).
func lastMax(r []float64, n, k int) float64 {
	m := 0.0
	for i := n - k; i < n; i++ {
		m = max(m, r[i%len(r)])
	}
	return m
}

// gcTuning is held by the one tuneGC a process runs: GOGC is the
// process's, and two relays in one process (tests) would set it in turn.
var gcTuning atomic.Bool

// startGCTuning runs tuneGC in the background, in wg, unless GOGC is set in
// the environment or another relay in this process tunes it already; it
// reports whether it did.
func startGCTuning(ctx context.Context, wg *sync.WaitGroup, getenv func(string) string) bool {
	if getenv("GOGC") != "" {
		return false
	}
	g, ok := newGCSampler()
	if !ok || !gcTuning.CompareAndSwap(false, true) {
		return false
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer gcTuning.Store(false)
		t := time.NewTicker(gcTuneEvery)
		defer t.Stop()
		tuneGC(ctx, t.C, g.read, debug.SetGCPercent, debug.FreeOSMemory)
	}()
	return true
}

// gcMode is what the relay logs of its GOGC.
func gcMode(tuned bool) string {
	if tuned {
		return "from the allocation rate, 25-100"
	}
	return "as set (GOGC is in the environment, another relay in this process tunes it, or the runtime lacks a metric)"
}
