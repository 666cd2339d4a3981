package h3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// coverConn opens a QUIC connection from local to addr with no session,
// as a browser would, and fetches the cover page over it.
func coverConn(t *testing.T, local net.IP, addr string) (*quic.Conn, error) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: local})
	if err != nil {
		t.Fatal(err)
	}
	qt := &quic.Transport{Conn: udp}
	t.Cleanup(func() { qt.Close(); udp.Close() }) // Close leaves a socket it did not open
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	qc, err := plainDial(ctx, qt, addr, &quic.Config{})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+testSNI+"/", nil)
	res, err := (&http3.Transport{}).NewClientConn(qc).RoundTrip(req)
	if err != nil {
		return qc, err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("cover page: %s", res.Status)
	}
	return qc, nil
}

// waitHeld waits until the listener counts conns connections (counting
// follows each handshake on the relay's side).
func waitHeld(t *testing.T, l *connLimiter, conns int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d connections counted", conns), func() bool {
		return l.held() == conns
	})
}

// TestConnsPerSource: one source holds at most its cap of QUIC
// connections, even with no session on them; the next is refused at its
// first packet, another source still connects, and a closed connection
// makes room again. Before the cap, one source could hold any number of
// connections, each able to pin 768 KiB of unread data in http3's unread
// QPACK streams.
func TestConnsPerSource(t *testing.T) {
	const max = 3
	r := startRelay(t, &Transport{MaxConnsPerSource: max}, nil)
	addr := r.ln.Addr().String()
	l := r.ln.(*listener).conns
	lo := net.IPv4(127, 0, 0, 1)
	var held []*quic.Conn
	for range max {
		qc, err := coverConn(t, lo, addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, qc)
	}
	waitHeld(t, l, max)
	_, err := coverConn(t, lo, addr)
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("connection past the cap: %v, want CONNECTION_REFUSED", err)
	}
	// Counted once per Initial refused: a ClientHello with a
	// post-quantum key share takes two.
	if got := r.obs.Get(transport.OutcomeConnLimited); got < 1 {
		t.Errorf("Observe(limited) = %d, want the refusal counted", got)
	}
	if _, err := coverConn(t, net.IPv4(127, 0, 0, 3), addr); err != nil {
		t.Fatalf("another source: %v", err)
	}
	waitHeld(t, l, max+1)
	held[0].CloseWithError(0, "")
	waitHeld(t, l, max)
	if _, err := coverConn(t, lo, addr); err != nil {
		t.Fatalf("after one closed: %v", err)
	}
}

