package transporttest

import (
	"runtime"
	"strings"
	"testing"
)

// RecordEveryAllocation makes the memory profile record every allocation
// (runtime.MemProfileRate 1) until tb ends, so that MemProfile and
// LiveHeap are exact for what is allocated from then on.
func RecordEveryAllocation(tb testing.TB) {
	rate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	tb.Cleanup(func() { runtime.MemProfileRate = rate })
}

// MemProfile returns the memory profile's records after garbage
// collection: the heap each allocation site still holds, exact when
// runtime.MemProfileRate is 1 from before the allocations.
func MemProfile() []runtime.MemProfileRecord {
	for range 3 { // the profile lags up to two cycles
		runtime.GC()
	}
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs := make([]runtime.MemProfileRecord, n+100)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			return recs[:n]
		}
	}
}

// LiveHeap is the heap in use, after garbage collection, by allocations
// with a function on their stack for which match is true (see MemProfile).
func LiveHeap(match func(function string) bool) int64 {
	var live int64
	for _, r := range MemProfile() {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if match(f.Function) {
				live += r.InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	return live
}

// FunctionIs returns a match for LiveHeap: functions whose full name ends
// with suffix (say "http3.requestFromHeaders").
func FunctionIs(suffix string) func(string) bool {
	return func(fn string) bool { return strings.HasSuffix(fn, suffix) }
}
