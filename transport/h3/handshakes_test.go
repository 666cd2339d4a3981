package h3

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
)

// A handshake slot is given back once: when the connection's handshake
// completes (which also drops the watch on the connection's context, so
// an established connection holds nothing of it), or when the connection
// dies first.
func TestHandshakeSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &handshakes{max: 2, retryAbove: 1}
		base, endA := context.WithCancel(context.Background())
		a, err := h.connContext(base, nil)
		if err != nil {
			t.Fatal(err)
		}
		baseB, endB := context.WithCancel(context.Background())
		if _, err := h.connContext(baseB, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := h.connContext(context.Background(), nil); err != errTooManyHandshakes {
			t.Fatalf("third connection: %v, want %v", err, errTooManyHandshakes)
		}
		if !h.verify(nil) {
			t.Error("no Retry above the threshold")
		}
		releaseSlot(a)
		if got := h.inFlight.Load(); got != 1 {
			t.Fatalf("in flight after accept: %d, want 1", got)
		}
		if a.Value(handshakeKey{}).(*slot).stop() {
			t.Error("the accepted connection's context is still watched")
		}
		endA()
		endB() // B dies in its handshake
		synctest.Wait()
		if got := h.inFlight.Load(); got != 0 {
			t.Fatalf("in flight after both ended: %d, want 0", got)
		}
	})
}

// deafConn is a client socket that hears nothing until hear is closed
// (the server's packets wait in the socket's buffer): a client that sent
// its ClientHello and has not answered yet, or never will.
// Only net.PacketConn's methods: with *net.UDPConn's, quic-go would read
// with ReadMsgUDP and hear all.
type deafConn struct {
	net.PacketConn
	hear chan struct{}
	once sync.Once
}

func (d *deafConn) ReadFrom(p []byte) (int, net.Addr, error) {
	<-d.hear
	return d.PacketConn.ReadFrom(p)
}

// listen lets the client hear (its reader, and so quic.Transport.Close,
// would wait for ever otherwise).
func (d *deafConn) listen() { d.once.Do(func() { close(d.hear) }) }

func (d *deafConn) Close() error {
	d.listen()
	return d.PacketConn.Close()
}

// TestHandshakeSlotHeldUntilComplete: a connection holds its handshake
// slot until its handshake completes, not only until the HTTP/3 server
// takes it (which on an early listener is as soon as the ClientHello is
// read), and counts against its source from then on. Before, a client
// that sent ClientHellos and never completed a handshake was counted by
// no limit: Retry and the cap on handshakes never applied to it.
func TestHandshakeSlotHeldUntilComplete(t *testing.T) {
	r := startRelay(t, nil, nil)
	l := r.ln.(*listener)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	deaf := &deafConn{PacketConn: udp, hear: make(chan struct{})}
	qt := &quic.Transport{Conn: deaf}
	defer qt.Close()
	defer deaf.listen()                                             // runs first
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // deadlock guard
	defer cancel()
	dialled := make(chan error, 1)
	go func() {
		qc, err := plainDial(ctx, qt, r.ln.Addr().String(), &quic.Config{})
		if err == nil {
			defer qc.CloseWithError(0, "")
		}
		dialled <- err
		<-ctx.Done()
	}()
	waitFor(t, "the HTTP/3 server takes the connection", func() bool { return l.early.Load() == 1 })
	if got := l.hs.inFlight.Load(); got != 1 {
		t.Fatalf("%d handshakes in flight once the server took the connection, want 1 until it completes", got)
	}
	if n := l.conns.held(); n != 0 {
		t.Fatalf("%d connections counted before any handshake completed", n)
	}
	deaf.listen()
	if err := <-dialled; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the handshake's slot back and the connection counted", func() bool {
		return l.hs.inFlight.Load() == 0 && l.conns.held() == 1
	})
}

// waitFor polls cond until it holds (a deadlock guard of 20 s only).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20 s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkBlindClientHellos: POSTERN_BLIND_N (default 1,000) clients on
// 127.0.0.1 each send a real ClientHello and never hear an answer, a few
// milliseconds apart; once they are gone, it reports the connections the
// HTTP/3 server took for them and the goroutines and live heap the relay
// then holds above its idle state (their handshakes time out later).
// "take" gives a handshake's slot back when the server takes the
// connection, as before 2026-12-05; "complete" holds it until the
// handshake completes.
func BenchmarkBlindClientHellos(b *testing.B) {
	n := envCount("POSTERN_BLIND_N", 1000)
	for _, bc := range []struct {
		name string
		take bool
	}{{"take", true}, {"complete", false}} {
		b.Run(bc.name, func(b *testing.B) {
			var taken, goroutines int
			var heap int64
			for b.Loop() {
				r := startRelay(b, &Transport{slotAtTake: bc.take}, nil)
				l := r.ln.(*listener)
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				g0 := runtime.NumGoroutine()
				var wg sync.WaitGroup
				var qts []*quic.Transport
				var deafs []*deafConn
				for i := range n {
					udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
					if err != nil {
						b.Fatal(err)
					}
					deaf := &deafConn{PacketConn: udp, hear: make(chan struct{})}
					qt := &quic.Transport{Conn: deaf}
					qts, deafs = append(qts, qt), append(deafs, deaf)
					wg.Go(func() {
						ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
						defer cancel()
						plainDial(ctx, qt, r.ln.Addr().String(), &quic.Config{})
					})
					if i%16 == 15 {
						time.Sleep(10 * time.Millisecond)
					}
				}
				wg.Wait()
				for k, qt := range qts {
					deafs[k].Close() // first: its reader holds qt.Close up
					qt.Close()
				}
				time.Sleep(200 * time.Millisecond)
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				taken = int(l.early.Load())
				goroutines = runtime.NumGoroutine() - g0
				heap = int64(after.HeapInuse) - int64(before.HeapInuse)
			}
			b.ReportMetric(float64(taken), "taken")
			b.ReportMetric(float64(goroutines), "goroutines")
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// TestHandshakesPerProvedSource: a source whose address a Retry proved
// holds at most its share of handshake slots, however many it starts
// and lets time out; other sources, and connections whose address is not
// proved (which may be spoofed, and get slots only below the Retry
// threshold), are not counted against it; a slot given back frees its
// share. Before, one such client could hold all 256 slots, and every new
// client was refused.
func TestHandshakesPerProvedSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHandshakes(10, 1, 2)
		a := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1000}
		a2 := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2000} // the same source
		b := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: 1000}
		start := func(addr net.Addr, proved bool) (context.CancelFunc, error) {
			ctx, end := context.WithCancel(context.Background())
			_, err := h.connContext(ctx, &quic.ClientInfo{RemoteAddr: addr, AddrVerified: proved})
			return end, err
		}
		endFirst, err := start(a, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := start(a2, true); err != nil {
			t.Fatal(err)
		}
		if _, err := start(a, true); err != errTooManyHandshakes {
			t.Fatalf("a third proved handshake from one source: %v, want %v", err, errTooManyHandshakes)
		}
		if _, err := start(a, false); err != nil {
			t.Fatalf("an unproved one: %v", err)
		}
		if _, err := start(b, true); err != nil {
			t.Fatalf("another source: %v", err)
		}
		if got := h.inFlight.Load(); got != 4 {
			t.Fatalf("%d in flight, want 4 (the refused one holds none)", got)
		}
		endFirst() // its handshake failed
		synctest.Wait()
		if _, err := start(a, true); err != nil {
			t.Fatalf("after one of its slots came back: %v", err)
		}
	})
}
