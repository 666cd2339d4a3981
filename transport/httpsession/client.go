package httpsession

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/internal/token"
)

// ContentType is the content type of both bodies of a session.
const ContentType = "application/octet-stream"

// Target is a transport.Endpoint checked and taken apart into what a client
// needs: where to connect, the TLS name and certificate check, the HTTP
// authority and path, and the key. Make it with [NewTarget].
type Target struct {
	// Addr is the host:port to connect to, Host and Port its parts.
	Addr, Host, Port string
	// SNI is the TLS server name: Endpoint.SNI, or Host.
	SNI string
	// Authority is the HTTP authority: SNI, with ":Port" unless 443.
	Authority string
	// LocalIP is the address to connect from, nil for any.
	LocalIP net.IP
	// PublicOnly: connect only to a public address (Endpoint.PublicOnly).
	PublicOnly bool
	// RootCAs verifies the certificate when no key is pinned (nil: the
	// system roots).
	RootCAs *x509.CertPool

	name    string // the transport's
	path    string
	key     []byte
	pin     []byte
	unbound bool
}

// NewTarget checks ep for transport name. Every error is a
// *transport.Error of class ClassInvalid that says which field is wrong
// without repeating the address.
func NewTarget(name string, ep transport.Endpoint) (*Target, error) {
	bad := func(msg string) (*Target, error) {
		return nil, invalid(name, "dial", msg+"; check the relay descriptor")
	}
	host, port, err := net.SplitHostPort(ep.Addr)
	switch {
	case err != nil || host == "":
		return bad("endpoint address is not host:port")
	case !validPort(port, false):
		return bad("endpoint port is not a number from 1 to 65535")
	case len(ep.Key) != transport.KeySize:
		return bad(fmt.Sprintf("endpoint session key must be %d bytes", transport.KeySize))
	case !strings.HasPrefix(ep.Path, "/"):
		return bad("endpoint session path must start with /")
	case len(ep.CertSHA256) != 0 && len(ep.CertSHA256) != sha256.Size:
		return bad("endpoint certificate pin (CertSHA256) must be a 32-byte SHA-256")
	}
	t := &Target{
		Addr: ep.Addr, Host: host, Port: port, SNI: ep.SNI, RootCAs: ep.RootCAs, PublicOnly: ep.PublicOnly,
		name: name, path: ep.Path, unbound: ep.Unbound,
		key: append([]byte(nil), ep.Key...), pin: append([]byte(nil), ep.CertSHA256...),
	}
	if ep.LocalAddr != "" {
		if t.LocalIP = net.ParseIP(ep.LocalAddr); t.LocalIP == nil {
			return nil, invalid(name, "dial", "local address is not an IP address")
		}
	}
	if t.SNI == "" {
		t.SNI = host
	}
	t.Authority = t.SNI
	if port != "443" {
		t.Authority = net.JoinHostPort(t.SNI, port)
	}
	return t, nil
}

// validPort reports whether port is a decimal port number; 0 only if
// allowed (listeners: any free port).
func validPort(port string, zero bool) bool {
	p, err := strconv.ParseUint(port, 10, 16)
	return err == nil && (p > 0 || zero)
}

// PinCheck returns the certificate check to install as
// VerifyPeerCertificate (with InsecureSkipVerify, which only turns off the
// verification against roots) in a crypto/tls or uTLS client config, or
// nil when the endpoint pins no key. The check compares the SHA-256 of the
// leaf's SubjectPublicKeyInfo with Endpoint.CertSHA256.
func (t *Target) PinCheck() func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(t.pin) == 0 {
		return nil
	}
	pin := t.pin
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return errNoCert
		}
		leaf, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return fmt.Errorf("%w: %w", errPinMismatch, err)
		}
		sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
			return errPinMismatch
		}
		return nil
	}
}

// Exporter is the ExportKeyingMaterial method of a crypto/tls or uTLS
// ConnectionState.
type Exporter func(label string, context []byte, length int) ([]byte, error)

// token mints a token for one session on the connection whose exporter is
// export, bound to it unless the endpoint is unbound.
func (t *Target) token(export Exporter) (string, error) {
	var binding []byte
	if !t.unbound {
		var err error
		if binding, err = export(token.ExporterLabel, nil, token.ExporterLen); err != nil {
			return "", &transport.Error{Class: transport.ClassTLS, Op: "auth", Transport: t.name,
				Err: fmt.Errorf("TLS exporter unavailable on this connection: %w", err)}
		}
	}
	tok, err := token.Make(t.key, t.path, binding, time.Now())
	if err != nil {
		return "", invalid(t.name, "auth", err.Error())
	}
	return tok, nil
}

