package httpsession

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

var testCover = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Cover", "yes")
	w.WriteHeader(http.StatusTeapot)
	io.WriteString(w, "cover "+r.Method+" "+r.URL.Path)
})

func testListenConfig(obs *transporttest.Outcomes) transport.ListenConfig {
	return transport.ListenConfig{
		Addr: "127.0.0.1:0", Certificate: tls.Certificate{Certificate: [][]byte{{1}}},
		Path: testPath, Key: testKey, Cover: testCover, Observe: obs.Observe,
	}
}

// sessionStart is a Start that answers, offers a pipe to Accept and keeps
// its slot until released by the test.
type sessionStart struct {
	g        *Gate
	releases chan func()
}

func (s *sessionStart) start(w http.ResponseWriter, r *http.Request, release func()) {
	WriteAccepted(w)
	a, b := net.Pipe()
	b.Close()
	if !s.g.Offer(r.Context(), pipeConn{a}) {
		a.Close()
	}
	s.releases <- release
}

type pipeConn struct{ net.Conn }

func (pipeConn) CloseWrite() error { return nil }

func newTestGate(t *testing.T, maxSessions int) (*Gate, *sessionStart, *transporttest.Outcomes) {
	t.Helper()
	return newGateWith(t, maxSessions, func(*transport.ListenConfig) {})
}

// newGateWith is newTestGate with the listener's configuration edited.
func newGateWith(t *testing.T, maxSessions int, edit func(*transport.ListenConfig)) (*Gate, *sessionStart, *transporttest.Outcomes) {
	t.Helper()
	obs := &transporttest.Outcomes{}
	s := &sessionStart{releases: make(chan func(), 16)}
	cfg := testListenConfig(obs)
	edit(&cfg)
	g, err := NewGate(testName, cfg, maxSessions, func(*http.Request) []byte { return testBinding }, s.start)
	if err != nil {
		t.Fatal(err)
	}
	s.g = g
	go func() { // take every session offered
		for {
			c, err := g.Accept(context.Background())
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(g.Shut)
	return g, s, obs
}

func mint(t *testing.T, binding []byte, when time.Time) string {
	t.Helper()
	tok, err := token.Make(testKey, testPath, binding, when)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func serve(g *Gate, method, path, tok string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "https://relay.test"+path, strings.NewReader("body"))
	if tok != "" {
		r.AddCookie(&http.Cookie{Name: token.Cookie, Value: tok})
	}
	w := httptest.NewRecorder()
	g.ServeHTTP(w, r)
	return w
}

func TestGateDecides(t *testing.T) {
	g, s, obs := newTestGate(t, 0)
	now := time.Now()
	replayed := mint(t, testBinding, now)
	cases := []struct {
		name    string
		method  string
		path    string
		tok     string
		outcome transport.Outcome
	}{
		{"GET /", "GET", "/", "", transport.OutcomeCover},
		{"GET session path, valid token", "GET", testPath, mint(t, testBinding, now), transport.OutcomeCover},
		{"POST elsewhere, valid token", "POST", "/other", mint(t, testBinding, now), transport.OutcomeCover},
		{"POST no token", "POST", testPath, "", transport.OutcomeAuthFailed},
		{"POST forged token", "POST", testPath, strings.Repeat("A", 76), transport.OutcomeAuthFailed},
		{"POST expired token", "POST", testPath, mint(t, testBinding, now.Add(-time.Hour)), transport.OutcomeAuthFailed},
		{"POST unbound token", "POST", testPath, mint(t, nil, now), transport.OutcomeAuthFailed},
		{"POST token of another connection", "POST", testPath, mint(t, testKey, now), transport.OutcomeAuthFailed},
		{"POST valid token", "POST", testPath, replayed, transport.OutcomeOK},
		{"POST replayed token", "POST", testPath, replayed, transport.OutcomeReplay},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := obs.Get(c.outcome)
			w := serve(g, c.method, c.path, c.tok)
			if obs.Get(c.outcome) != before+1 {
				t.Errorf("outcome %q not reported", c.outcome)
			}
			if c.outcome == transport.OutcomeOK {
				(<-s.releases)()
				if w.Code != http.StatusOK || w.Header().Get("Content-Type") != ContentType || w.Header().Get("Cache-Control") != "no-store" {
					t.Errorf("session answer %d %v", w.Code, w.Header())
				}
				return
			}
			want := c.path
			if c.path == testPath {
				want = g.decoy // the cover site never sees the secret path
			}
			if w.Code != http.StatusTeapot || w.Body.String() != "cover "+c.method+" "+want {
				t.Errorf("answer %d %q, want the cover site's", w.Code, w.Body)
			}
		})
	}
}

func TestGateCap(t *testing.T) {
	g, s, obs := newTestGate(t, 1)
	if w := serve(g, "POST", testPath, mint(t, testBinding, time.Now())); w.Code != http.StatusOK {
		t.Fatalf("first session: %d", w.Code)
	}
	release := <-s.releases
	if w := serve(g, "POST", testPath, mint(t, testBinding, time.Now())); w.Code != http.StatusTeapot || obs.Get(transport.OutcomeBusy) != 1 {
		t.Fatalf("second session while full: %d, busy %d", w.Code, obs.Get(transport.OutcomeBusy))
	}
	release()
	release() // a second release must not free another session's slot
	if w := serve(g, "POST", testPath, mint(t, testBinding, time.Now())); w.Code != http.StatusOK {
		t.Fatalf("session after release: %d", w.Code)
	}
	<-s.releases
	if n := g.limits.held(); n != 1 {
		t.Errorf("%d slots held, want 1", n)
	}
}

