package https

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// tlsFrom opens a crypto/tls connection to addr from the loopback address
// ip, speaking HTTP/1.1.
func tlsFrom(t *testing.T, addr, ip string) (*tls.Conn, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(cert(t).Leaf)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 20 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "relay.test", NextProtos: []string{"http/1.1"}})
}

// mustTLSFrom is tlsFrom that fails the test on an error.
func mustTLSFrom(t *testing.T, addr, ip string) *tls.Conn {
	t.Helper()
	c, err := tlsFrom(t, addr, ip)
	if err != nil {
		t.Fatalf("connection from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// getOn asks for the cover's front page on c and returns the status.
func getOn(t *testing.T, c *tls.Conn) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a deadlock guard
	defer c.SetDeadline(time.Time{})
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// heldBy returns how many connections the relay counts for the source ip,
// and in all.
func heldBy(t *testing.T, r *relay, ip string) (source, total int) {
	t.Helper()
	l := r.ln.(*listener)
	if l.conns == nil {
		t.Fatal("the listener caps no source's connections")
	}
	return l.conns.held(&net.TCPAddr{IP: net.ParseIP(ip), Port: 1})
}

// waitHeld waits until the relay counts want connections for the source
// ip and wantTotal in all (a bounded wait: the server closes its end a
// moment after the client's).
func waitHeld(t *testing.T, r *relay, ip string, want, wantTotal int, after string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		src, total := heldBy(t, r, ip)
		if src == want && total == wantTotal {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d connections counted for the source, %d in all, want %d and %d", after, src, total, want, wantTotal)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One source (127.0.0.2) holds its cap of TCP connections; its next is
// reset before the relay reads anything of it, and counted conn_limited,
// while another source (127.0.0.3) is still served; once one of the first
// source's connections closes, it gets another. Before the cap one source
// could hold connections up to the process's limit on descriptors.
func TestConnsPerSource(t *testing.T) {
	const perSource = 3
	r := startRelay(t, &Transport{MaxConnsPerSource: perSource}, nil)
	var held []*tls.Conn
	for range perSource {
		held = append(held, mustTLSFrom(t, r.ep.Addr, "127.0.0.2"))
	}
	if c, err := tlsFrom(t, r.ep.Addr, "127.0.0.2"); err == nil {
		c.Close()
		t.Fatalf("connection %d of one source completed its handshake, cap %d", perSource+1, perSource)
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection %d of one source: %v, want a reset", perSource+1, err)
	}
	if got := r.obs.Get(transport.OutcomeConnLimited); got != 1 {
		t.Errorf("Observe(conn_limited) = %d, want 1", got)
	}
	for _, c := range held {
		if got := getOn(t, c); got != http.StatusOK {
			t.Fatalf("a connection within the cap: GET / status %d", got)
		}
	}
	if got := getOn(t, mustTLSFrom(t, r.ep.Addr, "127.0.0.3")); got != http.StatusOK {
		t.Fatalf("another source: GET / status %d", got)
	}
	held[0].Close()
	waitHeld(t, r, "127.0.0.2", perSource-1, perSource, "a close")
	if got := getOn(t, mustTLSFrom(t, r.ep.Addr, "127.0.0.2")); got != http.StatusOK {
		t.Fatalf("after a close: GET / status %d", got)
	}
}

// The cap follows the per-source session cap, and there is none behind a
// CDN, whose addresses carry many clients each, unless the transport sets
// one.
func TestConnsPerSourceDefault(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tr     Transport
		cfg    transport.ListenConfig
		wantN  int
		reason string
	}{
		{"default", Transport{}, transport.ListenConfig{}, 128, "twice the default session cap"},
		{"session cap 5", Transport{}, transport.ListenConfig{MaxSessionsPerSource: 5}, 10, "twice the session cap"},
		{"set", Transport{MaxConnsPerSource: 7}, transport.ListenConfig{MaxSessionsPerSource: 5}, 7, "the transport's"},
		{"off", Transport{MaxConnsPerSource: -1}, transport.ListenConfig{}, 0, "none"},
		{"cdn", Transport{}, transport.ListenConfig{AllowUnbound: true}, 0, "none behind a CDN"},
		{"cdn, set", Transport{MaxConnsPerSource: 7}, transport.ListenConfig{AllowUnbound: true}, 7, "the transport's"},
	} {
		if got := tc.tr.connsPerSource(tc.cfg); got != tc.wantN {
			t.Errorf("%s: cap %d, want %d (%s)", tc.name, got, tc.wantN, tc.reason)
		}
	}
	// Behind a CDN one address opens more connections than twice its
	// session cap, and every one is served.
	r := startRelay(t, &Transport{}, func(c *transport.ListenConfig) {
		c.AllowUnbound, c.MaxSessionsPerSource = true, 1
	})
	for range 3 {
		if got := getOn(t, mustTLSFrom(t, r.ep.Addr, "127.0.0.2")); got != http.StatusOK {
			t.Fatalf("behind a CDN: GET / status %d", got)
		}
	}
}

// A connection's count goes back exactly once however it ends: a failed
// TLS handshake, the client's close, the server's (idle timeout), the end
// of a session on it, the listener's Close. One connection of the source
// stays open throughout (headers never finished), so a count given back
// twice would show below it, and one never given back above it.
func TestConnsReleasedOnce(t *testing.T) {
	const ip, perSource = "127.0.0.2", 3
	tr := &Transport{MaxConnsPerSource: perSource, IdleTimeout: 200 * time.Millisecond, ReadHeaderTimeout: time.Minute, frontWait: 2 * time.Second}
	r := startRelay(t, tr, nil)
	serveEcho(r.ln)
	keep := mustTLSFrom(t, r.ep.Addr, ip)
	io.WriteString(keep, "GET / HTTP/1.1\r\nHost: relay.test\r\n")
	waitHeld(t, r, ip, 1, 1, "the first connection")

	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	raw, err := d.Dial("tcp", r.ep.Addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(raw, "GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n") // not TLS: the handshake fails
	raw.SetReadDeadline(time.Now().Add(20 * time.Second))             // a deadlock guard
	io.Copy(io.Discard, raw)
	raw.Close()
	waitHeld(t, r, ip, 1, 1, "a failed handshake")

	c := mustTLSFrom(t, r.ep.Addr, ip)
	getOn(t, c)
	c.Close()
	waitHeld(t, r, ip, 1, 1, "the client's close")

	c = mustTLSFrom(t, r.ep.Addr, ip)
	getOn(t, c)
	c.SetReadDeadline(time.Now().Add(20 * time.Second)) // a deadlock guard
	if _, err := io.Copy(io.Discard, c); isTimeout(err) {
		t.Fatal("the relay never closed an idle connection")
	}
	waitHeld(t, r, ip, 1, 1, "the server's close")

	ep := r.ep
	ep.LocalAddr = ip
	s := dial(t, ep)
	transporttest.EchoRoundTrip(t, s, []byte("session"))
	s.Close()
	waitHeld(t, r, ip, 1, 1, "a session's end")

	// Exactly the cap's worth fits again.
	for range perSource - 1 {
		mustTLSFrom(t, r.ep.Addr, ip)
	}
	if c, err := tlsFrom(t, r.ep.Addr, ip); err == nil {
		c.Close()
		t.Fatal("a connection over the cap completed its handshake after the others ended")
	}
	s = dial(t, r.ep) // another source's session (127.0.0.1), open at the Close
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r.ln.Close()
	for ctx.Err() == nil {
		if _, total := heldBy(t, r, ip); total == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	src, total := heldBy(t, r, ip)
	t.Fatalf("after the listener's Close: %d connections counted for the source, %d in all", src, total)
}

// A connection closed twice gives its count back once.
func TestCountedConnClosedTwice(t *testing.T) {
	cc := newConnCap([32]byte{}, 2, nil)
	cc.take(loopAddr) // another connection of the same source
	l := &countingListener{Listener: &oneConnListener{c: nopConn{}}, conns: cc}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close()
	if src, total := cc.held(loopAddr); src != 1 || total != 1 {
		t.Fatalf("after two closes of one of two connections: %d counted for the source, %d in all, want 1", src, total)
	}
}

var loopAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 1}

// oneConnListener accepts c once, from loopAddr.
type oneConnListener struct {
	net.Listener
	c net.Conn
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.c == nil {
		return nil, net.ErrClosed
	}
	c := addrConn{l.c}
	l.c = nil
	return c, nil
}

type addrConn struct{ net.Conn }

func (addrConn) RemoteAddr() net.Addr { return loopAddr }
