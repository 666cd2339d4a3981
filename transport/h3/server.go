package h3

import (
	"cmp"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// quicConnKey is the request context key under which the server stores the
// request's QUIC connection (through http3.Server.ConnContext).
type quicConnKey struct{}

// connEntryKey is the request context key of the connection's account in
// the listener's connection limits (conns.go).
type connEntryKey struct{}

// discardLogger keeps quic-go's http3 package from logging through
// slog.Default: its messages may carry client addresses.
var discardLogger = slog.New(slog.DiscardHandler)

// serverQUICConfig is the QUIC configuration of the listener. What a client
// can see of it matches a stock http3.Server (quic-go defaults, 0-RTT
// allowed), except that the growth of a connection's receive window past
// the initial one comes from windows (windows.go): while a pool is
// spent, the connections drawing on it keep the windows they have.
func serverQUICConfig(windows *windowBudget) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:          HandshakeIdleTimeout,
		MaxIdleTimeout:                MaxIdleTimeout,
		MaxIncomingStreams:            MaxIncomingStreams,
		Allow0RTT:                     true,
		AllowConnectionWindowIncrease: windows.allow,
	}
}

// listener is a transport.Listener over an http3.Server whose handler is
// the shared httpsession.Gate.
type listener struct {
	srv     *http3.Server
	udp     *net.UDPConn
	qt      *quic.Transport
	gate    *httpsession.Gate
	windows *windowBudget
	conns   *connLimiter
	headers *headerBudget
	streams sync.Map      // *quic.Conn → *connStreams, while serveConn serves it
	hs      *handshakes   // nil without the flood defence
	open    bool          // Transport.openSessionConns
	early   atomic.Int64  // connections the HTTP/3 server took (tests)
	served  chan struct{} // closed when serve returned
	ctx     context.Context
	stop    context.CancelFunc // ends ctx: the listener is closing

	closeOnce sync.Once
	closeErr  error
}

// Listen starts an HTTP/3 server on cfg.Addr (UDP) that serves the cover site
// and yields authenticated sessions. ctx only bounds the setup.
func (t *Transport) Listen(ctx context.Context, cfg transport.ListenConfig) (transport.Listener, error) {
	l := &listener{served: make(chan struct{}), headers: newHeaderBudget(orDefault(t.HeaderBudget, DefaultHeaderBudget)), open: t.openSessionConns}
	l.ctx, l.stop = context.WithCancel(context.Background())
	gate, err := httpsession.NewGate(Name, cfg, t.MaxSessions, binding, l.session)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, transport.Classify("listen", Name, err)
	}
	uaddr, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, httpsession.ListenError(Name, err)
	}
	udp, err := net.ListenUDP("udp", uaddr)
	if err != nil {
		return nil, httpsession.ListenError(Name, err)
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cfg.Certificate},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{http3.NextProtoH3},
	}
	l.udp, l.gate = udp, gate
	l.qt, l.hs = t.quicTransport(udp, cfg.Key)
	perSource := orDefault(cfg.MaxSessionsPerSource, httpsession.DefaultMaxSessionsPerSource)
	l.conns = newConnLimiter(orDefault(t.MaxConnsPerSource, 2*perSource),
		orDefault(t.MaxConns, defaultMaxConns(orDefault(t.MaxSessions, DefaultMaxSessions))),
		cmp.Or(t.IdleTimeout, DefaultIdleTimeout), cfg.Observe)
	l.qt.ConnContext = l.conns.connContext(l.qt.ConnContext)
	// The window pools share out by source, as the limits count them.
	l.windows = newWindowBudget(orDefault64(t.WindowBudget, DefaultWindowBudget), l.conns.sourceOf)
	quicConf := serverQUICConfig(l.windows)
	ln, err := l.qt.ListenEarly(http3.ConfigureTLSConfig(tlsConf), quicConf)
	if err != nil {
		l.qt.Close()
		udp.Close()
		return nil, httpsession.ListenError(Name, err)
	}
	// Only the connections' handling of http3.Server is used (serve,
	// accept.go): what the server sends and how it answers.
	l.srv = &http3.Server{
		TLSConfig:  tlsConf,
		QUICConfig: quicConf,
		Handler:    http.HandlerFunc(l.serveHTTP),
		// No IdleTimeout: the connections' account closes idle ones
		// (conns.go), as http3 would, without keeping a closed one.
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			l.early.Add(1)
			if t.slotAtTake {
				handshakeDone(c)
			}
			e := l.conns.watch(c) // gives its handshake slot back, and counts it
			ctx = context.WithValue(ctx, connEntryKey{}, e)
			return httpsession.WithConn(context.WithValue(ctx, quicConnKey{}, c))
		},
		Logger: discardLogger,
	}
	pressure := t.pressure
	if pressure == nil {
		pressure = &pressureHook{under: newMemoryGauge().under, every: pressureCheck, grace: pressureGrace, busy: pressureBusy}
	}
	go l.conns.relieve(pressure, l.served)
	go func() {
		defer close(l.served)
		defer ln.Close()
		gate.ServeEnded(l.serve(ln))
	}()
	return l, nil
}

