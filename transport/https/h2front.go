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
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport/httpsession"
)

// The HTTP/2 front: how an https listener serves a TLS connection that
// negotiated h2.
//
// net/http's HTTP/2 server costs a session a goroutine handoff per frame
// written, a WINDOW_UPDATE pair per 4 KiB read and three goroutines. So an
// authenticated session runs on an HTTP/2 engine of the listener's own
// (h2session.go), and everything else on the stock server, untouched. The
// choice is made from the client's first flight, before the stock server
// sees the connection, doing what the stock server does meanwhile:
//
//  1. The front writes the stock server's SETTINGS (its first frames are
//     captured from the stock server itself when the listener starts),
//     unless a wrong or cut preface is there at once: the stock server
//     reads that before its first write ends, and closes.
//  2. It reads the client preface within the stock server's 10 s; a late
//     or wrong preface closes the connection, as the stock server does.
//  3. It writes the rest of the stock server's first frames (the
//     connection WINDOW_UPDATE) when the stock server would: after the
//     preface, or, when the client's SETTINGS came at once with the
//     preface, behind the ACK of that SETTINGS in one write.
//  4. It reads frames while they arrive at once (h2FirstFlightWait each):
//     one valid SETTINGS, which it ACKs as the stock server does, a
//     connection WINDOW_UPDATE and the ACK of its own SETTINGS, which the
//     stock server takes silently.
//  5. At the first HEADERS it decodes the request. A POST to the secret
//     path with a valid token that the listener admits
//     (httpsession.Gate.Admit) becomes a session on the engine.
//  6. At anything else, at any point (another frame type, a frame that
//     needs another answer, a pause in the flight, a HEADERS that is not
//     an admitted session), the connection goes to the stock server with
//     every byte read so far replayed in front of the rest. The stock
//     server begins by writing the frames the front already wrote; each
//     is dropped once, compared byte for byte, and everything else goes to
//     the client. From there the stock server serves the connection as it
//     serves any other.
//
// What can differ from the stock server alone: the order of its first few
// frames, which depends on its goroutines' timing (the front does what it
// does in the common case), and its timers after the preface (2 s for a
// first frame, the idle timeout), which start at the handover, at most
// h2FirstFlightWait after the last frame the front read.
const (
	// h2PrefaceTimeout is the stock server's limit for the client
	// preface.
	h2PrefaceTimeout = 10 * time.Second
	// h2AtOnce is how long the client's bytes count as there at once:
	// less than the stock server's first write takes.
	h2AtOnce = 50 * time.Microsecond
	// h2FirstFlightWait is how long the front waits for each next frame
	// of the first flight before it hands the connection to the stock
	// server. A client sends its first flight at once (preface, SETTINGS
	// and WINDOW_UPDATE in one TLS record, HEADERS in the next).
	h2FirstFlightWait = 3 * time.Millisecond
	// h2FirstFlightLimit bounds the whole first flight after the preface,
	// however the client dribbles it: the stock server's timers (2 s for
	// a first frame, the idle timeout) start at the handover, so this is
	// how late a prober can make them.
	h2FirstFlightLimit = 2 * h2FirstFlightWait
	// h2FirstFlightMax bounds the bytes the front reads before deciding.
	h2FirstFlightMax = 64 << 10
	// h2MaxSettings is the most entries the stock server takes in one
	// SETTINGS frame.
	h2MaxSettings = 100
	// h2MaxFirstFrames bounds the frames before the first HEADERS.
	h2MaxFirstFrames = 8
	// maxWindow is the largest flow-control window (RFC 9113 6.9.1).
	maxWindow = 1<<31 - 1
)

// Frame types and flags the front and the engine use (RFC 9113 6).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// stockH2 is what the front needs of net/http's bundled HTTP/2 server.
type stockH2 struct {
	// serve is its "unencrypted_http2" entry: it serves a connection
	// whose preface was read, taken from the net.Conn behind a *tls.Conn
	// (see handoff).
	serve func(*http.Server, *tls.Conn, http.Handler)
	// first is what it writes first on every connection: settings (its
	// SETTINGS), then rest (a connection WINDOW_UPDATE).
	first, settings, rest []byte
	// Parsed from first: the receive windows, the largest frame and the
	// header list size it allows, its HPACK table size.
	streamWindow, connWindow int64
	maxFrame, maxHeaderList  uint32
	tableSize                uint32
}

