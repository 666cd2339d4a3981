package h3

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
	"github.com/postern/postern/transport/transporttest"
)

// openControl opens qc's control stream, with an empty SETTINGS frame:
// the client's (http3's ClientConn) opens on a goroutine of its own, and
// the tests need it to be the connection's first unidirectional stream.
func openControl(t testing.TB, qc *quic.Conn) {
	t.Helper()
	ctl, err := qc.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Write([]byte{0x00, 0x04, 0x00}); err != nil {
		t.Fatal(err)
	}
}

// sessionOn opens a session on qc, a connection the test dialled itself
// and opened the control stream of (openControl), as the client does
// (client.go).
func sessionOn(t testing.TB, ep transport.Endpoint, qc *quic.Conn) transport.Conn {
	t.Helper()
	tgt, err := httpsession.NewTarget(Name, ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rs := &requestStream{qc: qc}
	cs := qc.ConnectionState().TLS
	c, err := tgt.Open(ctx, httpsession.Wire{
		Export:     cs.ExportKeyingMaterial,
		RoundTrip:  rs.roundTrip,
		Classify:   classify,
		Close:      func() { qc.CloseWithError(0, "") },
		LocalAddr:  qc.LocalAddr(),
		RemoteAddr: qc.RemoteAddr(),
		Early:      true,
	})
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	sc := &clientConn{Conn: c, str: rs.str, dw: dataWriter{w: rs.str}}
	t.Cleanup(func() { sc.Close() })
	return sc
}

// parkStreams opens n request streams on qc, sending on each the first
// byte of a HEADERS frame header, or (every other one) a whole unknown
// frame of 4,003 bytes, and n unidirectional streams sending half of a
// 2-byte stream type: each of them parks a goroutine of a relay that
// serves it, waiting for what never comes. It returns their send sides.
func parkStreams(t testing.TB, qc *quic.Conn, n int) (bidi []*quic.Stream, uni []*quic.SendStream) {
	t.Helper()
	unknown := append(frameHead(0x21, 4000), make([]byte, 4000)...)
	for i := range n {
		s, err := qc.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		b := []byte{0x01}
		if i%2 == 1 {
			b = unknown
		}
		s.Write(b) // fails if the relay refused the stream already
		bidi = append(bidi, s)
	}
	for range n {
		s, err := qc.OpenUniStream()
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{0x40}) // as above
		uni = append(uni, s)
	}
	return bidi, uni
}

// servingStreams counts the goroutines of this process (the relay's)
// serving a stream of a connection: a request stream in serveStream
// (waiting in headersPending, or in http3), a unidirectional one in
// serveUni (waiting for its type, or a control or QPACK stream that
// http3 or the listener reads).
func servingStreams() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("/transport/h3.serveUni(")) ||
			bytes.Contains(g, []byte("/transport/h3.(*listener).serveStream(")) {
			n++
		}
	}
	return n
}

// refusedWith reports whether s was refused with code: the relay asked
// it to stop sending (STOP_SENDING).
func refusedWith(s interface{ Context() context.Context }, code http3.ErrCode) bool {
	var se *quic.StreamError
	err := context.Cause(s.Context())
	return errors.As(err, &se) && se.Remote && se.ErrorCode == quic.StreamErrorCode(code)
}

// TestSessionConnStreamsRefused: on a connection that carries a session,
// the relay refuses the client's further streams (all request streams,
// the unidirectional ones past the first three) without a goroutine for
// each, whether the client opens them after the session's request or
// before it, and the session goes on, as does a request the handler was
// serving when the session began. Before, each such stream kept a
// goroutine of the relay, and what came on it, for the session's life:
// a connection is closed as idle, or under memory pressure, only while
// it carries no session.
func TestSessionConnStreamsRefused(t *testing.T) {
	const n = 50
	for _, c := range []struct {
		name   string
		before bool
	}{{"after the session", false}, {"before the session", true}} {
		t.Run(c.name, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			r := startRelay(t, nil, func(cfg *transport.ListenConfig) {
				cfg.Cover = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/slow" {
						close(entered)
						<-release
					}
					testCover.ServeHTTP(w, r)
				})
			})
			serveEcho(t, r.ln)
			qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), r.ln.Addr().String(), &quic.Config{})
			if err != nil {
				t.Fatal(err)
			}
			openControl(t, qc)
			var session transport.Conn
			var bidi []*quic.Stream
			var uni []*quic.SendStream
			if c.before {
				slow, err := qc.OpenStream()
				if err != nil {
					t.Fatal(err)
				}
				slow.Write(getFrame(t, "/slow"))
				slow.Close()
				<-entered
				defer func() { // the request at the handler was left to finish
					close(release)
					slow.SetReadDeadline(time.Now().Add(20 * time.Second))
					res, err := (&frameReader{r: slow}).readResponse(1 << 20)
					if err != nil || res.StatusCode != http.StatusNotFound {
						t.Errorf("the request at the handler when the session began: %v, %v; want the cover's 404", res, err)
					}
				}()
				bidi, uni = parkStreams(t, qc, n)
				// The relay serves each of them (and the control stream)
				// as on a connection without a session: a goroutine each.
				waitFor(t, "the relay serving every stream", func() bool { return servingStreams() >= 2*n+1 })
				session = sessionOn(t, r.ep, qc)
			} else {
				session = sessionOn(t, r.ep, qc)
				bidi, uni = parkStreams(t, qc, n)
			}
			checkRefused(t, bidi, uni)
			// Left: the control stream and the next two, which may be
			// QPACK streams, and the request at the handler; nothing else.
			left := firstUni
			if c.before {
				left++
			}
			waitFor(t, "no goroutine of the relay's per refused stream", func() bool { return servingStreams() <= left })
			transporttest.EchoRoundTrip(t, session, []byte("still here"))
			if qc.Context().Err() != nil {
				t.Fatal("the session's connection closed")
			}
		})
	}
}

