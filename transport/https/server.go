package https

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/httpsession"
)

// Name is the registry and descriptor name of this transport.
const Name = "https"

// Defaults for the zero fields of Transport.
//
// The timeouts blend into one population, nginx with its default
// configuration, the most common web server in front of the kind of site a
// relay shows: client_header_timeout 60 s (nginx's timer for the TLS
// handshake and the request header, running from the accept) and a
// keep-alive bound of at most 60 s (nginx: keepalive_timeout, 75 s by
// default, 65 s in the Debian and Ubuntu packages). So a silent, partial or
// idle client is closed no later than by nginx. In borrowed-site mode
// (Transport.Borrow) every connection that does not authenticate is the
// origin's, with the origin's own timeouts; these apply only to the relay's
// authenticated connections. The HTTP/2 preface timeout (10 s) is fixed by
// net/http.
const (
	// DefaultReadHeaderTimeout bounds the TLS handshake and the reading of
	// request headers (slowloris), from the accept: nginx's
	// client_header_timeout default.
	DefaultReadHeaderTimeout = 60 * time.Second
	// DefaultIdleTimeout closes keep-alive connections with no request in
	// flight, and HTTP/2 connections with no complete request header (a
	// HEADERS frame never finished is not a request yet). Connections
	// carrying a session are never idle. 60 s: no longer than nginx holds
	// an idle client.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMaxHeaderBytes caps request headers.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxHandshakes caps concurrent TLS handshakes per listener.
	DefaultMaxHandshakes = 256
	// DefaultMaxSessions caps concurrent relay sessions per listener.
	DefaultMaxSessions = httpsession.DefaultMaxSessions
)

// coverTimeout bounds the reading of a request that is not a session (the
// cover, a refusal) and the writing of its response: over HTTP/1.1 from
// when its reading begins (the read) and from when its headers have come
// (the write), over HTTP/2 from when its HEADERS are taken (net/http's
// ReadTimeout and WriteTimeout; they also bound the TLS handshake, as
// the smallest of them and ReadHeaderTimeout). Without it net/http waits
// with no deadline for a body the client never sends (it reads what is
// left of a body under 256 KiB before it answers) and for HTTP/2
// flow-control credit the client never gives; a stream waiting for
// either is open, so its connection never counts idle and the idle
// timeout never closes it. nginx ends such a request after
// client_body_timeout or send_timeout (60 s without progress); a cover
// site's requests and responses are small, so a whole-request bound this
// long cuts no real visitor. h3 bounds its cover's responses with the
// same (coverSendTimeout).
const coverTimeout = 5 * time.Minute

// Transport is the https transport. The zero value uses the defaults above
// and is ready to use.
type Transport struct {
	// ReadHeaderTimeout bounds the TLS handshake and request headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps request header size.
	MaxHeaderBytes int
	// MaxHandshakes caps concurrent TLS handshakes; a ClientHello beyond it
	// waits for a free slot until ReadHeaderTimeout.
	MaxHandshakes int
	// MaxSessions caps concurrent sessions; a valid session request beyond
	// it is served the cover site. Zero means DefaultMaxSessions.
	MaxSessions int
	// MaxConnsPerSource caps the TCP connections one source holds on
	// the listener, from the accept to the close; a connection beyond it
	// is reset at once (see connCap). Zero means twice the per-source
	// session cap (ListenConfig.MaxSessionsPerSource, or its default),
	// and no cap with ListenConfig.AllowUnbound (behind a CDN every
	// source is one of the CDN's addresses); negative means no cap.
	MaxConnsPerSource int
	// Borrow, when set, makes the listener a borrowed-site front
	// (transport/borrow): a connection whose ClientHello carries a valid
	// tag under the ListenConfig's Key reaches this listener's TLS and
	// session stack; every other connection, including a replayed tagged
	// hello, is spliced at the TCP level to Borrow.Origin, which then
	// answers it with its own TLS, certificate and timeouts. Observe and
	// Now default to the ListenConfig's.
	Borrow *borrow.Options

	// stockH2, set only by tests and benchmarks, serves every HTTP/2
	// connection, sessions too, with net/http's server (no front).
	stockH2 bool
	// frontWait, set only by tests, is the front's wait for a client's
	// first flight (see h2FirstFlightWait).
	frontWait time.Duration
	// coverWait, set only by tests, replaces coverTimeout.
	coverWait time.Duration
	// coverPerSource, set only by tests, replaces the constant of that
	// name (coverstreams.go); negative: no cap.
	coverPerSource int
	// frontClock, set only by tests, is the engine's clock instead of
	// time.Now (the receive windows' growth reads it). A pointer keeps
	// Transport comparable.
	frontClock *clock

	// wrap, set only by tests and benchmarks, wraps every accepted TCP
	// connection (to count the writes that reach the socket). A pointer
	// keeps Transport comparable.
	wrap *connWrap
}