// newStockH2 gets the bundled HTTP/2 server as configured for srv's
// settings, and captures its first bytes.
func newStockH2(t *Transport, tlsCfg *tls.Config) (*stockH2, error) {
	shadow := t.NewHTTPServer(http.NotFoundHandler())
	shadow.TLSConfig = tlsCfg.Clone()
	// ServeTLS configures the bundled HTTP/2 server on shadow; the
	// listener ends it at once.
	shadow.ServeTLS(closedListener{}, "", "")
	serve := shadow.TLSNextProto["unencrypted_http2"]
	if serve == nil {
		return nil, errors.New("https: net/http has no HTTP/2 server to hand connections to")
	}
	s := &stockH2{serve: serve}
	first, err := s.capture(t)
	if err != nil {
		return nil, err
	}
	s.first = first
	if fs := splitFrames(first); len(fs) > 0 && fs[0][3] == frameSettings {
		s.settings = fs[0]
		s.rest = first[len(fs[0]):]
	} else {
		return nil, errors.New("https: the stock HTTP/2 server did not begin with SETTINGS")
	}
	if err := s.parseFirst(); err != nil {
		return nil, err
	}
	return s, nil
}

// capture runs the stock server on an in-memory connection that sends it a
// SETTINGS frame and a PING, and returns the frames it wrote before the
// PING ACK, but for the SETTINGS ACK: the frames it queues on every
// connection before it reads anything.
func (s *stockH2) capture(t *Transport) ([]byte, error) {
	srv := t.NewHTTPServer(http.NotFoundHandler())
	var in bytes.Buffer
	fr := http2.NewFramer(&in, nil)
	fr.WriteSettings()
	fr.WritePing(false, [8]byte{'p', 'o', 's', 't', 'e', 'r', 'n'})
	c := &captureConn{in: in.Bytes(), done: make(chan struct{})}
	go s.serve(srv, tls.Client(handoff{Conn: c, inner: c}, nil), http.NotFoundHandler())
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.Close()
		return nil, errors.New("https: the stock HTTP/2 server did not answer a PING")
	}
	c.Close()
	return c.first, nil
}

// parseFirst reads the windows and limits from the captured first bytes.
func (s *stockH2) parseFirst() error {
	s.streamWindow, s.connWindow = h2DefaultWindow, h2DefaultWindow
	s.maxFrame, s.maxHeaderList, s.tableSize = 16384, 1<<20, 4096
	b := s.first
	for len(b) > 0 {
		if len(b) < h2FrameHeader {
			return errors.New("https: stock HTTP/2 first bytes cut")
		}
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		typ, stream := b[3], binary.BigEndian.Uint32(b[5:9])&maxWindow
		if len(b) < h2FrameHeader+n {
			return errors.New("https: stock HTTP/2 first bytes cut")
		}
		p := b[h2FrameHeader : h2FrameHeader+n]
		switch {
		case typ == frameSettings:
			for ; len(p) >= 6; p = p[6:] {
				v := binary.BigEndian.Uint32(p[2:])
				switch http2.SettingID(binary.BigEndian.Uint16(p)) {
				case http2.SettingInitialWindowSize:
					s.streamWindow = int64(v)
				case http2.SettingMaxFrameSize:
					s.maxFrame = v
				case http2.SettingMaxHeaderListSize:
					s.maxHeaderList = v
				case http2.SettingHeaderTableSize:
					s.tableSize = v
				}
			}
		case typ == frameWindowUpdate && stream == 0 && n == 4:
			s.connWindow += int64(binary.BigEndian.Uint32(p) & maxWindow)
		}
		b = b[h2FrameHeader+n:]
	}
	return nil
}

// captureConn feeds the stock server its input and records its output up
// to the SETTINGS ACK.
type captureConn struct {
	mu     sync.Mutex
	in     []byte
	out    []byte
	first  []byte
	done   chan struct{}
	closed bool
	wake   chan struct{}
	once   sync.Once
}

func (c *captureConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.in) > 0 {
		n := copy(p, c.in)
		c.in = c.in[n:]
		c.mu.Unlock()
		return n, nil
	}
	if c.wake == nil {
		c.wake = make(chan struct{})
	}
	wake, closed := c.wake, c.closed
	c.mu.Unlock()
	if !closed {
		<-wake
	}
	return 0, io.EOF
}

