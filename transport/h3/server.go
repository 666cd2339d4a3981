package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

// quicConnKey is the request context key under which the server stores the
// request's QUIC connection (through http3.Server.ConnContext).
type quicConnKey struct{}

// discardLogger keeps quic-go's http3 package from logging through
// slog.Default: its messages may carry client addresses.
var discardLogger = slog.New(slog.DiscardHandler)

// serverQUICConfig is the QUIC configuration of the listener. It matches what
// a stock http3.Server uses (quic-go defaults, 0-RTT allowed).
func serverQUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: HandshakeIdleTimeout,
		MaxIdleTimeout:       MaxIdleTimeout,
		MaxIncomingStreams:   MaxIncomingStreams,
		Allow0RTT:            true,
	}
}

// Listen starts an HTTP/3 server on cfg.Addr (UDP) that serves the cover site
// and yields authenticated sessions. ctx only bounds the setup.
func (t *Transport) Listen(ctx context.Context, cfg transport.ListenConfig) (transport.Listener, error) {
	fail := func(err error) (transport.Listener, error) {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "listen", Transport: Name, Err: err}
	}
	switch {
	case cfg.Addr == "":
		return fail(errors.New("ListenConfig.Addr is empty; set host:port"))
	case len(cfg.Certificate.Certificate) == 0:
		return fail(errors.New("ListenConfig.Certificate has no certificate"))
	case !strings.HasPrefix(cfg.Path, "/"):
		return fail(fmt.Errorf("ListenConfig.Path %q must start with /", cfg.Path))
	}
	verifier, err := transport.NewTokenVerifier(cfg.Key, cfg.Path, cfg.AllowUnbound, cfg.Now)
	if err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return nil, transport.Classify("listen", Name, err)
	}
	uaddr, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, transport.Classify("listen", Name, err)
	}
	udp, err := net.ListenUDP("udp", uaddr)
	if err != nil {
		return nil, transport.Classify("listen", Name, err)
	}

	maxSessions := t.MaxSessions
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	l := &listener{
		udp:         udp,
		cfg:         cfg,
		verifier:    verifier,
		cover:       cfg.Cover,
		maxSessions: int64(maxSessions),
		sessions:    make(chan *serverConn),
		done:        make(chan struct{}),
		served:      make(chan struct{}),
	}
	if l.cover == nil {
		l.cover = defaultCover()
	}
	l.srv = &http3.Server{
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cfg.Certificate},
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{http3.NextProtoH3},
		},
		QUICConfig: serverQUICConfig(),
		Handler:    http.HandlerFunc(l.serveHTTP),
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			return context.WithValue(ctx, quicConnKey{}, c)
		},
		Logger: discardLogger,
	}
	go func() {
		defer close(l.served)
		if err := l.srv.Serve(udp); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			l.serveErr.Store(&err)
		}
	}()
	return l, nil
}

type listener struct {
	srv         *http3.Server
	udp         *net.UDPConn
	cfg         transport.ListenConfig
	verifier    *transport.TokenVerifier
	cover       http.Handler
	maxSessions int64
	active      atomic.Int64 // sessions holding a slot

	// sessions hands authenticated sessions from handlers to Accept. It is
	// unbuffered: a session exists only once Accept took it, and a handler
	// waiting here closes its session when the listener closes.
	sessions chan *serverConn
	done     chan struct{} // closed by Close
	served   chan struct{} // closed when srv.Serve returned
	serveErr atomic.Pointer[error]

	closeOnce sync.Once
	closeErr  error
}

func (l *listener) observe(o transport.Outcome) {
	if l.cfg.Observe != nil {
		l.cfg.Observe(o)
	}
}

func (l *listener) Addr() net.Addr { return l.udp.LocalAddr() }

// Accept waits for the next authenticated session.
func (l *listener) Accept(ctx context.Context) (transport.Conn, error) {
	select {
	case c := <-l.sessions:
		return c, nil
	case <-l.done:
		return nil, &transport.Error{Class: transport.ClassCanceled, Op: "accept", Transport: Name, Err: net.ErrClosed}
	case <-l.served:
		err := net.ErrClosed
		if p := l.serveErr.Load(); p != nil {
			err = *p
		}
		return nil, transport.Classify("accept", Name, err)
	case <-ctx.Done():
		return nil, transport.Classify("accept", Name, ctx.Err())
	}
}

// Close stops the server: every QUIC connection is closed (which ends all
// sessions, accepted or not) and the UDP socket is released.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeErr = l.srv.Close()
		if err := l.udp.Close(); err != nil && l.closeErr == nil {
			l.closeErr = err
		}
		<-l.served
		if l.closeErr != nil {
			l.closeErr = transport.Classify("close", Name, l.closeErr)
		}
	})
	return l.closeErr
}

// serveHTTP turns a valid session request into a session and hands
// everything else, untouched, to the cover site.
func (l *listener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != l.cfg.Path {
		l.observe(transport.OutcomeCover)
		l.cover.ServeHTTP(w, r)
		return
	}
	outcome := transport.OutcomeAuthFailed
	if ck, err := r.Cookie(transport.TokenCookie); err == nil {
		outcome = l.verifier.Verify(ck.Value, l.binding(r))
	}
	if outcome != transport.OutcomeOK {
		l.observe(outcome)
		l.cover.ServeHTTP(w, r)
		return
	}
	if l.active.Add(1) > l.maxSessions {
		// Full: the client sees the cover site, as for any other refusal.
		// The token is spent; the client's next attempt makes a new one.
		l.active.Add(-1)
		l.observe(transport.OutcomeBusy)
		l.cover.ServeHTTP(w, r)
		return
	}
	streamer, ok := w.(http3.HTTPStreamer)
	if !ok {
		l.active.Add(-1)
		l.observe(transport.OutcomeCover)
		l.cover.ServeHTTP(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	str, err := streamer.HTTPStream() // sends the 200 now
	if err != nil {
		l.active.Add(-1)
		return
	}
	// The client's address never leaves the transport: the relay gets a
	// placeholder, so nothing above can log or store it.
	c := &serverConn{str: str, release: func() { l.active.Add(-1) }, raddr: hiddenAddr{}}
	if qc, ok := r.Context().Value(quicConnKey{}).(*quic.Conn); ok {
		c.laddr = qc.LocalAddr()
	}
	l.observe(transport.OutcomeOK)
	select {
	case l.sessions <- c:
	case <-l.done:
		c.Close()
	case <-r.Context().Done():
		c.Close()
	}
}

// binding returns the TLS exporter value of the request's QUIC connection, or
// nil if there is none (then only unbound tokens can pass). It waits for the
// handshake to complete: a request may arrive in 0-RTT, before the exporter
// exists, and such a request never carries a valid bound token anyway.
func (l *listener) binding(r *http.Request) []byte {
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
	ekm, err := cs.ExportKeyingMaterial(transport.ExporterLabel, nil, transport.ExporterLen)
	if err != nil {
		return nil
	}
	return ekm
}

// hiddenAddr stands in for the client's address.
type hiddenAddr struct{}

func (hiddenAddr) Network() string { return "h3" }
func (hiddenAddr) String() string  { return "client" }
