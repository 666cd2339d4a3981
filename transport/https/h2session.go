package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// The engine: the relay end of a session on the listener's own HTTP/2
// (see h2front.go for how a connection gets here). A connection carries
// this one stream; the engine refuses any other (RST_STREAM
// REFUSED_STREAM), as only an authenticated client gets here.
//
// The connection's goroutine (net/http's, which called the front) reads
// frames; the session's Read takes DATA payloads from a queue of pooled
// buffers and returns the window with one WINDOW_UPDATE pair once half of
// it is owed; Write sends each DATA frame, with the record framing of the
// package documentation, as one write to the TLS connection, so one TLS
// record. Control frames (SETTINGS and PING ACKs, WINDOW_UPDATE) go out
// from the goroutine that owes them. No goroutine waits for flow control
// while it holds the connection's write lock.
const (
	// h2Linger bounds how long a connection whose session ended waits for
	// the client to close it.
	h2Linger = 2 * time.Second
	// h2CloseWriteWait bounds the final frames of a closing session.
	h2CloseWriteWait = time.Second
	// h2MaxControl bounds the payload of a frame other than DATA.
	h2MaxControl = 64 << 10
	// RFC 9113 error codes the engine sends.
	h2NoError       = 0x0
	h2ProtocolError = 0x1
	h2FlowError     = 0x3
	h2FrameSize     = 0x6
	h2RefusedStream = 0x7
)

var (
	errH2Reset  = errors.New("https: client reset the session stream")
	errH2Closed = errors.New("https: client closed the connection")
	errH2Proto  = errors.New("https: client broke the HTTP/2 protocol")
	errH2Failed = errors.New("https: the connection failed")
)

// chunk is a DATA payload waiting for Read.
type chunk struct {
	buf      *[16384]byte
	off, end int
}

// h2Session is a relay session on the engine; it is a transport.Conn.
type h2Session struct {
	f      *h2Front
	tc     net.Conn // the TLS connection
	stream uint32
	// The connection's HPACK state: the session request's header block
	// (first) until another block comes, then a decoder (see decoder).
	first []byte
	dec   *hpack.Decoder
	left  []byte // bytes the front read past HEADERS, read before tc

	// The read loop's: a header block being assembled and its stream (0:
	// none).
	block       []byte
	blockStream uint32
	local       net.Addr

	wr   sync.Mutex // one Write or CloseWrite at a time
	fmu  sync.Mutex // frames written to tc
	cork corkable   // beneath tc, if it can gather a write's records (cork.go)

	mu           sync.Mutex
	rcond, wcond sync.Cond // readers: data or end; writers: window or end
	queue        []chunk
	rEOF         bool  // the client ended its side (END_STREAM)
	rErr         error // the stream or the connection failed
	closed       bool  // Close called
	wshut        bool  // END_STREAM sent (CloseWrite)
	sendConn     int64
	sendStream   int64
	peerInitial  int64
	peerMaxFrame int
	recvConn     int64 // receive windows left
	recvStream   int64
	owedConn     int64 // consumed bytes not yet returned
	owedStream   int64
	winConn      int64
	winStream    int64
	// The receive windows' growth (resizeWindowLocked): when the last
	// WINDOW_UPDATE went out (or the session began), the DATA queued
	// since, the window taken from the front's budget, and whether the
	// windows may no longer grow. (int32s: each is at most a window.)
	lastUpdate time.Duration // since engineEpoch
	arrived    int32
	grown      int32
	noGrow     bool
	src        [32]byte // the client's source, for the front's window pool
}