// request builds the session request: see the package documentation.
func (t *Target) request(ctx context.Context, tok string, body io.ReadCloser) *http.Request {
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           &url.URL{Scheme: "https", Host: t.Authority, Path: t.path},
		Host:          t.Authority,
		Header:        make(http.Header),
		Body:          body,
		ContentLength: -1, // streaming: no content-length
	}
	for _, h := range browser.Current.FetchPOST("https://"+t.Authority, ContentType, token.Cookie+"="+tok) {
		req.Header.Set(h.Name, h.Value)
	}
	return req.WithContext(ctx)
}

// Wire is one connection of a transport, authenticated by TLS and ready to
// carry HTTP requests, as [Target.Open] needs it.
type Wire struct {
	// Export is the connection's TLS exporter (for the token's binding).
	Export Exporter
	// RoundTrip sends a request on this connection and returns the
	// response once its headers arrived.
	RoundTrip func(*http.Request) (*http.Response, error)
	// Deframe, if set, turns the response body into the relay's session
	// bytes (transport/https frames them).
	Deframe func(io.Reader) io.Reader
	// Upload, if set, returns the request body as a pair: body goes into
	// the request given to RoundTrip, and the session's writes go to w,
	// which the transport sends directly (no pipe and no copying
	// goroutine). Unset, the body is an io.Pipe.
	Upload func() (body io.ReadCloser, w BodyWriter)
	// Classify classifies the transport's errors (usually Classify with the
	// transport's Stack).
	Classify func(op string, err error) error
	// Close tears the connection down.
	Close func()
	// LocalAddr and RemoteAddr are the connection's addresses.
	LocalAddr, RemoteAddr net.Addr
	// Early is set when RoundTrip sends the request's early data
	// (transport.EarlyData of its context) as the first bytes of its body,
	// right after the headers and before it waits for the response.
	Early bool
}

// BodyWriter is the writing end of a session's request body: Close ends
// the body (the relay reads io.EOF), CloseWithError aborts it. After
// either, Write fails with io.ErrClosedPipe, as does a Write the
// transport could not complete because the stream failed under it.
// *io.PipeWriter is one.
type BodyWriter interface {
	io.WriteCloser
	CloseWithError(err error) error
}

// Open sends the session request on w and returns the session once the
// relay answered 200. ctx bounds the wait for the answer; the session does
// not depend on it. On error, the caller still owns w and must close it.
// Errors are *transport.Error values: ClassAuth when the relay answered
// anything but 200 (its cover site, so the token was refused). The early
// data ctx asks for (transport.EarlyData) goes with the request when w
// sends it (Wire.Early), and the session reports it (SentEarly).
func (t *Target) Open(ctx context.Context, w Wire) (transport.Conn, error) {
	tok, err := t.token(w.Export)
	if err != nil {
		return nil, err
	}
	var body io.ReadCloser
	var pw BodyWriter
	if w.Upload != nil {
		body, pw = w.Upload()
	} else {
		body, pw = io.Pipe()
	}
	// The request lives on its own context so that it outlives ctx, which
	// still bounds the wait for the response.
	reqCtx, cancel := context.WithCancel(context.Background())
	var early []byte
	if w.Early {
		if early = transport.EarlyData(ctx); len(early) > 0 {
			reqCtx = transport.WithEarlyData(reqCtx, early)
		}
	}
	abort := context.AfterFunc(ctx, cancel)
	res, err := w.RoundTrip(t.request(reqCtx, tok, body))
	if !abort() {
		err = ctx.Err()
	}
	if err == nil && res.StatusCode != http.StatusOK {
		err = &transport.Error{Class: transport.ClassAuth, Op: "auth", Transport: t.name,
			Err: refusal(res.StatusCode, res.Header.Get("Date"), time.Now())}
	}
	if err != nil {
		cancel()
		pw.CloseWithError(net.ErrClosed)
		if res != nil {
			res.Body.Close()
		}
		return nil, w.Classify("session", err)
	}
	var r io.Reader = res.Body
	if w.Deframe != nil {
		r = w.Deframe(res.Body)
	}
	return &clientConn{name: t.name, w: w, r: r, body: res.Body, pw: pw, cancel: cancel, early: early}, nil
}

