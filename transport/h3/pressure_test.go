package h3

import (
	"context"
	"errors"
	"math"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

// onRounds is a pressure check that finds pressure once per value sent
// on rounds: the second of two sends returns only once the first round's
// closes are done.
func onRounds(rounds <-chan struct{}) func(int) (bool, bool) {
	return func(int) (bool, bool) {
		select {
		case <-rounds:
			return true, true
		default:
			return false, false
		}
	}
}

// TestIdleConnsClosedUnderPressure: under memory pressure the listener
// closes idle connections, a quarter of them (at least one) per check,
// those of the source holding the most first and each source's idle
// longest first, and those serving a request only after the idle ones;
// never one that carries a session.
func TestIdleConnsClosedUnderPressure(t *testing.T) {
	rounds := make(chan struct{})
	entered, release := make(chan struct{}), make(chan struct{})
	hook := &pressureHook{every: time.Millisecond, under: onRounds(rounds)}
	r := startRelay(t, &Transport{pressure: hook}, func(cfg *transport.ListenConfig) { cfg.Cover = holdCover(entered, release) })
	serveEcho(t, r.ln)
	t.Cleanup(func() { close(release) }) // before the relay closes
	addr := r.ln.Addr().String()
	l := r.ln.(*listener).conns
	ip := func(d byte) net.IP { return net.IPv4(127, 0, 0, d) }
	cover := func(d byte) *quic.Conn { t.Helper(); return mustCover(t, ip(d), addr) }
	session := dialT(t, r.ep)
	held := holdConn(t, ip(5), addr, entered)
	a := []*quic.Conn{cover(3), cover(3), cover(3)}
	b := cover(4)
	waitHeld(t, l, 6)
	if n := l.spareConns(); n != 5 {
		t.Fatalf("%d connections not in a session, want 5", n)
	}

	// One round with 5 such: one closed, .3's oldest.
	rounds <- struct{}{}
	waitFor(t, ".3's oldest connection closed", func() bool { return closedIdle(a[0]) })
	waitHeld(t, l, 5)
	if closedIdle(a[1]) || closedIdle(a[2]) || closedIdle(b) || held.Context().Err() != nil {
		t.Fatal("more than one connection closed in a round with 5 to take")
	}
	for range 3 {
		rounds <- struct{}{}
	}
	waitFor(t, "every idle connection closed", func() bool { return closedIdle(a[1]) && closedIdle(a[2]) && closedIdle(b) })
	waitHeld(t, l, 2)
	if held.Context().Err() != nil {
		t.Fatal("a connection serving a request was closed while idle ones were left")
	}
	// Then the one serving a request, closed as http3 closes a
	// connection it has done with; never the session's.
	rounds <- struct{}{}
	waitFor(t, "the busy connection closed", func() bool { return held.Context().Err() != nil })
	var ae *quic.ApplicationError
	if err := context.Cause(held.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) || ae.ErrorMessage != "" {
		t.Fatalf("busy connection closed with %v, want H3_NO_ERROR", err)
	}
	rounds <- struct{}{} // nothing left to take
	waitHeld(t, l, 1)
	echoOnce(t, session, "the session after the rounds")
	waitFor(t, "5 closes counted", func() bool { return r.obs.Get(transport.OutcomeConnBusy) == 5 })
}

// TestMemoryPressure: pressure is the live heap above half the soft
// memory limit while the connections not in a session could fill half of
// what is left below it, at most once per garbage collection, and never
// without a limit.
func TestMemoryPressure(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	g := newMemoryGauge()
	act := func(spare int) bool { a, _ := g.under(spare); return a }
	debug.SetMemoryLimit(math.MaxInt64)
	runtime.GC()
	if act(1 << 20) {
		t.Fatal("pressure without a memory limit")
	}
	debug.SetMemoryLimit(1 << 40)
	if act(1 << 20) {
		t.Fatal("pressure under a 1 TiB limit")
	}
	// 96 MiB live under a 160 MiB limit: the next collection is 64 MiB
	// of allocation away, and about 64 MiB are left, half of which 100
	// connections at 768 KiB could fill, 16 not.
	ballast := make([]byte, 96<<20)
	debug.SetMemoryLimit(160 << 20)
	runtime.GC()
	if act(16) {
		t.Fatal("pressure with connections that could fill a fifth of the headroom")
	}
	if a, busy := g.under(100); !a || !busy {
		t.Fatalf("with 96 MiB live under a 160 MiB limit and 100 connections: pressure %v, busy ones too %v", a, busy)
	}
	if act(100) {
		t.Fatal("pressure twice on one collection's figures")
	}
	runtime.GC()
	if !act(100) {
		t.Fatal("no pressure after the next collection")
	}
	runtime.KeepAlive(ballast)

	// Above pressureHigh of the limit, pressure with one connection not
	// in a session, though its window is far below the headroom: a
	// connection can make the relay hold far more than its window
	// (BenchmarkTinyFrameStuffing). Only idle ones are closed for it.
	ballast = nil
	high := make([]byte, 136<<20) // 85 % of 160 MiB
	runtime.GC()
	if a, busy := g.under(1); !a || busy {
		t.Fatalf("with 85 %% of the limit live and one connection: pressure %v, busy ones too %v", a, busy)
	}
	runtime.KeepAlive(high)
}

// TestPressureSparesNewConns: a connection counted less than the grace
// ago is not closed under pressure (a new session's request arrives a
// round trip after the handshake), nor one busy for less than the busy
// grace (a cover page being served).
func TestPressureSparesNewConns(t *testing.T) {
	rounds := make(chan struct{})
	hook := &pressureHook{every: time.Millisecond, grace: time.Hour, under: onRounds(rounds)}
	r := startRelay(t, &Transport{pressure: hook}, nil)
	l := r.ln.(*listener).conns
	qc := mustCover(t, net.IPv4(127, 0, 0, 3), r.ln.Addr().String())
	waitHeld(t, l, 1)
	// The second round is taken only once the first has closed what it
	// would.
	rounds <- struct{}{}
	rounds <- struct{}{}
	if qc.Context().Err() != nil || l.held() != 1 {
		t.Fatal("a connection within its grace was closed under pressure")
	}

	// A connection counted less than the busy grace ago is not closed
	// while busy; an idle one beside it is. (Rounds of their own: the
	// first relay still takes any sent to it.)
	rounds2 := make(chan struct{})
	entered, release := make(chan struct{}), make(chan struct{})
	hook2 := &pressureHook{every: time.Millisecond, busy: time.Hour, under: onRounds(rounds2)}
	r2 := startRelay(t, &Transport{pressure: hook2}, func(cfg *transport.ListenConfig) { cfg.Cover = holdCover(entered, release) })
	t.Cleanup(func() { close(release) }) // before the relay closes
	l2 := r2.ln.(*listener).conns
	held := holdConn(t, net.IPv4(127, 0, 0, 4), r2.ln.Addr().String(), entered)
	idle := mustCover(t, net.IPv4(127, 0, 0, 5), r2.ln.Addr().String())
	waitHeld(t, l2, 2)
	rounds2 <- struct{}{}
	rounds2 <- struct{}{}
	waitFor(t, "the idle connection closed", func() bool { return closedIdle(idle) })
	rounds2 <- struct{}{}
	rounds2 <- struct{}{}
	if held.Context().Err() != nil || l2.held() != 1 {
		t.Fatal("a connection busy for less than the busy grace was closed under pressure")
	}

	// Under pressure that spares busy connections (pressureHigh alone),
	// one busy for longer than the busy grace stays too.
	rounds3 := make(chan struct{})
	entered3, release3 := make(chan struct{}), make(chan struct{})
	idleOnly := func(int) (bool, bool) {
		select {
		case <-rounds3:
			return true, false
		default:
			return false, false
		}
	}
	hook3 := &pressureHook{every: time.Millisecond, under: idleOnly}
	r3 := startRelay(t, &Transport{pressure: hook3}, func(cfg *transport.ListenConfig) { cfg.Cover = holdCover(entered3, release3) })
	t.Cleanup(func() { close(release3) })
	l3 := r3.ln.(*listener).conns
	held3 := holdConn(t, net.IPv4(127, 0, 0, 6), r3.ln.Addr().String(), entered3)
	waitHeld(t, l3, 1)
	for range 4 {
		rounds3 <- struct{}{}
	}
	if held3.Context().Err() != nil || l3.held() != 1 {
		t.Fatal("a busy connection was closed under pressure that spares busy ones")
	}
}

// BenchmarkTinyFrameStuffing measures the heap a relay under a soft
// memory limit reaches when one source's connections stuff their QPACK
// streams (which http3 never reads) with 1-byte STREAM frames: quic-go
// keeps each such frame as an entry of its own, about 150 bytes of heap
// per byte of the connection's 768 KiB window (114 MiB per connection
// measured), where the pressure check assumed a connection holds at most
// its window. Reports the peak heap in use and the connections still
// open at the end. POSTERN_STUFF_CONNS sets the connections (16).
func BenchmarkTinyFrameStuffing(b *testing.B) {
	n := envCount("POSTERN_STUFF_CONNS", 16)
	const limit = 256 << 20
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(limit))
	var peak uint64
	var open int
	for b.Loop() {
		r := startRelay(b, nil, nil)
		stop := make(chan struct{})
		peakc := make(chan uint64)
		go func() {
			var m runtime.MemStats
			var top uint64
			for {
				select {
				case <-stop:
					peakc <- top
					return
				case <-time.After(100 * time.Millisecond):
				}
				runtime.ReadMemStats(&m)
				top = max(top, m.HeapInuse)
			}
		}()
		var wg sync.WaitGroup
		var conns []*quic.Conn
		for range n {
			qc, err := quicFrom(b, net.IPv4(127, 0, 0, 9), r.ln.Addr().String(), &quic.Config{})
			if err != nil {
				continue // refused at a cap
			}
			conns = append(conns, qc)
			for typ := range []byte{2, 3} { // QPACK encoder, decoder
				s, err := qc.OpenUniStream()
				if err != nil {
					break
				}
				wg.Go(func() { tinyFrames(s, byte(2+typ)) })
			}
		}
		wg.Wait()
		close(stop)
		peak = <-peakc
		open = 0
		for _, qc := range conns {
			if qc.Context().Err() == nil {
				open++
			}
		}
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(open), "conns-open")
}

// tinyFrames writes a QPACK stream's type, then 1-byte STREAM frames of
// valid instructions (Set Dynamic Table Capacity 0 on the encoder stream,
// a Stream Cancellation on the decoder stream) until flow control or the
// connection stops it (at most 20 s).
func tinyFrames(s *quic.SendStream, typ byte) {
	end := time.Now().Add(20 * time.Second)
	s.SetWriteDeadline(end)
	if _, err := s.Write([]byte{typ}); err != nil {
		return
	}
	one := func(int) int { return 1 }
	b := []byte{0x20}
	if typ == qpackDecoderStream {
		b[0] = 0x40
	}
	for time.Now().Before(end) {
		s.SetWriteDeadline(time.Now().Add(time.Second)) // blocked by flow control: done
		if _, err := s.WriteWithLimit(b, one); err != nil && !errors.Is(err, quic.ErrWriteLimitReached) {
			return
		}
	}
}
