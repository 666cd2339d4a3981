package https

import (
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/postern/postern/transport"
)

// sideOf tells which end of a session a heap allocation belongs to, from
// the functions on its stack: the relay (net/http's server, crypto/tls,
// this package's listener side) or the client (uTLS, the own HTTP/2
// client), or neither (the test, the runtime).
func sideOf(stk []uintptr) string {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		fn := f.Function
		switch {
		case strings.Contains(fn, "refraction-networking/utls"),
			strings.Contains(fn, "transport/https.(*h2Client)"),
			strings.Contains(fn, "transport/https.(*h2Body)"),
			strings.Contains(fn, "transport/https.(*h2Upload)"),
			strings.Contains(fn, "transport/https.newH2Client"),
			strings.Contains(fn, "transport/https.open"),
			strings.Contains(fn, "transport/https.(*recordReader)"),
			strings.Contains(fn, "httpsession.(*Target)"),
			strings.Contains(fn, "httpsession.(*clientConn)"):
			return "client"
		case strings.HasPrefix(fn, "net/http."),
			strings.HasPrefix(fn, "crypto/tls."),
			strings.Contains(fn, "transport/https.(*listener)"),
			strings.Contains(fn, "transport/https.(*serverConn)"),
			strings.Contains(fn, "transport/https.(*h2Front)"),
			strings.Contains(fn, "transport/https.(*h2Session)"),
			strings.Contains(fn, "transport/https.newH2Session"),
			strings.Contains(fn, "transport/https.(*firstFlight)"),
			strings.Contains(fn, "transport/https.(*replayConn)"),
			strings.Contains(fn, "transport/https.(*countingListener)"),
			strings.Contains(fn, "httpsession.(*Gate)"):
			return "relay"
		}
		if !more {
			return "other"
		}
	}
}

// heapBySide returns the heap in use by side, from the memory profile
// (exact with runtime.MemProfileRate 1), after garbage collection.
func heapBySide() map[string]int64 {
	for range 3 { // the profile lags up to two cycles
		runtime.GC()
	}
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	m := map[string]int64{}
	for _, r := range recs {
		m[sideOf(r.Stack())] += r.InUseBytes()
	}
	return m
}

// BenchmarkIdleSessionMemory holds idle https sessions, each after a
// 1 KiB echo, and reports the heap each holds on the relay side
// (relay-B/session: net/http's server, crypto/tls and this package's
// server side, told apart from the client by allocation stacks in the
// memory profile), on the client side (client-B/session), both with the
// rest (heap-B/session, runtime.MemStats.HeapInuse) and goroutine stacks
// (stack-B/session, both sides) and goroutines (goroutines/session, both
// sides, the relay's echo goroutine included). b.N is ignored beyond
// running once per op.
// Sub-benchmarks: sessions on the listener's own HTTP/2 engine, and on
// net/http's server (stockh2).
func BenchmarkIdleSessionMemory(b *testing.B) {
	for _, stock := range []bool{false, true} {
		name := "engine"
		if stock {
			name = "stockh2"
		}
		b.Run(name, func(b *testing.B) { benchIdleSessionMemory(b, stock) })
	}
}

func benchIdleSessionMemory(b *testing.B, stock bool) {
	const sessions = 100
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	r := startRelay(b, &Transport{stockH2: stock}, func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	serveEcho(r.ln)
	msg := make([]byte, 1<<10)
	var m0, m1 runtime.MemStats
	var before, after map[string]int64
	var g0, g1 int
	for b.Loop() {
		before = heapBySide()
		runtime.ReadMemStats(&m0)
		g0 = runtime.NumGoroutine()
		cs := make([]transport.Conn, 0, sessions)
		for range sessions {
			c := dial(b, r.ep)
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, msg); err != nil {
				b.Fatal(err)
			}
			cs = append(cs, c)
		}
		after = heapBySide()
		runtime.ReadMemStats(&m1)
		g1 = runtime.NumGoroutine()
		for _, c := range cs {
			c.Close()
		}
	}
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / sessions }
	b.ReportMetric(float64(after["relay"]-before["relay"])/sessions, "relay-B/session")
	b.ReportMetric(float64(after["client"]-before["client"])/sessions, "client-B/session")
	b.ReportMetric(per(m1.HeapInuse, m0.HeapInuse), "heap-B/session")
	b.ReportMetric(per(m1.StackInuse, m0.StackInuse), "stack-B/session")
	b.ReportMetric(float64(g1-g0)/sessions, "goroutines/session")
}
