package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

func TestRotateAndDelete(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	for i := 0; i < 3; i++ {
		if _, err := c.Send(ctx, mb.Seal(t, "before rotate"), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, newOwner, _ := ed25519.GenerateKey(nil)
	var newID [32]byte
	rand.Read(newID[:])
	n, err := c.Rotate(ctx, mb.Owner, mb.ID, newOwner, newID, nil)
	if err != nil || n != 3 {
		t.Fatalf("rotate moved %d, %v", n, err)
	}
	if _, err := c.Fetch(ctx, mb.Owner, mb.ID, 0); !errors.Is(err, relay.ErrNoMailbox) {
		t.Fatalf("old id still there: %v", err)
	}
	ds, err := c.Fetch(ctx, newOwner, newID, 0)
	if err != nil || len(ds) != 3 {
		t.Fatalf("new id holds %d, %v", len(ds), err)
	}
	if err := c.Delete(ctx, newOwner, newID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctx, newOwner, newID, 0); !errors.Is(err, relay.ErrNoMailbox) {
		t.Fatalf("deleted mailbox still there: %v", err)
	}
}

// rawSession speaks frames directly, to send what a Client never would.
func rawSession(t *testing.T, r *relaytest.Relay) (net.Conn, func()) {
	cc, sc := relaytest.Pipe(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Server.ServeConn(r.Ctx, sc, "test")
	}()
	cc.Write(rawFrame(relay.FrameClientHello, append(relay.HelloMagic[:], relay.ProtocolVersion, relay.ProtocolVersion)))
	return cc, func() { cc.Close(); <-done }
}

func readRaw(t *testing.T, c net.Conn) (relay.FrameType, []byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, nil, err
	}
	p := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	_, err := io.ReadFull(c, p)
	return relay.FrameType(hdr[0]), p, err
}

func TestBadFrames(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	base := runtime.NumGoroutine()
	req := []byte{0, 0, 0, 7}
	cases := []struct {
		name     string
		frame    []byte
		wantCode relay.Code // 0: the session must end
	}{
		{"unknown type", rawFrame(0x7f, req), relay.CodeUnknownFrame},
		{"forward reserved", rawFrame(relay.FrameForward, req, []byte("x")), relay.CodeUnsupported},
		{"short create", rawFrame(relay.FrameCreate, req, []byte{1, 2, 3}), relay.CodeBadFrame},
		{"short fetch", rawFrame(relay.FrameFetch, req, make([]byte, 10)), relay.CodeBadFrame},
		{"ack count lies", rawFrame(relay.FrameAck, req, make([]byte, 32), []byte{0, 9}, make([]byte, 64)), relay.CodeBadFrame},
		{"hello again", rawFrame(relay.FrameClientHello, req, []byte{relay.ProtocolVersion, relay.ProtocolVersion}), relay.CodeBadFrame},
		{"big ping", rawFrame(relay.FramePing, req, make([]byte, 100)), relay.CodeBadFrame},
		{"no request id", rawFrame(relay.FrameSend, []byte{1}), 0},
		{"oversize frame", []byte{byte(relay.FrameSend), 0xff, 0xff, 0xff, 0xff}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, closeFn := rawSession(t, r)
			defer closeFn()
			if ft, _, err := readRaw(t, c); err != nil || ft != relay.FrameServerHello {
				t.Fatalf("hello: %v %v", ft, err)
			}
			c.Write(tc.frame)
			ft, p, err := readRaw(t, c)
			if tc.wantCode == 0 {
				if err == nil {
					t.Fatalf("session went on after a fatal frame (got %#x)", ft)
				}
				return
			}
			if err != nil || ft != relay.FrameResult {
				t.Fatalf("got %#x, %v", ft, err)
			}
			res, err := relay.ParseResult(p)
			if err != nil || res.Req != 7 || res.Code != tc.wantCode {
				t.Fatalf("result %+v, %v", res, err)
			}
			// The session is still usable.
			c.Write(rawFrame(relay.FramePing, []byte{0, 0, 0, 8}))
			if ft, _, err := readRaw(t, c); err != nil || ft != relay.FramePong {
				t.Fatalf("after error: %#x %v", ft, err)
			}
		})
	}
	// Bad hellos end the session.
	for _, hello := range [][]byte{
		rawFrame(relay.FrameClientHello, []byte("XXXX"), []byte{relay.ProtocolVersion, relay.ProtocolVersion}),
		rawFrame(relay.FramePing, []byte{0, 0, 0, 1}),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	} {
		cc, sc := relaytest.Pipe(t)
		done := make(chan struct{})
		go func() { defer close(done); r.Server.ServeConn(r.Ctx, sc, "test") }()
		cc.Write(hello)
		if _, _, err := readRaw(t, cc); err == nil {
			t.Fatalf("bad hello %q answered", hello[:4])
		}
		cc.Close()
		<-done
	}
	// Version mismatch is answered with relay.CodeVersion, then closed.
	cc, sc := relaytest.Pipe(t)
	go r.Server.ServeConn(r.Ctx, sc, "test")
	cc.Write(rawFrame(relay.FrameClientHello, relay.HelloMagic[:], []byte{relay.ProtocolVersion + 1, relay.ProtocolVersion + 2}))
	ft, p, err := readRaw(t, cc)
	if res, _ := relay.ParseResult(p); err != nil || ft != relay.FrameResult || res.Code != relay.CodeVersion {
		t.Fatalf("version mismatch: %#x %v", ft, err)
	}
	cc.Close()
	// No goroutines left behind.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > base+2 {
		t.Fatalf("%d goroutines, %d before", g, base)
	}
}

