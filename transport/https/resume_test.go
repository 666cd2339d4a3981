package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/censortest"
	"github.com/postern/postern/transport/internal/token"
)

// echoOnce opens a session to ep, checks an echo and closes it.
func echoOnce(t *testing.T, ep transport.Endpoint) {
	t.Helper()
	c := dial(t, ep)
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
}

// tap is a TCP relay in front of addr that keeps, per connection, the
// first bytes each way.
type tap struct {
	addr string
	mu   sync.Mutex
	up   []*lockedBuf // client to server
	down []*lockedBuf // server to client
}

func startTap(t *testing.T, target string) *tap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	tp := &tap{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			up, down := &lockedBuf{}, &lockedBuf{}
			tp.mu.Lock()
			tp.up, tp.down = append(tp.up, up), append(tp.down, down)
			tp.mu.Unlock()
			go func() { io.Copy(s, io.TeeReader(c, up)); s.Close() }()
			go func() { io.Copy(c, io.TeeReader(s, down)); c.Close() }()
		}
	}()
	return tp
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 8192 {
		l.b.Write(p)
	}
	return len(p), nil
}

// bytes returns a copy of what was written so far.
func (l *lockedBuf) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

// hello returns the ClientHello and whether the ServerHello accepted a
// pre-shared key, of connection i.
func (tp *tap) hello(t *testing.T, i int) (*censortest.ClientHello, bool) {
	t.Helper()
	tp.mu.Lock()
	up, down := tp.up[i].bytes(), tp.down[i].bytes()
	tp.mu.Unlock()
	h, err := censortest.ParseClientHello(firstRecord(up))
	if err != nil {
		t.Fatal(err)
	}
	return h, serverHelloHasPSK(firstRecord(down))
}

// serverHelloHasPSK reports whether a ServerHello record carries
// pre_shared_key (the server resumed).
func serverHelloHasPSK(rec []byte) bool {
	s := cryptobyte.String(rec)
	var body, sid, exts cryptobyte.String
	var typ uint8
	if !s.Skip(5) || !s.ReadUint8(&typ) || typ != 2 || !s.ReadUint24LengthPrefixed(&body) ||
		!body.Skip(2+32) || !body.ReadUint8LengthPrefixed(&sid) || !body.Skip(3) ||
		!body.ReadUint16LengthPrefixed(&exts) {
		return false
	}
	for !exts.Empty() {
		var et uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&et) || !exts.ReadUint16LengthPrefixed(&data) {
			return false
		}
		if et == censortest.ExtPreSharedKey {
			return true
		}
	}
	return false
}

// TestResumption: the second connection to a relay resumes the first's
// TLS session, as Chromium's does (pre_shared_key last, its JA4), the
// relay accepts the PSK and the session works with a token bound to the
// resumed connection. With the file cache, a new cache on the same
// directory (a new run of the CLI) resumes too; its files are 0600 and
// named by hashes.
func TestResumption(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)
	tp := startTap(t, r.ep.Addr)
	dir := t.TempDir()
	cache, err := transport.OpenSessionDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ep := r.ep
	ep.Addr, ep.Sessions = tp.addr, cache
	echoOnce(t, ep)
	ep.Sessions, err = transport.OpenSessionDir(dir) // the next run
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, ep)

	first, firstPSK := tp.hello(t, 0)
	second, secondPSK := tp.hello(t, 1)
	if _, ok := first.Extension(censortest.ExtPreSharedKey); ok || firstPSK {
		t.Error("first connection offered or resumed a session")
	}
	if got := censortest.JA4(first); got != browser.Current.JA4 {
		t.Errorf("first JA4 %s, want %s", got, browser.Current.JA4)
	}
	types := second.ExtensionTypes(true)
	if types[len(types)-1] != censortest.ExtPreSharedKey || !secondPSK {
		t.Fatalf("second connection: extensions %04x, server accepted PSK %v", types, secondPSK)
	}
	chrome, err := censortest.ParseClientHello(unhex(t, chromiumCapture(t, "fetch").ClientHello))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := censortest.JA4(second), censortest.JA4(chrome); got != want {
		t.Errorf("resumed JA4 %s, Chromium's resumed %s", got, want)
	}
	if n := r.obs.Get(transport.OutcomeOK); n != 2 {
		t.Errorf("%d sessions accepted, want 2", n)
	}
	checkSessionFiles(t, dir, r.ep.Addr)
}

func checkSessionFiles(t *testing.T, dir, addr string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("session files: %v, %v", entries, err)
	}
	host, port, _ := net.SplitHostPort(addr)
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 || strings.Contains(e.Name(), host) || strings.Contains(e.Name(), port) {
			t.Errorf("session file %s mode %v", e.Name(), info.Mode())
		}
	}
}

// TestTokensOnResumedConnection: on a resumed TLS connection the relay
// takes a token bound to it, refuses the same token again (replay) and a
// token bound to the connection it resumed.
func TestTokensOnResumedConnection(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"h2"},
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	c1, cc1 := h2Dial(t, r.ep.Addr, cfg)
	if res := post(t, cc1, boundToken(t, r.cfg.Key, c1, time.Now())); res != http.StatusOK {
		t.Fatalf("first connection: %d", res)
	}
	c2, cc2 := h2Dial(t, r.ep.Addr, cfg)
	if !c2.ConnectionState().DidResume {
		t.Fatal("second connection did not resume")
	}
	// A page first: the connection is then the stock server's, which
	// takes several requests (the engine carries one session alone).
	getPage(t, cc2)
	tok := boundToken(t, r.cfg.Key, c2, time.Now())
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"bound to it", tok, http.StatusOK},
		{"replayed", tok, 0},
		{"bound to the first connection", boundToken(t, r.cfg.Key, c1, time.Now()), 0},
	} {
		if got := post(t, cc2, tc.token); (got == http.StatusOK) != (tc.want == http.StatusOK) {
			t.Errorf("%s: status %d", tc.name, got)
		}
	}
	if n := r.obs.Get(transport.OutcomeReplay); n != 1 {
		t.Errorf("%d replays seen, want 1", n)
	}
}

func h2Dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, *http2.ClientConn) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cc, err := (&http2.Transport{}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, cc
}

// post sends a session request with tok and returns the status.
func post(t *testing.T, cc *http2.ClientConn, tok string) int {
	t.Helper()
	return postRes(t, cc, tok).StatusCode
}

// postRes sends a session request with tok and returns the response
// (its body closed).
func postRes(t *testing.T, cc *http2.ClientConn, tok string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://relay.test"+testPath, strings.NewReader("x"))
	req.Header.Set("Cookie", token.Cookie+"="+tok)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res
}

// getPage requests the cover site's home page on cc and reads it. As a
// connection's first request it keeps the connection on net/http's
// server, which takes several requests (the listener's engine carries a
// session alone).
func getPage(t *testing.T, cc *http2.ClientConn) {
	t.Helper()
	page, _ := http.NewRequest("GET", "https://relay.test/", nil)
	resp, err := cc.RoundTrip(page)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: status %d", resp.StatusCode)
	}
}
