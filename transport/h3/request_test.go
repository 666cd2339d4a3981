package h3

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/httpsession"
	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/http3"
)

// The session request is a streaming POST: pseudo-headers and fetch
// headers in the browser profile's order, no content-length, no host.
func TestRequestHeadersOrder(t *testing.T) {
	req, _ := http.NewRequest(http.MethodPost, "https://relay.example:8443/api/v2/sync", nil)
	req.ContentLength = -1
	headers := browser.Current.FetchPOST("https://relay.example:8443", httpsession.ContentType, "sid=tok")
	for i := len(headers) - 1; i >= 0; i-- { // reverse: the map must not decide the order
		req.Header.Set(headers[i].Name, headers[i].Value)
	}
	req.Header.Set("Content-Length", "0")
	req.Header.Set("Connection", "keep-alive")
	req.Header.Set("X-Extra", "1")
	req.Header.Set("A-Extra", "2")
	frameBytes, err := requestHeaders(req)
	if err != nil {
		t.Fatal(err)
	}
	fr := &frameReader{r: bytes.NewReader(frameBytes)}
	typ, length, err := fr.next()
	if err != nil || typ != frameHeaders {
		t.Fatalf("first frame %#x, %v; want HEADERS", typ, err)
	}
	block := make([]byte, length)
	if _, err := io.ReadFull(fr.r, block); err != nil {
		t.Fatal(err)
	}
	var names []string
	decode := qpack.NewDecoder().Decode(block)
	for {
		hf, err := decode()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hf.Name)
		switch hf.Name {
		case ":method":
			if hf.Value != "POST" {
				t.Errorf(":method %q", hf.Value)
			}
		case ":authority":
			if hf.Value != "relay.example:8443" {
				t.Errorf(":authority %q", hf.Value)
			}
		case ":path":
			if hf.Value != "/api/v2/sync" {
				t.Errorf(":path %q", hf.Value)
			}
		}
	}
	want := []string{":method", ":authority", ":scheme", ":path"}
	for _, h := range headers {
		want = append(want, h.Name)
	}
	want = append(want, "a-extra", "x-extra")
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("field order\n got %v\nwant %v", names, want)
	}
}

// The relay's HTTP/3 server sees the session request as a POST with a
// streamed body: no content-length, the browser's fetch headers, and the
// client's DATA frames as the body.
func TestRequestOnTheWire(t *testing.T) {
	tc := selfSigned(t)
	type seen struct {
		method, path string
		length       int64
		header       http.Header
	}
	got := make(chan seen, 1)
	srv := &http3.Server{
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{tc.cert}}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound) // the cover site: the dial fails with ClassAuth
			got <- seen{r.Method, r.URL.Path, r.ContentLength, r.Header}
		}),
		Logger: discardLogger,
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(udp)
	t.Cleanup(func() { srv.Close(); udp.Close() })
	ep := transport.Endpoint{Transport: Name, Addr: udp.LocalAddr().String(), SNI: testSNI, Path: testPath, Key: testKey, CertSHA256: tc.pin}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := New().Dial(ctx, ep); transport.ClassOf(err) != transport.ClassAuth {
		t.Fatalf("Dial: %v, want ClassAuth (the cover site answered)", err)
	}
	var s seen
	select {
	case s = <-got:
	case <-ctx.Done():
		t.Fatal("the server saw no request")
	}
	if s.method != http.MethodPost || s.path != testPath {
		t.Errorf("request %s %s, want POST %s", s.method, s.path, testPath)
	}
	if s.length != -1 || s.header.Get("Content-Length") != "" {
		t.Errorf("content length %d, header %q: want a streamed body without content-length", s.length, s.header.Get("Content-Length"))
	}
	for _, h := range browser.Current.FetchPOST("https://"+net.JoinHostPort(testSNI, strconv.Itoa(udp.LocalAddr().(*net.UDPAddr).Port)), httpsession.ContentType, "") {
		if v := s.header.Get(h.Name); v != h.Value {
			t.Errorf("header %s: %q, want %q", h.Name, v, h.Value)
		}
	}
	if !strings.HasPrefix(s.header.Get("Cookie"), "sid=") {
		t.Errorf("cookie %q, want the session token", s.header.Get("Cookie"))
	}
}
