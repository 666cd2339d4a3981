package https

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// readLoop reads the relay's frames until the connection fails.
func (cc *h2Client) readLoop() {
	var err error
	for err == nil {
		var f http2.Frame
		if f, err = cc.fr.ReadFrame(); err == nil {
			cc.partial.Store(0) // the framer reads no further than the frame
			err = cc.handle(f)
		}
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		cc.writeFrame(func() error { return cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil) })
	}
	if err == io.EOF {
		// The connection ended; the stream, if it had not, did not end
		// cleanly (the body says io.EOF only after END_STREAM): a session
		// cut this way was taken for one the relay closed, which a sender
		// does not resume.
		err = io.ErrUnexpectedEOF
	}
	cc.mu.Lock()
	cc.err = err
	cc.cond.Broadcast()
	cc.mu.Unlock()
	close(cc.done)
	cc.body.fail(err)
}

// handle acts on one frame from the relay.
func (cc *h2Client) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return cc.onSettings(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			return cc.writeFrame(func() error { return cc.fr.WritePing(true, f.Data) })
		}
	case *http2.WindowUpdateFrame:
		cc.onWindowUpdate(f)
	case *http2.MetaHeadersFrame:
		return cc.onHeaders(f)
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.RSTStreamFrame:
		if f.StreamID == h2Stream {
			cc.cancelStream(http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
		}
	case *http2.GoAwayFrame:
		if f.LastStreamID < h2Stream {
			return errH2Refused
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// onSettings applies the relay's SETTINGS and acknowledges them.
func (cc *h2Client) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		// A value out of range is a connection error (RFC 9113 6.5.2): a
		// SETTINGS_MAX_FRAME_SIZE of 0 from a hostile relay or CDN made
		// every write an endless run of empty DATA frames.
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// RFC 9113 6.9.2: the change applies to open streams, and one
			// that takes a window past 2^31-1 is a FLOW_CONTROL_ERROR.
			w := cc.sendStream + int64(s.Val) - cc.initialSend()
			if w > maxWindow {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			cc.sendStream = w
			cc.peerInitial = int64(s.Val)
		case http2.SettingMaxFrameSize:
			cc.peerFrame = int(s.Val)
		}
		return nil
	})
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if err != nil {
		return err
	}
	return cc.writeFrame(func() error { return cc.fr.WriteSettingsAck() })
}

// initialSend is the peer's SETTINGS_INITIAL_WINDOW_SIZE so far. Callers
// hold cc.mu.
func (cc *h2Client) initialSend() int64 {
	if cc.peerInitial == 0 {
		return h2DefaultWindow
	}
	return cc.peerInitial
}

func (cc *h2Client) onWindowUpdate(f *http2.WindowUpdateFrame) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch f.StreamID {
	case 0:
		cc.sendConn += int64(f.Increment)
	case h2Stream:
		cc.sendStream += int64(f.Increment)
	}
	cc.cond.Broadcast()
}

