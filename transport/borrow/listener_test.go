package borrow

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// failAfter bounds every wait in these tests; reaching it is a failure,
// never a measurement.
const failAfter = 20 * time.Second

var testKey = bytes.Repeat([]byte{0x42}, KeySize)

// origin is a TCP server on loopback that hands each connection to serve
// and reports what it read.
type origin struct {
	ln    net.Listener
	conns chan originConn
	stop  func() // closes ln and waits for every connection's serve
}

// originConn is what an origin connection received before serve ended.
type originConn struct {
	got []byte
	err error // the read error that ended it (nil: io.EOF)
}

// startOrigin runs serve on each connection; serve returns what it read.
func startOrigin(t *testing.T, serve func(c *net.TCPConn) originConn) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{ln: ln, conns: make(chan originConn, 64)}
	var wg sync.WaitGroup
	o.stop = sync.OnceFunc(func() { ln.Close(); wg.Wait() })
	t.Cleanup(o.stop)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(failAfter))
				o.conns <- serve(c.(*net.TCPConn))
			})
		}
	})
	return o
}

// readAll reads c to its end.
func readAll(c *net.TCPConn) originConn {
	b, err := io.ReadAll(c)
	return originConn{got: b, err: err}
}

// echo answers "origin:" and everything it reads, then closes.
func echo(c *net.TCPConn) originConn {
	c.Write([]byte("origin:"))
	var got bytes.Buffer
	_, err := io.Copy(io.MultiWriter(c, &got), c)
	return originConn{got: got.Bytes(), err: err}
}

// next returns the next origin connection that received something or
// ended other than by a plain FIN (an authenticated connection's origin
// connection, if its dial got that far, sends nothing and is closed).
func (o *origin) next(t *testing.T) originConn {
	t.Helper()
	for {
		select {
		case c := <-o.conns:
			if len(c.got) == 0 && c.err == nil {
				continue
			}
			return c
		case <-time.After(failAfter):
			t.Fatal("the origin saw no connection")
			return originConn{}
		}
	}
}

type observed struct {
	mu sync.Mutex
	n  map[transport.Outcome]int
}

func (o *observed) observe(x transport.Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = make(map[transport.Outcome]int)
	}
	o.n[x]++
}

func (o *observed) get(x transport.Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[x]
}

// front starts a borrowed-site listener in front of o.
func front(t *testing.T, o *origin, mod func(*Options)) (*Listener, *observed) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	obs := &observed{}
	opts := Options{Origin: o.ln.Addr().String(), Observe: obs.observe}
	if mod != nil {
		mod(&opts)
	}
	l, err := Listen(ln, testKey, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, obs
}

func dialFront(t *testing.T, l *Listener) *net.TCPConn {
	t.Helper()
	return dialFrom(t, l, "127.0.0.1")
}

// taggedRecord is a Chrome ClientHello record tagged under key at now.
func taggedRecord(t *testing.T, key []byte, now time.Time) []byte {
	t.Helper()
	uc := chromeHello(t)
	if err := TagHello(uc, key, now); err != nil {
		t.Fatal(err)
	}
	return record(uc.HandshakeState.Hello.Raw)
}

func TestSpliceCarriesBytesBothWays(t *testing.T) {
	o := startOrigin(t, echo)
	l, obs := front(t, o, nil)
	cases := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		record(chromeHello(t).HandshakeState.Hello.Raw), // untagged
		append([]byte{22, 3, 1, 0x40, 0x01}, make([]byte, 3000)...),
		bytes.Repeat([]byte{0xa5}, 100<<10),
	}
	for i, in := range cases {
		c := dialFront(t, l)
		go func() { c.Write(in); c.CloseWrite() }()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, append([]byte("origin:"), in...)) {
			t.Fatalf("case %d: client read %d bytes, err %v", i, len(got), err)
		}
		if oc := o.next(t); !bytes.Equal(oc.got, in) || oc.err != nil {
			t.Fatalf("case %d: origin read %d of %d bytes, err %v", i, len(oc.got), len(in), oc.err)
		}
	}
	if got := obs.get(transport.OutcomeCover); got != len(cases) {
		t.Errorf("Observe(cover) = %d, want %d", got, len(cases))
	}
}

