package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestMailboxOpsPerSource: a source that has spent its mailbox
// operations (Config.MailboxOps) is told "busy" for a create and a
// rotate, each counted (server.MailboxOpsObserver), and nothing changes;
// another source, and a session of the first for anything else (a
// delete included), go on.
func TestMailboxOpsPerSource(t *testing.T) {
	obs := &limitsObserver{}
	r := relaytest.New(t, store.Options{}, server.Config{MailboxOps: 2, Observer: obs})
	addr := r.ServeTCP(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, a2, b := dialFrom(ctx, t, r, addr, "127.0.0.2"), dialFrom(ctx, t, r, addr, "127.0.0.2"), dialFrom(ctx, t, r, addr, "127.0.0.3")
	key := func() ed25519.PrivateKey { _, k, _ := ed25519.GenerateKey(nil); return k }
	id := func() (v [32]byte) { rand.Read(v[:]); return v }
	owner, first := key(), id()
	owner2, second := key(), id()
	if err := a.CreateMailbox(ctx, owner, first, nil); err != nil {
		t.Fatal(err)
	}
	if err := a2.CreateMailbox(ctx, owner2, second, nil); err != nil {
		t.Fatalf("the second operation, on another session of the source: %v", err)
	}
	third, newOwner := id(), key()
	for name, op := range map[string]func() error{
		"create": func() error { return a.CreateMailbox(ctx, key(), third, nil) },
		"rotate": func() error { _, err := a2.Rotate(ctx, owner, first, newOwner, third, nil); return err },
	} {
		if err := op(); !errors.Is(err, relay.ErrBusy) {
			t.Errorf("%s beyond the allowance: %v, want busy", name, err)
		}
	}
	if n := obs.refused.Load(); n != 2 {
		t.Errorf("%d refusals observed, want 2", n)
	}
	if got := r.Store.Stats().Mailboxes; got != 2 {
		t.Fatalf("%d mailboxes after refused operations, want 2", got)
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("the spent source's session: %v", err)
	}
	if err := a.Delete(ctx, owner2, second); err != nil {
		t.Fatalf("a delete from the spent source (deletes are not counted): %v", err)
	}
	if _, err := b.Rotate(ctx, owner, first, newOwner, third, nil); err != nil {
		t.Fatalf("another source's rotation: %v", err)
	}
}

// limitsObserver counts what the per-source limits refused: mailbox
// operations, and envelopes (rejected for "source_limit").
type limitsObserver struct {
	refused, limited atomic.Int64
}

func (*limitsObserver) SessionOpened(string)       {}
func (*limitsObserver) SessionClosed(string)       {}
func (*limitsObserver) SendDuration(time.Duration) {}
func (o *limitsObserver) MailboxOpRefused()        { o.refused.Add(1) }
func (o *limitsObserver) Envelope(result, reason string) {
	if result == "rejected" && reason == "source_limit" {
		o.limited.Add(1)
	}
}
