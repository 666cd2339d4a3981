package client_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
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

func TestSendFetchAck(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	bob := r.Connect(t)
	alice := r.Connect(t)
	mb := relaytest.NewMailbox(t, bob, nil)

	var refs []client.Ref
	for _, m := range []string{"one", "two", "three"} {
		ref, err := alice.Send(ctx, mb.Seal(t, m), nil)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	// An exact duplicate is stored once and acked with the same ref.
	env := mb.Seal(t, "dup")
	r1, err := alice.Send(ctx, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := alice.Send(ctx, env, nil)
	if err != nil || r1 != r2 {
		t.Fatalf("duplicate: %v, same ref %v", err, r1 == r2)
	}
	ds, err := bob.Fetch(ctx, mb.Owner, mb.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 4 {
		t.Fatalf("fetched %d, want 4", len(ds))
	}
	for i, want := range []string{"one", "two", "three", "dup"} {
		o, err := envelope.Open(mb.Ident, ds[i].Envelope)
		if err != nil {
			t.Fatal(err)
		}
		if string(o.Payload) != want || ds[i].Mailbox != mb.ID {
			t.Fatalf("delivery %d = %q", i, o.Payload)
		}
		if i < 3 && ds[i].Ref != refs[i] {
			t.Fatalf("delivery %d has another ref than its send", i)
		}
	}
	n, err := bob.Ack(ctx, mb.Owner, mb.ID, ds[0].Ref, ds[1].Ref)
	if err != nil || n != 2 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	ds, err = bob.Fetch(ctx, mb.Owner, mb.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("after ack: %d, %v", len(ds), err)
	}
	if err := bob.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestSubscribePush(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	bob := r.Connect(t)
	alice := r.Connect(t)
	mb := relaytest.NewMailbox(t, bob, nil)
	if _, err := alice.Send(ctx, mb.Seal(t, "waiting"), nil); err != nil {
		t.Fatal(err)
	}
	if err := bob.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	got := func() string {
		select {
		case d, ok := <-bob.Deliveries():
			if !ok {
				t.Fatal("session ended")
			}
			o, err := envelope.Open(mb.Ident, d.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bob.Ack(ctx, mb.Owner, mb.ID, d.Ref); err != nil {
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
			if _, err := alice.Send(ctx, mb.Seal(t, "live"), nil); err != nil {
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

func TestRotateDeleteAndLimits(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	if _, err := c.Send(ctx, mb.Seal(t, "moves"), nil); err != nil {
		t.Fatal(err)
	}
	_, newOwner, _ := ed25519.GenerateKey(nil)
	var newID [32]byte
	rand.Read(newID[:])
	if _, err := c.Rotate(ctx, mb.Owner, mb.ID, newOwner, newID, make([]byte, relay.MaxCapLen+1)); err == nil {
		t.Fatal("oversized verifier accepted")
	}
	if n, err := c.Rotate(ctx, mb.Owner, mb.ID, newOwner, newID, nil); err != nil || n != 1 {
		t.Fatalf("rotate moved %d, %v", n, err)
	}
	if err := c.Delete(ctx, newOwner, newID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, mb.Seal(t, "x"), make([]byte, relay.MaxCapLen+1)); err == nil {
		t.Fatal("oversized capability accepted")
	}
	if err := c.CreateMailbox(ctx, newOwner, newID, make([]byte, relay.MaxCapLen+1)); err == nil {
		t.Fatal("oversized verifier accepted")
	}
	// A cancelled request gives the context's error and leaves the session usable.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Ping(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ping: %v", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-c.Done()
	if err := c.Ping(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("ping after close: %v", err)
	}
}

// TestHandshakeFailures: a relay that answers the hello with an error, a
// version the client does not speak, or garbage.
func TestHandshakeFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		answer []byte
		want   error
	}{
		"version refused": {relay.AppendFrame(nil, relay.Result{Code: relay.CodeVersion}), relay.ErrVersion},
		"other version":   {relay.AppendFrame(nil, relay.ServerHello{Version: 9}), relay.ErrVersion},
		"not a hello":     {relay.AppendFrame(nil, relay.Ping{Req: 1}), relay.ErrMalformed},
		"short hello":     {[]byte{byte(relay.FrameServerHello), 0, 0, 0, 1, 1}, relay.ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			cc, sc := relaytest.Pipe(t)
			defer sc.Close()
			go func() {
				relay.ReadFrame(sc)
				sc.Write(tc.answer)
			}()
			if _, err := client.New(context.Background(), cc); !errors.Is(err, tc.want) {
				t.Fatalf("New = %v, want %v", err, tc.want)
			}
		})
	}
	// A relay that never answers: the context ends the handshake.
	cc, sc := relaytest.Pipe(t)
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := client.New(ctx, cc); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent relay: %v", err)
	}
}

func TestDescriptorRequest(t *testing.T) {
	ctx := context.Background()
	r := relaytest.New(t, store.Options{}, server.Config{Descriptor: func() string { return "postern-relay1:fresh" }})
	if line, err := r.Connect(t).Descriptor(ctx); err != nil || line != "postern-relay1:fresh" {
		t.Fatalf("Descriptor = %q, %v", line, err)
	}
	bare := relaytest.New(t, store.Options{}, server.Config{})
	if _, err := bare.Connect(t).Descriptor(ctx); !errors.Is(err, relay.ErrUnsupported) {
		t.Fatalf("a relay without descriptor: %v", err)
	}
}

// TestDescriptorLater: the Descriptor request goes out without waiting for
// its answer, so that the next request shares its round trip. This relay
// reads both requests before it answers either: a client that waited for
// the first answer would never send the second. Closing the session ends
// a wait that has no answer.
func TestDescriptorLater(t *testing.T) {
	cc, sc := relaytest.Pipe(t)
	defer sc.Close()
	go func() {
		relay.ReadFrame(sc)
		sc.Write(relay.AppendFrame(nil, relay.ServerHello{Version: relay.ProtocolVersion}))
		_, p, _ := relay.ReadFrame(sc)
		dr, err := relay.ParseDescriptorRequest(p)
		if err != nil {
			t.Errorf("first request: %v", err)
		}
		_, p, _ = relay.ReadFrame(sc)
		ping, err := relay.ParsePing(p)
		if err != nil {
			t.Errorf("second request: %v", err)
		}
		sc.Write(relay.AppendFrame(nil, relay.Result{Req: dr.Req, Code: relay.CodeOK, Body: []byte("postern-relay1:later")}))
		sc.Write(relay.AppendFrame(nil, relay.Pong(ping)))
		relay.ReadFrame(sc) // the second Descriptor request, never answered
	}()
	// Deadlock guard only: a client that waited would hang here.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.New(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait, err := c.DescriptorLater(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping after DescriptorLater: %v", err)
	}
	if line, err := wait(ctx); err != nil || line != "postern-relay1:later" {
		t.Fatalf("wait = %q, %v", line, err)
	}
	unanswered, err := c.DescriptorLater(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := unanswered(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("wait on a closed session: %v", err)
	}
}

// TestBusyIsClassBusy: a relay's "busy" and "forward queue full" answers
// are transport.ClassBusy for routing, and still match relay's errors.
func TestBusyIsClassBusy(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{Forwarder: busyForwarder{}})
	c := r.Connect(t)
	err := c.Forward(context.Background(), "postern-relay1:x", []byte("layer"))
	if !errors.Is(err, relay.ErrOutboxFull) || transport.ClassOf(err) != transport.ClassBusy {
		t.Fatalf("forward to a full outbox: %v, class %v", err, transport.ClassOf(err))
	}
	var re *relay.Error
	if !errors.As(err, &re) || re.Code != relay.CodeOutboxFull {
		t.Fatalf("errors.As: %v", err)
	}
	_, owner, _ := ed25519.GenerateKey(nil)
	if _, err := c.Fetch(context.Background(), owner, [32]byte{}, 0); err == nil || transport.ClassOf(err) == transport.ClassBusy {
		t.Fatalf("a fetch of no mailbox: %v, class %v", err, transport.ClassOf(err))
	}
}

// busyForwarder refuses every Forward: its queue is full.
type busyForwarder struct{}

func (busyForwarder) Forward(context.Context, [16]byte, []byte) error { return relay.ErrOutboxFull }