func (c *captureConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first != nil {
		return len(p), nil
	}
	c.out = append(c.out, p...)
	// Everything before the PING ACK but the SETTINGS ACK: the frames it
	// queued before it read anything.
	var first []byte
	for b := c.out; len(b) >= h2FrameHeader; {
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		if len(b) < h2FrameHeader+n {
			break
		}
		typ, ack := b[3], b[4]&flagAck != 0
		switch {
		case typ == framePing && ack:
			c.first = first
			if c.first == nil {
				c.first = []byte{}
			}
			c.once.Do(func() { close(c.done) })
			return len(p), nil
		case typ == frameSettings && ack:
		default:
			first = append(first, b[:h2FrameHeader+n]...)
		}
		b = b[h2FrameHeader+n:]
	}
	return len(p), nil
}

func (c *captureConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		if c.wake != nil {
			close(c.wake)
		}
	}
	return nil
}

func (c *captureConn) LocalAddr() net.Addr                { return httpsession.HiddenAddr(Name) }
func (c *captureConn) RemoteAddr() net.Addr               { return httpsession.HiddenAddr(Name) }
func (c *captureConn) SetDeadline(t time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(t time.Time) error { return nil }

// closedListener is a net.Listener that is closed from the start.
type closedListener struct{}

func (closedListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (closedListener) Close() error              { return nil }
func (closedListener) Addr() net.Addr            { return httpsession.HiddenAddr(Name) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// refusedTLS reports whether the stock HTTP/2 server refuses a connection
// for its TLS: a version below 1.2, or a TLS 1.2 suite RFC 9113 forbids.
// Of the suites a Go server negotiates, HTTP/2 allows only ECDHE with an
// AEAD in TLS 1.2 (the CBC suites are on its list of bad ones, and so is
// every suite without ECDHE).
func refusedTLS(cs tls.ConnectionState) bool {
	switch {
	case cs.Version >= tls.VersionTLS13:
		return false
	case cs.Version < tls.VersionTLS12:
		return true
	}
	switch cs.CipherSuite {
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return false
	}
	return true
}

// handoff carries the connection the stock server is to serve through the
// *tls.Conn its "unencrypted_http2" entry takes (net/http's own way of
// handing it a connection whose preface it read).
type handoff struct {
	net.Conn
	inner net.Conn
}

// UnencryptedNetConn is what the bundled server asks the *tls.Conn's
// NetConn for.
func (h handoff) UnencryptedNetConn() net.Conn { return h.inner }

// replayConn is the TLS connection as the stock server sees it after the
// front: reads return the bytes the front read first; of what it writes,
// the frames the front already sent are dropped, once each. They are its
// first frames, but not always in the front's order: the stock server
// moves a SETTINGS ACK ahead of frames it queued earlier.
//
// It also counts the connection's open streams against its source's cap
// (streams; coverstreams.go).
type replayConn struct {
	*tls.Conn
	replay  []byte       // read side only
	swallow [][]byte     // write side only: frames still to drop
	partial []byte       // write side only: a frame not yet whole
	streams *connStreams // nil: not counted
}

func (c *replayConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if len(c.replay) > 0 {
		n = copy(p, c.replay)
		c.replay = c.replay[n:]
		if len(c.replay) == 0 {
			c.replay = nil // the first flight's buffer goes
		}
	} else {
		n, err = c.Conn.Read(p)
	}
	if c.streams == nil {
		return n, err
	}
	if !c.streams.read(p[:n]) {
		return 0, errCoverStreams
	}
	if err != nil { // the stock server is done with the connection
		c.streams.end()
	}
	return n, err
}

func (c *replayConn) Write(p []byte) (int, error) {
	if c.streams != nil {
		c.streams.wrote(p)
	}
	if len(c.swallow) == 0 && len(c.partial) == 0 {
		return c.Conn.Write(p)
	}
	c.partial = append(c.partial, p...)
	var out []byte
	b := c.partial
	for len(c.swallow) > 0 && len(b) >= h2FrameHeader {
		n := h2FrameHeader + (int(b[0])<<16 | int(b[1])<<8 | int(b[2]))
		if len(b) < n {
			break
		}
		if i := slices.IndexFunc(c.swallow, func(f []byte) bool { return bytes.Equal(f, b[:n]) }); i >= 0 {
			c.swallow = slices.Delete(c.swallow, i, i+1)
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	if len(c.swallow) == 0 {
		out = append(out, b...)
		b = nil
	}
	c.partial = append(c.partial[:0], b...)
	if len(c.partial) == 0 {
		c.partial = nil
	}
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// splitFrames returns the frames of b, which holds whole frames (a cut
// last one is returned as it is).
func splitFrames(b []byte) [][]byte {
	var fs [][]byte
	for len(b) > 0 {
		n := len(b)
		if n >= h2FrameHeader {
			n = min(n, h2FrameHeader+(int(b[0])<<16|int(b[1])<<8|int(b[2])))
		}
		fs = append(fs, b[:n:n])
		b = b[n:]
	}
	return fs
}

// h2Front serves the h2 connections of one listener.
type h2Front struct {
	l     *listener
	stock *stockH2
	// wait replaces h2FirstFlightWait and h2FirstFlightLimit (tests, so
	// that a loaded machine does not send a session the stock way).
	wait time.Duration
	// Counters for tests and benchmarks: sessions on the engine,
	// connections handed over, and of those, session requests the gate
	// declined after the front decoded them.
	engine, handed, declined atomic.Int64
	// windows is the receive window the engine's sessions may still take
	// past the stock server's (h2session.go, resizeWindowLocked), shared
	// out by source (windowPool).
	windows windowPool
	// key hashes a client's address into its source for windows, as the
	// listener's per-source limits do; random per front, in memory only.
	key [32]byte
	// now replaces time.Now in clock (tests).
	now func() time.Time
	// streams caps the streams a source holds open on the stock server
	// (coverstreams.go); nil: no cap.
	streams *coverStreams
}

// engineEpoch is what the engine's clock counts from.
var engineEpoch = time.Now()

// clock is the time since engineEpoch (a monotonic reading, unless a test
// set f.now).
func (f *h2Front) clock() time.Duration {
	if f.now != nil {
		return f.now().Sub(engineEpoch)
	}
	return time.Since(engineEpoch)
}

// windowPool is the window the engine's sessions may take past the stock
// server's. A source (its address as transport.SourceHash counts it) takes
// while at least half of the pool would be left; past that, only while it
// holds nothing of it yet or stays within a quarter of it. So one source
// holds at most half of the pool (or, had it nothing when the pool was
// past half, one window's extra or a quarter, whichever is more): one
// source alone cannot keep the others from growing a session, though
// three together can spend the pool; before, one source could hold all of
// it, and the others then uploaded within the stock windows.
type windowPool struct {
	mu   sync.Mutex
	size int64
	left int64
	held map[[32]byte]int64 // by source, what its sessions took
}

// reset makes the pool n bytes, none of it taken.
func (p *windowPool) reset(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.size, p.left, p.held = n, n, make(map[[32]byte]int64)
}

// take takes n bytes for a session of src, if the pool and src's share
// hold them.
func (p *windowPool) take(src [32]byte, n int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n > p.left {
		return false
	}
	if mine := p.held[src]; p.left-n < p.size/2 && mine > 0 && mine+n > p.size/4 {
		return false
	}
	p.left -= n
	p.held[src] += n
	return true
}

// give gives back n bytes a session of src took.
func (p *windowPool) give(src [32]byte, n int64) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.left += n
	if v := p.held[src] - n; v > 0 {
		p.held[src] = v
	} else {
		delete(p.held, src)
	}
}

// available returns what is left of the pool.
func (p *windowPool) available() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.left
}

// firstFlight is the front's state while it reads the first flight.
type firstFlight struct {
	tc       net.Conn  // the TLS connection
	buf      []byte    // bytes read after the preface
	wrote    [][]byte  // frames written to the client
	sendWin  int64     // the client's connection window for our DATA
	acks     int       // ACKs of our SETTINGS seen
	settings bool      // the client's SETTINGS seen
	atOnce   bool      // the preface was there at once
	sawFirst bool      // a first frame (SETTINGS or its ACK) was read
	limit    time.Time // the first flight's end
	restSent bool      // the stock server's first frames are all out
	peer     peerSettings
	// due is the SETTINGS ACK (and the rest of the stock server's first
	// frames) owed for a SETTINGS that came at once: written before the
	// front waits for more, or admits the session, but not if a frame
	// already there sends the connection to the stock server, which then
	// answers in its own order (takeSettings).
	due []byte
}

// flushDue writes what is owed for the client's SETTINGS, if anything.
func (ff *firstFlight) flushDue() bool {
	due := ff.due
	ff.due = nil
	return ff.write(due)
}

// peerSettings are the client's SETTINGS the engine needs.
type peerSettings struct {
	initialWindow int64
	maxFrame      int
}

// serveTLS is the listener's TLSNextProto "h2" entry.
//
// Its goroutine (net/http's, which did the TLS handshake) runs the
// session's read loop, so what is on its stack while an idle session
// waits for a record decides the stack the session holds: the runtime
// halves a goroutine's stack at a collection only while less than a
// quarter of it (less 800 bytes of guard) is in use, and the handshake
// grows it to 16 KiB. serveTLS therefore keeps no locals of its own
// across run (the admission's 880 bytes are in admit's frame, gone by
// then), and the read loop reads through no extra layers: parked, the
// goroutine uses 2,976 bytes, and the stack settles at 8 KiB instead of
// 16. The margin is 320 bytes (2,976 + 800 < 4,096): TestIdleEngineSessionStack
// fails when anything on this path deepens it.
func (f *h2Front) serveTLS(hs *http.Server, tc *tls.Conn, h http.Handler) {
	if s, ctx, left, done := f.admit(hs, tc, h); s != nil {
		s.run(ctx, left, done)
	}
}

// admit reads the client's first flight and either hands the connection
// to the stock server (and returns a nil session once it has served it)
// or returns the admitted session, with what run takes.
func (f *h2Front) admit(hs *http.Server, tc *tls.Conn, h http.Handler) (*h2Session, context.Context, []byte, func()) {
	ff := &firstFlight{tc: tc, sendWin: h2DefaultWindow,
		peer: peerSettings{initialWindow: h2DefaultWindow, maxFrame: h2MaxFrame}}
	if refusedTLS(tc.ConnectionState()) {
		// The stock server refuses the connection before it reads or
		// writes anything else (GOAWAY INADEQUATE_SECURITY).
		f.handOver(hs, h, ff)
		return nil, nil, nil, nil
	}
	if !f.preface(ff) {
		tc.Close() // what the stock server does
		return nil, nil, nil, nil
	}
	req, end, first, ok := f.readFirstFlight(ff)
	tc.SetReadDeadline(time.Time{})
	if !ok {
		f.handOver(hs, h, ff)
		return nil, nil, nil, nil
	}
	bc, _ := h.(interface{ BaseContext() context.Context })
	if bc == nil {
		f.handOver(hs, h, ff)
		return nil, nil, nil, nil
	}
	r, ok := f.request(bc.BaseContext(), tc.ConnectionState(), tc.RemoteAddr().String(), req)
	if !ok {
		f.handOver(hs, h, ff)
		return nil, nil, nil, nil
	}
	done, ok := f.l.gate.Admit(r)
	if !ok {
		f.declined.Add(1)
		f.handOver(hs, h, ff)
		return nil, nil, nil, nil
	}
	f.engine.Add(1)
	return newH2Session(f, tc, req.stream, first, ff), bc.BaseContext(), ff.buf[end:], done
}

// preface writes what the stock server writes first and reads the client
// preface, as the stock server does; it reports whether the preface came.
//
// The stock server flushes its SETTINGS from one goroutine while another
// reads the preface, and writes nothing more before the preface has come.
// The front looks whether the preface is there at once (h2AtOnce, less
// than the flush takes): a wrong or cut one closes the connection with
// nothing written, as the stock server's reader then wins; else it writes
// the SETTINGS.
func (f *h2Front) preface(ff *firstFlight) bool {
	var preface [len(http2.ClientPreface)]byte
	deadline := time.Now().Add(h2PrefaceTimeout)
	ff.tc.SetReadDeadline(time.Now().Add(h2AtOnce))
	k, err := io.ReadFull(ff.tc, preface[:])
	if (err != nil && !isTimeout(err)) || (err == nil && string(preface[:]) != http2.ClientPreface) {
		return false
	}
	if !ff.write(f.stock.settings) {
		return false
	}
	ff.atOnce = err == nil
	if err != nil {
		ff.tc.SetReadDeadline(deadline)
		if _, err = io.ReadFull(ff.tc, preface[k:]); err != nil {
			return false
		}
	}
	return string(preface[:]) == http2.ClientPreface
}

// write sends frames to the client on the stock server's behalf.
func (ff *firstFlight) write(frames []byte) bool {
	if len(frames) == 0 {
		return true
	}
	if _, err := ff.tc.Write(frames); err != nil {
		return false
	}
	ff.wrote = append(ff.wrote, splitFrames(frames)...)
	return true
}

// handOver gives the connection to the stock server.
func (f *h2Front) handOver(hs *http.Server, h http.Handler, ff *firstFlight) {
	f.handed.Add(1)
	tc := ff.tc.(*tls.Conn)
	tc.SetReadDeadline(time.Time{})
	rc := &replayConn{Conn: tc, replay: ff.buf, swallow: ff.wrote}
	rc.streams = f.countStreams(tc)
	f.stock.serve(hs, tls.Client(handoff{Conn: tc, inner: rc}, nil), h)
	// serve returns when the connection is done. Its streams are given
	// back here too: after a frame error that ends the connection (a
	// PING of 7 bytes, bad HPACK) the stock server sends GOAWAY and
	// closes it without reading again, so no Read sees the end (a
	// reviewer's find: an address that sent such frames kept its streams
	// counted for good, and was reset at its next HEADERS).
	if rc.streams != nil {
		rc.streams.end()
	}
}

// h2Request is the first request of a connection, as the front decoded it.
type h2Request struct {
	stream uint32
	fields []hpack.HeaderField
}

// readFirstFlight reads frames up to the first HEADERS. It returns the
// request, the offset in ff.buf just past the HEADERS frame, and a copy
// of the request's header block (the HPACK state the engine continues
// with; see h2Session.decoder); ok is false if the connection must go to
// the stock server.
func (f *h2Front) readFirstFlight(ff *firstFlight) (req h2Request, end int, first []byte, ok bool) {
	wait, limit := h2FirstFlightWait, h2FirstFlightLimit
	if f.wait > 0 {
		wait, limit = f.wait, f.wait
	}
	ff.limit = time.Now().Add(limit)
	if !ff.atOnce && !f.sendRest(ff) {
		return req, 0, nil, false
	}
	off := 0
	for frames := 0; frames <= h2MaxFirstFrames; frames++ {
		w := wait
		if !ff.restSent {
			w = h2AtOnce
		}
		if len(ff.buf) < off+h2FrameHeader && !ff.flushDue() { // about to wait
			return req, 0, nil, false
		}
		if !ff.fill(off+h2FrameHeader, w) {
			if ff.restSent || !f.sendRest(ff) || !ff.fill(off+h2FrameHeader, wait) {
				return req, 0, nil, false
			}
		}
		b := ff.buf[off:]
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		typ, flags, stream := b[3], b[4], binary.BigEndian.Uint32(b[5:9])&maxWindow
		bad := n > ff.firstFrameMax(typ, flags, stream) || off+h2FrameHeader+n > h2FirstFlightMax
		if !bad && len(ff.buf) < off+h2FrameHeader+n && !ff.flushDue() { // about to wait
			return req, 0, nil, false
		}
		if bad || !ff.fill(off+h2FrameHeader+n, wait) {
			// The stock server takes it from here, its first frames
			// still due if they are: it then queues the WINDOW_UPDATE
			// behind its SETTINGS flush and mostly answers the frame
			// first (a GOAWAY, which drops it), a race the front must
			// not decide (it wrote the WINDOW_UPDATE every time).
			return req, 0, nil, false
		}
		p := ff.buf[off+h2FrameHeader : off+h2FrameHeader+n]
		off += h2FrameHeader + n
		ff.sawFirst = true
		if typ == frameSettings && flags&flagAck == 0 {
			if !f.takeSettings(ff, p) {
				return req, 0, nil, false
			}
			continue
		}
		var inc int64
		if typ == frameWindowUpdate { // checked before anything owed goes out
			if len(p) != 4 {
				return req, 0, nil, false
			}
			if inc = int64(binary.BigEndian.Uint32(p) & maxWindow); inc == 0 || ff.sendWin+inc > maxWindow {
				return req, 0, nil, false
			}
		}
		if !f.sendRest(ff) {
			return req, 0, nil, false
		}
		switch typ {
		case frameSettings:
			ff.acks++
		case frameWindowUpdate:
			ff.sendWin += inc
		case frameHeaders:
			req, first, ok = f.decodeRequest(p, flags, stream)
			if ok && !ff.flushDue() {
				return req, 0, nil, false
			}
			return req, off, first, ok
		}
	}
	return req, 0, nil, false
}

// sendRest writes the rest of the stock server's first frames, once.
//
// After the preface the stock server's loop starts and sends them (the
// connection WINDOW_UPDATE queued behind the SETTINGS) in a write of its
// own, then answers frames. But when the client's SETTINGS is there at
// once with the preface, it is read while the SETTINGS flush still runs,
// and the ACK goes out first, in one write with the rest (takeSettings).
func (f *h2Front) sendRest(ff *firstFlight) bool {
	if ff.restSent {
		return ff.flushDue()
	}
	ff.restSent = true
	return ff.write(f.stock.rest)
}

// firstFrameMax is the largest payload the front takes for a frame of
// the first flight, -1 for a frame it does not take. The stock server
// takes a SETTINGS (or its ACK) first, and no other frame; the front
// takes one SETTINGS, one ACK, connection WINDOW_UPDATEs and a HEADERS,
// of the sizes a browser sends.
func (ff *firstFlight) firstFrameMax(typ, flags byte, stream uint32) int {
	switch {
	case typ == frameSettings && stream == 0 && flags&flagAck == 0 && !ff.settings:
		return 6 * h2MaxSettings
	case typ == frameSettings && stream == 0 && flags&flagAck != 0 && ff.acks == 0:
		return 0
	case !ff.sawFirst:
		return -1
	case typ == frameWindowUpdate && stream == 0:
		return 4
	case typ == frameHeaders && stream%2 == 1 && flags&flagEndHeaders != 0 && flags&flagEndStream == 0:
		return h2MaxFrame
	}
	return -1
}

// takeSettings takes the client's SETTINGS and ACKs it as the stock
// server does (with the rest of its first frames if they are still due);
// false if the stock server would not simply ACK it. The ACK is owed
// (ff.due) until the front waits for more or admits the session: a bad
// frame right behind it, there at once, would have the stock server
// answer that first and mostly drop its own queued frames.
func (f *h2Front) takeSettings(ff *firstFlight, p []byte) bool {
	// One only: the stock server may answer two with one ACK.
	ff.settings = true
	if !ff.peer.apply(p) {
		return false
	}
	ack := appendFrameHeader(nil, 0, frameSettings, flagAck, 0)
	if !ff.restSent {
		ff.restSent = true
		ack = append(ack, f.stock.rest...)
	}
	ff.due = ack
	return true
}

// decodeRequest decodes the first request's header block and returns a
// copy of the block: the engine keeps that, not a decoder, and rebuilds
// the connection's decoder from it if another header block ever comes
// (h2Session.decoder). The copy also lets the first flight's read buffer
// (4 KiB) go when the session starts: block is a slice of it.
func (f *h2Front) decodeRequest(p []byte, flags byte, stream uint32) (h2Request, []byte, bool) {
	block, ok := headerBlock(p, flags)
	if !ok {
		return h2Request{}, nil, false
	}
	first := bytes.Clone(block)
	fields, ok := decodeBounded(f.newDecoder(), first, int(f.stock.maxHeaderList))
	if !ok {
		return h2Request{}, nil, false
	}
	return h2Request{stream: stream, fields: fields}, first, true
}

// decodeBounded decodes a complete header block into at most max bytes of
// fields as HTTP/2 counts them (name, value and 32 per field), as the
// stock server's framer does: past that it stops keeping fields (the
// decoder still reads the block, keeping its table in step, but hands out
// no more strings). ok is false for a block that does not decode or whose
// fields go past max. Counting after the whole list was decoded let one
// 16 KB HEADERS frame, a 4 KB name put in the table and referenced
// twelve thousand times a byte each, expand to 50 MB of fields before any
// check: about 100 MB allocated and half a second of CPU per frame, where
// the stock server stops at its limit and answers 431 at once.
func decodeBounded(dec *hpack.Decoder, block []byte, max int) (fields []hpack.HeaderField, ok bool) {
	size, over := 0, false
	dec.SetEmitFunc(func(hf hpack.HeaderField) {
		if size += int(hf.Size()); size > max {
			over, fields = true, nil
			dec.SetEmitEnabled(false)
			return
		}
		fields = append(fields, hf)
	})
	defer dec.SetEmitFunc(func(hpack.HeaderField) {})
	if _, err := dec.Write(block); err != nil {
		return nil, false
	}
	if err := dec.Close(); err != nil || over {
		return nil, false
	}
	return fields, true
}

// newDecoder returns an HPACK decoder with the stock server's limits.
func (f *h2Front) newDecoder() *hpack.Decoder {
	dec := hpack.NewDecoder(f.stock.tableSize, nil)
	dec.SetMaxStringLength(int(f.stock.maxHeaderList))
	return dec
}

// fill reads until ff.buf holds n bytes, waiting at most wait for each
// read and never past the first flight's limit. It reports whether it
// got them.
func (ff *firstFlight) fill(n int, wait time.Duration) bool {
	for len(ff.buf) < n {
		d := time.Now().Add(wait)
		if !ff.limit.IsZero() && d.After(ff.limit) {
			d = ff.limit
		}
		ff.tc.SetReadDeadline(d)
		if len(ff.buf) == cap(ff.buf) {
			ff.buf = append(ff.buf, make([]byte, 4096)...)[:len(ff.buf)]
		}
		k, err := ff.tc.Read(ff.buf[len(ff.buf):cap(ff.buf)])
		ff.buf = ff.buf[:len(ff.buf)+k]
		if err != nil && len(ff.buf) < n {
			return false
		}
	}
	return true
}

// apply takes a client SETTINGS frame's payload. It reports false for
// anything the stock server would not simply ACK: a malformed or large
// frame, a repeated setting, a value out of range.
func (ps *peerSettings) apply(p []byte) bool {
	if len(p)%6 != 0 || len(p) > 6*h2MaxSettings {
		return false
	}
	for i := 0; i < len(p); i += 6 {
		id, v := binary.BigEndian.Uint16(p[i:]), binary.BigEndian.Uint32(p[i+2:])
		for j := 0; j < i; j += 6 {
			if binary.BigEndian.Uint16(p[j:]) == id {
				return false
			}
		}
		switch http2.SettingID(id) {
		case http2.SettingEnablePush, http2.SettingEnableConnectProtocol:
			if v > 1 {
				return false
			}
		case http2.SettingInitialWindowSize:
			if v > maxWindow {
				return false
			}
			ps.initialWindow = int64(v)
		case http2.SettingMaxFrameSize:
			if v < 16384 || v > 1<<24-1 {
				return false
			}
			ps.maxFrame = int(v)
		}
	}
	return true
}

// headerBlock returns the header block fragment of a HEADERS payload.
func headerBlock(p []byte, flags byte) ([]byte, bool) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// request builds the *http.Request the gate decides on from the first
// HEADERS; ok is false if the fields are not a well-formed request.
func (f *h2Front) request(ctx context.Context, state tls.ConnectionState, remote string, req h2Request) (*http.Request, bool) {
	var method, path, authority, scheme string
	hdr := make(http.Header, len(req.fields))
	var cookies []string
	size := 0
	for _, hf := range req.fields {
		size += len(hf.Name) + len(hf.Value) + 32
		if strings.HasPrefix(hf.Name, ":") {
			switch hf.Name {
			case ":method":
				method = hf.Value
			case ":path":
				path = hf.Value
			case ":authority":
				authority = hf.Value
			case ":scheme":
				scheme = hf.Value
			default:
				return nil, false
			}
			continue
		}
		if hf.Name != strings.ToLower(hf.Name) {
			return nil, false
		}
		if hf.Name == "cookie" {
			cookies = append(cookies, hf.Value)
			continue
		}
		hdr.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
	}
	if size > int(f.stock.maxHeaderList) || method == "" || path == "" || scheme != "https" {
		return nil, false
	}
	if len(cookies) > 0 {
		hdr.Set("Cookie", strings.Join(cookies, "; "))
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, false
	}
	r := &http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr,
		Host: authority, RemoteAddr: remote, RequestURI: path, TLS: &state,
		ContentLength: -1,
	}
	return r.WithContext(ctx), true
}