// onHeaders takes the response headers (1xx ignored) or trailers.
func (cc *h2Client) onHeaders(f *http2.MetaHeadersFrame) error {
	if f.StreamID != h2Stream {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if cc.body.started() {
		if f.StreamEnded() {
			cc.body.fail(io.EOF) // trailers end the body
		}
		return nil
	}
	code, err := statusOf(f)
	if err != nil {
		return err
	}
	if code < 200 {
		return nil // informational
	}
	h := make(http.Header)
	for _, hf := range f.RegularFields() {
		h.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	cc.body.start()
	if f.StreamEnded() {
		cc.body.fail(io.EOF)
	}
	cc.res <- &http.Response{
		Status: http.StatusText(code), StatusCode: code, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: h, Body: cc.body, ContentLength: -1,
	}
	return nil
}

// onData checks the receive windows and hands the payload to the body.
func (cc *h2Client) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	cc.mu.Lock()
	if n > cc.recvConn || (f.StreamID == h2Stream && n > cc.recvStream) {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	cc.recvConn -= n
	if f.StreamID == h2Stream {
		cc.recvStream -= n
	}
	cc.mu.Unlock()
	data := f.Data()
	if f.StreamID != h2Stream || !cc.body.started() || !cc.body.write(data) {
		cc.consumed(n, f.StreamID == h2Stream) // nobody will read it
	} else if pad := n - int64(len(data)); pad > 0 {
		cc.consumed(pad, true)
	}
	if f.StreamID == h2Stream && f.StreamEnded() {
		cc.body.fail(io.EOF)
	}
	return nil
}

// consumed returns n received bytes to the windows, with a WINDOW_UPDATE
// once half a window is owed, as Chromium does.
func (cc *h2Client) consumed(n int64, stream bool) {
	var incConn, incStream uint32
	cc.mu.Lock()
	cc.ackConn += n
	if cc.ackConn >= cc.winConn/2 {
		incConn, cc.recvConn, cc.ackConn = uint32(cc.ackConn), cc.recvConn+cc.ackConn, 0
	}
	if stream {
		cc.ackStream += n
		if cc.ackStream >= cc.winStream/2 {
			incStream, cc.recvStream, cc.ackStream = uint32(cc.ackStream), cc.recvStream+cc.ackStream, 0
		}
	}
	cc.mu.Unlock()
	if incConn == 0 && incStream == 0 {
		return
	}
	cc.writeFrame(func() error {
		if incConn > 0 {
			if err := cc.fr.WriteWindowUpdate(0, incConn); err != nil {
				return err
			}
		}
		if incStream > 0 {
			return cc.fr.WriteWindowUpdate(h2Stream, incStream)
		}
		return nil
	})
}

// h2Body is the response body: DATA payloads buffered until read, in
// chunks taken from bodyPool and given back once read, so that an idle
// session holds none. The receive window bounds the buffer.
type h2Body struct {
	cc     *h2Client
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []*bodyChunk
	err    error // io.EOF once the stream ended
	closed bool  // Close was called: data is dropped
	open   bool  // the response headers arrived
}

// bodyChunk is a piece of the body's buffer: data[r:w] is unread.
type bodyChunk struct {
	data [h2MaxFrame]byte
	r, w int
}

var bodyPool = sync.Pool{New: func() any { return new(bodyChunk) }}

func (b *h2Body) started() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

func (b *h2Body) start() {
	b.mu.Lock()
	b.open = true
	b.mu.Unlock()
}

// write queues a copy of p; false if the body no longer takes data.
func (b *h2Body) write(p []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.err != nil {
		return false
	}
	if len(p) == 0 {
		return true
	}
	for len(p) > 0 {
		var last *bodyChunk
		if n := len(b.buf); n > 0 && b.buf[n-1].w < len(b.buf[n-1].data) {
			last = b.buf[n-1]
		} else {
			last = bodyPool.Get().(*bodyChunk)
			b.buf = append(b.buf, last)
		}
		n := copy(last.data[last.w:], p)
		last.w += n
		p = p[n:]
	}
	b.cond.Broadcast()
	return true
}

// fail ends the body with err (io.EOF: a clean end) unless it ended.
func (b *h2Body) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

// Arrivals is transport.Arrivals for the session over this body: when
// bytes last arrived on the TCP connection, and whether a TLS record or
// an HTTP/2 frame has begun and not ended. The frame's count is read
// before the time: its bytes came through corkConn.Read, which set the
// time first.
func (b *h2Body) Arrivals() (time.Time, bool) {
	cc := b.cc
	if cc.below == nil {
		return time.Time{}, false
	}
	framing := cc.partial.Load() > 0
	last, mid := cc.below.arrivals()
	return last, mid || framing
}

// frameReads is the framer's reader: it counts what the framer has read
// of the frame it is reading into partial, which the read loop clears
// when the frame is whole.
type frameReads struct {
	r       io.Reader
	partial *atomic.Int64
}

func (f frameReads) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	f.partial.Add(int64(n))
	return n, err
}

// Read returns buffered data, then the error that ended the body.
func (b *h2Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) == 0 && b.err == nil && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyClosed
	}
	if len(b.buf) == 0 {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	n := 0
	for n < len(p) && len(b.buf) > 0 {
		c := b.buf[0]
		k := copy(p[n:], c.data[c.r:c.w])
		c.r += k
		n += k
		if c.r == c.w {
			b.drop()
		}
	}
	b.mu.Unlock()
	b.cc.consumed(int64(n), true)
	return n, nil
}

// drop gives the first chunk back to the pool. Callers hold b.mu.
func (b *h2Body) drop() {
	c := b.buf[0]
	c.r, c.w = 0, 0
	bodyPool.Put(c)
	b.buf[0] = nil
	b.buf = b.buf[1:]
	if len(b.buf) == 0 {
		b.buf = nil // the backing array goes too
	}
}

// Close drops buffered data and makes Read fail; the connection stays.
func (b *h2Body) Close() error {
	b.mu.Lock()
	b.closed = true
	for len(b.buf) > 0 {
		b.drop()
	}
	b.cond.Broadcast()
	b.mu.Unlock()
	return nil
}

var errBodyClosed = errors.New("https: read on closed response body")