// BenchmarkQPACKStuffing: POSTERN_STUFF_SOURCES (default 1) sources,
// 127.0.0.10 onward, open POSTERN_STUFF_CONNS (default 256) QUIC
// connections in turn, with no session, and on each send 512 KiB on a
// QPACK encoder stream, which http3 accepts and never reads: the relay
// keeps it all. It reports the connections the relay holds and the
// process's live heap then (the clients' share is small once their data
// is acknowledged): with the default caps ("cap": 128 connections per
// source, twice the 64 sessions a source may hold, and 5,120 for the
// listener), with none ("nocap"), and with the listener's cap at half the
// connections tried ("listener").
func BenchmarkQPACKStuffing(b *testing.B) {
	n := envCount("POSTERN_STUFF_CONNS", 256)
	sources := envCount("POSTERN_STUFF_SOURCES", 1)
	for _, bc := range []struct {
		name           string
		perSource, max int
	}{{"nocap", 1 << 30, 1 << 30}, {"cap", 0, 0}, {"listener", 0, n / 2}} {
		b.Run(bc.name, func(b *testing.B) {
			var conns int
			var heap uint64
			for b.Loop() {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				r := startRelay(b, &Transport{MaxConnsPerSource: bc.perSource, MaxConns: bc.max}, nil)
				var open []*quic.Conn
				for i := range n {
					udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, byte(10+i%sources))})
					if err != nil {
						b.Fatal(err)
					}
					defer udp.Close() // quic.Transport.Close leaves it
					qt := &quic.Transport{Conn: udp}
					ctx, cancel := context.WithTimeout(b.Context(), 20*time.Second)
					qc, err := plainDial(ctx, qt, r.ln.Addr().String(), &quic.Config{})
					cancel()
					if err != nil {
						qt.Close()
						continue // refused at the cap
					}
					open = append(open, qc)
					defer qt.Close()
					defer qc.CloseWithError(0, "")
					s, err := qc.OpenUniStream()
					if err != nil {
						continue
					}
					s.Write([]byte{0x02}) // QPACK encoder stream
					s.SetWriteDeadline(time.Now().Add(2 * time.Second))
					s.Write(make([]byte, 512<<10)) // blocks at the window if it must
				}
				time.Sleep(time.Second) // the last data lands
				// Closed by the cap after the handshake: not held.
				conns = 0
				for _, qc := range open {
					if qc.Context().Err() == nil {
						conns++
					}
				}
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				heap = after.HeapInuse - before.HeapInuse
			}
			b.ReportMetric(float64(conns), "conns")
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// TestIdleConnectionsClose: a connection with no request open closes
// after the idle timeout however its client keeps it alive with PINGs (it
// could stay for ever before, holding whatever it sent on the QPACK
// streams); one that carries a session stays open for as long as the
// session does.
func TestIdleConnectionsClose(t *testing.T) {
	const idle = 300 * time.Millisecond
	r := startRelay(t, &Transport{IdleTimeout: idle}, nil)
	serveEcho(t, r.ln)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	qt := &quic.Transport{Conn: udp}
	defer qt.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	qc, err := plainDial(ctx, qt, r.ln.Addr().String(), &quic.Config{KeepAlivePeriod: idle / 6})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	session := dialT(t, r.ep)
	select {
	case <-qc.Context().Done(): // the relay closed it
	case <-ctx.Done():
		t.Fatal("a connection with no request and PINGs every 50 ms was still open after 20 s")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(qc.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) ||
		ae.ErrorMessage != "idle timeout" {
		t.Fatalf("closed with %v, want http3's idle close (H3_NO_ERROR)", err)
	}
	// The session was dialled at the same time: two more idle timeouts
	// later, it is still there.
	time.Sleep(2 * idle)
	transporttest.EchoRoundTrip(t, session, []byte("still here"))
}

// holdCover is a cover site whose page /hold answers only once release
// is closed, and reports each such request on entered as it arrives.
func holdCover(entered chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-release
		}
		testCover.ServeHTTP(w, r)
	})
}

