package https

// Probe resistance: everything that is not an authenticated session must be
// answered exactly as a plain Go HTTPS server with the same certificate,
// cover site and timeouts answers it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

// probeTransport uses a short header timeout so that probes which make a
// server wait end quickly, for both servers alike.
var probeTransport = &Transport{ReadHeaderTimeout: time.Second, IdleTimeout: 5 * time.Second}

// startReference starts a stock net/http HTTPS server: same certificate,
// same cover site, same timeouts, nothing else.
func startReference(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           cover.Default(),
		ReadHeaderTimeout: probeTransport.ReadHeaderTimeout,
		IdleTimeout:       probeTransport.IdleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert(t)}},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// rawResult is what a raw TCP probe got back.
type rawResult struct {
	Data []byte
	End  string // eof, reset, timeout
}

func endKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case err == nil:
		return "open"
	}
	return "error: " + err.Error()
}

// rawProbe sends payload over plain TCP and reads until the server closes.
// Servers configured as in this test close within their 1 s header
// timeout; the 15 s deadline only catches a server that never closes.
func rawProbe(addr string, payload []byte) (rawResult, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return rawResult{}, err
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return rawResult{}, err
	}
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	var buf bytes.Buffer
	_, err = io.Copy(&buf, c)
	if err == nil {
		err = io.EOF
	}
	return rawResult{buf.Bytes(), endKind(err)}, nil
}

// h1Result is what an HTTP/1.1 probe over TLS got back, Date aside.
type h1Result struct {
	Status    string
	Proto     string
	Header    http.Header
	Body      string
	KeepAlive string // outcome of a second request on the same connection
}

func h1TLSConn(addr string) (*tls.Conn, error) {
	return tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"http/1.1"}})
}

// h1Probe sends the request built by req on a fresh TLS connection, reads
// the response, then tries a second request on the same connection.
func h1Probe(addr string, req func(c *tls.Conn) string) (h1Result, error) {
	c, err := h1TLSConn(addr)
	if err != nil {
		return h1Result{}, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, req(c)); err != nil {
		return h1Result{}, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return h1Result{}, err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return h1Result{}, err
	}
	resp.Header.Del("Date")
	res := h1Result{Status: resp.Status, Proto: resp.Proto, Header: resp.Header, Body: string(body)}
	// Keep-alive: does the connection take another request?
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, "GET /robots.txt HTTP/1.1\r\nHost: relay.test\r\n\r\n"); err != nil {
		res.KeepAlive = "write: " + endKind(err)
		return res, nil
	}
	resp2, err := http.ReadResponse(br, nil)
	if err != nil {
		res.KeepAlive = "read: " + endKind(err)
		return res, nil
	}
	resp2.Body.Close()
	res.KeepAlive = resp2.Status
	return res, nil
}

func httpReq(method, path, cookie, body string) func(*tls.Conn) string {
	return func(*tls.Conn) string {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: probe\r\n", method, path)
		if cookie != "" {
			fmt.Fprintf(&b, "Cookie: %s=%s\r\n", token.Cookie, cookie)
		}
		if body != "" || method == "POST" {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
		}
		b.WriteString("\r\n" + body)
		return b.String()
	}
}

// h2Conn is one HTTP/2 connection of a prober, for the shared table.
type h2Conn struct {
	tc *tls.Conn
	cc *http2.ClientConn
}

func (c h2Conn) RoundTrip(r *http.Request) (*http.Response, error) { return c.cc.RoundTrip(r) }
func (c h2Conn) ConnectionState() tls.ConnectionState              { return c.tc.ConnectionState() }

func dialH2Probe(t *testing.T, addr string) transporttest.ProbeConn {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	return h2Conn{tc, cc}
}

