// Package transporttest is the contract every transport.Transport must
// meet, as a test suite. A transport's tests run it with a function that
// starts a listener on loopback and returns an endpoint that dials it:
//
//	transporttest.Run(t, func(t *testing.T) transporttest.Setup {
//		... start a listener ...
//		return transporttest.Setup{Transport: tr, Listener: ln, Endpoint: ep}
//	})
//
// It checks what the relay relies on and the package documentation of
// transport promises: bytes arrive intact in both directions at once,
// half-close works both ways, Close unblocks pending Read and Write on
// either side, a closed listener stops accepting, and the relay side never
// learns the client's address.
//
// RunProbes is the second suite, for HTTP transports: the table of probes
// (cover pages, session requests with missing, forged, expired, replayed or
// wrongly bound tokens, random bytes, a valid session) that must get exactly
// the cover site's answer, or an echoing session, from every listener.
package transporttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// Setup is a listening transport and an endpoint that reaches it.
type Setup struct {
	Transport transport.Transport
	Listener  transport.Listener
	Endpoint  transport.Endpoint
	// Early is set when the transport sends early data
	// (transport.WithEarlyData) with its session request.
	Early bool
	// SourceKey is the listener's ListenConfig.SourceKey, if it was given
	// one: the source a relay-side Conn says must be the one it keys.
	SourceKey []byte
}

// Start returns a fresh Setup; the listener is closed by the caller's
// t.Cleanup or by the suite.
type Start func(t *testing.T) Setup

// Run runs the contract tests.
func Run(t *testing.T, start Start) {
	t.Run("Echo", func(t *testing.T) { testEcho(t, start(t)) })
	t.Run("HalfCloseClientFirst", func(t *testing.T) { testHalfClose(t, start(t), true) })
	t.Run("HalfCloseRelayFirst", func(t *testing.T) { testHalfClose(t, start(t), false) })
	t.Run("CloseUnblocksRead", func(t *testing.T) { testCloseUnblocksRead(t, start(t)) })
	t.Run("CloseUnblocksWrite", func(t *testing.T) { testCloseUnblocksWrite(t, start(t)) })
	t.Run("ListenerClose", func(t *testing.T) { testListenerClose(t, start(t)) })
	t.Run("ClientAddressHidden", func(t *testing.T) { testAddressHidden(t, start(t)) })
	t.Run("EarlyData", func(t *testing.T) { testEarlyData(t, start(t)) })
	t.Run("Source", func(t *testing.T) { testSource(t, start(t)) })
	t.Run("PublicOnly", func(t *testing.T) { testPublicOnly(t, start(t)) })
}

// testSource: the relay side says what its listener counts the client as
// (transport.Sourced), the same for two sessions from one address and
// another for another loopback address, and never the address itself.
func testSource(t *testing.T, s Setup) {
	from := func(local string) [16]byte {
		t.Helper()
		s := s
		s.Endpoint.LocalAddr = local
		_, r := pair(t, s)
		sc, ok := r.(transport.Sourced)
		if !ok {
			t.Fatalf("the relay side (%T) does not say what it counts the client as", r)
		}
		return sc.Source()
	}
	a := from("127.0.0.1")
	if a == [16]byte{} {
		t.Fatal("zero source")
	}
	if from("127.0.0.1") != a {
		t.Fatal("two sessions from one address count as two sources")
	}
	if from("127.0.0.2") == a {
		t.Fatal("two addresses count as one source")
	}
	if bytes.Contains(a[:], []byte{127, 0, 0, 1}) {
		t.Fatal("the source holds the address")
	}
	if s.SourceKey != nil {
		// Every transport, and every path within one, counts a client
		// as the same source under the same key.
		if want := transport.SourceHash(s.SourceKey, "127.0.0.1:1"); a != [16]byte(want[:16]) {
			t.Fatal("the source is not the one ListenConfig.SourceKey keys")
		}
	}
}

// testPublicOnly: a dial with Endpoint.PublicOnly to a loopback address is
// refused before anything is sent, as a ClassInvalid error that does not
// name the address; the same dial without it goes through.
func testPublicOnly(t *testing.T, s Setup) {
	ep := s.Endpoint
	ep.PublicOnly = true
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := s.Transport.Dial(ctx, ep)
	if err == nil {
		c.Close()
		t.Fatal("PublicOnly dialed a loopback address")
	}
	host, port, _ := net.SplitHostPort(ep.Addr)
	if transport.ClassOf(err) != transport.ClassInvalid || strings.Contains(err.Error(), host) || strings.Contains(err.Error(), port) {
		t.Fatalf("PublicOnly's refusal: %v (class %v), want ClassInvalid naming no address", err, transport.ClassOf(err))
	}
	testEcho(t, s)
}

const wait = 30 * time.Second

// pair dials the endpoint and accepts the session on the listener.
func pair(t *testing.T, s Setup) (client, relay transport.Conn) {
	t.Helper()
	return pairCtx(t, s, context.Background())
}

// pairCtx is pair with the dial's context derived from parent.
func pairCtx(t *testing.T, s Setup, parent context.Context) (client, relay transport.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(parent, wait)
	defer cancel()
	accepted := make(chan transport.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		c, err := s.Listener.Accept(ctx)
		if err != nil {
			acceptErr <- err
			return
		}
		accepted <- c
	}()
	c, err := s.Transport.Dial(ctx, s.Endpoint)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	select {
	case r := <-accepted:
		t.Cleanup(func() { c.Close(); r.Close() })
		return c, r
	case err := <-acceptErr:
		c.Close()
		t.Fatalf("Accept: %v", err)
	}
	return nil, nil
}

func within[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("%s: still blocked after %s", what, wait)
	}
	var zero T
	return zero
}