func TestIdleAndHelloTimeout(t *testing.T) {
	st := store.NewMemory(store.Options{})
	defer st.Close()
	srv, _ := server.New(server.Config{Store: st, HelloTimeout: 50 * time.Millisecond, IdleTimeout: 50 * time.Millisecond})
	for _, hello := range []bool{false, true} {
		cc, sc := relaytest.Pipe(t)
		done := make(chan struct{})
		go func() { defer close(done); srv.ServeConn(context.Background(), sc, "test") }()
		if hello {
			cc.Write(rawFrame(relay.FrameClientHello, relay.HelloMagic[:], []byte{relay.ProtocolVersion, relay.ProtocolVersion}))
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("hello=%v: silent session not closed", hello)
		}
		cc.Close()
	}
}

func TestNoIdentifiersInErrors(t *testing.T) {
	r := relaytest.New(t, store.Options{MaxMailboxEnvelopes: 1}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	var errs []error
	_, err := c.Fetch(ctx, mb.Owner, [32]byte{9}, 1)
	errs = append(errs, err)
	c.Send(ctx, mb.Seal(t, "a"), nil)
	_, err = c.Send(ctx, mb.Seal(t, "b"), nil)
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil {
			t.Fatal("expected an error")
		}
		msg := err.Error()
		for _, secret := range [][]byte{mb.ID[:], mb.Owner.Public().(ed25519.PublicKey)} {
			if bytes.Contains([]byte(msg), secret) || containsEncoded(msg, secret) {
				t.Fatalf("error %q carries an identifier", msg)
			}
		}
	}
}

