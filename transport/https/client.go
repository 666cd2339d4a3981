package https

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/httpsession"
)

// classify is httpsession.Classify with the uTLS errors this transport's
// stack adds to the standard library's.
func classify(op string, err error) error {
	return httpsession.Classify(Name, op, err, utlsStack)
}

func utlsStack(err error) (transport.Class, error, bool) {
	var (
		ae utls.AlertError
		ve *utls.CertificateVerificationError
		re utls.RecordHeaderError
	)
	if errors.As(err, &ae) || errors.As(err, &ve) || errors.As(err, &re) {
		return transport.ClassTLS, transport.Redact("TLS handshake failed", err), true
	}
	return 0, nil, false
}

// Dial connects to ep and opens an authenticated relay session. Every error
// is a *transport.Error; none contains the relay's address or name.
func (t *Transport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	tgt, err := httpsession.NewTarget(Name, ep)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{}
	if tgt.LocalIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: tgt.LocalIP}
	}
	if tgt.PublicOnly { // checked on each address the dial tries, once resolved
		d.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return transport.CheckPublic(Name, netip.Addr{})
			}
			return transport.CheckPublic(Name, ap.Addr())
		}
	}
	raw, err := d.DialContext(ctx, "tcp", tgt.Addr)
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return nil, te // PublicOnly's refusal, without the *net.OpError's addresses
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, &transport.Error{Class: transport.ClassTimeout, Op: "dial", Transport: Name,
				Err: transport.Redact(errConnectTimeout.Error(), ctx.Err())}
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, classify("dial", err)
	}
	// Until the session is up, the caller's context bounds everything.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	c, err := open(ctx, raw, tgt, ep)
	if !stop() {
		if c != nil {
			c.Close()
		}
		raw.Close()
		if transport.ClassOf(err) == transport.ClassTLS {
			return nil, err // the TLS handshake itself ran out of time
		}
		return nil, classify("dial", ctx.Err())
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// open runs the uTLS handshake on raw, requires HTTP/2 and opens the
// session on it.
func open(ctx context.Context, raw net.Conn, tgt *httpsession.Target, ep transport.Endpoint) (transport.Conn, error) {
	// The session's writes are gathered beneath TLS (cork.go).
	raw = &corkConn{Conn: raw}
	// An IP address as ServerName sends no SNI, as a browser does for an
	// IP literal; the certificate is then checked against the IP.
	cfg := &utls.Config{ServerName: tgt.SNI, RootCAs: tgt.RootCAs, ClientSessionCache: newSessionCache(ep)}
	if check := tgt.PinCheck(); check != nil {
		cfg.InsecureSkipVerify = true // only skips the roots; check verifies the pin
		cfg.VerifyPeerCertificate = check
	}
	uc, err := browser.NewUConn(raw, cfg, ep.Fingerprint)
	if err != nil {
		return nil, &transport.Error{Class: transport.ClassInvalid, Op: "dial", Transport: Name,
			Err: fmt.Errorf("endpoint fingerprint: %w; check the relay descriptor", err)}
	}
	// The borrowed-site tag (transport/borrow) in the session id: harmless
	// to relays that do not borrow, where the session id is 32
	// random-looking bytes either way.
	if err := uc.BuildHandshakeState(); err != nil {
		return nil, &transport.Error{Class: transport.ClassInvalid, Op: "dial", Transport: Name,
			Err: fmt.Errorf("build the ClientHello: %w", err)}
	}
	if err := borrow.TagHello(uc, ep.Key, time.Now()); err != nil {
		return nil, &transport.Error{Class: transport.ClassInvalid, Op: "dial", Transport: Name, Err: err}
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, &transport.Error{Class: transport.ClassTLS, Op: "handshake", Transport: Name,
				Err: transport.Redact(errNoServerHello.Error(), ctx.Err())}
		}
		return nil, handshakeErr(err)
	}
	cs := uc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		return nil, &transport.Error{Class: transport.ClassProtocol, Op: "handshake", Transport: Name,
			Err: fmt.Errorf("server chose ALPN %q instead of h2: not a Postern relay, or a front that does not speak HTTP/2", cs.NegotiatedProtocol)}
	}
	cc, err := newH2Client(uc, &browser.Current.HTTP2)
	if err != nil {
		return nil, classify("handshake", err)
	}
	cc.cork, _ = raw.(corkable)
	cc.below, _ = raw.(*corkConn)
	c, err := tgt.Open(ctx, httpsession.Wire{
		Export:     cs.ExportKeyingMaterial,
		RoundTrip:  cc.RoundTrip,
		Upload:     cc.Upload,
		Deframe:    func(r io.Reader) io.Reader { return &recordReader{r: r} },
		Classify:   classify,
		Close:      func() { cc.Close(); raw.Close() },
		LocalAddr:  raw.LocalAddr(),
		RemoteAddr: raw.RemoteAddr(),
		Early:      true,
	})
	if err != nil {
		cc.Close()
		return nil, err
	}
	return c, nil
}

// errNoSession is a cached TLS session that cannot be used.
var errNoSession = errors.New("no usable TLS session")

// errConnectTimeout is a TCP connect that never completed: no SYN-ACK came
// back, as from a blackholed address.
var errConnectTimeout = errors.New("TCP connect timed out: the relay's address may be blackholed on this network; try another transport or relay")

// errNoServerHello is a TLS handshake that ran out of time after the TCP
// connect succeeded: the server, or a censor in between, never completed
// it. Iran drops the ServerHello of names it blocks (2025), so it is a TLS
// failure, not a blackhole (which stops the TCP connect itself).
var errNoServerHello = errors.New("TLS handshake timed out after the TCP connect (ServerHello dropped?): a censor may be blocking this relay's name; try another transport or relay")

// handshakeErr classifies a failed TLS handshake: what no rule recognises
// is a TLS failure.
func handshakeErr(err error) error {
	c := classify("handshake", err)
	if te, ok := errors.AsType[*transport.Error](c); ok && te.Class == transport.ClassUnknown {
		return &transport.Error{Class: transport.ClassTLS, Op: te.Op, Transport: Name, Err: te.Err}
	}
	return c
}