// clientConn is the client end of a session: writes feed the request body,
// reads come from the response body.
type clientConn struct {
	name   string
	w      Wire
	r      io.Reader     // session bytes from the relay
	body   io.ReadCloser // the response body under r
	pw     BodyWriter    // the request body
	cancel context.CancelFunc
	early  []byte // sent with the request (transport.EarlySender)

	rmu       sync.Mutex // a Deframe reader is not safe for concurrent use
	wshut     atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
}

func (c *clientConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	n, err := c.r.Read(p)
	return n, c.streamErr(err)
}

func (c *clientConn) Write(p []byte) (int, error) {
	n, err := c.pw.Write(p)
	if err != nil && !c.closed.Load() {
		switch {
		case c.wshut.Load():
			err = &transport.Error{Class: transport.ClassCanceled, Op: "session", Transport: c.name,
				Err: fmt.Errorf("write after CloseWrite: %w", net.ErrClosed)}
		case errors.Is(err, io.ErrClosedPipe):
			// The HTTP client closed the request body: the stream
			// failed under it.
			err = &transport.Error{Class: transport.ClassReset, Op: "session", Transport: c.name,
				Err: fmt.Errorf("session stream closed for writing: %w", net.ErrClosed)}
		}
	}
	return n, c.streamErr(err)
}

// streamErr passes io.EOF (net.Conn contract) and classifies the rest;
// after Close every error wraps net.ErrClosed.
func (c *clientConn) streamErr(err error) error {
	switch {
	case err == nil, err == io.EOF:
		return err
	case c.closed.Load():
		return closedErr(c.name, "session")
	}
	return c.w.Classify("session", err)
}

// CloseWrite ends the request body; the relay reads io.EOF.
func (c *clientConn) CloseWrite() error {
	if c.closed.Load() {
		return closedErr(c.name, "session")
	}
	c.wshut.Store(true)
	return c.pw.Close()
}

// Close tears the session and its connection down at once; data not yet
// sent is dropped. Use CloseWrite and read to io.EOF for a graceful end.
func (c *clientConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.pw.CloseWithError(net.ErrClosed)
		c.cancel()
		c.body.Close()
		c.w.Close()
	})
	return nil
}

// SentEarly implements transport.EarlySender.
func (c *clientConn) SentEarly() []byte { return c.early }

// Arrivals passes on the response body's transport.Arrivals, if it has
// one (https's own HTTP/2 client does).
func (c *clientConn) Arrivals() (time.Time, bool) {
	if a, ok := c.body.(transport.Arrivals); ok {
		return a.Arrivals()
	}
	return time.Time{}, false
}

func (c *clientConn) LocalAddr() net.Addr  { return c.w.LocalAddr }
func (c *clientConn) RemoteAddr() net.Addr { return c.w.RemoteAddr }

func (c *clientConn) SetDeadline(time.Time) error      { return c.noDeadline() }
func (c *clientConn) SetReadDeadline(time.Time) error  { return c.noDeadline() }
func (c *clientConn) SetWriteDeadline(time.Time) error { return c.noDeadline() }

func (c *clientConn) noDeadline() error {
	return fmt.Errorf("%s client session: %w; use Close to unblock", c.name, transport.ErrDeadlineUnsupported)
}

// refusal explains a session request the relay answered with its cover
// site. The cover site's Date header tells the relay's clock: when it is
// further from this device's than a token's validity window, the clock is
// the likely cause and the message says so, with the difference.
func refusal(status int, date string, now time.Time) error {
	const msg = "relay answered %d instead of opening a session (its cover site): session refused"
	relayNow, err := http.ParseTime(date)
	if err != nil {
		return fmt.Errorf(msg+": check the descriptor's key and path and this device's clock, or retry later (the relay may be at its session limits)", status)
	}
	skew := relayNow.Sub(now)
	// Date has whole seconds: allow one more on top of the window.
	if skew > token.Skew+time.Second || skew < -token.Skew-time.Second {
		dir := "ahead of"
		if skew < 0 {
			dir, skew = "behind", -skew
		}
		return fmt.Errorf(msg+": the relay's clock is %s %s this device's, more than the %s a token allows; set this device's clock",
			status, skew.Round(time.Second), dir, token.Skew)
	}
	return fmt.Errorf(msg+": the clocks agree, so either the descriptor's key or path is wrong, or the relay is at its session limits (retry later)", status)
}
