package https

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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
)

// Request headers of the session POST, as Chrome sends them for a fetch()
// with a streaming body. They match the ClientHello preset's browser.
const (
	chromeUA       = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0.0.0 Safari/537.36"
	chromeSecCHUA  = `"Not(A:Brand";v="99", "Google Chrome";v="133", "Chromium";v="133"`
	chromeAcceptEn = "gzip, deflate, br, zstd"
)

var (
	errPinMismatch = errors.New("server certificate does not match the pinned key (CertSHA256)")
	errNoCert      = errors.New("server sent no certificate")
)

func dialErr(class transport.Class, op string, err error) error {
	return &transport.Error{Class: class, Op: op, Transport: Name, Err: err}
}

// Dial connects to ep and opens an authenticated relay session. Every error
// is a *transport.Error; none contains the relay's address.
func (t *Transport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	if len(ep.Key) != transport.KeySize {
		return nil, dialErr(transport.ClassUnknown, "dial", errors.New("endpoint session key must be 32 bytes; check the relay descriptor"))
	}
	if !strings.HasPrefix(ep.Path, "/") {
		return nil, dialErr(transport.ClassUnknown, "dial", errors.New("endpoint session path must start with /; check the relay descriptor"))
	}
	host, port, err := net.SplitHostPort(ep.Addr)
	if err != nil || host == "" || port == "" {
		return nil, dialErr(transport.ClassUnknown, "dial", errors.New("endpoint address must be host:port; check the relay descriptor"))
	}
	sni := ep.SNI
	if sni == "" {
		sni = host
	}
	authority := sni
	if port != "443" {
		authority = net.JoinHostPort(sni, port)
	}

	var d net.Dialer
	if ep.LocalAddr != "" {
		ip := net.ParseIP(ep.LocalAddr)
		if ip == nil {
			return nil, dialErr(transport.ClassUnknown, "dial", errors.New("local address is not an IP address"))
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	raw, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, transport.Classify("dial", Name, err)
	}
	// Until the session is up, the caller's context bounds everything.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	c, err := t.open(ctx, raw, ep, sni, authority)
	if !stop() {
		if c != nil {
			c.Close()
		}
		raw.Close()
		return nil, transport.Classify("dial", Name, ctx.Err())
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

func (t *Transport) open(ctx context.Context, raw net.Conn, ep transport.Endpoint, sni, authority string) (*clientConn, error) {
	cfg := &utls.Config{
		ServerName: sni,
		NextProtos: []string{"h2", "http/1.1"},
		RootCAs:    ep.RootCAs,
	}
	if len(ep.CertSHA256) > 0 {
		pin := append([]byte(nil), ep.CertSHA256...)
		cfg.InsecureSkipVerify = true // replaced by the pin check below
		cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				return errNoCert
			}
			leaf, err := x509.ParseCertificate(rawCerts[0])
			if err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return errPinMismatch
			}
			return nil
		}
	}
	uc, err := newUConn(raw, cfg, ep.Fingerprint)
	if err != nil {
		return nil, dialErr(transport.ClassUnknown, "handshake", err)
	}
	if err := uc.HandshakeContext(ctx); err != nil {
		return nil, classifyHandshake(err)
	}
	// Key export needs renegotiation off in uTLS; the Chrome presets in
	// transport/fingerprint send renegotiation_info with it off (the
	// extension's bytes are the same either way).
	cs := uc.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		return nil, dialErr(transport.ClassProtocol, "handshake",
			fmt.Errorf("server chose ALPN %q instead of h2: not a Postern relay, or a front that does not speak HTTP/2", cs.NegotiatedProtocol))
	}
	var binding []byte
	if !ep.Unbound {
		binding, err = cs.ExportKeyingMaterial(transport.ExporterLabel, nil, transport.ExporterLen)
		if err != nil {
			return nil, dialErr(transport.ClassTLS, "handshake", err)
		}
	}
	tok, err := transport.MakeToken(ep.Key, ep.Path, binding, time.Now())
	if err != nil {
		return nil, dialErr(transport.ClassUnknown, "auth", err)
	}

	h2 := &http2.Transport{
		DisableCompression:        true,
		MaxHeaderListSize:         262144, // Chrome's SETTINGS
		MaxDecoderHeaderTableSize: 65536,
	}
	cc, err := h2.NewClientConn(uc)
	if err != nil {
		return nil, transport.Classify("handshake", Name, err)
	}
	pr, pw := io.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(sctx, http.MethodPost, "https://"+authority+ep.Path, pr)
	if err != nil {
		cancel()
		cc.Close()
		return nil, dialErr(transport.ClassUnknown, "dial", errors.New("endpoint session path is not a valid URL path"))
	}
	origin := "https://" + authority
	h := req.Header
	h.Set("Sec-Ch-Ua", chromeSecCHUA)
	h.Set("Sec-Ch-Ua-Mobile", "?0")
	h.Set("Sec-Ch-Ua-Platform", `"Windows"`)
	h.Set("User-Agent", chromeUA)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept", "*/*")
	h.Set("Origin", origin)
	h.Set("Sec-Fetch-Site", "same-origin")
	h.Set("Sec-Fetch-Mode", "cors")
	h.Set("Sec-Fetch-Dest", "empty")
	h.Set("Referer", origin+"/")
	h.Set("Accept-Encoding", chromeAcceptEn)
	h.Set("Accept-Language", "en-US,en;q=0.9")
	h.Set("Cookie", transport.TokenCookie+"="+tok)
	h.Set("Priority", "u=1, i")

	resp, err := cc.RoundTrip(req)
	if err != nil {
		cancel()
		pw.Close()
		cc.Close()
		return nil, transport.Classify("session", Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		pw.Close()
		cc.Close()
		return nil, dialErr(transport.ClassAuth, "auth",
			fmt.Errorf("relay answered %d (its cover site): session token refused; check the descriptor's key and path and this device's clock", resp.StatusCode))
	}
	return &clientConn{
		pw: pw, body: resp.Body, rr: recordReader{r: resp.Body},
		cc: cc, raw: raw, cancel: cancel,
		local: raw.LocalAddr(), remote: raw.RemoteAddr(),
	}, nil
}

// classifyHandshake maps uTLS handshake failures to transport classes.
func classifyHandshake(err error) error {
	var (
		ae utls.AlertError
		ve *utls.CertificateVerificationError
		re utls.RecordHeaderError
		ue x509.UnknownAuthorityError
		he x509.HostnameError
		ie x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, errPinMismatch), errors.Is(err, errNoCert),
		errors.As(err, &ae), errors.As(err, &ve), errors.As(err, &re),
		errors.As(err, &ue), errors.As(err, &he), errors.As(err, &ie):
		return dialErr(transport.ClassTLS, "handshake", err)
	}
	if c := transport.ClassOf(err); c != transport.ClassUnknown {
		return transport.Classify("handshake", Name, err)
	}
	return dialErr(transport.ClassTLS, "handshake", err)
}

// clientConn is the client end of a session: writes feed the request body,
// reads come from the framed response body.
type clientConn struct {
	pw     *io.PipeWriter
	body   io.ReadCloser
	rr     recordReader
	cc     *http2.ClientConn
	raw    net.Conn
	cancel context.CancelFunc
	local  net.Addr
	remote net.Addr

	rmu       sync.Mutex
	wshut     atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
}

func (c *clientConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	n, err := c.rr.Read(p)
	if err != nil && err != io.EOF {
		if c.closed.Load() {
			return n, net.ErrClosed
		}
		return n, &net.OpError{Op: "read", Net: Name, Err: err}
	}
	return n, err
}

func (c *clientConn) Write(p []byte) (int, error) {
	n, err := c.pw.Write(p)
	if err != nil {
		switch {
		case c.closed.Load():
			return n, net.ErrClosed
		case c.wshut.Load():
			return n, errWriteAfterCloseWrite
		}
		return n, &net.OpError{Op: "write", Net: Name, Err: err}
	}
	return n, nil
}

// CloseWrite ends the request body; the relay reads io.EOF.
func (c *clientConn) CloseWrite() error {
	if c.closed.Load() {
		return net.ErrClosed
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
		c.cc.Close()
		c.raw.Close()
	})
	return nil
}

func (c *clientConn) LocalAddr() net.Addr  { return c.local }
func (c *clientConn) RemoteAddr() net.Addr { return c.remote }

func (c *clientConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *clientConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *clientConn) SetWriteDeadline(time.Time) error { return errNoDeadline }