// Outcomes counts what a listener reported through ListenConfig.Observe.
// The zero value is ready; it is safe for concurrent use.
type Outcomes struct {
	mu sync.Mutex
	m  map[transport.Outcome]int
}

// Observe records one outcome; pass it as ListenConfig.Observe.
func (o *Outcomes) Observe(x transport.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = make(map[transport.Outcome]int)
	}
	o.m[x]++
}

// Get returns how often x was observed.
func (o *Outcomes) Get(x transport.Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.m[x]
}

// EchoRoundTrip writes data to c in uneven pieces (so framing is not
// aligned with writes) while reading the echo, half-closes, and checks that
// exactly data came back. The peer must echo and then half-close.
func EchoRoundTrip(t testing.TB, c transport.Conn, data []byte) {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		rest := data
		for i := 0; len(rest) > 0; i++ {
			n := min(len(rest), 1+(i*7919)%65536)
			if _, err := c.Write(rest[:n]); err != nil {
				werr <- err
				return
			}
			rest = rest[n:]
		}
		werr <- c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	want := sha256.Sum256(data)
	if n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo: got %d bytes (sha256 %x), want %d bytes (sha256 %x)", n, h.Sum(nil)[:8], len(data), want[:8])
	}
}

// testEcho sends data both ways at once: the relay side echoes what it
// reads, the client writes while it reads the echo.
func testEcho(t *testing.T, s Setup) {
	for _, size := range []int{1, 1200, 100 << 10, 4 << 20} {
		c, r := pair(t, s)
		go func() {
			io.Copy(r, r)
			r.CloseWrite()
		}()
		data := make([]byte, size)
		rand.Read(data)
		EchoRoundTrip(t, c, data)
	}
}

func testHalfClose(t *testing.T, s Setup, clientFirst bool) {
	c, r := pair(t, s)
	first, second := transport.Conn(c), transport.Conn(r)
	if !clientFirst {
		first, second = r, c
	}
	if _, err := first.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := first.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(second)
	if err != nil || string(got) != "request" {
		t.Fatalf("read %q, %v; want the data, then EOF", got, err)
	}
	if _, err := first.Write([]byte("x")); err == nil {
		t.Error("Write after CloseWrite succeeded")
	}
	// The other direction still works after the half-close.
	if _, err := second.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	if err := second.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(first)
	if err != nil || string(got) != "response" {
		t.Fatalf("read %q, %v after half-close", got, err)
	}
}

func testCloseUnblocksRead(t *testing.T, s Setup) {
	for _, side := range []string{"client", "relay"} {
		c, r := pair(t, s)
		local, peer := transport.Conn(c), transport.Conn(r)
		if side == "relay" {
			local, peer = r, c
		}
		done := make(chan error, 1)
		go func() {
			_, err := local.Read(make([]byte, 10))
			done <- err
		}()
		local.Close()
		if err := within(t, side+" Read after Close", done); err == nil {
			t.Errorf("%s: Read returned no error after Close", side)
		}
		// The peer learns that the session ended (EOF or an error), and
		// does not hang.
		peerDone := make(chan struct{})
		go func() {
			io.Copy(io.Discard, peer)
			close(peerDone)
		}()
		within(t, side+": peer Read after remote Close", peerDone)
	}
}

func testCloseUnblocksWrite(t *testing.T, s Setup) {
	for _, side := range []string{"client", "relay"} {
		c, r := pair(t, s)
		local := transport.Conn(c)
		if side == "relay" {
			local = r
		}
		// Nobody reads: writes fill flow-control windows and block.
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 1<<20)
			for range 64 {
				if _, err := local.Write(buf); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		local.Close()
		if err := within(t, side+" Write after Close", done); err == nil {
			t.Errorf("%s: 64 MiB written to a peer that reads nothing", side)
		}
	}
}

func testListenerClose(t *testing.T, s Setup) {
	if err := s.Listener.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := s.Listener.Accept(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want an error wrapping net.ErrClosed", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
	defer dcancel()
	if c, err := s.Transport.Dial(dctx, s.Endpoint); err == nil {
		c.Close()
		t.Error("Dial to a closed listener succeeded")
	} else if transport.ClassOf(err) == transport.ClassUnknown {
		t.Errorf("Dial to a closed listener: unclassified error %v", err)
	}
}

func testAddressHidden(t *testing.T, s Setup) {
	_, r := pair(t, s)
	host, _, _ := net.SplitHostPort(s.Endpoint.Addr)
	if a := r.RemoteAddr(); a == nil || strings.Contains(a.String(), host) || strings.Contains(a.String(), "127.0.0.1") {
		t.Fatalf("relay side RemoteAddr = %v: the client's address reached the relay", a)
	}
}

// testEarlyData: bytes asked for as early data reach the relay side first,
// once, ahead of what the client writes after the dial. A transport that
// sends them says so on the Conn (transport.EarlySender); one that does
// not leaves them to the caller, who writes them itself.
func testEarlyData(t *testing.T, s Setup) {
	early := []byte("the session's first bytes")
	c, r := pairCtx(t, s, transport.WithEarlyData(context.Background(), early))
	var sent []byte
	if e, ok := c.(transport.EarlySender); ok {
		sent = e.SentEarly()
	}
	switch {
	case sent == nil && s.Early:
		t.Fatal("the transport did not send the early data")
	case sent == nil:
		if _, err := c.Write(early); err != nil {
			t.Fatal(err)
		}
	case !bytes.Equal(sent, early):
		t.Fatalf("SentEarly = %q, want %q", sent, early)
	}
	rest := []byte(", then the rest")
	if _, err := c.Write(rest); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	if b, want := within(t, "relay read", got), append(early, rest...); !bytes.Equal(b, want) {
		t.Fatalf("relay read %q, want %q", b, want)
	}
}
