package httpsession

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/internal/token"
)

const (
	testName = "test"
	testPath = "/api/v2/sync"
)

var (
	testKey     = bytes.Repeat([]byte{0x5a}, transport.KeySize)
	testBinding = bytes.Repeat([]byte{0xb1}, token.ExporterLen)
)

func testEndpoint() transport.Endpoint {
	return transport.Endpoint{Transport: testName, Addr: "192.0.2.1:8443", SNI: "relay.test", Path: testPath, Key: testKey}
}

func TestNewTarget(t *testing.T) {
	tgt, err := NewTarget(testName, testEndpoint())
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Authority != "relay.test:8443" || tgt.SNI != "relay.test" || tgt.Host != "192.0.2.1" || tgt.Port != "8443" || tgt.LocalIP != nil {
		t.Errorf("target %+v", tgt)
	}
	ep := testEndpoint()
	ep.Addr, ep.SNI, ep.LocalAddr = "relay.test:443", "", "::1"
	if tgt, err = NewTarget(testName, ep); err != nil {
		t.Fatal(err)
	}
	if tgt.Authority != "relay.test" || tgt.SNI != "relay.test" || !tgt.LocalIP.Equal(net.IPv6loopback) {
		t.Errorf("port 443 target %+v", tgt)
	}
	bad := map[string]func(*transport.Endpoint){
		"no port":           func(ep *transport.Endpoint) { ep.Addr = "192.0.2.1" },
		"no host":           func(ep *transport.Endpoint) { ep.Addr = ":443" },
		"port 0":            func(ep *transport.Endpoint) { ep.Addr = "192.0.2.1:0" },
		"port name":         func(ep *transport.Endpoint) { ep.Addr = "192.0.2.1:https" },
		"short key":         func(ep *transport.Endpoint) { ep.Key = ep.Key[:31] },
		"relative path":     func(ep *transport.Endpoint) { ep.Path = "sync" },
		"short pin":         func(ep *transport.Endpoint) { ep.CertSHA256 = make([]byte, 20) },
		"local name":        func(ep *transport.Endpoint) { ep.LocalAddr = "localhost" },
		"port out of range": func(ep *transport.Endpoint) { ep.Addr = "192.0.2.1:65536" },
	}
	for name, edit := range bad {
		t.Run(name, func(t *testing.T) {
			ep := testEndpoint()
			edit(&ep)
			_, err := NewTarget(testName, ep)
			if transport.ClassOf(err) != transport.ClassInvalid || !errors.Is(err, transport.ErrInvalid) {
				t.Fatalf("%v, want ClassInvalid", err)
			}
			if strings.Contains(err.Error(), "192.0.2.1") {
				t.Errorf("%q repeats the address", err)
			}
		})
	}
}

func selfSignedDER(t *testing.T) []byte {
	t.Helper()
	der, _ := selfSigned(t)
	return der
}

func selfSigned(t *testing.T) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func TestPinCheck(t *testing.T) {
	der := selfSignedDER(t)
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pin := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	tgt, err := NewTarget(testName, testEndpoint())
	if err != nil {
		t.Fatal(err)
	}
	if tgt.PinCheck() != nil {
		t.Fatal("a check without a pin")
	}
	ep := testEndpoint()
	ep.CertSHA256 = pin[:]
	if tgt, err = NewTarget(testName, ep); err != nil {
		t.Fatal(err)
	}
	pin[0] ^= 1 // the target keeps its own copy
	check := tgt.PinCheck()
	if err := check([][]byte{der}, nil); err != nil {
		t.Errorf("right key: %v", err)
	}
	other := selfSignedDER(t)
	for name, certs := range map[string][][]byte{"other key": {other}, "no certificate": nil, "garbage": {[]byte("junk")}} {
		err := check(certs, nil)
		if c := transport.ClassOf(Classify(testName, "handshake", err, nil)); c != transport.ClassTLS {
			t.Errorf("%s: %v classified %v, want tls", name, err, c)
		}
	}
}