func newH2Session(f *h2Front, tc net.Conn, stream uint32, first []byte, ff *firstFlight) *h2Session {
	s := &h2Session{
		f: f, tc: tc, stream: stream, first: first, local: f.l.ln.Addr(),
		sendConn: ff.sendWin, sendStream: ff.peer.initialWindow, peerInitial: ff.peer.initialWindow,
		peerMaxFrame: ff.peer.maxFrame,
		recvConn:     f.stock.connWindow, recvStream: f.stock.streamWindow,
		winConn: f.stock.connWindow, winStream: f.stock.streamWindow,
	}
	s.rcond.L, s.wcond.L = &s.mu, &s.mu
	s.lastUpdate = f.clock()
	if a := tc.RemoteAddr(); a != nil {
		s.src = transport.SourceHash(f.key[:], a.String())
	}
	if t, ok := tc.(*tls.Conn); ok {
		s.cork, _ = t.NetConn().(corkable)
	}
	return s
}

// run answers the session request, offers the session to Accept and
// reads frames until the connection ends; then it calls done.
func (s *h2Session) run(ctx context.Context, left []byte, done func()) {
	defer done()
	defer s.tc.Close()
	if len(left) > 0 { // even empty, the slice would hold the first flight's buffer
		s.left = left
	}
	if err := s.writeResponse(); err != nil {
		s.fail(err)
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	offered := make(chan struct{})
	go func() {
		defer close(offered)
		if !s.f.l.gate.Offer(ctx, s) {
			s.Close()
		}
	}()
	defer s.endGrowth() // the budget comes back even if the loop panics
	s.fail(s.readLoop())
	cancel()
	<-offered
}

// writeResponse sends the answer to the session request: status 200 and
// the headers of httpsession.WriteAccepted.
func (s *h2Session) writeResponse() error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	enc.WriteField(hpack.HeaderField{Name: "cache-control", Value: "no-store"})
	enc.WriteField(hpack.HeaderField{Name: "content-type", Value: httpsession.ContentType})
	enc.WriteField(hpack.HeaderField{Name: "date", Value: time.Now().UTC().Format(http.TimeFormat)})
	b := appendFrameHeader(nil, block.Len(), frameHeaders, flagEndHeaders, s.stream)
	return s.writeFrames(append(b, block.Bytes()...))
}

// appendFrameHeader appends a frame header.
func appendFrameHeader(b []byte, n int, typ, flags byte, stream uint32) []byte {
	return append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags,
		byte(stream>>24), byte(stream>>16), byte(stream>>8), byte(stream))
}

// appendUint32Frame appends a frame with a 4-byte payload.
func appendUint32Frame(b []byte, typ byte, stream, v uint32) []byte {
	b = appendFrameHeader(b, 4, typ, 0, stream)
	return binary.BigEndian.AppendUint32(b, v)
}

// writeFrames writes b, whole frames, in one write.
func (s *h2Session) writeFrames(b []byte) error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	_, err := s.tc.Write(b)
	return err
}

// writeData writes a DATA frame unless the session was closed (Close
// ends the stream under fmu: no DATA may follow); end marks the stream
// ended.
func (s *h2Session) writeData(b []byte, end bool) error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.mu.Lock()
	closed := s.closed
	if !closed && end {
		s.wshut = true
	}
	s.mu.Unlock()
	if closed {
		return net.ErrClosed
	}
	_, err := s.tc.Write(b)
	return err
}

