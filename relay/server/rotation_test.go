package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestFollowTakesLateEnvelope (a reviewer's check): an Inbox
// following the new mailbox takes and acks an envelope that names the
// old id (sent after the rotation with the old capability), though the
// Deliver names the new mailbox: no client check of the envelope's
// mailbox against the one followed drops it or loops on it.
func TestFollowTakesLateEnvelope(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	c := r.Connect(t)
	oldCap := []byte("old-cap")
	v := sha256.Sum256(oldCap)
	mb := relaytest.NewMailbox(t, c, v[:])
	nv := sha256.Sum256([]byte("new-cap"))
	b, bOwner := rotateTo(t, c, mb.Owner, mb.ID, nv[:])

	var mu sync.Mutex
	var got []string
	in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Take: func(m client.Message) error {
		mu.Lock()
		got = append(got, string(m.Payload))
		mu.Unlock()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- in.Follow(fctx, func(context.Context) (*client.Client, error) { return r.Connect(t), nil }, bOwner, b, nil)
	}()
	if _, err := c.Send(ctx, mb.Seal(t, "late"), oldCap); err != nil {
		t.Fatal(err)
	}
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		st, err := r.Store.Mailbox(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 && st.Pending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("taken %d, pending %d: the late envelope was not taken and acked", n, st.Pending)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done
	if got[0] != "late" {
		t.Fatalf("took %q", got[0])
	}
}

// TestRotationChainBounded: an owner may rotate a mailbox
// store.MaxForwardChain times within the TTL, and an envelope naming the
// first id with its capability (a forward an entry relay acked before the
// first rotation) still reaches the mailbox; one more rotation is answered
// busy and changes nothing. A reviewer found a ninth rotation allowed and
// such a forward then answered "no such mailbox", which an entry relay
// takes as final: the envelope, acked to its sender, was dropped.
func TestRotationChainBounded(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	oldCap := []byte("old-cap")
	v := sha256.Sum256(oldCap)
	mb := relaytest.NewMailbox(t, c, v[:])
	id, owner := mb.ID, mb.Owner
	for range store.MaxForwardChain {
		id, owner = rotateTo(t, c, owner, id, v[:])
	}
	if _, err := c.Send(ctx, mb.Seal(t, "queued before the first rotation"), oldCap); err != nil {
		t.Fatalf("a send to the id of %d rotations ago, within the TTL, with its capability: %v", store.MaxForwardChain, err)
	}
	_, next, _ := ed25519.GenerateKey(nil)
	var nextID [32]byte
	rand.Read(nextID[:])
	if _, err := c.Rotate(ctx, owner, id, next, nextID, nil); !errors.Is(err, relay.ErrBusy) {
		t.Fatalf("one rotation more: %v, want busy", err)
	}
	ds, err := c.Fetch(ctx, owner, id, 0)
	if err != nil || len(ds) != 1 {
		t.Fatalf("the mailbox after a refused rotation holds %d, %v; want the envelope", len(ds), err)
	}
}