// fakeRelay is a Wire whose RoundTrip plays a relay in memory: it checks
// the session request, answers status and echoes the request body.
type fakeRelay struct {
	t       *testing.T
	status  int
	binding []byte // what Export returns
	seen    chan *http.Request
	closed  chan struct{}
	fail    error // RoundTrip's error, if set
	hang    bool  // RoundTrip waits for the request's context
}

func newFakeRelay(t *testing.T, status int) *fakeRelay {
	return &fakeRelay{t: t, status: status, binding: testBinding, seen: make(chan *http.Request, 1), closed: make(chan struct{})}
}

func (f *fakeRelay) wire() Wire {
	return Wire{
		Export: func(label string, ctx []byte, n int) ([]byte, error) {
			if f.binding == nil {
				return nil, errors.New("no exporter")
			}
			return f.binding, nil
		},
		RoundTrip: f.roundTrip,
		Classify:  func(op string, err error) error { return Classify(testName, op, err, nil) },
		Close:     func() { close(f.closed) },
	}
}

func (f *fakeRelay) roundTrip(req *http.Request) (*http.Response, error) {
	f.seen <- req
	if f.hang {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	if f.fail != nil {
		return nil, f.fail
	}
	pr, pw := io.Pipe()
	if f.status == http.StatusOK {
		go func() {
			_, err := io.Copy(pw, req.Body)
			pw.CloseWithError(err)
		}()
	} else {
		pw.Close()
	}
	return &http.Response{StatusCode: f.status, Body: pr}, nil
}

func openFake(t *testing.T, f *fakeRelay, edit func(*transport.Endpoint)) (transport.Conn, error) {
	t.Helper()
	ep := testEndpoint()
	if edit != nil {
		edit(&ep)
	}
	tgt, err := NewTarget(testName, ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return tgt.Open(ctx, f.wire())
}

// TestSessionRequest: the request is the one the package documentation
// describes, with the profile's headers and a token bound to the
// connection.
func TestSessionRequest(t *testing.T) {
	f := newFakeRelay(t, http.StatusOK)
	c, err := openFake(t, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := <-f.seen
	if req.Method != http.MethodPost || req.URL.String() != "https://relay.test:8443"+testPath || req.Host != "relay.test:8443" || req.ContentLength != -1 {
		t.Errorf("request %s %s host %s length %d", req.Method, req.URL, req.Host, req.ContentLength)
	}
	want := map[string]string{
		"User-Agent":   browser.Current.UserAgent(),
		"Sec-Ch-Ua":    browser.Current.Header("sec-ch-ua"),
		"Content-Type": ContentType,
		"Origin":       "https://relay.test:8443",
		"Referer":      "https://relay.test:8443/",
		"Accept":       "*/*",
	}
	for k, v := range want {
		if got := req.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if len(req.Header) != len(browser.Current.FetchHeaders) {
		t.Errorf("%d headers, want the profile's %d", len(req.Header), len(browser.Current.FetchHeaders))
	}
	ck, err := req.Cookie(token.Cookie)
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(testKey, testPath, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Verify(ck.Value, testBinding); got != transport.OutcomeOK {
		t.Errorf("token verifies as %q on its connection", got)
	}
}

func TestClientConn(t *testing.T) {
	f := newFakeRelay(t, http.StatusOK)
	c, err := openFake(t, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) || transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("Write after CloseWrite: %v", err)
	}
	for _, set := range []func(time.Time) error{c.SetDeadline, c.SetReadDeadline, c.SetWriteDeadline} {
		if err := set(time.Now()); !errors.Is(err, transport.ErrDeadlineUnsupported) {
			t.Errorf("deadline: %v", err)
		}
	}
	if c.LocalAddr() != nil || c.RemoteAddr() != nil {
		t.Error("addresses not the wire's")
	}
	c.Close()
	c.Close()
	<-f.closed // the wire was torn down, once
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := c.CloseWrite(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("CloseWrite after Close: %v", err)
	}
}

// A request body closed under the session (the HTTP client gave up on the
// stream) makes Write fail as a reset; a broken response body makes Read
// fail classified.
func TestClientConnStreamFailure(t *testing.T) {
	f := newFakeRelay(t, http.StatusOK)
	c, err := openFake(t, f, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := <-f.seen
	req.Body.Close()
	if _, err := c.Write([]byte("x")); transport.ClassOf(err) != transport.ClassReset {
		t.Errorf("Write on a closed request body: %v, want ClassReset", err)
	}
	cc := c.(*clientConn)
	cc.r = io.MultiReader(strings.NewReader("ab"), errReader{io.ErrUnexpectedEOF})
	if _, err := io.ReadAll(c); transport.ClassOf(err) != transport.ClassReset {
		t.Errorf("Read of a truncated body: %v, want ClassReset", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestOpenDeframes(t *testing.T) {
	f := newFakeRelay(t, http.StatusOK)
	w := f.wire()
	w.Deframe = func(r io.Reader) io.Reader { return io.MultiReader(strings.NewReader(">"), r) }
	tgt, err := NewTarget(testName, testEndpoint())
	if err != nil {
		t.Fatal(err)
	}
	c, err := tgt.Open(t.Context(), w)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.CloseWrite()
	if got, err := io.ReadAll(c); string(got) != ">" || err != nil {
		t.Errorf("read %q, %v through Deframe", got, err)
	}
}

func TestOpenErrors(t *testing.T) {
	refused := newFakeRelay(t, http.StatusNotFound)
	noExporter := newFakeRelay(t, http.StatusOK)
	noExporter.binding = nil
	broken := newFakeRelay(t, http.StatusOK)
	broken.fail = io.ErrUnexpectedEOF
	hanging := newFakeRelay(t, http.StatusOK)
	hanging.hang = true
	cases := []struct {
		name string
		f    *fakeRelay
		want transport.Class
	}{
		{"cover site answers", refused, transport.ClassAuth},
		{"no TLS exporter", noExporter, transport.ClassTLS},
		{"stream breaks", broken, transport.ClassReset},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := openFake(t, c.f, nil)
			if transport.ClassOf(err) != c.want {
				t.Errorf("%v, want %v", err, c.want)
			}
		})
	}
	t.Run("unbound needs no exporter", func(t *testing.T) {
		c, err := openFake(t, noExporter, func(ep *transport.Endpoint) { ep.Unbound = true })
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
	t.Run("caller gives up", func(t *testing.T) {
		tgt, err := NewTarget(testName, testEndpoint())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		go func() { <-hanging.seen; cancel() }()
		if _, err := tgt.Open(ctx, hanging.wire()); transport.ClassOf(err) != transport.ClassCanceled {
			t.Errorf("%v, want ClassCanceled", err)
		}
	})
}

// TestRefusalNamesClockSkew: a refused session says whether the clocks
// are the likely cause, from the cover site's Date header.
func TestRefusalNamesClockSkew(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, date, want string
	}{
		{"relay ahead", now.Add(10 * time.Minute).Format(http.TimeFormat), "the relay's clock is 10m0s ahead of this device's, more than the 2m0s a token allows; set this device's clock"},
		{"relay behind", now.Add(-5 * time.Minute).Format(http.TimeFormat), "the relay's clock is 5m0s behind this device's"},
		{"clocks agree", now.Add(30 * time.Second).Format(http.TimeFormat), "the clocks agree, so either the descriptor's key or path is wrong, or the relay is at its session limits (retry later)"},
		{"no date", "", "check the descriptor's key and path and this device's clock, or retry later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := refusal(404, tc.date, now)
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "relay answered 404") {
				t.Fatalf("got %q, want it to contain %q", err, tc.want)
			}
		})
	}
}