// clock is a test's clock; see Transport.frontClock.
type clock struct{ now func() time.Time }

// connWrap wraps accepted connections; see Transport.wrap.
type connWrap struct{ wrap func(net.Conn) net.Conn }

var _ transport.Transport = (*Transport)(nil)

// Name returns "https".
func (t *Transport) Name() string { return Name }

func (t *Transport) readHeaderTimeout() time.Duration {
	return orDefault(t.ReadHeaderTimeout, DefaultReadHeaderTimeout)
}

func orDefault[T time.Duration | int](v, d T) T {
	if v > 0 {
		return v
	}
	return d
}

// NewHTTPServer returns the http.Server settings every https listener uses,
// serving h. It exists so that tests and tools can build a plain HTTPS
// server configured exactly like a relay listener. The reading of every
// request and the writing of its response are bounded (coverTimeout, as
// ReadTimeout and WriteTimeout: over HTTP/1.1 the connection's deadlines
// for each request, over HTTP/2 each stream's, armed as the stream
// begins); a handler that serves longer, as a session does, lifts the
// bound with http.ResponseController. A first version set the deadlines
// with http.ResponseController in a wrapping handler: over HTTP/2 that
// is a message to the connection's loop, which could come after the
// stream had ended, and 5 minutes later the stream was reset
// (RST_STREAM, INTERNAL_ERROR) long after its answer (a reviewer's find:
// 10 of 1,000 streams of 100 at once).
func (t *Transport) NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeaderTimeout(),
		ReadTimeout:       orDefault(t.coverWait, coverTimeout),
		WriteTimeout:      orDefault(t.coverWait, coverTimeout),
		IdleTimeout:       orDefault(t.IdleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    orDefault(t.MaxHeaderBytes, DefaultMaxHeaderBytes),
		ErrorLog:          log.New(io.Discard, "", 0),
		// Every TCP connection counts its sessions (HTTP/2 multiplexes).
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { return httpsession.WithConn(ctx) },
	}
}

// listener is a transport.Listener over an http.Server whose handler is
// the shared httpsession.Gate.
type listener struct {
	srv       *http.Server
	ln        net.Listener
	gate      *httpsession.Gate
	front     *h2Front // nil with Transport.stockH2
	conns     *connCap // nil: no cap on connections per source
	closeOnce sync.Once
	closeErr  error
	serveDone chan struct{}
}

