package relay

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
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// tcpPair returns both ends of a loopback TCP connection; *net.TCPConn is a
// transport.Conn.
func tcpPair(t testing.TB) (transport.Conn, transport.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := <-ch
	if c2 == nil {
		t.Fatal("accept failed")
	}
	return c1.(*net.TCPConn), c2.(*net.TCPConn)
}

type testRelay struct {
	wg    sync.WaitGroup
	srv   *Server
	st    store.Store
	ctx   context.Context
	stop  context.CancelFunc
	done  chan struct{}
	conns int
}

func newTestRelay(t testing.TB, opts store.Options) *testRelay {
	t.Helper()
	st := store.NewMemory(opts)
	srv, err := NewServer(ServerConfig{Store: st, HelloTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &testRelay{srv: srv, st: st, ctx: ctx, stop: cancel}
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
		st.Close()
	})
	return r
}

// connect opens a session served by r and returns its client side.
func (r *testRelay) connect(t testing.TB) *Client {
	t.Helper()
	cc, sc := tcpPair(t)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.srv.ServeConn(r.ctx, sc, "test")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type mailbox struct {
	id    [32]byte
	owner ed25519.PrivateKey
	card  *envelope.Card
	ident *envelope.Identity
}

func newMailbox(t testing.TB, c *Client, capv []byte) *mailbox {
	t.Helper()
	_, owner, _ := ed25519.GenerateKey(nil)
	var id [32]byte
	rand.Read(id[:])
	ident, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMailbox(context.Background(), owner, id, capv); err != nil {
		t.Fatal(err)
	}
	return &mailbox{id: id, owner: owner, ident: ident, card: ident.Card(id, nil, nil)}
}

func (m *mailbox) seal(t testing.TB, msg string) []byte {
	t.Helper()
	env, err := envelope.Seal(m.card, nil, []byte(msg), &envelope.Options{Suite: envelope.SuiteX25519})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestSendFetchAck(t *testing.T) {
	r := newTestRelay(t, store.Options{})
	ctx := context.Background()
	bob := r.connect(t)
	alice := r.connect(t)
	mb := newMailbox(t, bob, nil)

	var refs []store.Ref
	for _, m := range []string{"one", "two", "three"} {
		ref, err := alice.Send(ctx, mb.seal(t, m), nil)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	// An exact duplicate is stored once and acked with the same ref.
	env := mb.seal(t, "dup")
	r1, err := alice.Send(ctx, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := alice.Send(ctx, env, nil)
	if err != nil || r1 != r2 {
		t.Fatalf("duplicate: %v, same ref %v", err, r1 == r2)
	}
	ds, err := bob.Fetch(ctx, mb.owner, mb.id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 4 {
		t.Fatalf("fetched %d, want 4", len(ds))
	}
	for i, want := range []string{"one", "two", "three", "dup"} {
		o, err := envelope.Open(mb.ident, ds[i].Envelope)
		if err != nil {
			t.Fatal(err)
		}
		if string(o.Payload) != want || ds[i].Mailbox != mb.id {
			t.Fatalf("delivery %d = %q", i, o.Payload)
		}
		if i < 3 && ds[i].Ref != refs[i] {
			t.Fatalf("delivery %d has another ref than its send", i)
		}
	}
	n, err := bob.Ack(ctx, mb.owner, mb.id, ds[0].Ref, ds[1].Ref)
	if err != nil || n != 2 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	ds, err = bob.Fetch(ctx, mb.owner, mb.id, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("after ack: %d, %v", len(ds), err)
	}
	if err := bob.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribePush(t *testing.T) {
	r := newTestRelay(t, store.Options{})
	ctx := context.Background()
	bob := r.connect(t)
	alice := r.connect(t)
	mb := newMailbox(t, bob, nil)
	if _, err := alice.Send(ctx, mb.seal(t, "waiting"), nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.Subscribe(ctx, mb.owner, mb.id); err != nil {
		t.Fatal(err)
	}
	got := func() string {
		select {
		case d, ok := <-bob.Deliveries():
			if !ok {
				t.Fatal("session ended")
			}
			o, err := envelope.Open(mb.ident, d.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.Ack(ctx, mb.owner, mb.id, d.Ref); err != nil {
				t.Fatal(err)
			}
			return string(o.Payload)
		case <-time.After(20 * time.Second):
			t.Fatal("no delivery")
		}
		return ""
	}
	if m := got(); m != "waiting" {
		t.Fatalf("got %q", m)
	}
	// Many more than the relay pushes without acks, to exercise flow control.
	const n = 300
	go func() {
		for i := 0; i < n; i++ {
			if _, err := alice.Send(ctx, mb.seal(t, "live"), nil); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < n; i++ {
		if m := got(); m != "live" {
			t.Fatalf("got %q", m)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	r := newTestRelay(t, store.Options{MaxMailboxEnvelopes: 2})
	ctx := context.Background()
	c := r.connect(t)
	secret := []byte("send capability!")
	capv := sha256.Sum256(secret)
	mb := newMailbox(t, c, nil)
	capMb := newMailbox(t, c, capv[:])
	_, stranger, _ := ed25519.GenerateKey(nil)
	var nobody [32]byte
	rand.Read(nobody[:])

	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"create existing", func() error { return c.CreateMailbox(ctx, mb.owner, mb.id, nil) }, ErrMailboxExists},
		{"fetch wrong owner", func() error { _, err := c.Fetch(ctx, stranger, mb.id, 1); return err }, ErrUnauthorized},
		{"ack wrong owner", func() error { _, err := c.Ack(ctx, stranger, mb.id, store.Ref{}); return err }, ErrUnauthorized},
		{"delete wrong owner", func() error { return c.Delete(ctx, stranger, mb.id) }, ErrUnauthorized},
		{"subscribe wrong owner", func() error { return c.Subscribe(ctx, stranger, mb.id) }, ErrUnauthorized},
		{"fetch no mailbox", func() error { _, err := c.Fetch(ctx, stranger, nobody, 1); return err }, ErrNoMailbox},
		{"send no mailbox", func() error {
			m := *mb
			m.card = mb.ident.Card(nobody, nil, nil)
			_, err := c.Send(ctx, m.seal(t, "x"), nil)
			return err
		}, ErrNoMailbox},
		{"send not an envelope", func() error { _, err := c.Send(ctx, make([]byte, 5000), nil); return err }, ErrBadEnvelope},
		{"send wrong bucket", func() error { _, err := c.Send(ctx, mb.seal(t, "x")[:4000], nil); return err }, ErrBadEnvelope},
		{"send without capability", func() error { _, err := c.Send(ctx, capMb.seal(t, "x"), nil); return err }, ErrCapability},
		{"send wrong capability", func() error { _, err := c.Send(ctx, capMb.seal(t, "x"), []byte("guess")); return err }, ErrCapability},
		{"mailbox full", func() error {
			for i := 0; i < 2; i++ {
				if _, err := c.Send(ctx, mb.seal(t, "fill"), nil); err != nil {
					return err
				}
			}
			_, err := c.Send(ctx, mb.seal(t, "over"), nil)
			return err
		}, ErrMailboxFull},
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
	if _, err := c.Send(ctx, capMb.seal(t, "x"), secret); err != nil {
		t.Fatal(err)
	}
	// Nothing accepted was dropped by the full mailbox.
	ds, err := c.Fetch(ctx, mb.owner, mb.id, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("full mailbox holds %d, %v", len(ds), err)
	}
	// The session is still sane after all that.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRotateAndDelete(t *testing.T) {
	r := newTestRelay(t, store.Options{})
	ctx := context.Background()
	c := r.connect(t)
	mb := newMailbox(t, c, nil)
	for i := 0; i < 3; i++ {
		if _, err := c.Send(ctx, mb.seal(t, "before rotate"), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, newOwner, _ := ed25519.GenerateKey(nil)
	var newID [32]byte
	rand.Read(newID[:])
	n, err := c.Rotate(ctx, mb.owner, mb.id, newOwner, newID, nil)
	if err != nil || n != 3 {
		t.Fatalf("rotate moved %d, %v", n, err)
	}
	if _, err := c.Fetch(ctx, mb.owner, mb.id, 0); !errors.Is(err, ErrNoMailbox) {
		t.Fatalf("old id still there: %v", err)
	}
	ds, err := c.Fetch(ctx, newOwner, newID, 0)
	if err != nil || len(ds) != 3 {
		t.Fatalf("new id holds %d, %v", len(ds), err)
	}
	if err := c.Delete(ctx, newOwner, newID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctx, newOwner, newID, 0); !errors.Is(err, ErrNoMailbox) {
		t.Fatalf("deleted mailbox still there: %v", err)
	}
}

// rawSession speaks frames directly, to send what a Client never would.
func rawSession(t *testing.T, r *testRelay) (net.Conn, func()) {
	cc, sc := tcpPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.srv.ServeConn(r.ctx, sc, "test")
	}()
	cc.Write(appendFrame(nil, frameClientHello, append(helloMagic[:], 1, 1)))
	return cc, func() { cc.Close(); <-done }
}

func readRaw(t *testing.T, c net.Conn) (frameType, []byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, nil, err
	}
	p := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	_, err := io.ReadFull(c, p)
	return frameType(hdr[0]), p, err
}

func TestBadFrames(t *testing.T) {
	r := newTestRelay(t, store.Options{})
	base := runtime.NumGoroutine()
	req := []byte{0, 0, 0, 7}
	cases := []struct {
		name     string
		frame    []byte
		wantCode Code // 0: the session must end
	}{
		{"unknown type", appendFrame(nil, 0x7f, req), CodeUnknownFrame},
		{"forward reserved", appendFrame(nil, frameForward, req, []byte("x")), CodeUnsupported},
		{"short create", appendFrame(nil, frameCreate, req, []byte{1, 2, 3}), CodeBadFrame},
		{"short fetch", appendFrame(nil, frameFetch, req, make([]byte, 10)), CodeBadFrame},
		{"ack count lies", appendFrame(nil, frameAck, req, make([]byte, 32), []byte{0, 9}, make([]byte, 64)), CodeBadFrame},
		{"hello again", appendFrame(nil, frameClientHello, req, []byte{1, 1}), CodeBadFrame},
		{"big ping", appendFrame(nil, framePing, req, make([]byte, 100)), CodeBadFrame},
		{"no request id", appendFrame(nil, frameSend, []byte{1}), 0},
		{"oversize frame", []byte{byte(frameSend), 0xff, 0xff, 0xff, 0xff}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, closeFn := rawSession(t, r)
			defer closeFn()
			if ft, _, err := readRaw(t, c); err != nil || ft != frameServerHello {
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
			if err != nil || ft != frameResult {
				t.Fatalf("got %#x, %v", ft, err)
			}
			res, err := decodeResult(p)
			if err != nil || res.req != 7 || res.code != tc.wantCode {
				t.Fatalf("result %+v, %v", res, err)
			}
			// The session is still usable.
			c.Write(appendFrame(nil, framePing, []byte{0, 0, 0, 8}))
			if ft, _, err := readRaw(t, c); err != nil || ft != framePong {
				t.Fatalf("after error: %#x %v", ft, err)
			}
		})
	}
	// Bad hellos end the session.
	for _, hello := range [][]byte{
		appendFrame(nil, frameClientHello, []byte("XXXX"), []byte{1, 1}),
		appendFrame(nil, framePing, []byte{0, 0, 0, 1}),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	} {
		cc, sc := tcpPair(t)
		done := make(chan struct{})
		go func() { defer close(done); r.srv.ServeConn(r.ctx, sc, "test") }()
		cc.Write(hello)
		if _, _, err := readRaw(t, cc); err == nil {
			t.Fatalf("bad hello %q answered", hello[:4])
		}
		cc.Close()
		<-done
	}
	// Version mismatch is answered with CodeVersion, then closed.
	cc, sc := tcpPair(t)
	go r.srv.ServeConn(r.ctx, sc, "test")
	cc.Write(appendFrame(nil, frameClientHello, helloMagic[:], []byte{2, 3}))
	ft, p, err := readRaw(t, cc)
	if res, _ := decodeResult(p); err != nil || ft != frameResult || res.code != CodeVersion {
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
	srv, _ := NewServer(ServerConfig{Store: st, HelloTimeout: 50 * time.Millisecond, IdleTimeout: 50 * time.Millisecond})
	for _, hello := range []bool{false, true} {
		cc, sc := tcpPair(t)
		done := make(chan struct{})
		go func() { defer close(done); srv.ServeConn(context.Background(), sc, "test") }()
		if hello {
			cc.Write(appendFrame(nil, frameClientHello, helloMagic[:], []byte{1, 1}))
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
	r := newTestRelay(t, store.Options{MaxMailboxEnvelopes: 1})
	ctx := context.Background()
	c := r.connect(t)
	mb := newMailbox(t, c, nil)
	var errs []error
	_, err := c.Fetch(ctx, mb.owner, [32]byte{9}, 1)
	errs = append(errs, err)
	c.Send(ctx, mb.seal(t, "a"), nil)
	_, err = c.Send(ctx, mb.seal(t, "b"), nil)
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil {
			t.Fatal("expected an error")
		}
		msg := err.Error()
		for _, secret := range [][]byte{mb.id[:], mb.owner.Public().(ed25519.PublicKey)} {
			if bytes.Contains([]byte(msg), secret) || containsEncoded(msg, secret) {
				t.Fatalf("error %q carries an identifier", msg)
			}
		}
	}
}

// TestPushWindowAndPaging: a subscription pushes at most MaxUnacked
// envelopes before the session acks, then continues from where it stopped;
// FetchAfter pages through a mailbox by sequence number.
func TestPushWindowAndPaging(t *testing.T) {
	r := newTestRelay(t, store.Options{})
	ctx := context.Background()
	bob := r.connect(t)
	alice := r.connect(t)
	mb := newMailbox(t, bob, nil)
	const n = MaxUnacked + 44
	for i := 0; i < n; i++ {
		if _, err := alice.Send(ctx, mb.seal(t, fmt.Sprint(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Paging with FetchAfter sees every envelope once, in order.
	var after uint64
	seen := 0
	for {
		ds, err := bob.FetchAfter(ctx, mb.owner, mb.id, after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			o, err := envelope.Open(mb.ident, d.Envelope)
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

	if err := bob.Subscribe(ctx, mb.owner, mb.id); err != nil {
		t.Fatal(err)
	}
	var window []Delivery
	for len(window) < MaxUnacked {
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
	refs := make([]store.Ref, len(window))
	for i, d := range window {
		refs[i] = d.Ref
	}
	if _, err := bob.Ack(ctx, mb.owner, mb.id, refs...); err != nil {
		t.Fatal(err)
	}
	for i := MaxUnacked; i < n; i++ {
		select {
		case d := <-bob.Deliveries():
			o, err := envelope.Open(mb.ident, d.Envelope)
			if err != nil || string(o.Payload) != fmt.Sprint(i) {
				t.Fatalf("after the window: %q, want %d (%v)", o.Payload, i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("envelope %d not pushed after acks", i)
		}
	}
}
