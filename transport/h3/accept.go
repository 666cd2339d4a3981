package h3

import (
	"context"
	"errors"
	"net/http"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// The listener serves HTTP/3 with an accept loop of its own rather than
// http3.Server.ServeListener, for one reason: how a request's headers
// are read.
//
// http3 reads a request stream's HEADERS frame as it arrives into a
// buffer of its own, up to the 1 MiB it allows (and advertises in
// SETTINGS_MAX_FIELD_SECTION_SIZE), and credits what it read back to the
// client's flow-control windows. A client that announced a 1 MiB HEADERS
// frame on each of a connection's 100 request streams and never finished
// one made the relay hold 202 MiB for that one connection until its idle
// timeout (TestUnfinishedHeadersBounded), and a source may hold 128
// connections. Lowering the limit would change the SETTINGS every client
// sees.
//
// So the listener takes the streams itself, looks at how a request
// stream opens with Peek (which takes nothing from the stream), and hands
// it to http3 (RawServerConn.HandleRequestStream) at once unless its
// HEADERS frame is large: over largeHeaders and within http3's limit.
// Such a frame goes to http3 only if it fits in a budget of bytes
// (headerBudget), per source and for the listener, and holds its share
// until http3 is done with the stream: its response sent, or the stream
// failed. (Not only until the request reaches the handler: its decoded
// headers live as long as the request, and a client that never reads the
// response keeps it for up to coverSendTimeout, a reviewer found, with
// 56 MiB of headers held on one connection and no share held.)
// if it does not fit, the request is refused at once (H3_REQUEST_REJECTED
// both ways: not processed, a client may retry), as http3 refuses the
// requests that come during a graceful shutdown. It does not wait: a
// stream that waited would be a stream nobody reads, and what its client
// sent meanwhile would fill the connection's flow-control window, which
// the requests holding shares on the same connection need to finish (a
// reviewer stalled a connection with 19 requests of 166 KB headers that
// way, where stock http3 answers all). Frames that http3 skips before
// the HEADERS frame (unknown types) are waited for whole, up to
// largeHeaders in all; past it, the stream is charged as a HEADERS frame
// of http3's largest size. Everything else goes to http3 as it comes: a
// stream that opens with another frame, ends or is reset before its
// HEADERS frame begins, or announces more than http3 takes (it answers
// 431 at once, reading nothing), as do the connection's unidirectional
// streams. A connection's 100 unfinished HEADERS frames of largeHeaders
// each still cost about 1 MiB.
//
// What a client can see: a request with headers up to largeHeaders (every
// browser's to the generated cover site, which sets no cookies; behind
// cover_proxy an origin's cookies may make more) is handled exactly as http3
// handles it. Larger headers are refused while their source has more than
// headerBudgetPerSource of them in flight (unfinished, or not yet
// answered), or the listener more than its budget, which takes clients
// sending large headers that never end, or never reading the answers,
// from at least eight sources with the defaults.
const (
	// largeHeaders is the size past which a HEADERS frame takes a share
	// of the header budget, and the most the frames http3 skips before
	// it may take for the listener to wait for them whole. Browsers'
	// header blocks to a site that set no cookies take a few hundred
	// bytes.
	largeHeaders = 4 << 10
	// maxHeaderBytes is http3's limit on a request's HEADERS frame (the
	// server's MaxHeaderBytes is left at its default).
	maxHeaderBytes = http.DefaultMaxHeaderBytes
	// DefaultHeaderBudget is how many bytes of HEADERS frames larger than
	// largeHeaders http3 may be reading, or holding decoded for requests
	// not yet answered, at once for the listener. http3's
	// buffer grows by doubling, and the decoded fields take about as much
	// again, so the memory is up to about three times this.
	DefaultHeaderBudget = 16 << 20
	// headerBudgetPerSource is a source's share of the budget: two
	// frames of the largest size.
	headerBudgetPerSource = 2 * maxHeaderBytes
)

// serve accepts ln's connections until the listener closes, and serves
// each as http3.Server would. It returns http.ErrServerClosed once the
// listener is closing, after every connection it served has closed.
func (l *listener) serve(ln *quic.EarlyListener) error {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		qc, err := ln.Accept(l.ctx)
		if l.ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
			return http.ErrServerClosed
		}
		if err != nil {
			return err
		}
		conns.Go(func() { l.serveConn(qc) })
	}
}

// serveConn serves one QUIC connection until it closes, as
// http3.Server's handleConn does, apart from how request streams reach
// http3 (serveStream) and the streams it refuses on a connection that
// carries a session (streams.go). It closes the connection (H3_NO_ERROR, as
// http3.Server.Close does) when the listener closes.
func (l *listener) serveConn(qc *quic.Conn) {
	hc, err := l.srv.NewRawServerConn(qc) // calls ConnContext; sends SETTINGS
	if err != nil {
		return // as http3: the control stream could not be opened
	}
	src := l.conns.sourceOf(qc)
	cs := newConnStreams()
	l.streams.Store(qc, cs)
	defer l.streams.Delete(qc)
	var streams sync.WaitGroup
	defer streams.Wait()
	streams.Go(func() {
		for {
			str, err := qc.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			if cs.admitUni(str) { // else refused (streams.go): no goroutine for it
				go serveUni(hc, qc, str, cs)
			}
		}
	})
	for {
		str, err := qc.AcceptStream(l.ctx)
		if err != nil {
			if qc.Context().Err() == nil { // the listener is closing
				hc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			}
			return
		}
		if cs.admitRequest(str) { // else refused (streams.go): no goroutine for it
			streams.Go(func() { l.serveStream(hc, qc, str, src, cs) })
		}
	}
}