// fail ends the stream with err, once: readers and writers wake and fail.
func (s *h2Session) fail(err error) {
	err = connErr(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rErr == nil {
		s.rErr = err
	}
	s.rcond.Broadcast()
	s.wcond.Broadcast()
}

// readLoop reads and handles frames until the connection fails, the
// client closes it, or the session is closed and the linger ends.
func (s *h2Session) readLoop() error {
	var hdr [h2FrameHeader]byte
	for {
		if err := s.readFull(hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return errH2Closed
			}
			return err
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		typ, flags, stream := hdr[3], hdr[4], binary.BigEndian.Uint32(hdr[5:9])&maxWindow
		switch {
		case uint32(n) > s.f.stock.maxFrame:
			return s.connError(h2FrameSize)
		case s.blockStream != 0 && typ != frameContinuation:
			return s.connError(h2ProtocolError)
		case typ == frameData:
			if err := s.onData(n, flags, stream); err != nil {
				return err
			}
			continue
		case n > h2MaxControl:
			return s.connError(h2FrameSize)
		}
		buf := framePool.Get().(*[16384]byte)
		p := buf[:min(n, len(buf))]
		if n > len(buf) {
			p = make([]byte, n)
		}
		err := s.readFull(p)
		if err == nil {
			err = s.onControl(typ, flags, stream, p)
		}
		framePool.Put(buf)
		if err != nil {
			return err
		}
	}
}

// readFull fills p from the connection, the bytes the front read past
// HEADERS first; it fails as io.ReadFull does. (Its own loop, not
// io.ReadFull over an io.MultiReader: those frames sat on the stack of
// every idle session's goroutine; see h2Front.serveTLS.)
func (s *h2Session) readFull(p []byte) error {
	for n := 0; n < len(p); {
		var k int
		var err error
		if len(s.left) > 0 {
			k = copy(p[n:], s.left)
			if s.left = s.left[k:]; len(s.left) == 0 {
				s.left = nil
			}
		} else {
			k, err = s.tc.Read(p[n:])
		}
		n += k
		if err != nil && n < len(p) {
			if err == io.EOF && n > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// onControl handles a frame other than DATA.
func (s *h2Session) onControl(typ, flags byte, stream uint32, p []byte) error {
	switch typ {
	case frameHeaders, frameContinuation:
		return s.onHeaders(typ, flags, stream, p)
	case frameSettings:
		return s.onSettings(flags, stream, p)
	case framePing:
		if flags&flagAck == 0 && len(p) == 8 {
			b := appendFrameHeader(make([]byte, 0, 17), 8, framePing, flagAck, 0)
			return s.writeFrames(append(b, p...))
		}
	case frameWindowUpdate:
		return s.onWindowUpdate(stream, p)
	case frameRSTStream:
		if stream == s.stream {
			s.fail(errH2Reset)
		}
	case framePushPromise:
		return s.connError(h2ProtocolError)
	}
	// PRIORITY, GOAWAY (the session's stream is below any last-stream id
	// a client could send), unknown types: nothing to do.
	return nil
}

// onHeaders assembles a header block from HEADERS and CONTINUATION
// frames and handles it once complete.
func (s *h2Session) onHeaders(typ, flags byte, stream uint32, p []byte) error {
	if typ == frameHeaders {
		frag, ok := headerBlock(p, flags)
		if s.blockStream != 0 || stream == 0 || !ok {
			return s.connError(h2ProtocolError)
		}
		s.block, s.blockStream = append(s.block[:0], frag...), stream
		if flags&flagEndStream != 0 && stream == s.stream {
			s.endRead()
		}
	} else {
		if s.blockStream == 0 || stream != s.blockStream || len(s.block)+len(p) > int(s.f.stock.maxHeaderList) {
			return s.connError(h2ProtocolError)
		}
		s.block = append(s.block, p...)
	}
	if flags&flagEndHeaders == 0 {
		return nil
	}
	block, stream := s.block, s.blockStream
	s.block, s.blockStream = nil, 0
	return s.onHeaderBlock(stream, block)
}

// connError sends GOAWAY with code and ends the connection.
func (s *h2Session) connError(code uint32) error {
	b := appendFrameHeader(make([]byte, 0, 17), 8, frameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, s.stream)
	b = binary.BigEndian.AppendUint32(b, code)
	s.tc.SetWriteDeadline(time.Now().Add(h2CloseWriteWait))
	s.writeFrames(b)
	return errH2Proto
}

// onData reads a DATA payload of n bytes into the queue.
func (s *h2Session) onData(n int, flags byte, stream uint32) error {
	s.mu.Lock()
	if int64(n) > s.recvConn || (stream == s.stream && int64(n) > s.recvStream) {
		s.mu.Unlock()
		return s.connError(h2FlowError)
	}
	s.recvConn -= int64(n)
	if stream == s.stream {
		s.recvStream -= int64(n)
	}
	keep := stream == s.stream && !s.closed && !s.rEOF
	s.mu.Unlock()
	data := n
	if flags&flagPadded != 0 && n > 0 {
		var b [1]byte
		if err := s.readFull(b[:]); err != nil {
			return err
		}
		if int(b[0]) > n-1 {
			return s.connError(h2ProtocolError)
		}
		data = n - 1 - int(b[0])
	}
	pad := n - data
	queued := 0
	for data > 0 {
		buf := framePool.Get().(*[16384]byte)
		k := min(data, len(buf))
		if err := s.readFull(buf[:k]); err != nil {
			framePool.Put(buf)
			return err
		}
		data -= k
		s.mu.Lock()
		switch {
		case !keep || s.closed:
			framePool.Put(buf)
		case len(s.queue) > 0 && len(buf)-s.queue[len(s.queue)-1].end >= k:
			// A payload that fits whole in the last buffer joins it, so
			// that any two neighbouring buffers hold more than a buffer's
			// size between them, and what waits unread holds at most
			// twice its size in buffers, plus two (the first may be partly
			// read). (Tiny frames held 16 KiB each before small ones
			// joined; 4 KiB ones, four times their size, until any that
			// fits did.) A payload is never split: one that fills a
			// buffer, as a client's full-size frames do, keeps its own,
			// so that Read returns it whole and a relay passing it on
			// keeps the client's frame size.
			t := &s.queue[len(s.queue)-1]
			t.end += copy(t.buf[t.end:], buf[:k])
			framePool.Put(buf)
			queued += k
			s.arrived += int32(k)
			s.rcond.Broadcast()
		default:
			s.queue = append(s.queue, chunk{buf: buf, end: k})
			queued += k
			s.arrived += int32(k)
			s.rcond.Broadcast()
		}
		s.mu.Unlock()
	}
	if flags&flagPadded != 0 && pad > 1 {
		buf := framePool.Get().(*[16384]byte)
		err := s.readFull(buf[:pad-1])
		framePool.Put(buf)
		if err != nil {
			return err
		}
	}
	// What nobody will read (padding, other streams, a closed session)
	// goes back to the windows at once; the rest when Read takes it.
	if err := s.consumed(int64(n-queued), stream == s.stream); err != nil {
		return err
	}
	if flags&flagEndStream != 0 && stream == s.stream {
		s.endRead()
	}
	return nil
}

// endRead marks the client's side as ended: no more DATA can come, so
// the extra window goes back to the budget, less what the DATA queued
// unread past the stock window still holds (that comes back with
// endGrowth).
func (s *h2Session) endRead() {
	s.mu.Lock()
	s.rEOF = true
	s.rcond.Broadcast()
	var queued int64
	for _, c := range s.queue {
		queued += int64(c.end - c.off)
	}
	keep := min(int64(s.grown), max(0, queued-s.f.stock.streamWindow))
	back := int64(s.grown) - keep
	s.grown = int32(keep)
	s.mu.Unlock()
	s.f.windows.give(s.src, back)
}

// onHeaderBlock decodes a complete header block (keeping the HPACK state
// in step) and refuses any stream but the session's.
func (s *h2Session) onHeaderBlock(stream uint32, block []byte) error {
	// The fields are not needed, only the table kept in step: nothing is
	// handed out (a block of references to a large table entry would
	// otherwise expand to megabytes of strings).
	dec := s.decoder()
	dec.SetEmitEnabled(false)
	_, err := dec.Write(block)
	if err == nil {
		err = dec.Close()
	}
	if err != nil {
		return s.connError(0x9) // COMPRESSION_ERROR
	}
	if stream == s.stream {
		return nil // trailers
	}
	return s.writeFrames(appendUint32Frame(make([]byte, 0, 13), frameRSTStream, stream, h2RefusedStream))
}

// decoder returns the connection's HPACK decoder. A session's client
// sends no header block after its request, so the engine keeps that
// request's block (a few hundred bytes) instead of a decoder, whose
// dynamic table and strings held another 1.3 KB for every idle session.
// A decoder's state is what the blocks it decoded made it, so the first
// later block gets a new decoder that decodes the request's block again;
// that decoder is kept.
func (s *h2Session) decoder() *hpack.Decoder {
	if s.dec == nil {
		s.dec = s.f.newDecoder()
		s.dec.DecodeFull(s.first) // it decoded once; it decodes again
		s.first = nil
	}
	return s.dec
}

// onSettings applies the client's SETTINGS and ACKs them.
func (s *h2Session) onSettings(flags byte, stream uint32, p []byte) error {
	if stream != 0 {
		return s.connError(h2ProtocolError)
	}
	if flags&flagAck != 0 {
		return nil
	}
	ps := peerSettings{initialWindow: -1}
	if !ps.apply(p) {
		return s.connError(h2ProtocolError)
	}
	s.mu.Lock()
	if ps.initialWindow >= 0 {
		// RFC 9113 6.9.2: a change that takes the stream's window past
		// 2^31-1 is a FLOW_CONTROL_ERROR.
		if s.sendStream+ps.initialWindow-s.peerInitial > maxWindow {
			s.mu.Unlock()
			return s.connError(h2FlowError)
		}
		s.sendStream += ps.initialWindow - s.peerInitial
		s.peerInitial = ps.initialWindow
	}
	if ps.maxFrame > 0 {
		s.peerMaxFrame = ps.maxFrame
	}
	s.wcond.Broadcast()
	s.mu.Unlock()
	return s.writeFrames(appendFrameHeader(make([]byte, 0, 9), 0, frameSettings, flagAck, 0))
}

// onWindowUpdate grows a send window.
func (s *h2Session) onWindowUpdate(stream uint32, p []byte) error {
	if len(p) != 4 {
		return s.connError(h2FrameSize)
	}
	inc := int64(binary.BigEndian.Uint32(p) & maxWindow)
	s.mu.Lock()
	over := false
	switch stream {
	case 0:
		over = s.sendConn+inc > maxWindow
		if !over {
			s.sendConn += inc
		}
	case s.stream:
		// Past 2^31-1 the stream's window is a FLOW_CONTROL_ERROR (the
		// stock server resets the stream); the connection carries this
		// session alone, so the session ends.
		over = s.sendStream+inc > maxWindow
		if !over {
			s.sendStream += inc
		}
	}
	s.wcond.Broadcast()
	s.mu.Unlock()
	if over {
		return s.connError(h2FlowError)
	}
	return nil
}

// consumed returns n bytes to the receive windows (of the stream too if
// stream), with a WINDOW_UPDATE once half of a window is owed.
func (s *h2Session) consumed(n int64, stream bool) error {
	if n <= 0 {
		return nil
	}
	s.mu.Lock()
	s.owedConn += n
	if stream {
		s.owedStream += n
	}
	b := s.windowUpdatesLocked()
	s.mu.Unlock()
	if b == nil {
		return nil
	}
	return s.writeFrames(b)
}

// windowUpdatesLocked returns the WINDOW_UPDATE frames owed, if any.
func (s *h2Session) windowUpdatesLocked() []byte {
	if s.owedConn < s.winConn/2 && s.owedStream < s.winStream/2 {
		return nil
	}
	s.resizeWindowLocked()
	var b []byte
	if s.owedConn > 0 {
		b = appendUint32Frame(make([]byte, 0, 26), frameWindowUpdate, 0, uint32(s.owedConn))
		s.recvConn += s.owedConn
		s.owedConn = 0
	}
	if s.owedStream > 0 && !s.rEOF && !s.closed { // no frame on a stream reset by Close
		b = appendUint32Frame(b, frameWindowUpdate, s.stream, uint32(s.owedStream))
		s.recvStream += s.owedStream
	}
	s.owedStream = 0
	return b
}

// Read returns session bytes from the client.
func (s *h2Session) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for len(s.queue) == 0 && !s.rEOF && s.rErr == nil && !s.closed {
		s.rcond.Wait()
	}
	if s.closed {
		s.mu.Unlock()
		return 0, net.ErrClosed
	}
	if len(s.queue) == 0 {
		err, eof := s.rErr, s.rEOF
		s.mu.Unlock()
		if eof {
			return 0, io.EOF
		}
		return 0, &net.OpError{Op: "read", Net: Name, Err: err}
	}
	// One buffer at most (one full-size frame's payload, or smaller ones
	// that arrived while the reader was behind): a relay that passes each
	// read on keeps the client's full-size frames, which fill TLS records.
	c := &s.queue[0]
	n := copy(p, c.buf[c.off:c.end])
	c.off += n
	if c.off == c.end {
		framePool.Put(c.buf)
		s.queue[0] = chunk{}
		s.queue = s.queue[1:]
	}
	if len(s.queue) == 0 {
		s.queue = nil // an idle session holds no buffer
	}
	s.owedConn += int64(n)
	s.owedStream += int64(n)
	b := s.windowUpdatesLocked()
	s.mu.Unlock()
	if b != nil {
		if err := s.writeFrames(b); err != nil {
			return n, s.writeErr(err)
		}
	}
	return n, nil
}

// Write sends p as records (see the package documentation), each DATA
// frame in one TLS record.
func (s *h2Session) Write(p []byte) (int, error) {
	s.wr.Lock()
	defer s.wr.Unlock()
	if err := s.writable(); err != nil {
		return 0, err
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxRecord)]
		if err := s.writeRecord(chunk, false); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// writable reports why the session cannot write, if it cannot.
func (s *h2Session) writable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return net.ErrClosed
	case s.wshut:
		return errWriteAfterCloseWrite
	case s.rErr != nil:
		return &net.OpError{Op: "write", Net: Name, Err: s.rErr}
	}
	return nil
}

// writeRecord sends one record: its 4-byte length and data, in DATA
// frames that fit the send windows and a TLS record each; end sets
// END_STREAM on the last. A record of more than one frame goes out in
// runs gathered beneath TLS (cork.go): each run is the frames there is
// window for, and its last frame's write sends it, so no run spans a
// wait for window.
func (s *h2Session) writeRecord(data []byte, end bool) (err error) {
	corked := s.cork != nil && recordHeaderLen+len(data) > dataPiece
	gathering := false
	if corked {
		defer func() {
			// After a failed write, what the run gathered (with any
			// frames Close added) goes out now, or not at all.
			s.fmu.Lock()
			uerr := s.cork.uncork()
			s.fmu.Unlock()
			if uerr != nil && err == nil {
				err = s.writeErr(uerr)
			}
		}()
	}
	var rh [recordHeaderLen]byte
	binary.BigEndian.PutUint32(rh[:], uint32(len(data)))
	head := rh[:]
	for len(head) > 0 || len(data) > 0 {
		n, dry, err := s.reserve(len(head)+len(data), &gathering)
		if err != nil {
			return err
		}
		buf := framePool.Get().(*[16384]byte)
		h := copy(buf[h2FrameHeader:h2FrameHeader+n], head)
		head = head[h:]
		d := copy(buf[h2FrameHeader+h:h2FrameHeader+n], data)
		data = data[d:]
		var flags byte
		if end && len(head) == 0 && len(data) == 0 {
			flags = flagEndStream
		}
		appendFrameHeader(buf[:0], n, frameData, flags, s.stream)
		switch endsRun := dry || len(head) == 0 && len(data) == 0; {
		case corked && !gathering && !endsRun:
			s.cork.cork()
			gathering = true
		case gathering && endsRun:
			s.cork.last()
			gathering = false
		}
		err = s.writeData(buf[:h2FrameHeader+n], flags&flagEndStream != 0)
		framePool.Put(buf) // tls.Conn.Write has copied it, even on error
		if err != nil {
			return s.writeErr(err)
		}
	}
	return nil
}

// reserve waits until the send windows are open and takes up to want
// bytes of them, at most one frame's worth; dry reports that it took the
// last of a window. A run still gathering when a wait comes (the peer
// lowered its window) is sent first: the peer may need it to open the
// window, and control frames must not sit behind the wait.
func (s *h2Session) reserve(want int, gathering *bool) (n int, dry bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case s.closed:
			return 0, false, net.ErrClosed
		case s.rErr != nil:
			return 0, false, &net.OpError{Op: "write", Net: Name, Err: s.rErr}
		}
		if s.sendConn > 0 && s.sendStream > 0 {
			break
		}
		if *gathering {
			*gathering = false
			s.mu.Unlock()
			s.fmu.Lock()
			err := s.cork.uncork()
			s.fmu.Unlock()
			s.mu.Lock()
			if err != nil {
				return 0, false, s.writeErrLocked(err)
			}
			continue
		}
		s.wcond.Wait()
	}
	k := int64(min(want, dataPiece, s.peerMaxFrame))
	k = min(k, s.sendConn, s.sendStream)
	s.sendConn -= k
	s.sendStream -= k
	return int(k), s.sendConn == 0 || s.sendStream == 0, nil
}