// TestProbeTable runs the cover/session/probe table both HTTP transports
// share, over HTTP/2, against a stock HTTPS server with the cover site.
func TestProbeTable(t *testing.T) {
	r := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default() })
	serveEcho(r.ln)
	transporttest.RunProbes(t, transporttest.Probes{
		Relay: r.ep.Addr, Reference: startReference(t), Dial: dialH2Probe,
		Host: "relay.test", Path: testPath, Key: r.ep.Key, Outcomes: r.obs,
		Deframe:         func(rd io.Reader) io.Reader { return &recordReader{r: rd} },
		SessionOwnsConn: true,
	})
}

// tlsResult is the visible outcome of a handshake.
type tlsResult struct {
	Version     uint16
	CipherSuite uint16
	ALPN        string
	Leaf        []byte
	Err         string
}

func tlsProbe(addr string, cfg *tls.Config) tlsResult {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return tlsResult{Err: err.Error()}
	}
	defer c.Close()
	cs := c.ConnectionState()
	return tlsResult{cs.Version, cs.CipherSuite, cs.NegotiatedProtocol, cs.PeerCertificates[0].Raw, ""}
}

func utlsProbe(addr string) tlsResult {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return tlsResult{Err: err.Error()}
	}
	defer raw.Close()
	uc := utls.UClient(raw, &utls.Config{InsecureSkipVerify: true, ServerName: "relay.test"}, utls.HelloChrome_Auto)
	if err := uc.Handshake(); err != nil {
		return tlsResult{Err: err.Error()}
	}
	cs := uc.ConnectionState()
	return tlsResult{cs.Version, cs.CipherSuite, cs.NegotiatedProtocol, cs.PeerCertificates[0].Raw, ""}
}