// TestPushWindowAndPaging: a subscription pushes at most relay.MaxUnacked
// envelopes before the session acks, then continues from where it stopped;
// FetchAfter pages through a mailbox by sequence number.
func TestPushWindowAndPaging(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	bob := r.Connect(t)
	alice := r.Connect(t)
	mb := relaytest.NewMailbox(t, bob, nil)
	const n = relay.MaxUnacked + 44
	for i := 0; i < n; i++ {
		if _, err := alice.Send(ctx, mb.Seal(t, fmt.Sprint(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Paging with FetchAfter sees every envelope once, in order.
	var after uint64
	seen := 0
	for {
		ds, err := bob.FetchAfter(ctx, mb.Owner, mb.ID, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			o, err := envelope.Open(mb.Ident, d.Envelope)
			if err != nil || string(o.Payload) != fmt.Sprint(seen) || d.Seq <= after {
				t.Fatalf("page entry %d: %q seq %d after %d, %v", seen, o.Payload, d.Seq, after, err)
			}
			after = d.Seq
			seen++
		}
	}
	if seen != n {
		t.Fatalf("paged through %d, want %d", seen, n)
	}

	if err := bob.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	var window []client.Delivery
	for len(window) < relay.MaxUnacked {
		select {
		case d := <-bob.Deliveries():
			window = append(window, d)
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d pushed", len(window))
		}
	}
	// The window is full: nothing more comes until the session acks. Ping
	// round trips make sure anything in flight would have arrived.
	for i := 0; i < 3; i++ {
		if err := bob.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case d := <-bob.Deliveries():
		t.Fatalf("pushed beyond the window (seq %d)", d.Seq)
	default:
	}
	refs := make([]client.Ref, len(window))
	for i, d := range window {
		refs[i] = d.Ref
	}
	if _, err := bob.Ack(ctx, mb.Owner, mb.ID, refs...); err != nil {
		t.Fatal(err)
	}
	for i := relay.MaxUnacked; i < n; i++ {
		select {
		case d := <-bob.Deliveries():
			o, err := envelope.Open(mb.Ident, d.Envelope)
			if err != nil || string(o.Payload) != fmt.Sprint(i) {
				t.Fatalf("after the window: %q, want %d (%v)", o.Payload, i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("envelope %d not pushed after acks", i)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	r := relaytest.New(t, store.Options{MaxMailboxEnvelopes: 2}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	secret := []byte("send capability!")
	capv := sha256.Sum256(secret)
	mb := relaytest.NewMailbox(t, c, nil)
	capMb := relaytest.NewMailbox(t, c, capv[:])
	_, stranger, _ := ed25519.GenerateKey(nil)
	var nobody [32]byte
	rand.Read(nobody[:])

	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"create existing", func() error { return c.CreateMailbox(ctx, mb.Owner, mb.ID, nil) }, relay.ErrMailboxExists},
		{"fetch wrong owner", func() error { _, err := c.Fetch(ctx, stranger, mb.ID, 1); return err }, relay.ErrUnauthorized},
		{"ack wrong owner", func() error { _, err := c.Ack(ctx, stranger, mb.ID, client.Ref{}); return err }, relay.ErrUnauthorized},
		{"delete wrong owner", func() error { return c.Delete(ctx, stranger, mb.ID) }, relay.ErrUnauthorized},
		{"subscribe wrong owner", func() error { return c.Subscribe(ctx, stranger, mb.ID) }, relay.ErrUnauthorized},
		{"fetch no mailbox", func() error { _, err := c.Fetch(ctx, stranger, nobody, 1); return err }, relay.ErrNoMailbox},
		{"send no mailbox", func() error {
			m := *mb
			m.Card = mb.Ident.Card(nobody, nil, nil)
			_, err := c.Send(ctx, m.Seal(t, "x"), nil)
			return err
		}, relay.ErrNoMailbox},
		{"send not an envelope", func() error { _, err := c.Send(ctx, make([]byte, 5000), nil); return err }, relay.ErrBadEnvelope},
		{"send wrong bucket", func() error { _, err := c.Send(ctx, mb.Seal(t, "x")[:4000], nil); return err }, relay.ErrBadEnvelope},
		{"send without capability", func() error { _, err := c.Send(ctx, capMb.Seal(t, "x"), nil); return err }, relay.ErrCapability},
		{"send wrong capability", func() error { _, err := c.Send(ctx, capMb.Seal(t, "x"), []byte("guess")); return err }, relay.ErrCapability},
		{"mailbox full", func() error {
			for i := 0; i < 2; i++ {
				if _, err := c.Send(ctx, mb.Seal(t, "fill"), nil); err != nil {
					return err
				}
			}
			_, err := c.Send(ctx, mb.Seal(t, "over"), nil)
			return err
		}, relay.ErrMailboxFull},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// With the right capability the send goes through.
	if _, err := c.Send(ctx, capMb.Seal(t, "x"), secret); err != nil {
		t.Fatal(err)
	}
	// Nothing accepted was dropped by the full mailbox.
	ds, err := c.Fetch(ctx, mb.Owner, mb.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("full mailbox holds %d, %v", len(ds), err)
	}
	// The session is still sane after all that.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// forwarder records Forward payloads and their sources, or refuses them.
type forwarder struct {
	mu      sync.Mutex
	got     [][]byte
	sources [][16]byte
	fail    error
}

func (f *forwarder) Forward(_ context.Context, src [16]byte, p []byte) error {
	if f.fail != nil {
		return f.fail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, p)
	f.sources = append(f.sources, src)
	return nil
}

// sourced is a session conn that says what its listener counts it as.
type sourced struct {
	transport.Conn
	src [16]byte
}

func (s sourced) Source() [16]byte { return s.src }

// remoteAs is a session conn that says it comes from addr.
type remoteAs struct {
	transport.Conn
	addr net.Addr
}

func (r remoteAs) RemoteAddr() net.Addr { return r.addr }

// TestForwarderSource: Forward is told the client's source, the same for
// two sessions from one address (port aside) or one IPv6 /64, another for
// another address, and keyed per server: no bare address, nor a hash
// anyone outside the process could compute from one.
func TestForwarderSource(t *testing.T) {
	fw := &forwarder{}
	r := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	other := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	from := func(r *relaytest.Relay, addr string) [16]byte {
		t.Helper()
		cc, sc := relaytest.Pipe(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.Server.ServeConn(r.Ctx, remoteAs{sc, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))}, "test")
		}()
		defer func() { cc.Close(); <-done }()
		cc.Write(rawFrame(relay.FrameClientHello, append(relay.HelloMagic[:], relay.ProtocolVersion, relay.ProtocolVersion)))
		readRaw(t, cc)
		cc.Write(relay.AppendFrame(nil, relay.Forward{Req: 1, Payload: []byte("layer")}))
		if _, p, err := readRaw(t, cc); err != nil {
			t.Fatal(err)
		} else if res, err := relay.ParseResult(p); err != nil || res.Code != relay.CodeOK {
			t.Fatalf("Forward: %+v, %v", res, err)
		}
		fw.mu.Lock()
		defer fw.mu.Unlock()
		return fw.sources[len(fw.sources)-1]
	}
	a := from(r, "127.0.0.1:1000")
	if from(r, "127.0.0.1:2000") != a {
		t.Fatal("two ports of one address are two sources")
	}
	if from(r, "127.0.0.2:1000") == a {
		t.Fatal("two addresses are one source")
	}
	if from(r, "[::1]:1") != from(r, "[::2]:1") {
		t.Fatal("two addresses of one IPv6 /64 are two sources")
	}
	if from(other, "127.0.0.1:1000") == a {
		t.Fatal("two servers count one address as the same source: the hash is not keyed per server")
	}
	// A transport's conn that says what its listener counts the client as
	// (its address hidden) is counted as that.
	cc, sc := relaytest.Pipe(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Server.ServeConn(r.Ctx, sourced{sc, [16]byte{7}}, "test")
	}()
	cc.Write(rawFrame(relay.FrameClientHello, append(relay.HelloMagic[:], relay.ProtocolVersion, relay.ProtocolVersion)))
	readRaw(t, cc)
	cc.Write(relay.AppendFrame(nil, relay.Forward{Req: 1, Payload: []byte("layer")}))
	readRaw(t, cc)
	cc.Close()
	<-done
	fw.mu.Lock()
	got := fw.sources[len(fw.sources)-1]
	fw.mu.Unlock()
	if got != [16]byte{7} {
		t.Fatalf("a transport.Sourced conn counted as %x, want what it says", got)
	}
	if bare := transport.SourceHash(nil, "127.0.0.1:1000"); a == [16]byte(bare[:16]) || a == [16]byte{} {
		t.Fatal("the source is not keyed")
	}
}

// TestForwarder: Forward frames reach the Forwarder untouched; without one
// they are answered CodeUnsupported; a Forwarder's failure becomes a code
// and its text never leaves the relay.
func TestForwarder(t *testing.T) {
	fw := &forwarder{}
	for _, tc := range []struct {
		name string
		fw   server.Forwarder
		fail error
		want relay.Code
	}{
		{"none", nil, nil, relay.CodeUnsupported},
		{"accepts", fw, nil, relay.CodeOK},
		{"full", &forwarder{fail: relay.ErrRelayFull}, nil, relay.CodeRelayFull},
		{"internal", &forwarder{fail: errors.New("disk on fire at 10.0.0.1")}, nil, relay.CodeInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := relaytest.New(t, store.Options{}, server.Config{Forwarder: tc.fw})
			c, closeFn := rawSession(t, r)
			defer closeFn()
			readRaw(t, c)
			c.Write(relay.AppendFrame(nil, relay.Forward{Req: 5, Payload: []byte("layer")}))
			ft, p, err := readRaw(t, c)
			res, perr := relay.ParseResult(p)
			if err != nil || perr != nil || ft != relay.FrameResult || res.Req != 5 || res.Code != tc.want {
				t.Fatalf("got %#x %+v, %v %v", ft, res, err, perr)
			}
			if strings.Contains(res.Msg, "10.0.0.1") {
				t.Fatalf("a forwarder's error text left the relay: %q", res.Msg)
			}
		})
	}
	if len(fw.got) != 1 || string(fw.got[0]) != "layer" {
		t.Fatalf("forwarder got %q", fw.got)
	}
}

// listener hands out server ends of loopback pairs.
type listener struct {
	conns chan transport.Conn
}

func (l *listener) Accept(ctx context.Context) (transport.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (l *listener) Addr() net.Addr { return &net.TCPAddr{} }
func (l *listener) Close() error   { return nil }

type observer struct {
	mu     sync.Mutex
	opened int
	closed int
	events []string
}

func (o *observer) SessionOpened(string) { o.mu.Lock(); o.opened++; o.mu.Unlock() }
func (o *observer) SessionClosed(string) { o.mu.Lock(); o.closed++; o.mu.Unlock() }
func (o *observer) Envelope(e, r string) {
	o.mu.Lock()
	o.events = append(o.events, e+"/"+r)
	o.mu.Unlock()
}
func (o *observer) SendDuration(time.Duration) {}

// TestServeAndObserve: Serve takes sessions from a listener, refuses those
// beyond MaxSessions, reports to the Observer, and returns when ctx ends.
func TestServeAndObserve(t *testing.T) {
	st := store.NewMemory(store.Options{})
	defer st.Close()
	obs := &observer{}
	srv, err := server.New(server.Config{Store: st, Observer: obs, MaxSessions: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.New(server.Config{}); err == nil {
		t.Fatal("a server without a store")
	}
	ln := &listener{conns: make(chan transport.Conn)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, "test") }()
	connect := func() (*client.Client, error) {
		cc, sc := relaytest.Pipe(t)
		ln.conns <- sc
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hcancel()
		return client.New(hctx, cc, client.WithRelayKey(srv.PublicKey()))
	}
	c, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(); err == nil {
		t.Fatal("a session beyond MaxSessions was served")
	}
	mb := relaytest.NewMailbox(t, c, nil)
	if _, err := c.Send(ctx, mb.Seal(t, "x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, make([]byte, 4096), nil); !errors.Is(err, relay.ErrBadEnvelope) {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.opened != 1 || obs.closed != 1 || strings.Join(obs.events, ",") != "accepted/,rejected/bad_envelope" {
		t.Fatalf("observed %d opened, %d closed, %v", obs.opened, obs.closed, obs.events)
	}
}

// TestFailedRotateKeepsSubscription: a Rotate the relay refuses leaves the
// session's subscription to the old id running.
func TestFailedRotateKeepsSubscription(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	taken := relaytest.NewMailbox(t, c, nil)
	if err := c.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	_, newOwner, _ := ed25519.GenerateKey(nil)
	if _, err := c.Rotate(ctx, mb.Owner, mb.ID, newOwner, taken.ID, nil); !errors.Is(err, relay.ErrMailboxExists) {
		t.Fatalf("rotate onto a taken id: %v", err)
	}
	if _, err := c.Send(ctx, mb.Seal(t, "still subscribed"), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-c.Deliveries():
		o, err := envelope.Open(mb.Ident, d.Envelope)
		if err != nil || string(o.Payload) != "still subscribed" {
			t.Fatalf("pushed %q, %v", o.Payload, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the failed rotate cancelled the subscription")
	}
}

// failingStore fails every read once fail is set.
type failingStore struct {
	store.Store
	fail atomic.Bool
}

func (f *failingStore) FetchAfter(ctx context.Context, id [store.IDSize]byte, after uint64, max int) ([]store.Item, error) {
	if f.fail.Load() {
		return nil, errors.New("disk read error")
	}
	return f.Store.FetchAfter(ctx, id, after, max)
}

// TestPushReadErrorEndsSession: when a subscription's store read fails,
// the session ends, so the client notices and reconnects instead of
// waiting for pushes that never come.
func TestPushReadErrorEndsSession(t *testing.T) {
	st := &failingStore{Store: store.NewMemory(store.Options{})}
	defer st.Close()
	srv, err := server.New(server.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := relaytest.Pipe(t)
	go srv.ServeConn(context.Background(), sc, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, cc, client.WithRelayKey(srv.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mb := relaytest.NewMailbox(t, c, nil)
	if err := c.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	// The Send wakes the push, whose read fails; its own answer may or
	// may not beat the session's end.
	if _, err := c.Send(ctx, mb.Seal(t, "wakes the push"), nil); err != nil && !errors.Is(err, client.ErrClosed) {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the session outlived its failed subscription")
	}
}

// TestPushAfterAcksElsewhere: a subscription whose window is full of
// envelopes that another session acked (a second device, or a fetch and
// ack after reconnecting), all of them or all but the oldest (a fragment
// held until its message is whole), still pushes what comes next: the
// window drops what the store no longer holds.
func TestPushAfterAcksElsewhere(t *testing.T) {
	for _, keep := range []int{0, 1} {
		t.Run(fmt.Sprintf("all but %d", keep), func(t *testing.T) {
			r := relaytest.New(t, store.Options{}, server.Config{})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
			defer cancel()
			bob1, bob2, alice := r.Connect(t), r.Connect(t), r.Connect(t)
			mb := relaytest.NewMailbox(t, bob1, nil)
			if err := bob1.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
				t.Fatal(err)
			}
			var refs []client.Ref
			for i := range relay.MaxUnacked {
				if _, err := alice.Send(ctx, mb.Seal(t, fmt.Sprint(i)), nil); err != nil {
					t.Fatal(err)
				}
				select {
				case d := <-bob1.Deliveries():
					refs = append(refs, d.Ref)
				case <-ctx.Done():
					t.Fatalf("push %d missing", i)
				}
			}
			if n, err := bob2.Ack(ctx, mb.Owner, mb.ID, refs[keep:]...); err != nil || n != len(refs)-keep {
				t.Fatalf("ack on the second session: %d, %v", n, err)
			}
			if _, err := alice.Send(ctx, mb.Seal(t, "next"), nil); err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-bob1.Deliveries():
				if o, err := envelope.Open(mb.Ident, d.Envelope); err != nil || string(o.Payload) != "next" {
					t.Fatalf("pushed something else (%v)", err)
				}
			case <-ctx.Done():
				t.Fatal("the window stayed full of envelopes acked elsewhere: nothing more was pushed")
			}
		})
	}
}