// writeErr reports a failed write: net.ErrClosed after Close.
func (s *h2Session) writeErr(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeErrLocked(err)
}

func (s *h2Session) writeErrLocked(err error) error {
	if s.closed || errors.Is(err, net.ErrClosed) {
		return net.ErrClosed
	}
	return &net.OpError{Op: "write", Net: Name, Err: connErr(err)}
}

// connErr keeps what the relay may learn of a connection error: the
// errors of crypto/tls and of the TCP socket name the client's address,
// which the relay side of a session never sees.
func connErr(err error) error {
	var errno syscall.Errno
	switch {
	case err == nil, errors.Is(err, errH2Closed), errors.Is(err, errH2Reset), errors.Is(err, errH2Proto):
		return err
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return errH2Closed
	case errors.Is(err, os.ErrDeadlineExceeded):
		return transport.Redact("https: the connection timed out", os.ErrDeadlineExceeded)
	case errors.As(err, &errno):
		return transport.Redact("https: the connection failed: "+errno.Error(), errno)
	}
	return errH2Failed
}

// CloseWrite sends the end-of-stream record with END_STREAM; reads keep
// working.
func (s *h2Session) CloseWrite() error {
	s.wr.Lock()
	defer s.wr.Unlock()
	s.mu.Lock()
	shut, closed := s.wshut, s.closed
	s.mu.Unlock()
	if closed {
		return net.ErrClosed
	}
	if shut {
		return nil
	}
	// The zero record is the record header alone; its frame ends the
	// stream.
	return s.writeRecord(nil, true)
}

