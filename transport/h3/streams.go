package h3

import (
	"net/http"
	"sync"

	"github.com/quic-go/quic-go"
)

// Streams on a connection that carries a session.
//
// The listener serves each stream of a connection on a goroutine of its
// own, which waits there for the stream's first bytes: a request
// stream's frame header, or the frames http3 skips before its HEADERS
// frame, up to largeHeaders (serveStream), and a unidirectional stream's
// type (serveUni). A connection without a session is closed as idle
// while nothing but such streams is open on it (conns.go), and under
// memory pressure; a connection that carries a session is neither, for
// as long as its client keeps it alive. So on a session's connection a
// client (anyone with the relay's descriptor) could open the 99 other
// request streams QUIC let it, each with one byte of a frame header or a
// whole 4,003-byte unknown frame, and 99 unidirectional streams with half
// a stream type each, and the relay kept a goroutine and what came for
// each for the session's life: 204 goroutines and 1.1 MiB of heap per
// connection, against 6 and 0.11 MiB for an idle session
// (BenchmarkSessionStreamStuffing), some 13,000 goroutines and 72 MiB
// for a source at its 64 sessions.
//
// A Postern client opens one request stream on a connection, its
// session's, and one unidirectional stream, its control stream (client.go:
// requestStream, and http3's ClientConn, which opens no QPACK streams);
// relay links and tunnels dial with the same client. So once a
// connection carries a session (listener.session, as the session's 200
// is sent) the listener serves no new stream on it but the first three
// unidirectional ones, the control and QPACK streams any HTTP/3 client
// may open (the control stream may come after the session's request: a
// client opens the two independently). It refuses the others as they are
// accepted, without a goroutine: a request stream as one over the header
// budget (H3_REQUEST_REJECTED both ways), a unidirectional one with
// STOP_SENDING (H3_STREAM_CREATION_ERROR, as http3 refuses a stream of a
// type it does not know). It refuses the same way the streams opened
// before that are still waiting: request streams that have not reached
// the handler (a request there, the session's own above all, is left to
// finish), and unidirectional ones past the first three (whatever their
// type: a client that opened its control stream there loses the
// connection, which Postern's client never does). This holds for the connection's life, after its session
// ended too. After: 8 goroutines and 0.17 MiB per such connection, the
// rest being quic-go's stream tables, grown by the streams. A client
// sees it only on the connection of a session it opened: a second
// request there, or a second session, is refused where a stock server
// would serve it (the https listener's own engine refuses them too). A
// connection that never carried a session is served as before.
type connStreams struct {
	mu      sync.Mutex
	session bool // the connection has carried a session
	// waiting holds, with its refusal, each stream not settled yet: a
	// request stream until it reaches the handler (or ends), a
	// unidirectional one past the first three until it ends. Nil once
	// the connection carries a session.
	waiting map[quic.StreamID]func()
}

// firstUni is how many unidirectional streams of a client are served
// whatever: a control stream and the two QPACK streams.
const firstUni = 3

func newConnStreams() *connStreams {
	return &connStreams{waiting: make(map[quic.StreamID]func())}
}

// admitRequest reports whether str, a request stream just accepted, is to
// be served; if not it has been refused.
func (c *connStreams) admitRequest(str *quic.Stream) bool {
	return c.admit(str.StreamID(), func() { refuseRequest(str) })
}

// admitUni is admitRequest for a unidirectional stream.
func (c *connStreams) admitUni(str *quic.ReceiveStream) bool {
	if str.StreamID().StreamNum() <= firstUni {
		return true // never refused, never waiting
	}
	return c.admit(str.StreamID(), func() { refuseUni(str) })
}

// admit counts stream id as waiting until settled, unless the connection
// carries a session: then it refuses it.
func (c *connStreams) admit(id quic.StreamID, refuse func()) bool {
	c.mu.Lock()
	ok := !c.session
	if ok {
		c.waiting[id] = refuse
	}
	c.mu.Unlock()
	if !ok {
		refuse()
	}
	return ok
}

// settled takes stream id off the waiting ones: it reached the handler,
// or its type came, or it ended.
func (c *connStreams) settled(id quic.StreamID) {
	c.mu.Lock()
	delete(c.waiting, id)
	c.mu.Unlock()
}

// carry marks the connection as carrying a session, whose request stream
// is own, and refuses the streams still waiting on it but that one.
func (c *connStreams) carry(own quic.StreamID) {
	c.mu.Lock()
	c.session = true
	var refuse []func()
	for id, f := range c.waiting {
		if id != own {
			refuse = append(refuse, f)
		}
	}
	c.waiting = nil // admit adds no more
	c.mu.Unlock()
	for _, f := range refuse {
		f()
	}
}

// streamsOf returns the streams' account of r's connection, or nil.
func (l *listener) streamsOf(r *http.Request) *connStreams {
	qc, ok := r.Context().Value(quicConnKey{}).(*quic.Conn)
	if !ok {
		return nil
	}
	cs, _ := l.streams.Load(qc)
	c, _ := cs.(*connStreams)
	return c
}

// reached takes r's stream off the waiting ones of its connection: the
// request reached the handler. (http3 gives the stream's id only through
// the request's body.)
func (l *listener) reached(r *http.Request) {
	body, ok := r.Body.(interface{ StreamID() quic.StreamID })
	if cs := l.streamsOf(r); cs != nil && ok {
		cs.settled(body.StreamID())
	}
}