func TestGateShut(t *testing.T) {
	g, _, obs := newTestGate(t, 0)
	g.Shut()
	g.Shut()
	g.Wait()
	if w := serve(g, "POST", testPath, mint(t, testBinding, time.Now())); w.Code != http.StatusTeapot || obs.Get(transport.OutcomeOK) != 0 {
		t.Errorf("session after Shut: %d", w.Code)
	}
	if n := g.limits.held(); n != 0 {
		t.Errorf("%d slots held after a refused session", n)
	}
	if _, err := g.Accept(context.Background()); !errors.Is(err, net.ErrClosed) || transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("Accept after Shut: %v", err)
	}
	if g.Offer(context.Background(), pipeConn{}) {
		t.Error("Offer after Shut succeeded")
	}
	select {
	case <-g.Closed():
	default:
		t.Error("Closed not closed")
	}
}

func TestGateAccept(t *testing.T) {
	obs := &transporttest.Outcomes{}
	g, err := NewGate(testName, testListenConfig(obs), 0, func(*http.Request) []byte { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Accept(ctx); transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("Accept with a canceled context: %v", err)
	}
	if g.Offer(ctx, pipeConn{}) {
		t.Error("Offer with a canceled context succeeded")
	}
	got := make(chan transport.Conn, 1)
	go func() { c, _ := g.Accept(context.Background()); got <- c }()
	if !g.Offer(context.Background(), pipeConn{}) || <-got == nil {
		t.Error("Offer did not reach Accept")
	}
	broken := errors.New("socket gone")
	g.ServeEnded(broken)
	g.ServeEnded(nil)
	if _, err := g.Accept(context.Background()); !errors.Is(err, broken) {
		t.Errorf("Accept after the server failed: %v", err)
	}
	if g.Offer(context.Background(), pipeConn{}) {
		t.Error("Offer after the server ended succeeded")
	}
	g2, _ := NewGate(testName, testListenConfig(obs), 0, nil, nil)
	g2.ServeEnded(http.ErrServerClosed)
	if _, err := g2.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after a normal stop: %v", err)
	}
}

func TestNewGateErrors(t *testing.T) {
	obs := &transporttest.Outcomes{}
	bad := map[string]func(*transport.ListenConfig){
		"no address":     func(c *transport.ListenConfig) { c.Addr = "" },
		"no port":        func(c *transport.ListenConfig) { c.Addr = "127.0.0.1" },
		"bad port":       func(c *transport.ListenConfig) { c.Addr = "127.0.0.1:70000" },
		"no certificate": func(c *transport.ListenConfig) { c.Certificate = tls.Certificate{} },
		"relative path":  func(c *transport.ListenConfig) { c.Path = "sync" },
		"short key":      func(c *transport.ListenConfig) { c.Key = c.Key[:8] },
	}
	for name, edit := range bad {
		cfg := testListenConfig(obs)
		edit(&cfg)
		if _, err := NewGate(testName, cfg, 0, nil, nil); transport.ClassOf(err) != transport.ClassInvalid {
			t.Errorf("%s: %v, want ClassInvalid", name, err)
		}
	}
	// Defaults: the built-in cover site, no observer.
	cfg := testListenConfig(obs)
	cfg.Cover, cfg.Observe = nil, nil
	g, err := NewGate(testName, cfg, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := serve(g, "GET", "/", ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "<") {
		t.Errorf("default cover: %d %q", w.Code, w.Body)
	}
	if g.limits.max != DefaultMaxSessions {
		t.Errorf("cap %d, want DefaultMaxSessions", g.limits.max)
	}
	w := httptest.NewRecorder()
	g.ServeCover(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != http.StatusOK {
		t.Errorf("ServeCover: %d", w.Code)
	}
}

func TestBinding(t *testing.T) {
	if Binding(nil) != nil {
		t.Error("binding without TLS")
	}
	der, key := selfSigned(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	errs := make(chan error, 1)
	go func() { errs <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	cs, ss := cli.ConnectionState(), srv.ConnectionState()
	cb, sb := Binding(&cs), Binding(&ss)
	if len(cb) != token.ExporterLen || string(cb) != string(sb) {
		t.Errorf("client binding %x, server binding %x", cb, sb)
	}
}

func TestHiddenAddrAndListenError(t *testing.T) {
	a := HiddenAddr("h3")
	if a.Network() != "h3" || a.String() != "client" {
		t.Errorf("HiddenAddr %q %q", a.Network(), a.String())
	}
	err := ListenError(testName, context.Canceled)
	if transport.ClassOf(err) != transport.ClassCanceled || !errors.Is(err, context.Canceled) {
		t.Errorf("ListenError: %v", err)
	}
}