// holdConn opens a QUIC connection from local to addr and leaves a
// request for /hold open on it until the relay's handler answers.
func holdConn(t *testing.T, local net.IP, addr string, entered <-chan struct{}) *quic.Conn {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: local})
	if err != nil {
		t.Fatal(err)
	}
	qt := &quic.Transport{Conn: udp}
	t.Cleanup(func() { qt.Close(); udp.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	qc, err := plainDial(ctx, qt, addr, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+testSNI+"/hold", nil)
	go func() {
		if res, err := (&http3.Transport{}).NewClientConn(qc).RoundTrip(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the held request never reached the handler")
	}
	return qc
}

// closedIdle reports whether the relay closed qc as http3 closes a
// connection at its idle timeout.
func closedIdle(qc *quic.Conn) bool {
	select {
	case <-qc.Context().Done():
	default:
		return false
	}
	var ae *quic.ApplicationError
	err := context.Cause(qc.Context())
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quic.ApplicationErrorCode(http3.ErrCodeNoError) &&
		ae.ErrorMessage == "idle timeout"
}

// TestConnsListenerCap: at the listener's cap on QUIC connections a new
// connection takes the place of the connection idle longest of the source
// holding the most, if that holds more than the new one's; else of one
// of its own source's. Never of one that carries a session or has a
// request open: with none to take, it is refused at its first packet.
// Before the cap, any number of sources could each hold their per-source
// cap of connections.
func TestConnsListenerCap(t *testing.T) {
	const max = 6
	entered, release := make(chan struct{}), make(chan struct{})
	r := startRelay(t, &Transport{MaxConns: max}, func(cfg *transport.ListenConfig) { cfg.Cover = holdCover(entered, release) })
	serveEcho(t, r.ln)
	answer := sync.OnceFunc(func() { close(release) })
	t.Cleanup(answer) // before the relay closes (cleanups run last first), which waits for its handlers
	addr := r.ln.Addr().String()
	l := r.ln.(*listener).conns
	ip := func(d byte) net.IP { return net.IPv4(127, 0, 0, d) }
	cover := func(d byte) *quic.Conn {
		t.Helper()
		qc, err := coverConn(t, ip(d), addr)
		if err != nil {
			t.Fatalf("cover connection from 127.0.0.%d: %v", d, err)
		}
		return qc
	}
	refused := func(d byte, what string) {
		t.Helper()
		_, err := coverConn(t, ip(d), addr)
		var te *quic.TransportError
		if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
			t.Fatalf("%s: %v, want CONNECTION_REFUSED", what, err)
		}
	}
	// Closes count once; a refusal once per Initial packet (a
	// ClientHello with a post-quantum key share takes two).
	// The relay counts a close after it, so wait for the count.
	busy := func(least, most int) int {
		t.Helper()
		waitFor(t, fmt.Sprintf("conn_busy counted %d times", least), func() bool { return r.obs.Get(transport.OutcomeConnBusy) >= least })
		got := r.obs.Get(transport.OutcomeConnBusy)
		if got > most {
			t.Errorf("Observe(conn_busy) = %d, want %d to %d", got, least, most)
		}
		return got
	}

	// Three sessions from 127.0.0.1 (the client's own source), the source
	// holding the most; two idle connections from .3, one from .4.
	sessions := []transport.Conn{dialT(t, r.ep), dialT(t, r.ep), dialT(t, r.ep)}
	a1 := cover(3)
	a2 := cover(3)
	b := cover(4)
	waitHeld(t, l, max)

	// .5 takes the place of .3's older idle connection.
	h5 := holdConn(t, ip(5), addr, entered)
	waitFor(t, "an idle connection closed", func() bool { return closedIdle(a1) })
	if closedIdle(a2) || closedIdle(b) {
		t.Fatal("more than .3's older idle connection closed")
	}
	waitHeld(t, l, max)
	busy(1, 1)

	// .5 holds one connection, as .3 and .4 do, and its own serves a
	// request: nothing it may take.
	refused(5, "nothing idle of a source holding more, nor of its own")
	n := busy(2, 3)
	if closedIdle(a2) || closedIdle(b) || closedIdle(h5) {
		t.Fatal("a connection closed for a refused one")
	}
	for i, s := range sessions {
		echoOnce(t, s, fmt.Sprintf("session %d", i+1))
	}

	// Once its request is answered, .5's connection is idle: the next
	// from .5 takes its place.
	answer()
	cover(5)
	waitFor(t, ".5's own idle connection closed", func() bool { return closedIdle(h5) })
	if closedIdle(a2) || closedIdle(b) {
		t.Fatal("another source's connection closed")
	}
	busy(n+1, n+1)
	waitHeld(t, l, max)
	for i, s := range sessions {
		echoOnce(t, s, fmt.Sprintf("session %d at the end", i+1))
	}
}

// echoOnce writes a few bytes on c, whose relay side echoes, and reads
// them back.
func echoOnce(t *testing.T, c transport.Conn, what string) {
	t.Helper()
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
}

// TestConnsFairShare: once the listener holds three quarters of its cap
// of QUIC connections, a source may hold at most the cap divided by the
// sources holding connections; a new source still connects.
func TestConnsFairShare(t *testing.T) {
	const max = 20 // pressure from 15 connections
	r := startRelay(t, &Transport{MaxConns: max}, nil)
	addr := r.ln.Addr().String()
	l := r.ln.(*listener).conns
	ip := func(d byte) net.IP { return net.IPv4(127, 0, 0, d) }
	for range 14 {
		if _, err := coverConn(t, ip(3), addr); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := coverConn(t, ip(4), addr); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, l, 15)
	// .3 holds 14, over its share of 20/2.
	_, err := coverConn(t, ip(3), addr)
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("a source over its fair share: %v, want CONNECTION_REFUSED", err)
	}
	if got := r.obs.Get(transport.OutcomeConnLimited); got < 1 {
		t.Errorf("Observe(conn_limited) = %d, want the refusal counted", got)
	}
	if got := r.obs.Get(transport.OutcomeConnBusy); got != 0 {
		t.Errorf("Observe(conn_busy) = %d, want 0: the listener is below its cap", got)
	}
	for _, d := range []byte{4, 5} {
		if _, err := coverConn(t, ip(d), addr); err != nil {
			t.Fatalf("127.0.0.%d, under its share: %v", d, err)
		}
	}
	waitHeld(t, l, 17)
}