// boundToken returns a fresh valid token bound to c.
func boundToken(t *testing.T, key []byte, c *tls.Conn, now time.Time) string {
	cs := c.ConnectionState()
	b, err := cs.ExportKeyingMaterial(token.ExporterLabel, nil, token.ExporterLen)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := token.Make(key, testPath, b, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// captureToken opens a real session over HTTP/1.1 (as a CDN-fronted client
// would) and returns the token it used.
func captureToken(t *testing.T, r *relay, bound bool) string {
	c, err := h1TLSConn(r.ep.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tok string
	if bound {
		tok = boundToken(t, r.ep.Key, c, time.Now())
	} else if tok, err = token.Make(r.ep.Key, testPath, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan transport.Conn, 1)
	go func() {
		s, err := r.ln.Accept(context.Background())
		if err == nil {
			accepted <- s
		}
	}()
	io.WriteString(c, httpReq("POST", testPath, tok, "")(c))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("real session got %d", resp.StatusCode)
	}
	within(t, "accept captured session", accepted).Close()
	return tok
}

func TestProbeResistance(t *testing.T) {
	ref := startReference(t)
	r := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default() })
	ru := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default(); c.AllowUnbound = true })

	replayedBound := captureToken(t, r, true)
	replayedUnbound := captureToken(t, ru, false)
	garbage := strings.Repeat("A", 76)

	rng := mrand.New(mrand.NewChaCha8([32]byte{1}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	badHello := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, random(512)...)
	badHello[5] = 0x01 // ClientHello, with a garbage body

	type probe struct {
		name  string
		relay *relay
		run   func(addr string) (any, error)
	}
	rawCase := func(name string, payload []byte) probe {
		return probe{name, r, func(addr string) (any, error) { return rawProbe(addr, payload) }}
	}
	h1Case := func(name string, rl *relay, req func(*tls.Conn) string) probe {
		return probe{name, rl, func(addr string) (any, error) { return h1Probe(addr, req) }}
	}
	expired := func(c *tls.Conn) string {
		return httpReq("POST", testPath, boundToken(t, r.ep.Key, c, time.Now().Add(-10*time.Minute)), "hello")(c)
	}
	validButGET := func(c *tls.Conn) string {
		return httpReq("GET", testPath, boundToken(t, r.ep.Key, c, time.Now()), "")(c)
	}
	validOtherPath := func(c *tls.Conn) string {
		return httpReq("POST", "/api/v2/other", boundToken(t, r.ep.Key, c, time.Now()), "hello")(c)
	}

	probes := []probe{
		rawCase("random 1B", random(1)),
		rawCase("random 100B", random(100)),
		rawCase("random 1KiB", random(1<<10)),
		rawCase("random 5KiB", random(5<<10)),
		rawCase("random 17KiB", random(17<<10)),
		rawCase("bad ClientHello", badHello),
		rawCase("plain HTTP", []byte("GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n")),
		rawCase("plain HTTP POST session", []byte("POST "+testPath+" HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 0\r\n\r\n")),
		rawCase("empty", nil),
		h1Case("GET /", r, httpReq("GET", "/", "", "")),
		h1Case("GET /about", r, httpReq("GET", "/about", "", "")),
		h1Case("GET missing", r, httpReq("GET", "/wp-login.php", "", "")),
		h1Case("GET session path", r, httpReq("GET", testPath, "", "")),
		h1Case("POST session path no token", r, httpReq("POST", testPath, "", "hello")),
		h1Case("POST session path garbage token", r, httpReq("POST", testPath, garbage, "hello")),
		h1Case("POST session path short token", r, httpReq("POST", testPath, "abc", "hello")),
		h1Case("POST session path expired token", r, expired),
		h1Case("POST session path replayed bound token", r, httpReq("POST", testPath, replayedBound, "hello")),
		h1Case("POST session path replayed unbound token", ru, httpReq("POST", testPath, replayedUnbound, "hello")),
		h1Case("GET session path valid token", r, validButGET),
		h1Case("POST other path valid token", r, validOtherPath),
		h1Case("huge header", r, httpReq("GET", "/", strings.Repeat("x", 100<<10), "")),
		{"utls Chrome hello", r, func(addr string) (any, error) { return utlsProbe(addr), nil }},
		{"crypto/tls default", r, func(addr string) (any, error) {
			return tlsProbe(addr, &tls.Config{InsecureSkipVerify: true}), nil
		}},
		{"TLS 1.2 only", r, func(addr string) (any, error) {
			return tlsProbe(addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, ServerName: "relay.test"}), nil
		}},
		{"TLS 1.0 only", r, func(addr string) (any, error) {
			return tlsProbe(addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}), nil
		}},
		{"unknown ALPN", r, func(addr string) (any, error) {
			return tlsProbe(addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"postern/1"}}), nil
		}},
		{"other SNI", r, func(addr string) (any, error) {
			return tlsProbe(addr, &tls.Config{InsecureSkipVerify: true, ServerName: "www.example.com", NextProtos: []string{"h2", "http/1.1"}}), nil
		}},
	}

	t.Run("probes", func(t *testing.T) {
		for _, p := range probes {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				got, err := p.run(p.relay.ep.Addr)
				if err != nil {
					t.Fatalf("relay: %v", err)
				}
				want, err := p.run(ref)
				if err != nil {
					t.Fatalf("reference: %v", err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("relay and reference differ\nrelay:     %+v\nreference: %+v", short(got), short(want))
				}
			})
		}
	})
	t.Run("outcomes", func(t *testing.T) {
		// Runs after all parallel probes above have finished.
		if n := r.obs.Get(transport.OutcomeReplay); n != 0 {
			t.Errorf("replay reported %d times, want 0 (a bound token replayed on another connection is a bad token)", n)
		}
		if n := ru.obs.Get(transport.OutcomeReplay); n != 1 {
			t.Errorf("unbound listener: replay reported %d times, want 1", n)
		}
		// No token, garbage, short, expired, replayed bound.
		if n := r.obs.Get(transport.OutcomeAuthFailed); n != 5 {
			t.Errorf("auth_failed reported %d times, want 5", n)
		}
		// The captured session.
		if n := r.obs.Get(transport.OutcomeOK); n != 1 {
			t.Errorf("ok reported %d times, want 1", n)
		}
		if r.obs.Get(transport.OutcomeCover) == 0 {
			t.Error("cover never reported")
		}
	})
}

func short(v any) string {
	s := fmt.Sprintf("%+v", v)
	if len(s) > 600 {
		s = s[:600] + "…"
	}
	return s
}
