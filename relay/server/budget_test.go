package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
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

// fillMailbox puts n envelopes of the largest bucket into a new mailbox.
func fillMailbox(t testing.TB, c *client.Client, n int) *relaytest.Mailbox {
	t.Helper()
	mb := relaytest.NewMailbox(t, c, nil)
	big := bytes.Repeat([]byte("x"), envelope.MaxPayload(envelope.SuiteX25519, envelope.Bucket64K)-200)
	for i := 0; i < n; i++ {
		env, err := envelope.Seal(mb.Card, nil, big, &envelope.Options{Suite: envelope.SuiteX25519})
		if err != nil {
			t.Fatal(err)
		}
		if len(env) != envelope.Bucket64K {
			t.Fatalf("sealed %d bytes", len(env))
		}
		if _, err := c.Send(context.Background(), env, nil); err != nil {
			t.Fatal(err)
		}
	}
	return mb
}

// stallingSubscriber opens a raw session, subscribes to mb and then never
// reads again. It returns the client end.
func stallingSubscriber(t testing.TB, r *relaytest.Relay, mb *relaytest.Mailbox) transport.Conn {
	t.Helper()
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	cc.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion}))
	_, p, err := relay.ReadFrame(cc)
	if err != nil {
		t.Fatal(err)
	}
	h, err := relay.ParseServerHello(p)
	if err != nil {
		t.Fatal(err)
	}
	sub := relay.Subscribe{Req: 1, Mailbox: mb.ID}
	bind, _ := relay.NewBinding(r.Server.PublicKey(), h.Challenge)
	sub.Sig = relay.Sign(mb.Owner, bind, sub)
	if _, err := cc.Write(relay.AppendFrame(nil, sub)); err != nil {
		t.Fatal(err)
	}
	if tc, ok := cc.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096) // keep the kernel from absorbing the pushes
	}
	return cc
}

// TestStalledSubscriberReleasesBudget: with the whole server's delivery
// budget one batch, a subscriber that stops reading is dropped after the
// write timeout, and its budget comes back: another client's Fetch of the
// same mailbox completes.
func TestStalledSubscriberReleasesBudget(t *testing.T) {
	obs := &observer{}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := relaytest.New(t, store.Options{}, server.Config{Observer: obs, Logger: log, WriteTimeout: 2 * time.Second,
		BatchBytes: 1 << 20, SessionDeliveryBytes: 1 << 20, MaxDeliveryBytes: 1 << 20})
	owner := r.Connect(t)
	mb := fillMailbox(t, owner, 200) // 12.5 MiB: more than the socket buffers hold
	staller := stallingSubscriber(t, r, mb)
	defer staller.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
	if err != nil {
		t.Fatalf("fetch while a subscriber stalls: %v (a stalled session kept the delivery budget)", err)
	}
	if len(ds) != relay.MaxFetch && len(ds) != 200 {
		t.Fatalf("fetched %d", len(ds))
	}
	obs.mu.Lock()
	closed := obs.closed
	obs.mu.Unlock()
	if closed != 1 {
		t.Fatalf("%d sessions ended, want the stalled one", closed)
	}
	if !strings.Contains(logs.String(), `reason="write stalled"`) {
		t.Fatalf("the session did not end as stalled; logs:\n%s", logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestStalledReadersLeaveSendSlots: sessions that never read their
// Results do not keep other clients' Sends waiting. The relay-wide Send
// slots (MaxSendsInFlight) were held until each Result was written, so 8
// such sessions (64 Sends each) held all 512 until their writes timed out
// (a reviewer's find: an honest Send took 2.7 s with a 3 s timeout). The
// timeout here is an hour: the honest Send finishes only if the slots go
// back once the envelopes are stored.
func TestStalledReadersLeaveSendSlots(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{WriteTimeout: time.Hour})
	honest := r.Connect(t)
	mb := relaytest.NewMailbox(t, honest, nil)
	env := mb.Seal(t, "x")
	var wrote sync.WaitGroup
	for range 512/64 + 1 { // one more than the slots take
		c, s := net.Pipe()
		t.Cleanup(func() { c.Close() })
		r.Serve(pipeConn{s}, "test")
		c.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion}))
		if _, _, err := relay.ReadFrame(c); err != nil { // ServerHello; nothing is read after it
			t.Fatal(err)
		}
		wrote.Go(func() {
			for j := range 64 {
				if _, err := c.Write(relay.AppendFrame(nil, relay.Send{Req: uint32(j + 1), Envelope: env})); err != nil {
					return
				}
			}
		})
	}
	// Every stalled session gets its 64 Sends in (the ninth only once
	// slots come back), and the honest Send its slot.
	in := make(chan struct{})
	go func() { wrote.Wait(); close(in) }()
	select {
	case <-in:
	case <-time.After(20 * time.Second): // a deadlock guard
		t.Fatal("the stalled sessions' Sends never all got a slot: the first ones kept theirs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a deadlock guard
	defer cancel()
	if _, err := honest.Send(ctx, mb.Seal(t, "honest"), nil); err != nil {
		t.Fatalf("an honest Send beside 9 sessions that never read: %v", err)
	}
}
