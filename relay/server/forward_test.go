package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
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
)

// rotateTo rotates mailbox (id, owner) to a new id, owner and capability
// verifier, and returns the new id and owner.
func rotateTo(t *testing.T, c *client.Client, owner ed25519.PrivateKey, id [32]byte, capv []byte) ([32]byte, ed25519.PrivateKey) {
	t.Helper()
	_, newOwner, _ := ed25519.GenerateKey(nil)
	var newID [32]byte
	rand.Read(newID[:])
	if _, err := c.Rotate(context.Background(), owner, id, newOwner, newID, capv); err != nil {
		t.Fatal(err)
	}
	return newID, newOwner
}

// TestSendFollowsRotation: an envelope naming a mailbox id rotated away
// within the store's TTL is stored in the mailbox it went to (through
// a second rotation too) and pushed to its subscriber, if it carries the
// capability the old id had; the new capability, or none, is refused.
// A deleted end, or a forward past its day, answers "no such mailbox".
func TestSendFollowsRotation(t *testing.T) {
	var now atomic.Int64
	t0 := time.Now()
	now.Store(t0.UnixNano())
	r := relaytest.New(t, store.Options{Now: func() time.Time { return time.Unix(0, now.Load()) }}, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	oldCap, newCap := []byte("old-cap"), []byte("new-cap")
	oldV, newV := sha256.Sum256(oldCap), sha256.Sum256(newCap)
	mb := relaytest.NewMailbox(t, c, oldV[:])
	b, bOwner := rotateTo(t, c, mb.Owner, mb.ID, newV[:])
	if err := c.Subscribe(ctx, bOwner, b); err != nil {
		t.Fatal(err)
	}
	for _, wrong := range [][]byte{newCap, nil} {
		if _, err := c.Send(ctx, mb.Seal(t, "wrong cap"), wrong); !errors.Is(err, relay.ErrCapability) {
			t.Fatalf("a send to the old id with capability %q: %v, want ErrCapability", wrong, err)
		}
	}
	if _, err := c.Send(ctx, mb.Seal(t, "late"), oldCap); err != nil {
		t.Fatalf("a send to the old id with its capability: %v", err)
	}
	select {
	case d := <-c.Deliveries():
		if o, err := envelope.Open(mb.Ident, d.Envelope); err != nil || string(o.Payload) != "late" || d.Mailbox != b {
			t.Fatalf("pushed %q to the new mailbox: %v, %v", o.Payload, d.Mailbox == b, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the late envelope was not pushed to the new mailbox's subscriber")
	}

	cc, ccOwner := rotateTo(t, c, bOwner, b, nil)
	if _, err := c.Send(ctx, mb.Seal(t, "two hops"), oldCap); err != nil {
		t.Fatalf("a send to the old id after a second rotation: %v", err)
	}
	ds, err := c.Fetch(ctx, ccOwner, cc, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("the mailbox after two rotations holds %d envelopes, %v; want 2", len(ds), err)
	}
	for i, want := range []string{"late", "two hops"} {
		if o, err := envelope.Open(mb.Ident, ds[i].Envelope); err != nil || string(o.Payload) != want {
			t.Fatalf("envelope %d = %q, %v; want %q", i, o.Payload, err, want)
		}
	}

	// Past the store's TTL the forward has ended.
	now.Store(t0.Add(store.DefaultTTL + 24*time.Hour).UnixNano())
	if _, err := c.Send(ctx, mb.Seal(t, "too late"), oldCap); !errors.Is(err, relay.ErrNoMailbox) {
		t.Fatalf("a send to the old id past the TTL: %v, want ErrNoMailbox", err)
	}
	now.Store(t0.UnixNano())
	if err := c.Delete(ctx, ccOwner, cc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, mb.Seal(t, "deleted"), oldCap); !errors.Is(err, relay.ErrNoMailbox) {
		t.Fatalf("a send to the old id after the mailbox was deleted: %v, want ErrNoMailbox", err)
	}
}

// rotateOnPut is a memory store on which, once, the owner's rotation
// lands between the relay's look at the mailbox and its Put, as a Rotate
// on another session may. With failForward, the look that follows it
// fails for a reason of the store's own (a forward record that fails
// authentication, the store closing), not "no such mailbox".
type rotateOnPut struct {
	*store.Memory
	once        sync.Once
	rotate      func()
	rotated     atomic.Bool
	failForward bool
}

var errStoreTrouble = errors.New("store trouble")

func (s *rotateOnPut) Put(ctx context.Context, id [store.IDSize]byte, env []byte) (store.Ref, error) {
	s.once.Do(func() { s.rotate(); s.rotated.Store(true) })
	return s.Memory.Put(ctx, id, env)
}

func (s *rotateOnPut) Forwarded(ctx context.Context, id [store.IDSize]byte) ([store.IDSize]byte, []byte, error) {
	if s.failForward && s.rotated.Load() {
		return [store.IDSize]byte{}, nil, errStoreTrouble
	}
	return s.Memory.Forwarded(ctx, id)
}

// sendUnderRotation sends to a mailbox with a capability on a relay over
// st, whose first Put the mailbox's rotation to newID lands under, and
// returns the client, the new mailbox and the Send's error.
func sendUnderRotation(t *testing.T, st *rotateOnPut) (*client.Client, ed25519.PrivateKey, [32]byte, error) {
	r := relaytest.NewWithStore(t, st, server.Config{})
	ctx := context.Background()
	c := r.Connect(t)
	v := sha256.Sum256([]byte("old-cap"))
	mb := relaytest.NewMailbox(t, c, v[:])
	_, newOwner, _ := ed25519.GenerateKey(nil)
	var newID [32]byte
	rand.Read(newID[:])
	st.rotate = func() {
		if _, err := st.Memory.RotateMailbox(ctx, mb.ID, newID, newOwner.Public().(ed25519.PublicKey), nil); err != nil {
			t.Error(err)
		}
	}
	_, err := c.Send(ctx, mb.Seal(t, "under a rotation"), []byte("old-cap"))
	return c, newOwner, newID, err
}

// TestSendDuringRotation: a Send whose mailbox is rotated between the
// relay's look and its Put is stored in the new mailbox; before, the Put's
// "no such mailbox" went to the sender (and an entry relay dropped its
// forward for good).
func TestSendDuringRotation(t *testing.T) {
	c, newOwner, newID, err := sendUnderRotation(t, &rotateOnPut{Memory: store.NewMemory(store.Options{})})
	if err != nil {
		t.Fatalf("a Send under a rotation: %v", err)
	}
	ds, err := c.Fetch(context.Background(), newOwner, newID, 0)
	if err != nil || len(ds) != 1 {
		t.Fatalf("the new mailbox holds %d, %v; want the envelope", len(ds), err)
	}
}

// TestPutFollowingKeepsStoreError: when the look again after a Put's "no
// such mailbox" fails for another reason, the relay answers that error
// (internal: retried), as destination does. A reviewer found it answered
// the Put's "no such mailbox", which an entry relay takes as final,
// dropping the forward it acked.
func TestPutFollowingKeepsStoreError(t *testing.T) {
	_, _, _, err := sendUnderRotation(t, &rotateOnPut{Memory: store.NewMemory(store.Options{}), failForward: true})
	if !errors.Is(err, relay.ErrInternal) {
		t.Fatalf("a Send under a rotation whose forward the store could not read: %v; want internal (retried), not a final no such mailbox", err)
	}
}