// Close ends the session: it ends the stream after what was written and
// the connection (GOAWAY), then the connection waits up to h2Linger for
// the client to close it. A write blocked on a client that does not read
// is aborted after h2CloseWriteWait.
func (s *h2Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, c := range s.queue {
		framePool.Put(c.buf)
	}
	s.queue = nil
	s.rcond.Broadcast()
	s.wcond.Broadcast()
	dead := s.rErr != nil
	s.mu.Unlock()
	if dead {
		s.tc.Close()
		return nil
	}
	// A frame write blocked on a client that does not read ends at this
	// deadline; then the stream's end goes out after everything written.
	s.tc.SetWriteDeadline(time.Now().Add(h2CloseWriteWait))
	s.fmu.Lock()
	s.mu.Lock()
	wshut, rEOF := s.wshut, s.rEOF
	s.mu.Unlock()
	var b []byte
	if !wshut {
		b = appendFrameHeader(b, 0, frameData, flagEndStream, s.stream)
	}
	if !rEOF {
		b = appendUint32Frame(b, frameRSTStream, s.stream, h2NoError)
	}
	b = appendFrameHeader(b, 8, frameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, s.stream)
	b = binary.BigEndian.AppendUint32(b, h2NoError)
	_, err := s.tc.Write(b)
	s.fmu.Unlock()
	if err != nil {
		s.tc.Close()
		return nil
	}
	s.tc.SetReadDeadline(time.Now().Add(h2Linger))
	return nil
}

