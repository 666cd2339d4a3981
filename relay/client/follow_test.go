package client_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestFollowReconnects: Follow delivers waiting and new envelopes, acks
// what the handler returns, and after the session dies reconnects with
// backoff and carries on.
func TestFollowReconnects(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	owner := r.Connect(t)
	mb := relaytest.NewMailbox(t, owner, nil)
	sender := r.Connect(t)
	if _, err := sender.Send(ctx, mb.Seal(t, "waiting"), nil); err != nil {
		t.Fatal(err)
	}

	sessions := make(chan *client.Client, 4)
	got := make(chan string, 16)
	var mu sync.Mutex
	var lost []error
	connected := 0
	done := make(chan error, 1)
	go func() {
		done <- client.Follow(ctx, client.FollowConfig{
			Dial: func(ctx context.Context) (*client.Client, error) {
				c := r.Connect(t)
				sessions <- c
				return c, nil
			},
			Owner:     mb.Owner,
			Mailbox:   mb.ID,
			Connected: func() { mu.Lock(); connected++; mu.Unlock() },
			Handle: func(d client.Delivery) ([]client.Ref, error) {
				o, err := envelope.Open(mb.Ident, d.Envelope)
				if err != nil {
					t.Error(err)
					return nil, nil
				}
				got <- string(o.Payload)
				return []client.Ref{d.Ref}, nil
			},
			Lost:       func(err error, wait time.Duration) { mu.Lock(); lost = append(lost, err); mu.Unlock() },
			MinBackoff: 10 * time.Millisecond,
		})
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("got %q, want %q", m, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %q", want)
		}
	}
	expect("waiting")
	first := <-sessions
	if _, err := sender.Send(ctx, mb.Seal(t, "live"), nil); err != nil {
		t.Fatal(err)
	}
	expect("live")
	// Wait for Follow's ack to land (bounded), so the redelivery below
	// would be a bug rather than at-least-once delivery doing its job.
	for deadline := time.Now().Add(30 * time.Second); ; {
		m, err := r.Store.Mailbox(ctx, mb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("acks never reached the relay")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The session dies; Follow reconnects and keeps delivering.
	first.Close()
	<-sessions
	if _, err := sender.Send(ctx, mb.Seal(t, "after reconnect"), nil); err != nil {
		t.Fatal(err)
	}
	expect("after reconnect")
	// Everything delivered was acked: nothing is pushed twice.
	select {
	case m := <-got:
		t.Fatalf("delivered again: %q", m)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lost) != 1 || connected != 2 {
		t.Fatalf("lost %d sessions, connected %d times", len(lost), connected)
	}
}
