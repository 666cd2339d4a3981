package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// Garbage collection pace. GOGC=100, Go's default, lets the heap grow to
// twice what is live before the next collection. A relay holding many idle
// sessions has a large live heap (their state) and allocates little, so it
// holds up to twice its live heap for nothing: collections would be rare
// and cost little per second even with less room. Under traffic it is the
// other way round: collections come as often as allocation fills the room,
// and less room costs CPU in proportion (GOGC=25 for every load took the
// relay's CPU per envelope from 60–72 µs to 93–122 µs in
// TestRelayCapacity, https, 64 senders).
//
// So `postern relay serve` sets GOGC from its allocation rate, once a
// second: the room is what it allocates in gcInterval, between 25 % and
// 100 % of the live heap. While GOGC is below 100 a collection comes at
// most every gcInterval, so this never collects more often than GOGC=100
// would; idle, the heap stays within a quarter over its live size. Under
// traffic the room is 100 %, as before. When a relay goes quiet holding
// free heap beyond the new room (what opening thousands of sessions left),
// it collects and returns that memory to the system at once
// (debug.FreeOSMemory, at most once a minute): otherwise nothing would,
// for minutes. 19,000 idle https sessions held 28.9–29.7 KiB of RSS each
// this way, against 39.4–42.2 KiB at GOGC=100 (cmd/postern TestScale;
// README, "Holding many idle sessions"). A GOGC in the environment turns
// this off, and GOMEMLIMIT (memlimit.go) still bounds the heap either way.
const (
	gcTuneEvery  = time.Second
	gcInterval   = 4 * time.Second
	gcMinPercent = 25
	gcMaxPercent = 100
	// gcCollectEvery bounds how often tuneGC starts a collection itself.
	gcCollectEvery = time.Minute
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
	free   uint64 // heap memory the runtime holds free, not yet returned to the system
}

// gcSampler reads a heapSample from runtime/metrics.
type gcSampler struct{ s []metrics.Sample }

func newGCSampler() *gcSampler {
	return &gcSampler{s: []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}}
}

func (g *gcSampler) read() heapSample {
	metrics.Read(g.s)
	var v [4]uint64
	for i, s := range g.s {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	return heapSample{allocs: v[0], live: v[1], inUse: v[2], free: v[3]}
}

// tuneGC sets GOGC from each tick's allocation rate (gcPercentFor) until
// ctx ends, and restores what was set before. read samples the heap; set
// is debug.SetGCPercent; collect is runtime.GC.
//
// A lower GOGC takes effect at the next collection, and a relay that just
// went quiet allocates too little to start one soon; and the runtime
// returns free heap to the system only slowly. So when the heap's objects
// and free memory together exceed what the new GOGC allows (by a tenth),
// tuneGC calls collect (debug.FreeOSMemory: a collection, then the free
// memory returned), at most every gcCollectEvery and never while GOGC is
// 100.
func tuneGC(ctx context.Context, tick <-chan time.Time, read func() heapSample, set func(int) int, collect func()) {
	last := read()
	lastAt := time.Now()
	var collected time.Time
	cur := gcMaxPercent
	before := set(cur)
	defer set(before)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick:
			h := read()
			dt := now.Sub(lastAt).Seconds()
			if dt <= 0 || h.allocs < last.allocs {
				last, lastAt = h, now
				continue
			}
			p := gcPercentFor(float64(h.live), float64(h.allocs-last.allocs)/dt)
			last, lastAt = h, now
			if p != cur {
				set(p)
				cur = p
			}
			goal := float64(h.live) * (1 + float64(cur)/100)
			if p < gcMaxPercent && float64(h.inUse+h.free) > goal*1.1 && now.Sub(collected) >= gcCollectEvery {
				collect()
				collected = now
			}
		}
	}
}

// gcTuning is held by the one tuneGC a process runs: GOGC is the
// process's, and two relays in one process (tests) would set it in turn.
var gcTuning atomic.Bool

// startGCTuning runs tuneGC in the background, in wg, unless GOGC is set in
// the environment or another relay in this process tunes it already; it
// reports whether it did.
func startGCTuning(ctx context.Context, wg *sync.WaitGroup, getenv func(string) string) bool {
	if getenv("GOGC") != "" || !gcTuning.CompareAndSwap(false, true) {
		return false
	}
	g := newGCSampler()
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
	return "as set (GOGC, or another relay in this process)"
}