// quicTransport returns the QUIC endpoint of a listener on udp: source
// address validation and a cap on handshakes under load, and keys derived
// from the session key (see the package documentation, "Floods and
// restarts").
func (t *Transport) quicTransport(udp *net.UDPConn, key []byte) (*quic.Transport, *handshakes) {
	reset := quic.StatelessResetKey(deriveKey(key, labelStatelessReset))
	tokens := quic.TokenGeneratorKey(deriveKey(key, labelTokenGenerator))
	qt := &quic.Transport{Conn: hookSends(udp, t.onSend), StatelessResetKey: &reset, TokenGeneratorKey: &tokens}
	if t.noFloodDefence {
		return qt, nil
	}
	hs := newHandshakes(orDefault(t.MaxHandshakes, DefaultMaxHandshakes), orDefault(t.RetryHandshakes, DefaultRetryHandshakes),
		DefaultMaxHandshakesPerSource)
	qt.VerifySourceAddress, qt.ConnContext = hs.verify, hs.connContext
	return qt, hs
}

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// orDefault64 is orDefault for a budget, where a negative value means none.
func orDefault64(v, d int64) int64 {
	if v != 0 {
		return max(v, 0)
	}
	return d
}

func (l *listener) Addr() net.Addr { return l.udp.LocalAddr() }

// Accept waits for the next authenticated session.
func (l *listener) Accept(ctx context.Context) (transport.Conn, error) { return l.gate.Accept(ctx) }

// Close stops the server: every QUIC connection is closed (which ends all
// sessions, accepted or not) and the UDP socket is released.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		l.gate.Shut()
		l.stop()
		<-l.served // serve returned, its connections closed, and the QUIC listener too
		if err := l.qt.Close(); err != nil && l.closeErr == nil {
			l.closeErr = err
		}
		if err := l.udp.Close(); err != nil && l.closeErr == nil {
			l.closeErr = err
		}
		l.gate.Wait()
		if l.closeErr != nil {
			l.closeErr = transport.Classify("close", Name, l.closeErr)
		}
	})
	return l.closeErr
}

// coverSendTimeout bounds the writing of one response that is not a
// session (the cover, a refusal). A request counts its connection busy
// while it is handled, so a response the client never gives flow-control
// credit for kept a connection out of the idle timeout for good, and with
// it whatever its other streams held. nginx ends such a response after
// send_timeout (60 s without progress); a cover site's responses are
// small, so a whole-response bound this long cuts no real visitor.
var coverSendTimeout = 5 * time.Minute // a var for tests

// serveHTTP is the server's handler: the gate's, with each request
// counted open on its connection's account while it is handled, so that
// the connection limits never take a connection serving one as idle, and
// the writing of its response bounded (coverSendTimeout; a session, which
// takes the stream over, lifts the bound).
func (l *listener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	l.reached(r) // its stream waits no more (streams.go)
	if e, ok := r.Context().Value(connEntryKey{}).(*connEntry); ok {
		l.conns.begin(e)
		defer l.conns.end(e)
	}
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(coverSendTimeout))
	l.gate.ServeHTTP(w, r)
}

// session takes the request stream of a valid session request over: from
// the 200 on, its DATA frames carry the session both ways.
func (l *listener) session(w http.ResponseWriter, r *http.Request, release func()) {
	streamer, ok := w.(http3.HTTPStreamer)
	if !ok { // never from http3.Server; answer like a refusal
		release()
		l.gate.ServeCover(w, r)
		return
	}
	if qc, ok := r.Context().Value(quicConnKey{}).(*quic.Conn); ok {
		l.windows.markSession(qc) // its windows grow from the sessions' pool now
	}
	if e, ok := r.Context().Value(connEntryKey{}).(*connEntry); ok {
		// In a session until it ends: never idle, never taken to make room.
		l.conns.carry(e)
		free := release
		release = sync.OnceFunc(func() { free(); l.conns.uncarry(e) })
	}
	httpsession.WriteAccepted(w)
	str, err := streamer.HTTPStream() // sends the 200 now
	if err != nil {
		release()
		return
	}
	str.QUICStream().SetWriteDeadline(time.Time{}) // serveHTTP's bound is for the cover's responses
	if cs := l.streamsOf(r); cs != nil && !l.open {
		cs.carry(str.StreamID()) // no other stream from now on (streams.go)
	}
	// http3 keeps the request as long as the stream (the stream's trailer
	// parser holds it), so what it points to would live as long as the
	// session: 2.5 KB of parsed headers alone. Nothing reads it once the
	// session is admitted (TestIdleSessionFreesRequest).
	src := l.gate.Source(r)
	r.Header, r.Trailer, r.URL, r.TLS = nil, nil, nil, nil
	r.Host, r.RequestURI, r.RemoteAddr = "", "", ""
	c := &serverConn{str: str, dw: dataWriter{w: str.QUICStream()}, release: release, req: r, laddr: l.udp.LocalAddr(), raddr: httpsession.HiddenAddr(Name), src: src}
	if !l.gate.Offer(r.Context(), c) {
		c.abort() // never accepted: a reset, not a clean end of stream
	}
}

// binding returns the TLS exporter value of the request's QUIC connection, or
// nil if there is none (then only unbound tokens can pass). It waits for the
// handshake to complete: a request may arrive in 0-RTT, before the exporter
// exists, and such a request never carries a valid bound token anyway.
func binding(r *http.Request) []byte {
	qc, ok := r.Context().Value(quicConnKey{}).(*quic.Conn)
	if !ok {
		return nil
	}
	select {
	case <-qc.HandshakeComplete():
	case <-r.Context().Done():
		return nil
	}
	cs := qc.ConnectionState().TLS
	return httpsession.Binding(&cs)
}