// Closes travel as they came: FIN as FIN, RST as RST, both ways.
func TestSpliceCloseKinds(t *testing.T) {
	rst := func(c *net.TCPConn) { c.SetLinger(0); c.Close() }
	t.Run("origin FIN", func(t *testing.T) {
		o := startOrigin(t, func(c *net.TCPConn) originConn { c.Write([]byte("bye")); c.CloseWrite(); return readAll(c) })
		l, _ := front(t, o, nil)
		c := dialFront(t, l)
		if got, err := io.ReadAll(c); string(got) != "bye" || err != nil {
			t.Fatalf("read %q, %v; want bye and EOF", got, err)
		}
		c.Write([]byte("x"))
		c.CloseWrite()
		if oc := o.next(t); string(oc.got) != "x" || oc.err != nil {
			t.Fatalf("origin read %q, %v after its FIN", oc.got, oc.err)
		}
	})
	t.Run("origin RST", func(t *testing.T) {
		o := startOrigin(t, func(c *net.TCPConn) originConn { c.Write([]byte("bye")); rst(c); return originConn{} })
		l, _ := front(t, o, nil)
		dialExpectReset(t, l, nil)
	})
	t.Run("client FIN", func(t *testing.T) {
		o := startOrigin(t, readAll)
		l, _ := front(t, o, nil)
		c := dialFront(t, l)
		c.Write([]byte("GET"))
		c.CloseWrite()
		if oc := o.next(t); string(oc.got) != "GET" || oc.err != nil {
			t.Fatalf("origin read %q, %v; want GET and EOF", oc.got, oc.err)
		}
	})
	t.Run("client RST", func(t *testing.T) {
		o := startOrigin(t, readAll)
		l, _ := front(t, o, nil)
		c := dialFront(t, l)
		c.Write([]byte("GET"))
		rst(c)
		if oc := o.next(t); !errors.Is(oc.err, syscall.ECONNRESET) {
			t.Fatalf("origin read %q, %v; want a reset", oc.got, oc.err)
		}
	})
	t.Run("client RST before any byte", func(t *testing.T) {
		o := startOrigin(t, readAll)
		l, _ := front(t, o, nil)
		rst(dialFront(t, l))
		if oc := o.next(t); !errors.Is(oc.err, syscall.ECONNRESET) {
			t.Fatalf("origin read %q, %v; want a reset", oc.got, oc.err)
		}
	})
}

// An authenticated hello, even sent in pieces, reaches Accept whole with
// what follows it; the origin connection is closed without a byte.
func TestAuthenticatedGoesToAccept(t *testing.T) {
	o := startOrigin(t, readAll)
	l, obs := front(t, o, nil)
	rec := taggedRecord(t, testKey, time.Now())
	c := dialFront(t, l)
	go func() {
		c.Write(rec[:100])
		c.Write(rec[100:])
		c.Write([]byte("after"))
		c.CloseWrite()
	}()
	ac := acceptOne(t, l)
	got, err := io.ReadAll(ac)
	if err != nil || !bytes.Equal(got, append(bytes.Clone(rec), "after"...)) {
		t.Fatalf("accepted connection read %d bytes, %v", len(got), err)
	}
	if _, ok := ac.(interface{ CloseWrite() error }); !ok {
		t.Error("accepted connection cannot half-close")
	}
	l.Close()
	o.stop()
	for len(o.conns) > 0 {
		if oc := <-o.conns; len(oc.got) != 0 || oc.err != nil {
			t.Fatalf("origin read %d bytes, %v; want none and EOF", len(oc.got), oc.err)
		}
	}
	if n := obs.get(transport.OutcomeCover) + obs.get(transport.OutcomeReplay); n != 0 {
		t.Errorf("%d outcomes reported for an authenticated connection", n)
	}
}

func acceptOne(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		r.c.SetDeadline(time.Now().Add(failAfter))
		return r.c
	case <-time.After(failAfter):
		t.Fatal("nothing accepted")
		return nil
	}
}

func TestReplayedAndStaleHellosGoToOrigin(t *testing.T) {
	o := startOrigin(t, readAll)
	now := time.Unix(1_800_000_000, 0)
	l, obs := front(t, o, func(opts *Options) { opts.Now = func() time.Time { return now } })
	rec := taggedRecord(t, testKey, now)
	first := dialFront(t, l)
	first.Write(rec)
	acceptOne(t, l)

	cases := []struct {
		name string
		rec  []byte
		want transport.Outcome
	}{
		{"replayed", rec, transport.OutcomeReplay},
		{"three windows old", taggedRecord(t, testKey, now.Add(-3*Window)), transport.OutcomeCover},
		{"other key", taggedRecord(t, bytes.Repeat([]byte{1}, KeySize), now), transport.OutcomeCover},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := obs.get(tc.want)
			c := dialFront(t, l)
			c.Write(tc.rec)
			c.CloseWrite()
			if oc := o.next(t); !bytes.Equal(oc.got, tc.rec) {
				t.Fatalf("origin read %d bytes, want the %d-byte hello", len(oc.got), len(tc.rec))
			}
			if obs.get(tc.want) != before+1 {
				t.Errorf("Observe(%s) not reported", tc.want)
			}
		})
	}
}

