package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
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
	m := map[string]int64{}
	for _, r := range transporttest.MemProfile() {
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
		b.Run(name, func(b *testing.B) { benchIdleSessionMemory(b, stock, 1<<10) })
	}
	b.Run("engine/echo=256KiB", func(b *testing.B) { benchIdleSessionMemory(b, false, 256<<10) })
}

func benchIdleSessionMemory(b *testing.B, stock bool, echo int) {
	const sessions = 100
	transporttest.RecordEveryAllocation(b)
	r := startRelay(b, &Transport{stockH2: stock}, func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	serveEcho(r.ln)
	msg := make([]byte, echo)
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

// An idle session on the engine holds its connection goroutine's stack at
// 8 KiB, not the 16 KiB the TLS handshake grew it to: parked in a read,
// the goroutine uses less than a quarter of 8 KiB (less the runtime's
// guard), so collections halve it (see h2Front.serveTLS). The clients are
// bare TLS connections with no goroutines, so every stack this test
// counts per session is the relay's. Under the race detector frames and
// guards are larger, so it runs without.
func TestIdleEngineSessionStack(t *testing.T) {
	if raceEnabled {
		t.Skip("stack sizes differ under the race detector; .ci/run runs this test without it")
	}
	const sessions = 64
	stacks := func() uint64 {
		for range 6 { // each collection halves a stack at most once
			runtime.GC()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.StackInuse
	}
	r := startRelay(t, engineTransport(), func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	before := stacks()
	holdRawSessions(t, r, sessions)
	per := (float64(stacks()) - float64(before)) / sessions
	t.Logf("goroutine stacks per idle engine session: %.0f B", per)
	if per > 12<<10 {
		t.Errorf("an idle engine session holds %.0f B of goroutine stacks, want 8 KiB: something deepened what its connection goroutine has on its stack while it waits for a record", per)
	}
}

// The buffer the front read the client's first flight into (4 KiB) is
// garbage once the session runs, whether or not the flight had bytes past
// the session's HEADERS (which the session reads first): nothing the
// session keeps points into it.
func TestIdleEngineSessionFreesFirstFlight(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	const sessions = 16
	r := startRelay(t, engineTransport(), func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	holdRawSessions(t, r, sessions)
	holdRawSessions(t, r, sessions, []byte("bytes of the session in its first flight")...)
	live := transporttest.LiveHeap(transporttest.FunctionIs("transport/https.(*firstFlight).fill"))
	if live > 0 {
		t.Errorf("%d idle engine sessions keep %d B of first-flight read buffers live", 2*sessions, live)
	}
}

// An idle session on the engine holds no HPACK decoder (its dynamic
// table and strings were 1.3 KB a session): it keeps its request's header
// block and builds a decoder only if another header block comes
// (TestEngineRefusesOtherStreams sends some).
func TestIdleEngineSessionHoldsNoDecoder(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	const sessions = 16
	// What HPACK decoders the engine made hold: allocations by hpack's
	// Decoder on a stack through the front or an engine session (other
	// tests' clients and sessions may still hold decoders of their own, so
	// the test counts what its sessions add).
	engineDecoders := func() int64 {
		var live int64
		for _, rec := range transporttest.MemProfile() {
			var hpackDec, engine bool
			frames := runtime.CallersFrames(rec.Stack())
			for {
				fr, more := frames.Next()
				hpackDec = hpackDec || strings.Contains(fr.Function, "http2/hpack.") && strings.Contains(fr.Function, "Decoder")
				engine = engine || strings.Contains(fr.Function, "transport/https.(*h2Front)") || strings.Contains(fr.Function, "transport/https.(*h2Session)")
				if !more {
					break
				}
			}
			if hpackDec && engine {
				live += rec.InUseBytes()
			}
		}
		return live
	}
	r := startRelay(t, engineTransport(), func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	before := engineDecoders()
	holdRawSessions(t, r, sessions)
	if live := engineDecoders() - before; live > 0 {
		t.Errorf("%d idle engine sessions hold %d B of HPACK decoders", sessions, live)
	}
}

// holdRawSessions opens n more sessions on the engine from bare TLS
// connections (rawSession, with data if any), accepts them, and holds
// both ends until the test ends.
func holdRawSessions(t *testing.T, r *relay, n int, data ...byte) {
	t.Helper()
	before := frontOf(t, r).engine.Load()
	for range n {
		tc := tlsDial(t, r.ep.Addr, "h2")
		t.Cleanup(func() { tc.Close() })
		rawSession(t, r, tc, data)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := r.ln.Accept(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if len(data) > 0 { // the session reads the bytes of its first flight
			got := make([]byte, len(data))
			read := make(chan error, 1)
			go func() { _, err := io.ReadFull(c, got); read <- err }()
			select { // the engine's sessions take no deadlines
			case err := <-read:
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("session's first bytes: %q, %v; want %q", got, err, data)
				}
			case <-time.After(10 * time.Second):
				c.Close()
				t.Fatalf("session's first bytes (%q) never came", data)
			}
		}
	}
	if got := frontOf(t, r).engine.Load() - before; got != int64(n) {
		t.Fatalf("%d of %d sessions on the engine", got, n)
	}
}

// rawSession opens a session on tc by hand (preface, SETTINGS, the
// session request and, unless it is empty, a DATA frame of data, in one
// write) and reads up to the response's HEADERS, with no goroutine on the
// client side.
func rawSession(t *testing.T, r *relay, tc *tls.Conn, data []byte) {
	t.Helper()
	var block, out bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, hf := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", testPath},
		{"cookie", token.Cookie + "=" + boundToken(t, r.ep.Key, tc, time.Now())},
	} {
		enc.WriteField(hpack.HeaderField{Name: hf[0], Value: hf[1]})
	}
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true})
	if len(data) > 0 {
		fr.WriteData(1, false, data)
	}
	if _, err := tc.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer tc.SetReadDeadline(time.Time{})
	rd := http2.NewFramer(nil, tc)
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if h, ok := f.(*http2.HeadersFrame); ok && h.StreamID == 1 {
			return
		}
	}
}