// checkRefused waits for the relay to refuse every request stream
// (H3_REQUEST_REJECTED) and every unidirectional one past the first
// three of the connection (H3_STREAM_CREATION_ERROR), and checks that it
// refused none of those.
func checkRefused(t *testing.T, bidi []*quic.Stream, uni []*quic.SendStream) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	wait := func(ctx context.Context) {
		select {
		case <-ctx.Done():
		case <-deadline:
			t.Fatal("a stream still not refused after 20 s")
		}
	}
	for i, s := range bidi {
		wait(s.Context())
		if !refusedWith(s, http3.ErrCodeRequestRejected) {
			t.Fatalf("request stream %d: %v, want refused with H3_REQUEST_REJECTED", i, context.Cause(s.Context()))
		}
	}
	served := firstUni - 1 // the control stream is the first
	for i, s := range uni[served:] {
		wait(s.Context())
		if !refusedWith(s, http3.ErrCodeStreamCreationError) {
			t.Fatalf("unidirectional stream %d: %v, want refused with H3_STREAM_CREATION_ERROR", served+i, context.Cause(s.Context()))
		}
	}
	for i, s := range uni[:served] {
		if s.Context().Err() != nil {
			t.Fatalf("unidirectional stream %d (of the first three): %v, want served", i, context.Cause(s.Context()))
		}
	}
}

// TestStreamsSettleWithoutSession: on a connection without a session the
// account of its streams (streams.go) forgets each stream once it is
// served, whatever became of it: a request answered, one reset before its
// headers, unidirectional streams of a type http3 does not know. It would
// otherwise grow with every stream of a long-lived cover connection.
func TestStreamsSettleWithoutSession(t *testing.T) {
	r := startRelay(t, nil, nil)
	qc := mustCover(t, net.IPv4(127, 0, 0, 1), r.ln.Addr().String()) // one request, the control stream
	for range 5 {
		s, err := qc.OpenUniStream()
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{0x21}) // a reserved stream type
		select {
		case <-s.Context().Done(): // http3 refused it
		case <-time.After(20 * time.Second):
			t.Fatal("a stream of an unknown type not refused after 20 s")
		}
	}
	reset, err := qc.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	reset.Write([]byte{0x01})
	reset.CancelWrite(0x10c) // H3_REQUEST_CANCELLED
	if got := answer(qc, getFrame(t, "/"), true); got != "200" {
		t.Fatalf("a request: %s, want 200", got)
	}
	var cs *connStreams
	r.ln.(*listener).streams.Range(func(_, v any) bool { cs = v.(*connStreams); return false })
	if cs == nil {
		t.Fatal("no account of the connection's streams")
	}
	waitFor(t, "every stream settled", func() bool {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		return len(cs.waiting) == 0
	})
}

// TestUniStreamsPastFirstThreeRefused: of a session's connection's
// unidirectional streams, only the first three are served for the
// session's life, even when the client opened its two QPACK streams after
// three that never send their type: before, streams past the first three
// were taken off the waiting ones as their types came, and the QPACK
// streams' drains stayed beside the three (a reviewer's find: six
// goroutines with a control stream among them; a client that opens its
// control stream there loses the connection now, which Postern's client,
// with one unidirectional stream, never does).
func TestUniStreamsPastFirstThreeRefused(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), r.ln.Addr().String(), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Half a type each, then the QPACK encoder and decoder streams.
	for _, b := range [][]byte{{0x40}, {0x40}, {0x40}, {0x02}, {0x03}} {
		s, err := qc.OpenUniStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "five unidirectional streams served", func() bool { return servingStreams() >= 5 })
	session := sessionOn(t, r.ep, qc)
	transporttest.EchoRoundTrip(t, session, []byte("hi"))
	waitFor(t, "the two past the first three refused", func() bool { return servingStreams() <= firstUni })
	if qc.Context().Err() != nil {
		t.Fatalf("the session's connection closed: %v", context.Cause(qc.Context()))
	}
}