// serveStream hands a request stream to http3, or refuses it when its
// headers are large and do not fit in the budget (see above).
func (l *listener) serveStream(hc *http3.RawServerConn, qc *quic.Conn, str *quic.Stream, src [16]byte, cs *connStreams) {
	defer cs.settled(str.StreamID()) // if it never reached the handler
	if n := headersPending(str); n > 0 {
		key := heldKey{qc, str.StreamID()}
		if !l.headers.take(key, src, n) {
			refuseRequest(str)
			return
		}
		defer l.headers.release(key)
	}
	hc.HandleRequestStream(str)
}

// refuseRequest refuses a request stream unprocessed (H3_REQUEST_REJECTED
// both ways: a client may retry it), as http3 refuses the requests that
// come during a graceful shutdown.
func refuseRequest(str *quic.Stream) {
	str.ReleaseStreamCredit()
	str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
	str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
}

// refuseUni refuses a unidirectional stream unread: STOP_SENDING with
// H3_STREAM_CREATION_ERROR, as http3 refuses a stream of a type it does
// not know (RFC 9114, section 6.2).
func refuseUni(str *quic.ReceiveStream) {
	str.ReleaseStreamCredit()
	str.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
}

// QPACK streams. http3 takes a client's QPACK encoder and decoder
// streams and never reads them past their type (quic-go's QPACK uses no
// dynamic table, and advertises none), so what a client sends on them
// waits unread, up to the connection's window; in 1-byte STREAM frames
// that cost the relay 114 MiB of heap per connection
// (BenchmarkTinyFrameStuffing), and connections that carry a session
// are never closed to relieve memory. The listener reads them itself
// once http3 is done with them, checks each instruction as a server
// with no dynamic table must (RFC 9204, section 4), and closes the
// connection at the first it cannot take: on the encoder stream
// anything but Set Dynamic Table Capacity 0 (QPACK_ENCODER_STREAM_ERROR);
// on the decoder stream a Section Acknowledgment or an Insert Count
// Increment, as nothing was inserted or referred to
// (QPACK_DECODER_STREAM_ERROR). Stream Cancellations are taken however
// many come: Chromium sends one for every request stream reset before
// its end. What shows: the bytes read count against the connection's
// window, which is renewed (MAX_DATA) as a quarter of it has been read
// on any stream, where a stock server never reads these.
const (
	qpackEncoderStream = 0x02
	qpackDecoderStream = 0x03
	// RFC 9204, section 6 (http3 names only QPACK_DECOMPRESSION_FAILED).
	qpackEncoderStreamError quic.ApplicationErrorCode = 0x201
	qpackDecoderStreamError quic.ApplicationErrorCode = 0x202
)

// serveUni hands a unidirectional stream to http3, and then drains it if
// it is a QPACK stream (see above).
func serveUni(hc *http3.RawServerConn, qc *quic.Conn, str *quic.ReceiveStream, cs *connStreams) {
	// Past the first three, a stream waits (and is refused when its
	// connection comes to carry a session) until it ends, not only until
	// its type comes: a control and two QPACK streams opened after three
	// that never send their type otherwise kept six goroutines for the
	// session's life (a reviewer's find).
	defer cs.settled(str.StreamID())
	var p peeker
	typ, _, ok := p.varint(str, 0)
	hc.HandleUnidirectionalStream(str)
	if !ok || (typ != qpackEncoderStream && typ != qpackDecoderStream) {
		return
	}
	code, q := qpackEncoderStreamError, qpackInstructions{decoder: typ == qpackDecoderStream}
	if q.decoder {
		code = qpackDecoderStreamError
	}
	var buf [64]byte // small: a client has next to nothing to send here
	for {
		n, err := str.Read(buf[:])
		if !q.take(buf[:n]) {
			qc.CloseWithError(code, "")
			return
		}
		if err != nil {
			return
		}
	}
}

// qpackInstructions checks the instructions on a client's QPACK encoder
// or decoder stream, as a server with no dynamic table takes them.
type qpackInstructions struct {
	decoder bool
	cont    int // continuation bytes of a prefixed integer read so far, +1; 0: none
}

// take reads b's instructions and reports whether all of them are valid.
func (q *qpackInstructions) take(b []byte) bool {
	for _, c := range b {
		switch {
		case !q.decoder:
			// Set Dynamic Table Capacity (001xxxxx) of 0; any other
			// capacity, or an insertion, exceeds the table advertised.
			if c != 0x20 {
				return false
			}
		case q.cont > 0: // a Stream Cancellation's stream id goes on
			if c&0x80 == 0 {
				q.cont = 0
			} else if q.cont++; q.cont > 9 { // past 62 bits
				return false
			}
		case c&0xc0 == 0x40: // Stream Cancellation, 6-bit prefix
			if c&0x3f == 0x3f {
				q.cont = 1
			}
		default: // Section Acknowledgment, Insert Count Increment
			return false
		}
	}
	return true
}