// An incomplete plausible hello is held back, and given to the origin
// when HelloTimeout passes.
func TestHelloTimeoutReleasesHeldBytes(t *testing.T) {
	o := startOrigin(t, func(c *net.TCPConn) originConn {
		b := make([]byte, 100)
		n, err := io.ReadFull(c, b)
		c.Write([]byte("got"))
		return originConn{got: b[:n], err: err}
	})
	l, _ := front(t, o, func(opts *Options) { opts.HelloTimeout = 50 * time.Millisecond })
	rec := record(chromeHello(t).HandshakeState.Hello.Raw)
	c := dialFront(t, l)
	c.Write(rec[:100])
	if oc := o.next(t); !bytes.Equal(oc.got, rec[:100]) || oc.err != nil {
		t.Fatalf("origin read %d bytes, %v", len(oc.got), oc.err)
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "got" {
		t.Fatalf("client read %q, %v", b, err)
	}
}

// expectReset reads c until it ends and wants a reset.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read error %v, want a reset", err)
	}
}

// dialExpectReset connects to l, sends send, and wants a reset: of the
// connection, or already of the connect (a reset that arrives before the
// dialer has looked at the socket reads as a failed connect), or of the
// write (Linux reports a reset once, to the first call that asks: a
// write after it takes it, and the reads after see the data and EOF).
// Nothing is written when send is empty: until 2026-12-07 an empty write
// went to the kernel all the same, took a reset that had come, and
// `TestSpliceCloseKinds/origin RST` failed about once in 300 runs
// (without -race; it failed CI once).
func dialExpectReset(t *testing.T, l *Listener, send []byte) {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(failAfter))
	if len(send) > 0 {
		if _, err := c.Write(send); isReset(err) {
			return
		}
	}
	expectReset(t, c)
}

func TestLimits(t *testing.T) {
	// Each origin connection reports when it is accepted, greets, and is
	// held open until its subtest ends.
	accepted := make(chan struct{}, 16)
	holding := func() (serve func(c *net.TCPConn) originConn, release func()) {
		hold := make(chan struct{})
		return func(c *net.TCPConn) originConn {
			io.ReadFull(c, make([]byte, 3)) // the splice is up
			accepted <- struct{}{}
			c.Write([]byte("hello"))
			<-hold
			return originConn{}
		}, func() { close(hold) }
	}
	waitAccepted := func(t *testing.T) {
		t.Helper()
		select {
		case <-accepted:
		case <-time.After(failAfter):
			t.Fatal("the origin saw no connection")
		}
	}
	readHello := func(t *testing.T, c net.Conn) {
		t.Helper()
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("per source", func(t *testing.T) {
		serve, release := holding()
		defer release()
		o := startOrigin(t, serve)
		l, obs := front(t, o, func(opts *Options) { opts.MaxPerSource = 1 })
		first := dialFront(t, l)
		first.Write([]byte("GET"))
		readHello(t, first)
		waitAccepted(t)
		dialExpectReset(t, l, nil)
		if obs.get(transport.OutcomeLimited) != 1 {
			t.Error("Observe(limited) not reported")
		}
		first.Close()
	})
	t.Run("splices", func(t *testing.T) {
		serve, release := holding()
		defer release()
		o := startOrigin(t, serve)
		l, obs := front(t, o, func(opts *Options) { opts.MaxSplices, opts.MaxPerSource = 1, 8 })
		first := dialFront(t, l)
		first.Write([]byte("GET"))
		readHello(t, first)
		waitAccepted(t)
		dialExpectReset(t, l, []byte("GET"))
		if obs.get(transport.OutcomeBusy) != 1 {
			t.Error("Observe(busy) not reported")
		}
	})
	// A silent connection holds an inspection slot (its origin does not
	// speak first either); a tagged hello that finds no slot goes to the
	// origin uninspected. Its origin signals on a channel of its own: the
	// uninspected hello's origin connection signalled on accepted, and
	// the next subtest's wait took that for its silent connection's, and
	// dialed the second before the first held its slot (ci126 failed so,
	// on 2026-12-07: the second was inspected and handed to the relay).
	pending := func(t *testing.T, mod func(*Options), from string, wantInspected bool) {
		reached := make(chan struct{}, 2)
		o := startOrigin(t, func(c *net.TCPConn) originConn {
			reached <- struct{}{}
			got := readAll(c)
			c.Write([]byte("hello"))
			return got
		})
		l, _ := front(t, o, mod)
		first := dialFront(t, l) // silent: holds its inspection slot
		select {
		case <-reached:
		case <-time.After(failAfter):
			t.Fatal("the origin saw no connection")
		}
		rec := taggedRecord(t, testKey, time.Now())
		second := dialFrom(t, l, from)
		second.Write(rec)
		if wantInspected {
			if got := acceptRecord(t, l, len(rec)); !bytes.Equal(got, rec) {
				t.Fatal("the relay got another hello")
			}
			first.Close()
			return
		}
		second.CloseWrite()
		readHello(t, second)
		if oc := o.next(t); !bytes.Equal(oc.got, rec) {
			t.Fatalf("origin read %d bytes, want the uninspected %d-byte hello", len(oc.got), len(rec))
		}
		first.Close()
	}
	t.Run("pending", func(t *testing.T) {
		pending(t, func(opts *Options) { opts.MaxPending = 1 }, "127.0.0.1", false)
	})
	t.Run("pending per source", func(t *testing.T) {
		pending(t, func(opts *Options) { opts.MaxPendingPerSource = 1 }, "127.0.0.1", false)
	})
	t.Run("pending per source, another source", func(t *testing.T) {
		pending(t, func(opts *Options) { opts.MaxPendingPerSource = 1 }, "127.0.0.2", true)
	})
}

// dialFrom connects to l from the loopback address ip.
func dialFrom(t *testing.T, l *Listener, ip string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(failAfter))
	return c.(*net.TCPConn)
}

