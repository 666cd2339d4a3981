package https

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

// One source (127.0.0.1) opens as many sessions as the listener lets it;
// a client from another source (127.0.0.3) still gets one. Before the
// per-source cap, the first source took the whole listener.
func TestOneSourceCannotLockOthersOut(t *testing.T) {
	const listenerCap, perSource = 32, 8
	r := startRelay(t, &Transport{MaxSessions: listenerCap}, func(c *transport.ListenConfig) {
		c.MaxSessionsPerSource = perSource
	})
	serveEcho(r.ln)
	hog := r.ep
	hog.LocalAddr = "127.0.0.1"
	opened := 0
	for range listenerCap + 1 { // bounded: the listener cap plus one
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		c, err := (&Transport{}).Dial(ctx, hog)
		cancel()
		if err != nil {
			if transport.ClassOf(err) != transport.ClassAuth {
				t.Fatalf("refused session: %v, want class auth (the cover site)", err)
			}
			break
		}
		t.Cleanup(func() { c.Close() })
		opened++
	}
	if opened != perSource {
		t.Fatalf("one source opened %d sessions, want its cap %d", opened, perSource)
	}
	if got := r.obs.Get(transport.OutcomeLimited); got != 1 {
		t.Errorf("Observe(limited) = %d, want 1", got)
	}
	other := r.ep
	other.LocalAddr = "127.0.0.3"
	c := dial(t, other)
	defer c.Close()
	transporttest.EchoRoundTrip(t, c, []byte("another source"))
}

// Sessions multiplexed on one HTTP/2 connection stop at the per-connection
// cap; the refused one gets the cover site, exactly as any refusal. The
// connection opens with a page request, so it is the stock server's (a
// connection whose first request is a session is the engine's, which
// carries that session alone: TestEngineRefusesOtherStreams).
func TestSessionsPerConnection(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	getPage(t, cc)
	status := func() int {
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		req, _ := http.NewRequest("POST", "https://relay.test"+testPath, pr)
		req.Header.Set("Cookie", token.Cookie+"="+boundToken(t, r.ep.Key, tc, time.Now()))
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp.StatusCode
	}
	for i := range httpsession.DefaultMaxSessionsPerConn {
		if got := status(); got != http.StatusOK {
			t.Fatalf("session %d on one connection: status %d, want 200", i, got)
		}
	}
	if got := status(); got != http.StatusNotFound {
		t.Fatalf("session beyond the per-connection cap: status %d, want the cover's 404", got)
	}
	if got := r.obs.Get(transport.OutcomeLimited); got != 1 {
		t.Errorf("Observe(limited) = %d, want 1", got)
	}
	// The same source on a new connection is still welcome.
	c := dial(t, r.ep)
	defer c.Close()
	transporttest.EchoRoundTrip(t, c, []byte("new connection"))
}

// An idle connection, or an HTTP/2 connection whose request headers never
// complete, is held no longer than a common web server holds it.
func TestIdleTimeoutLikeCommonServers(t *testing.T) {
	const nginxKeepalive = 60 * time.Second // nginx client_header_timeout / keepalive
	srv := (&Transport{}).NewHTTPServer(http.NotFoundHandler())
	if srv.IdleTimeout <= 0 || srv.IdleTimeout > nginxKeepalive {
		t.Errorf("IdleTimeout %v, want at most %v", srv.IdleTimeout, nginxKeepalive)
	}
	if srv.ReadHeaderTimeout <= 0 || srv.ReadHeaderTimeout > nginxKeepalive {
		t.Errorf("ReadHeaderTimeout %v, want at most %v", srv.ReadHeaderTimeout, nginxKeepalive)
	}

	// The idle timeout applies to HTTP/2 slowloris: preface and SETTINGS
	// sent, then a HEADERS frame without END_HEADERS, then silence. A
	// short timeout here; the deadline below only catches a server that
	// never closes.
	r := startRelay(t, &Transport{IdleTimeout: 300 * time.Millisecond}, nil)
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	io.WriteString(tc, http2.ClientPreface)
	fr := http2.NewFramer(tc, tc)
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x82}, EndHeaders: false})
	tc.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, tc)
	if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		t.Fatal("server still holds a stalled HTTP/2 connection after 30s")
	}
}