// Listen starts an HTTPS listener on cfg.Addr. It serves the cover site to
// everybody and yields authenticated relay sessions through Accept.
func (t *Transport) Listen(ctx context.Context, cfg transport.ListenConfig) (transport.Listener, error) {
	l := &listener{serveDone: make(chan struct{})}
	binding := func(r *http.Request) []byte { return httpsession.Binding(r.TLS) }
	gate, err := httpsession.NewGate(Name, cfg, t.MaxSessions, binding, l.session)
	if err != nil {
		return nil, err
	}
	raw, err := t.listenTCP(ctx, cfg)
	if err != nil {
		return nil, err
	}
	l.ln, l.gate = raw, gate
	l.srv = t.NewHTTPServer(gate)
	handshakes := make(chan struct{}, orDefault(t.MaxHandshakes, DefaultMaxHandshakes))
	handshakeWait := t.readHeaderTimeout()
	// The TLS configuration is what a stock Go HTTPS server with this
	// certificate uses; ServeTLS adds ALPN h2 and http/1.1. The hook only
	// counts handshakes and never changes what goes on the wire.
	l.srv.TLSConfig = &tls.Config{
		Certificates: []tls.Certificate{cfg.Certificate},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if c, ok := hello.Conn.(*countedConn); ok {
				if err := c.acquire(hello.Context(), handshakeWait, gate.Closed()); err != nil {
					return nil, err
				}
			}
			return nil, nil
		},
	}
	// Behind a CDN (unbound tokens) one HTTP/2 connection carries many
	// users' requests: it stays the stock server's.
	if !t.stockH2 && !cfg.AllowUnbound {
		stock, err := newStockH2(t, l.srv.TLSConfig)
		if err != nil {
			raw.Close()
			return nil, &transport.Error{Class: transport.ClassInvalid, Op: "listen", Transport: Name, Err: err}
		}
		l.front = &h2Front{l: l, stock: stock, wait: t.frontWait}
		if t.frontClock != nil {
			l.front.now = t.frontClock.now
		}
		l.front.windows.reset(engineWindowBudget)
		l.front.key = gate.SourceKey() // so that a session's Source is the gate's
		if t.coverPerSource >= 0 {
			l.front.streams = newCoverStreams(orDefault(t.coverPerSource, coverPerSource), cfg.Observe)
		}
		l.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){"h2": l.front.serveTLS}
	}
	if n := t.connsPerSource(cfg); n > 0 {
		l.conns = newConnCap(gate.SourceKey(), n, cfg.Observe)
	}
	counting := &countingListener{Listener: raw, sem: handshakes, conns: l.conns, wrap: t.wrap}
	go func() {
		defer close(l.serveDone)
		gate.ServeEnded(l.srv.ServeTLS(counting, "", ""))
	}()
	return l, nil
}

// listenTCP opens the TCP listener, wrapped in a borrowed-site front when
// t.Borrow is set.
func (t *Transport) listenTCP(ctx context.Context, cfg transport.ListenConfig) (net.Listener, error) {
	var lc net.ListenConfig
	raw, err := lc.Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, httpsession.ListenError(Name, err)
	}
	if t.Borrow == nil {
		return raw, nil
	}
	opts := *t.Borrow
	if opts.Observe == nil {
		opts.Observe = cfg.Observe
	}
	if opts.Now == nil {
		opts.Now = cfg.Now
	}
	bl, err := borrow.Listen(raw, cfg.Key, opts)
	if err != nil {
		raw.Close()
		return nil, &transport.Error{Class: transport.ClassInvalid, Op: "listen", Transport: Name, Err: err}
	}
	return bl, nil
}

func (l *listener) Addr() net.Addr { return l.ln.Addr() }

func (l *listener) Accept(ctx context.Context) (transport.Conn, error) { return l.gate.Accept(ctx) }

// Close stops the server, closes every connection and session, and waits
// for session handlers to finish.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		l.gate.Shut()
		l.closeErr = l.srv.Close()
		l.gate.Wait()
		<-l.serveDone
	})
	return l.closeErr
}

// session runs one relay session until either side closes it.
func (l *listener) session(w http.ResponseWriter, r *http.Request, release func()) {
	defer release()
	rc := http.NewResponseController(w)
	// A session lives long: the bound on the request (coverTimeout) is for
	// the cover's.
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	rc.EnableFullDuplex() // HTTP/1.1; HTTP/2 is always full duplex
	httpsession.WriteAccepted(w)
	if err := rc.Flush(); err != nil {
		return
	}
	c := &serverConn{
		w: w, rc: rc, body: r.Body, src: l.gate.Source(r),
		local: l.ln.Addr(), remote: httpsession.HiddenAddr(Name),
		closing: make(chan struct{}), finished: make(chan struct{}),
	}
	defer close(c.finished)
	ctx := r.Context()
	if l.gate.Offer(ctx, c) {
		select {
		case <-c.closing:
		case <-l.gate.Closed():
		case <-ctx.Done():
		}
	}
	c.teardown()
}