// acceptRecord accepts a connection from l and reads n bytes of it.
func acceptRecord(t *testing.T, l *Listener, n int) []byte {
	t.Helper()
	ac := acceptOne(t, l)
	b := make([]byte, n)
	if _, err := io.ReadFull(ac, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOriginDownResets(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(ln, testKey, Options{Origin: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialExpectReset(t, l, []byte("GET / HTTP/1.1\r\n\r\n"))
}

func TestCloseEndsEverything(t *testing.T) {
	o := startOrigin(t, readAll)
	l, _ := front(t, o, nil)
	spliced := dialFront(t, l)
	spliced.Write([]byte("GET"))
	held := dialFront(t, l)
	held.Write([]byte{22, 3, 1})
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{spliced, held} {
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client still open after Close: %v", err)
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(failAfter):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("still listening after Close")
	}
}

func TestOptionsErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cases := []struct {
		name   string
		secret []byte
		opts   Options
		want   error
	}{
		{"no origin", testKey, Options{}, ErrNoOrigin},
		{"short key", testKey[:16], Options{Origin: "127.0.0.1:1"}, ErrKeySize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Listen(ln, c.secret, c.opts); !errors.Is(err, c.want) {
				t.Fatalf("Listen: %v, want %v", err, c.want)
			}
		})
	}
	if _, err := Listen(ln, testKey, Options{Origin: "no-port"}); err == nil {
		t.Fatal("origin without a port accepted")
	}
}

// By default one address may hold far more connections than the 64 a
// front once reset beyond (nginx has no per-address cap unless configured,
// and Debian's holds 768 per worker): 200 at once all reach the origin.
func TestDefaultPerSourceAboveOrigins(t *testing.T) {
	const n = 200
	if DefaultMaxPerSource < 1024 {
		t.Fatalf("DefaultMaxPerSource = %d, below a stock nginx's 768 connections per worker", DefaultMaxPerSource)
	}
	o := startOrigin(t, func(c *net.TCPConn) originConn {
		b := make([]byte, 3)
		if _, err := io.ReadFull(c, b); err != nil {
			return originConn{err: err}
		}
		c.Write([]byte("hello"))
		return readAll(c)
	})
	go func() { // the results, as connections end
		for range o.conns {
		}
	}()
	l, obs := front(t, o, nil)
	for i := range n {
		c := dialFront(t, l)
		c.Write([]byte("GET"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	if got := obs.get(transport.OutcomeLimited); got != 0 {
		t.Fatalf("Observe(limited) = %d", got)
	}
}

// Without MaxPerSource, one source may hold half of MaxSplices, whatever
// MaxSplices is.
func TestPerSourceFollowsMaxSplices(t *testing.T) {
	for _, tc := range []struct{ splices, want int }{{4, 2}, {1, 1}, {DefaultMaxSplices, DefaultMaxPerSource}} {
		opts := Options{Origin: "127.0.0.1:1", MaxSplices: tc.splices}
		if err := opts.setDefaults(); err != nil {
			t.Fatal(err)
		}
		if opts.MaxPerSource != tc.want {
			t.Errorf("MaxSplices %d: MaxPerSource %d, want %d", tc.splices, opts.MaxPerSource, tc.want)
		}
	}
}
