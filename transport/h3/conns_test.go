package h3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
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

// BenchmarkQPACKStuffing: one source opens POSTERN_STUFF_CONNS (default
// 256) QUIC connections, with no session, and on each sends 512 KiB on a
// QPACK encoder stream, which http3 accepts and never reads: the relay
// keeps it all. It reports the connections the relay holds and the
// process's live heap then (the clients' share is small once their data
// is acknowledged), with the per-source cap on connections ("cap", the
// default: twice the 64 sessions a source may hold) and without it.
func BenchmarkQPACKStuffing(b *testing.B) {
	n := envCount("POSTERN_STUFF_CONNS", 256)
	for _, bc := range []struct {
		name string
		max  int
	}{{"nocap", 1 << 30}, {"cap", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			var conns int
			var heap uint64
			for b.Loop() {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				r := startRelay(b, &Transport{MaxConnsPerSource: bc.max}, nil)
				var open []*quic.Conn
				for range n {
					udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
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