// serverConn is the relay end of a session: the request body is the read
// side, the framed response body the write side.
type serverConn struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	body   io.ReadCloser
	local  net.Addr
	remote net.Addr
	src    [16]byte // what the relay counts the client as (transport.Sourced)

	rmu     sync.Mutex
	rclosed bool

	wmu      sync.Mutex
	wshut    bool // CloseWrite done
	wclosed  bool // handler finished or finishing: w must not be touched
	hdr      [recordHeaderLen]byte
	isClosed atomic.Bool

	closing   chan struct{}
	closeOnce sync.Once
	finished  chan struct{}
}

var errWriteAfterCloseWrite = errors.New("https: write after CloseWrite")

func (c *serverConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rclosed {
		return 0, net.ErrClosed
	}
	n, err := c.body.Read(p)
	if err != nil && err != io.EOF {
		if c.isClosed.Load() {
			return n, net.ErrClosed
		}
		select {
		case <-c.finished:
			return n, net.ErrClosed
		default:
		}
		return n, &net.OpError{Op: "read", Net: "https", Err: err}
	}
	return n, err
}

func (c *serverConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return 0, net.ErrClosed
	}
	if c.wshut {
		return 0, errWriteAfterCloseWrite
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxRecord)]
		if err := c.writeRecord(chunk); err != nil {
			return written, c.writeErr(err)
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// dataPiece is the most the server hands net/http's HTTP/2 writer at a
// time: it sends each write as one DATA frame (up to the client's
// SETTINGS_MAX_FRAME_SIZE, 16384 for a browser), and a 9-byte frame header
// plus dataPiece bytes fill one TLS record (16384 bytes of plaintext),
// which crypto/tls sends with one write to the socket. A 16384-byte
// payload would spill 9 bytes into a second record and write.
const dataPiece = 16384 - 9

// piecePool holds the buffers in which a record's header joins the start
// of its payload, so that they leave in one DATA frame; a session holds
// one only while it writes.
var piecePool = sync.Pool{New: func() any { return new([dataPiece]byte) }}

// writeRecord sends data as one record and flushes it. The record's
// header and the first bytes of data go out together from a pooled
// buffer, the rest in pieces straight from data; every piece is one DATA
// frame in one TLS record. Pieces from 4 KiB up bypass net/http's
// response buffer; a shorter last piece is copied there and flushed.
func (c *serverConn) writeRecord(data []byte) error {
	buf := piecePool.Get().(*[dataPiece]byte)
	binary.BigEndian.PutUint32(buf[:], uint32(len(data)))
	n := copy(buf[recordHeaderLen:], data)
	if _, err := c.w.Write(buf[:recordHeaderLen+n]); err != nil {
		return err // buf may still be queued in net/http: not reused
	}
	piecePool.Put(buf)
	for data = data[n:]; len(data) > 0; {
		k := min(len(data), dataPiece)
		if _, err := c.w.Write(data[:k]); err != nil {
			return err
		}
		data = data[k:]
	}
	return c.rc.Flush()
}

// writeErr reports a failed write: net.ErrClosed after Close.
func (c *serverConn) writeErr(err error) error {
	if c.isClosed.Load() {
		return net.ErrClosed
	}
	return &net.OpError{Op: "write", Net: "https", Err: err}
}

// CloseWrite sends the end-of-stream record; reads keep working.
func (c *serverConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return net.ErrClosed
	}
	if c.wshut {
		return nil
	}
	c.wshut = true
	binary.BigEndian.PutUint32(c.hdr[:], 0)
	_, err := c.w.Write(c.hdr[:])
	if err == nil {
		err = c.rc.Flush()
	}
	if err != nil {
		return c.writeErr(err)
	}
	return nil
}

// Close ends the session and waits until its handler has let go of the
// request and response.
func (c *serverConn) Close() error {
	c.closeOnce.Do(func() {
		c.isClosed.Store(true)
		close(c.closing)
	})
	<-c.finished
	return nil
}

