package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
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
	cc.Write(rawFrame(relay.FrameClientHello, append(relay.HelloMagic[:], 1, 1)))
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
		{"hello again", rawFrame(relay.FrameClientHello, req, []byte{1, 1}), relay.CodeBadFrame},
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
		rawFrame(relay.FrameClientHello, []byte("XXXX"), []byte{1, 1}),
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
	cc.Write(rawFrame(relay.FrameClientHello, relay.HelloMagic[:], []byte{2, 3}))
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
			cc.Write(rawFrame(relay.FrameClientHello, relay.HelloMagic[:], []byte{1, 1}))
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
