package h3

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/transporttest"
)

// Probe resistance: a relay listener and a stock quic-go http3.Server with the
// same certificate and the same cover handler must answer every probe alike.

// startStock starts a stock http3.Server serving h on 127.0.0.1.
func startStock(t *testing.T, h http.Handler) string {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{
		Handler:   h,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned(t).cert}},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(udp)
	}()
	t.Cleanup(func() {
		srv.Close()
		udp.Close()
		<-done
	})
	return udp.LocalAddr().String()
}

// prober is one QUIC connection of an HTTP/3 client that looks at a server
// from the outside.
type prober struct {
	qc  *quic.Conn
	tr  *quic.Transport
	udp *net.UDPConn
	cc  *http3.ClientConn
	ekm []byte // the connection's TLS exporter value for session tokens
}

func newProber(t *testing.T, addr string) *prober {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	qc, err := tr.Dial(ctx, raddr, &tls.Config{
		ServerName:         testSNI,
		InsecureSkipVerify: true,
		NextProtos:         []string{http3.NextProtoH3},
	}, nil)
	if err != nil {
		t.Fatalf("probe dial: %v", err)
	}
	cs := qc.ConnectionState().TLS
	ekm, err := cs.ExportKeyingMaterial(transport.ExporterLabel, nil, transport.ExporterLen)
	if err != nil {
		t.Fatalf("exporter on a QUIC connection: %v", err)
	}
	p := &prober{qc: qc, tr: tr, udp: udp, ekm: ekm,
		cc: (&http3.Transport{DisableCompression: true}).NewClientConn(qc)}
	t.Cleanup(p.close)
	return p
}

func (p *prober) close() {
	p.qc.CloseWithError(0, "")
	p.tr.Close()
	p.udp.Close()
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) String() string {
	return fmt.Sprintf("%d %v %q", a.status, a.header, a.body)
}

// do sends one request and reads the whole answer. A 200 on the session
// path is a session: do proves it is live with one echoed byte and returns
// without a body.
func (p *prober) do(t *testing.T, method, path, cookie string, body []byte) answer {
	t.Helper()
	req := &http.Request{
		Method: method,
		URL:    &url.URL{Scheme: "https", Host: testSNI, Path: path},
		Host:   testSNI,
		Header: http.Header{"User-Agent": {"probe/1.0"}},
	}
	var pw *io.PipeWriter
	switch {
	case method == http.MethodPost && path == testPath:
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		req.Body, req.ContentLength = pr, -1
		defer pw.Close()
	case body != nil:
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	if cookie != "" {
		req.Header.Set("Cookie", transport.TokenCookie+"="+cookie)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, err := p.cc.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	a := answer{status: res.StatusCode, header: res.Header.Clone()}
	a.header.Del("Date")
	if res.StatusCode == http.StatusOK && pw != nil {
		go pw.Write([]byte{0x42})
		var b [1]byte
		if _, err := io.ReadFull(res.Body, b[:]); err != nil || b[0] != 0x42 {
			t.Fatalf("session did not echo: %v", err)
		}
		return a
	}
	if pw != nil {
		pw.Write(body)
		pw.Close()
	}
	a.body, err = io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, path, err)
	}
	return a
}