func (s *h2Session) LocalAddr() net.Addr  { return s.local }
func (s *h2Session) RemoteAddr() net.Addr { return httpsession.HiddenAddr(Name) }

// Source is what the relay counts the client as (transport.Sourced): the
// source the front's window pool counts the session under.
func (s *h2Session) Source() [16]byte { return [16]byte(s.src[:16]) }

func (s *h2Session) SetDeadline(time.Time) error      { return errNoDeadline }
func (s *h2Session) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (s *h2Session) SetWriteDeadline(time.Time) error { return errNoDeadline }

// Receive windows that grow. The stock server's windows (1 MiB for the
// stream and the connection, net/http's defaults) are what a session
// starts with, as a prober would see them on the cover site's
// connections. They allow a client about 1 MiB per round trip: a 7 MiB
// message over a 100 ms path took 22 round trips to send, against 8 to
// receive with a browser's windows. So when a WINDOW_UPDATE falls due, a
// session whose client sent at least half a window of DATA since the last
// one, at engineGrowRate or faster, and whose DATA the relay read as fast
// (the update falls due when half the window was read), gets windows of
// engineWindow: the update carries the extra credit, in the frame it
// would send anyway, inside TLS, on an admitted session only. One whose
// DATA then comes slower shrinks back: its next updates withhold the
// extra. What the windows grant past the stock size is budget the front
// holds for the whole listener (engineWindowBudget): a session takes it
// when it grows and gives it back when it shrinks, when its client ends
// the stream, or when it ends; while too little is left a session keeps
// the stock windows. (A grown session that goes idle keeps the extra:
// the client holds that credit, and only its DATA can use it up.) So the
// bytes clients may send ahead of the relay's reads stay within the stock
// window per session plus the budget, however many sessions upload at
// once. (In memory that is at most twice as much, plus two 16 KiB
// buffers per session: see onData.)
const (
	engineWindow       = 4 << 20
	engineWindowBudget = 48 << 20
	engineGrowRate     = 512 << 10 // bytes per second
)