// headersPending returns what http3's reading of str's first HEADERS
// frame will take from the budget: its length if it is large, or http3's
// limit if the frames http3 skips before it pass largeHeaders; else 0. It
// waits with Peek for the frame's header, and for the frames before it.
// It returns 0 at once when http3 has nothing to buffer: a stream that
// opens with another frame, a HEADERS frame larger than http3 takes, a
// stream that ends or fails first.
func headersPending(str peekable) int {
	var p peeker
	off := 0
	for {
		typ, tn, ok := p.varint(str, off)
		if !ok {
			return 0
		}
		length, ln, ok := p.varint(str, off+tn)
		if !ok {
			return 0
		}
		end := uint64(off+tn+ln) + length
		switch {
		case typ == 0x1 && (length <= largeHeaders || length > maxHeaderBytes):
			return 0 // small, or answered 431 without being read
		case typ == 0x1:
			return int(length)
		case !skipped(typ):
			return 0 // http3 fails the stream or the connection at once
		case end > largeHeaders:
			return maxHeaderBytes // the HEADERS frame is yet to come
		}
		off = int(end) // the next frame header waits for this payload
	}
}

// skipped reports whether http3 skips a frame of type typ on a request
// stream before its HEADERS frame, discarding its payload as it reads
// it: the frame types it does not support (CANCEL_PUSH, PUSH_PROMISE,
// MAX_PUSH_ID) and unknown ones (RFC 9114, section 9). It fails on the
// others (DATA, SETTINGS, GOAWAY, PRIORITY_UPDATE on a request stream,
// the reserved HTTP/2 types).
func skipped(typ uint64) bool {
	switch typ {
	case 0x0, 0x1, 0x2, 0x4, 0x6, 0x7, 0x8, 0x9, 0xf0700, 0xf0701:
		return false
	}
	return true
}

// peekable is a stream that can be peeked at: *quic.Stream and
// *quic.ReceiveStream.
type peekable interface{ Peek([]byte) (int, error) }

// peeker waits for the bytes at the start of a stream with Peek, through
// a buffer that grows with what has arrived: waiting for n bytes holds at
// most twice what is there, never n up front.
type peeker struct{ buf []byte }

// wait waits until n bytes have arrived on str, and reports whether they
// did (false: the stream ended, failed, or the connection closed first).
func (p *peeker) wait(str peekable, n int) bool {
	for have := len(p.buf); have < n; {
		want := min(max(2*have, 64), n)
		if cap(p.buf) < want {
			p.buf = append(p.buf[:cap(p.buf)], make([]byte, want-cap(p.buf))...)
		}
		got, err := str.Peek(p.buf[:want])
		if err != nil || got < want {
			return false
		}
		have = want
		p.buf = p.buf[:have]
	}
	return true
}

// varint waits for the QUIC variable-length integer at offset off of str
// and returns it and its length.
func (p *peeker) varint(str peekable, off int) (v uint64, n int, ok bool) {
	if !p.wait(str, off+1) {
		return 0, 0, false
	}
	n = 1 << (p.buf[off] >> 6)
	if !p.wait(str, off+n) {
		return 0, 0, false
	}
	v, _, err := quicvarint.Parse(p.buf[off : off+n])
	return v, n, err == nil
}

// headerBudget is the listener's budget of bytes of large HEADERS frames
// that http3 may be reading at once, per source and in all.
type headerBudget struct {
	max, perSource int

	mu       sync.Mutex
	used     int
	bySource map[[16]byte]int
	streams  map[heldKey]heldShare
}

// heldKey names a request stream holding a share of the header budget.
type heldKey struct {
	c  *quic.Conn
	id quic.StreamID
}

type heldShare struct {
	src [16]byte
	n   int
}

func newHeaderBudget(total int) *headerBudget {
	return &headerBudget{
		max:       total,
		perSource: min(headerBudgetPerSource, total),
		bySource:  make(map[[16]byte]int),
		streams:   make(map[heldKey]heldShare),
	}
}

// take counts n bytes for the stream key until release, if they fit in
// src's share and in the budget; a frame larger than a share takes a
// whole share.
func (b *headerBudget) take(key heldKey, src [16]byte, n int) bool {
	n = min(n, b.perSource)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max || b.bySource[src]+n > b.perSource {
		return false
	}
	b.used += n
	b.bySource[src] += n
	b.streams[key] = heldShare{src, n}
	return true
}

// release gives back the share held for key, if any.
func (b *headerBudget) release(key heldKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.streams[key]
	if !ok {
		return
	}
	delete(b.streams, key)
	b.used -= s.n
	if b.bySource[s.src] -= s.n; b.bySource[s.src] <= 0 {
		delete(b.bySource, s.src)
	}
}

// held returns how many streams hold a share.
func (b *headerBudget) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.streams)
}