// teardown runs on the handler goroutine before it returns: it unblocks
// and waits out pending reads and writes, after which w and the body are
// never touched again.
func (c *serverConn) teardown() {
	c.isClosed.Store(true)
	past := time.Unix(1, 0)
	if !c.wmu.TryLock() {
		// A write is blocked (peer not reading); abort it.
		c.rc.SetWriteDeadline(past)
		c.wmu.Lock()
	}
	c.wclosed = true
	c.wmu.Unlock()

	c.rc.SetReadDeadline(past)
	c.rmu.Lock()
	c.rclosed = true
	c.rmu.Unlock()
}

func (c *serverConn) LocalAddr() net.Addr  { return c.local }
func (c *serverConn) RemoteAddr() net.Addr { return c.remote }

// Source is what the relay counts the client as (transport.Sourced).
func (c *serverConn) Source() [16]byte { return c.src }

func (c *serverConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *serverConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *serverConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

var errNoDeadline = fmt.Errorf("https session: %w", transport.ErrDeadlineUnsupported)

// countingListener hands out countedConns so that TLS handshakes can be
// counted against the handshake semaphore, and connections against their
// source's cap: one over it is reset here and never reaches the server.
type countingListener struct {
	net.Listener
	sem   chan struct{}
	conns *connCap  // nil: no cap per source
	wrap  *connWrap // nil outside tests
}

func (l *countingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cc := &countedConn{sem: l.sem}
		if l.conns != nil {
			src, ok := l.conns.take(c.RemoteAddr())
			if !ok {
				resetConn(c)
				continue
			}
			cc.conns, cc.src = l.conns, src
			cc.counted.Store(true)
		}
		if l.wrap != nil {
			c = l.wrap.wrap(c)
		}
		cc.Conn = c
		return cc, nil
	}
}

// countedConn holds a handshake slot from the moment its ClientHello has
// been read until the server writes its handshake flight (by then the
// key exchange and the signature, the expensive part, are done) or the
// connection is closed, and counts among its source's connections (see
// connCap) until it is closed.
type countedConn struct {
	net.Conn
	sem     chan struct{}
	held    atomic.Bool
	conns   *connCap    // the account of its source's connections, or nil
	src     [16]byte    // its source there
	counted atomic.Bool // conns counts it: given back once, at the close
	k       writeCork   // the session engine's write coalescing (cork.go)
	rr      recordReads // reads that end where a TLS record ends (tlsreads.go)
}

var errBusy = errors.New("too many concurrent TLS handshakes")

func (c *countedConn) acquire(ctx context.Context, wait time.Duration, closed <-chan struct{}) error {
	if c.held.Load() {
		return nil
	}
	select {
	case c.sem <- struct{}{}:
		c.held.Store(true)
		return nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case c.sem <- struct{}{}:
		c.held.Store(true)
		return nil
	case <-t.C:
	case <-ctx.Done():
	case <-closed:
	}
	return errBusy
}

func (c *countedConn) release() {
	if c.held.CompareAndSwap(true, false) {
		<-c.sem
	}
}

// Read is crypto/tls's (one reader at a time): recordReads.read, written
// out so that an idle session's parked read has no frame more than it had
// without it (see h2Front.serveTLS).
func (c *countedConn) Read(p []byte) (int, error) {
	if c.rr.pending() {
		return c.rr.unstash(p)
	}
	n, err := c.Conn.Read(p)
	if k := c.rr.advance(p[:n]); k < n {
		return c.rr.keep(p, k, n, err)
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.release()
	return c.k.write(c.Conn, p)
}

func (c *countedConn) cork()         { c.k.cork() }
func (c *countedConn) last()         { c.k.last() }
func (c *countedConn) uncork() error { return c.k.uncork(c.Conn) }

func (c *countedConn) Close() error {
	c.release()
	c.k.release(c.Conn)
	err := c.Conn.Close()
	if c.counted.CompareAndSwap(true, false) {
		c.conns.release(c.src)
	}
	return err
}

// CloseWrite keeps half-close working through the wrapper.
func (c *countedConn) CloseWrite() error { return closeWrite(c.Conn) }