// resizeWindowLocked grows or shrinks the windows, as the rate of the
// DATA since the last WINDOW_UPDATE says, just before an update goes out;
// s.mu is held.
func (s *h2Session) resizeWindowLocked() {
	now := s.f.clock()
	arrived := int64(s.arrived)
	elapsed := min(now-s.lastUpdate, time.Hour) // a longer gap is as slow, and would overflow
	fast := arrived*int64(time.Second) >= engineGrowRate*int64(elapsed)
	s.lastUpdate, s.arrived = now, 0
	if s.noGrow || s.closed || s.rEOF || s.rErr != nil {
		return
	}
	var delta int64
	switch {
	case fast && arrived >= s.winStream/2 && s.winStream < engineWindow:
		if delta = engineWindow - s.winStream; !s.f.windows.take(s.src, delta) {
			return
		}
	case !fast && s.grown > 0:
		// Withhold what can be withheld of the extra (the window past the
		// stock one) now; the rest at later updates.
		delta = -min(int64(s.grown), s.owedStream, s.owedConn)
		if delta == 0 {
			return
		}
		s.f.windows.give(s.src, -delta)
	default:
		return
	}
	// The stream and the connection (which carries this one stream) change
	// alike; the increments going out now carry the difference.
	s.grown += int32(delta)
	s.winStream += delta
	s.owedStream += delta
	s.winConn += delta
	s.owedConn += delta
}

// endGrowth gives the session's extra window back to the budget once
// its connection has ended (no DATA can come) and stops further growth.
func (s *h2Session) endGrowth() {
	s.mu.Lock()
	grown := s.grown
	s.grown, s.noGrow = 0, true
	s.mu.Unlock()
	s.f.windows.give(s.src, int64(grown))
}