func (p *prober) token(t *testing.T, binding []byte, when time.Time) string {
	t.Helper()
	tok, err := transport.MakeToken(testKey, testPath, binding, when)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestProbeHTTP(t *testing.T) {
	for _, cv := range []struct {
		name  string
		relay http.Handler // the listener's Cover (nil: built-in)
		stock http.Handler
	}{
		{"test cover", testCover, testCover},
		{"default cover", nil, cover.Default()},
	} {
		t.Run(cv.name, func(t *testing.T) { testProbeHTTP(t, cv.relay, cv.stock) })
	}
}

func testProbeHTTP(t *testing.T, relayCover, stockCover http.Handler) {
	r := startRelay(t, nil, func(cfg *transport.ListenConfig) { cfg.Cover = relayCover })
	serveEcho(t, r.ln)
	targets := []struct {
		name  string
		addr  string
		relay bool
	}{
		{"relay", r.ep.Addr, true},
		{"stock", startStock(t, stockCover), false},
	}
	garbage := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xee}, transport.TokenSize))
	now := time.Now()
	body := []byte("field=value")

	tests := []struct {
		name string
		want transport.Outcome // what the relay must report
		// probe runs the probe on its own connection(s) to addr and returns
		// the answer to compare. isRelay lets preparatory steps check that
		// a real session really worked against the relay.
		probe func(t *testing.T, addr string, isRelay bool) answer
	}{
		{"GET /", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "GET", "/", "", nil)
		}},
		{"HEAD /", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "HEAD", "/", "", nil)
		}},
		{"GET /style.css", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "GET", "/style.css", "", nil)
		}},
		{"GET /missing", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "GET", "/missing", "", nil)
		}},
		{"POST / form", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "POST", "/", "", body)
		}},
		{"GET path", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "GET", testPath, "", nil)
		}},
		{"GET path valid token", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "GET", testPath, p.token(t, p.ekm, now), nil)
		}},
		{"PUT path valid token", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "PUT", testPath, p.token(t, p.ekm, now), body)
		}},
		{"POST other path valid token", transport.OutcomeCover, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "POST", testPath+"x", p.token(t, p.ekm, now), body)
		}},
		{"POST path no token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "POST", testPath, "", body)
		}},
		{"POST path garbage token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "POST", testPath, garbage, body)
		}},
		{"POST path short token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			return newProber(t, addr).do(t, "POST", testPath, "abc", body)
		}},
		{"POST path expired token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "POST", testPath, p.token(t, p.ekm, now.Add(-10*time.Minute)), body)
		}},
		{"POST path future token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "POST", testPath, p.token(t, p.ekm, now.Add(10*time.Minute)), body)
		}},
		{"POST path unbound token", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			p := newProber(t, addr)
			return p.do(t, "POST", testPath, p.token(t, nil, now), body)
		}},
		{"POST path token bound to another connection", transport.OutcomeAuthFailed, func(t *testing.T, addr string, _ bool) answer {
			other := newProber(t, addr)
			p := newProber(t, addr)
			return p.do(t, "POST", testPath, p.token(t, other.ekm, now), body)
		}},
		{"POST path replayed token, same connection", transport.OutcomeReplay, func(t *testing.T, addr string, isRelay bool) answer {
			p := newProber(t, addr)
			tok := p.token(t, p.ekm, now)
			first := p.do(t, "POST", testPath, tok, nil) // a real session
			if isRelay && first.status != http.StatusOK {
				t.Fatalf("real session refused: %v", first)
			}
			return p.do(t, "POST", testPath, tok, body)
		}},
		{"POST path replayed token, new connection", transport.OutcomeAuthFailed, func(t *testing.T, addr string, isRelay bool) answer {
			p := newProber(t, addr)
			tok := p.token(t, p.ekm, now)
			first := p.do(t, "POST", testPath, tok, nil)
			if isRelay && first.status != http.StatusOK {
				t.Fatalf("real session refused: %v", first)
			}
			return newProber(t, addr).do(t, "POST", testPath, tok, body)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.obs.Get(tt.want)
			var got [2]answer
			for i, tg := range targets {
				got[i] = tt.probe(t, tg.addr, tg.relay)
			}
			if d := r.obs.Get(tt.want) - before; d != 1 {
				t.Errorf("relay reported %q %d times for the probe, want 1", tt.want, d)
			}
			if got[0].status == http.StatusOK && got[1].status != http.StatusOK && strings.HasPrefix(tt.name, "POST path") {
				t.Fatalf("relay opened a session for a probe")
			}
			if got[0].status != got[1].status {
				t.Errorf("status: relay %d, stock %d", got[0].status, got[1].status)
			}
			if !headersEqual(got[0].header, got[1].header) {
				t.Errorf("headers differ:\nrelay %v\nstock %v", got[0].header, got[1].header)
			}
			if !bytes.Equal(got[0].body, got[1].body) {
				t.Errorf("body differs:\nrelay %q\nstock %q", got[0].body, got[1].body)
			}
		})
	}
}

func headersEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// Datagrams that are not a QUIC handshake must meet the same fate at the
// relay as at a stock server: silence, or the same version negotiation.
func TestProbeUDP(t *testing.T) {
	r := startRelay(t, nil, nil)
	targets := [2]string{r.ep.Addr, startStock(t, testCover)}
	rng := rand.New(rand.NewChaCha8([32]byte{'p', 'r', 'o', 'b', 'e'}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// longHeader builds a QUIC long-header packet of n bytes: first byte
	// (form, fixed bit, type), version, 8-byte DCID and SCID, random rest.
	longHeader := func(n int, first byte, version uint32) []byte {
		b := random(n)
		b[0] = first | byte(rng.Uint32()&0x0f)
		b[1], b[2], b[3], b[4] = byte(version>>24), byte(version>>16), byte(version>>8), byte(version)
		b[5] = 8
		b[14] = 8
		return b
	}
	shortHeader := func(n int) []byte {
		b := random(n)
		b[0] = 0x40 | b[0]&0x3f
		return b
	}
	tests := []struct {
		name      string
		datagram  []byte
		wantReply bool // a stock server answers (guards the comparison itself)
	}{
		{"random 1 B", random(1), false},
		{"random 100 B", random(100), false},
		{"random 1200 B", random(1200), false},
		{"random 1500 B", random(1500), false},
		{"short header 1200 B", shortHeader(1200), false},
		{"Initial v1 random 1200 B", longHeader(1200, 0xc0, 1), false},
		{"Initial v1 random 300 B", longHeader(300, 0xc0, 1), false},
		{"Handshake v1 random 1200 B", longHeader(1200, 0xe0, 1), false},
		{"unknown version 1200 B", longHeader(1200, 0xc0, 0x1a2a3a4a), true},
		{"unknown version 300 B", longHeader(300, 0xc0, 0x1a2a3a4a), false},
	}
	// The first byte of random cases decides their fate; make sure the random
	// 1200/1500 B cases do not happen to be long headers with an unknown
	// version (that is covered explicitly).
	for _, i := range []int{2, 3} {
		tests[i].datagram[0] &^= 0x80
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got [2]string
			errs := make(chan error, 2)
			for i, addr := range targets {
				go func() {
					var err error
					got[i], err = udpProbe(addr, tt.datagram)
					errs <- err
				}()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if got[0] != got[1] {
				t.Errorf("relay answered %s, stock answered %s", got[0], got[1])
			}
			if (got[1] != "nothing") != tt.wantReply {
				t.Errorf("stock answered %s; test expects reply=%v", got[1], tt.wantReply)
			}
		})
	}
	// The relay still works after the garbage.
	serveEcho(t, r.ln)
	transporttest.EchoRoundTrip(t, dialT(t, r.ep), []byte("after the probes"))
}

// udpProbe sends one datagram from a fresh socket and describes the reply
// that arrives within a short bounded wait.
func udpProbe(addr string, datagram []byte) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write(datagram); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return "nothing", nil
	}
	if err != nil {
		return "error " + err.Error(), nil
	}
	b := buf[:n]
	if n >= 5 && b[0]&0x80 != 0 {
		return fmt.Sprintf("long header, version %x, %d bytes", b[1:5], n), nil
	}
	return fmt.Sprintf("short header, %d bytes", n), nil
}

// A token is only good on the QUIC connection whose exporter it is bound to.
func TestTokenBinding(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	a, b := newProber(t, r.ep.Addr), newProber(t, r.ep.Addr)
	if bytes.Equal(a.ekm, b.ekm) {
		t.Fatal("two QUIC connections share an exporter value")
	}
	now := time.Now()
	got := b.do(t, "POST", testPath, b.token(t, a.ekm, now), nil)
	want := newProber(t, r.ep.Addr).do(t, "GET", "/elsewhere", "", nil) // the cover's 404
	if got.status != want.status || !bytes.Equal(got.body, want.body) {
		t.Errorf("token bound to another connection: got %v, want the cover's %v", got, want)
	}
	if n := r.obs.Get(transport.OutcomeAuthFailed); n != 1 {
		t.Errorf("auth_failed reported %d times, want 1", n)
	}
	// Control: the same kind of token, bound to the right connection, works.
	if got := b.do(t, "POST", testPath, b.token(t, b.ekm, now), nil); got.status != http.StatusOK {
		t.Errorf("token bound to its own connection: %v, want a session", got)
	}
}
