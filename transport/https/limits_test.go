package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

// settledGoroutines waits (bounded) until the goroutine count stops moving
// and returns it.
func settledGoroutines() int {
	prev := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(20 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n == prev {
			return n
		}
		prev = n
	}
	return prev
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// waitGoroutines polls until the count is at most want, for at most 30 s.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("%d goroutines, want at most %d\n%s", n, want, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Half-open connections and slowloris requests hold server resources only
// while they are open; afterwards the server is back to where it was and
// still serves sessions.
func TestSlowClientsReleaseResources(t *testing.T) {
	// A long header timeout: the clients, not the timeout, end the attack.
	// No cap per source, which would reset most of these connections
	// (TestConnsPerSource): this is about what the server holds for each.
	r := startRelay(t, &Transport{ReadHeaderTimeout: time.Minute, MaxConnsPerSource: -1}, nil)
	serveEcho(r.ln)
	c := dial(t, r.ep)
	transporttest.EchoRoundTrip(t, c, []byte("warm up"))
	c.Close()
	base := settledGoroutines()
	baseHeap := heapInUse()

	const silent, slowTLS, slowHeaders = 200, 50, 100
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range silent { // TCP connected, nothing sent
		c, err := net.Dial("tcp", r.ep.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for range slowTLS { // the start of a TLS record, never finished
		c, err := net.Dial("tcp", r.ep.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
		conns = append(conns, c)
	}
	for range slowHeaders { // TLS done, request headers never finished
		c := tlsDial(t, r.ep.Addr, "http/1.1")
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: relay.test\r\nX-Slow: ")
		conns = append(conns, c)
	}
	// Every connection is being served by the server (one goroutine
	// each at least); this proves the attack reached it.
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() < base+silent+slowTLS+slowHeaders {
		if time.Now().After(deadline) {
			t.Fatalf("server never picked up the connections: %d goroutines, base %d", runtime.NumGoroutine(), base)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// While they hang, ordinary sessions still work.
	c = dial(t, r.ep)
	transporttest.EchoRoundTrip(t, c, []byte("during the attack"))
	c.Close()
	duringHeap := heapInUse()

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitGoroutines(t, base)
	// Memory held for the attackers is released too. The slack covers
	// allocator noise, not the attack (which held duringHeap-baseHeap).
	afterHeap := heapInUse()
	t.Logf("heap in use: %d KiB before, %d KiB during, %d KiB after", baseHeap>>10, duringHeap>>10, afterHeap>>10)
	if afterHeap > baseHeap+4<<20 {
		t.Fatalf("heap in use %d KiB after the clients left, %d KiB before", afterHeap>>10, baseHeap>>10)
	}

	c = dial(t, r.ep)
	transporttest.EchoRoundTrip(t, c, bytes.Repeat([]byte("after the attack"), 1000))
	c.Close()
}

func TestMaxSessions(t *testing.T) {
	r := startRelay(t, &Transport{MaxSessions: 1}, nil)
	first, s := acceptOne(t, r)
	if _, err := (&Transport{}).Dial(context.Background(), r.ep); transport.ClassOf(err) != transport.ClassAuth {
		t.Fatalf("second session while full: %v, want class auth", err)
	}
	if got := r.obs.Get(transport.OutcomeBusy); got != 1 {
		t.Errorf("Observe(busy) = %d, want 1", got)
	}
	first.Close()
	s.Close()
	// The slot is free again once the first session's handler is gone,
	// which Close does not wait for: until then a dial is refused as busy.
	serveEcho(r.ln)
	c := dialWhenFree(t, r.ep)
	defer c.Close()
	transporttest.EchoRoundTrip(t, c, []byte("again"))
}

// dialWhenFree dials ep until a session opens, while the relay refuses it
// as busy (class auth), for at most 30 s.
func dialWhenFree(t *testing.T, ep transport.Endpoint) transport.Conn {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := (&Transport{}).Dial(context.Background(), ep)
		if err == nil {
			return c
		}
		if transport.ClassOf(err) != transport.ClassAuth || time.Now().After(deadline) {
			t.Fatalf("dial: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHandshakeSlots(t *testing.T) {
	sem := make(chan struct{}, 1)
	a := &countedConn{Conn: nopConn{}, sem: sem}
	b := &countedConn{Conn: nopConn{}, sem: sem}
	ctx := context.Background()
	if err := a.acquire(ctx, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.acquire(ctx, time.Second, nil); err != nil {
		t.Fatal("re-acquire by the holder must not block:", err)
	}
	closed := make(chan struct{})
	close(closed)
	if err := b.acquire(ctx, time.Hour, closed); !errors.Is(err, errBusy) {
		t.Fatalf("second handshake while full: %v, want errBusy", err)
	}
	got := make(chan error, 1)
	go func() { got <- b.acquire(ctx, time.Hour, nil) }()
	a.Write(nil) // the server's handshake flight releases the slot
	if err := within(t, "waiting handshake", got); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if len(sem) != 0 {
		t.Fatalf("%d slots held after close", len(sem))
	}
	a.Close() // releasing twice must not free someone else's slot
	if err := a.acquire(ctx, time.Second, nil); err != nil || len(sem) != 1 {
		t.Fatalf("slot accounting off: %v, %d held", err, len(sem))
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Write(p []byte) (int, error) { return len(p), nil }
func (nopConn) Close() error                { return nil }

func TestTokenBinding(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	go func() {
		for {
			c, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	post := func(on *tls.Conn, tok string) int {
		io.WriteString(on, httpReq("POST", testPath, tok, "")(on))
		resp, err := http.ReadResponse(bufioReader(on), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	a := tlsDial(t, r.ep.Addr, "http/1.1")
	defer a.Close()
	b := tlsDial(t, r.ep.Addr, "http/1.1")
	defer b.Close()
	unbound, _ := token.Make(r.ep.Key, testPath, nil, time.Now())
	if got := post(b, boundToken(t, r.ep.Key, a, time.Now())); got != http.StatusNotFound {
		t.Errorf("token bound to another TLS session: status %d, want the cover's 404", got)
	}
	if got := post(b, unbound); got != http.StatusNotFound {
		t.Errorf("unbound token on a bound-only listener: status %d, want the cover's 404", got)
	}
	if n := r.obs.Get(transport.OutcomeAuthFailed); n != 2 {
		t.Errorf("auth_failed reported %d times, want 2", n)
	}
	if got := post(b, boundToken(t, r.ep.Key, b, time.Now())); got != http.StatusOK {
		t.Errorf("token bound to this TLS session: status %d, want 200", got)
	}
}

// A relay behind a CDN receives sessions over HTTP/1.1 with unbound tokens;
// the response must stream while the request body is still open.
func TestHTTP1FullDuplex(t *testing.T) {
	r := startRelay(t, &Transport{}, func(c *transport.ListenConfig) { c.AllowUnbound = true })
	serveEcho(r.ln)
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		ForceAttemptHTTP2: false,
	}
	defer tr.CloseIdleConnections()
	tok, _ := token.Make(r.ep.Key, testPath, nil, time.Now())
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "https://"+r.ep.Addr+testPath, pr)
	req.Header.Set("Cookie", token.Cookie+"="+tok)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 1 {
		t.Fatalf("got %s %s, want HTTP/1.1 200", resp.Proto, resp.Status)
	}
	rr := &recordReader{r: resp.Body}
	buf := make([]byte, 5)
	for _, msg := range []string{"ping1", "ping2", "ping3"} {
		// Each message comes back before the request body ends.
		pw.Write([]byte(msg))
		if _, err := io.ReadFull(rr, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, buf, err)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(rr); err != nil || len(rest) != 0 {
		t.Fatalf("after end of request: %q, %v", rest, err)
	}
}