// TestConnLimiterAccounts drives the connection accounts through random
// admissions, requests, sessions and closes, as the listener does, and
// checks after every step that the counts agree with the entries and
// that each source's idle list holds exactly its idle connections, in
// the order they became idle.
func TestConnLimiterAccounts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	l := newConnLimiter(6, 12, nil)
	var live []*connEntry
	since := map[*connEntry]int{} // step at which each idle entry became idle
	check := func(step int) {
		t.Helper()
		total, idle := 0, 0
		perSource := map[[16]byte]int{}
		for _, e := range live {
			perSource[e.src]++
			total++
			isIdle := !e.carried && e.open == 0
			if isIdle != e.inList {
				t.Fatalf("step %d: entry idle=%v, in list=%v", step, isIdle, e.inList)
			}
			if isIdle {
				idle++
			}
		}
		if total != l.total || idle != l.idle || len(perSource) != len(l.bySource) {
			t.Fatalf("step %d: total %d/%d, idle %d/%d, sources %d/%d", step, l.total, total, l.idle, idle, len(l.bySource), len(perSource))
		}
		if l.total > l.max {
			t.Fatalf("step %d: %d connections counted, cap %d", step, l.total, l.max)
		}
		for k, s := range l.bySource {
			if s.n > l.perSource {
				t.Fatalf("step %d: a source holds %d, cap %d", step, s.n, l.perSource)
			}
			if s.n != perSource[k] {
				t.Fatalf("step %d: source holds %d, counted %d", step, perSource[k], s.n)
			}
			last := -1
			for e, prev := s.head, (*connEntry)(nil); e != nil; prev, e = e, e.next {
				if e.prev != prev || e.src != k || !e.inList || since[e] < last {
					t.Fatalf("step %d: idle list broken", step)
				}
				last = since[e]
				if e.next == nil && s.tail != e {
					t.Fatalf("step %d: tail is not the last entry", step)
				}
			}
		}
	}
	markIdle := func(e *connEntry, step int) {
		if e.counted && !e.carried && e.open == 0 {
			if _, ok := since[e]; !ok {
				since[e] = step
			}
		} else {
			delete(since, e)
		}
	}
	for step := range 5000 {
		var src [16]byte
		src[0] = byte(rng.IntN(4))
		switch op := rng.IntN(6); {
		case op == 0 || len(live) == 0: // a handshake completes
			l.mu.Lock()
			out, victim := l.decideLocked(src)
			if out == "" {
				if victim != nil {
					l.dropLocked(victim)
					live = slices.DeleteFunc(live, func(x *connEntry) bool { return x == victim })
					delete(since, victim)
				}
				e := &connEntry{src: src}
				l.addLocked(e)
				live = append(live, e)
				markIdle(e, step)
			}
			l.mu.Unlock()
		case op == 1: // a connection closes
			i := rng.IntN(len(live))
			e := live[i]
			l.mu.Lock()
			l.dropLocked(e)
			l.mu.Unlock()
			live = slices.Delete(live, i, i+1)
			delete(since, e)
		case op == 2 || op == 3: // a request starts
			e := live[rng.IntN(len(live))]
			l.begin(e)
			markIdle(e, step)
		case op == 4: // a request ends
			if e := live[rng.IntN(len(live))]; e.open > 0 {
				l.end(e)
				markIdle(e, step)
			}
		case op == 5 && rng.IntN(4) == 0: // a session comes on it
			e := live[rng.IntN(len(live))]
			l.carry(e)
			markIdle(e, step)
		}
		check(step)
	}
	if l.total == 0 {
		t.Fatal("the random walk admitted nothing")
	}
}
