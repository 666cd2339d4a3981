package link_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// flakyStore is a memory store that counts Puts and fails those fail
// picks, as a failed write, or a write whose session ended under it, does.
type flakyStore struct {
	*store.Memory
	puts atomic.Int32
	fail func(n int32) bool // n: this Put's number, from 1
}

func (s *flakyStore) Put(ctx context.Context, id [32]byte, env []byte) (store.Ref, error) {
	if n := s.puts.Add(1); s.fail != nil && s.fail(n) {
		return store.Ref{}, context.Canceled
	}
	return s.Memory.Put(ctx, id, env)
}

// TestTwoHopStoreFailureRetried: a forward the home relay could not store
// the first time (its mailbox full, or the write failed) is stored when
// the entry relay sends it again, once; the home relay does not take the
// second try for a replay, which the entry relay would count as delivered
// and drop from its outbox, an envelope acked to its sender and stored
// nowhere.
func TestTwoHopStoreFailureRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		full bool               // the mailbox holds one envelope, already there
		fail func(n int32) bool // Puts that fail
	}{
		{name: "mailbox full", full: true},
		{name: "write failed", fail: func(n int32) bool { return n == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := 0
			if tc.full {
				max = 1
			}
			st := &flakyStore{Memory: store.NewMemory(store.Options{MaxMailboxEnvelopes: max}), fail: tc.fail}
			home, homeDesc, homeLine := homeRelayOn(t, st)
			q := &memQueue{}
			var mu sync.Mutex
			events := map[string]int{}
			fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
				Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
					return linkTo(ctx, t, home)
				},
				Observe:    func(e string) { mu.Lock(); events[e]++; mu.Unlock() },
				MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
			entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
			defer cancel()
			runForwarder(ctx, t, fw)

			owner := home.Connect(t)
			mb := relaytest.NewMailbox(t, owner, nil)
			direct := int32(0)
			if tc.full {
				if _, err := owner.Send(ctx, mb.Seal(t, "direct"), nil); err != nil {
					t.Fatal(err)
				}
				direct = 1
			}
			layer, err := forward.Seal(homeDesc, 1, nil, mb.Seal(t, "forwarded"))
			if err != nil {
				t.Fatal(err)
			}
			if err := entry.Connect(t).Forward(ctx, homeLine, layer); err != nil {
				t.Fatal(err) // acked to the sender
			}
			for st.puts.Load() < direct+1 { // the home relay tried to store it, and could not
				if ctx.Err() != nil {
					t.Fatal("the forward never reached the home relay's store")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if tc.full { // the recipient takes the direct message: room again
				ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
				if err != nil || len(ds) != 1 {
					t.Fatalf("fetched %d envelopes (%v), want the direct one", len(ds), err)
				}
				if _, err := owner.Ack(ctx, mb.Owner, mb.ID, ds[0].Ref); err != nil {
					t.Fatal(err)
				}
			}
			for q.len() > 0 {
				if ctx.Err() != nil {
					t.Fatal("the forward never left the entry relay's outbox")
				}
				time.Sleep(5 * time.Millisecond)
			}
			ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(ds) != 1 {
				t.Fatalf("the home relay holds %d envelopes, want the forwarded one (entry relay's events %v)", len(ds), events)
			}
			if o, err := envelope.Open(mb.Ident, ds[0].Envelope); err != nil || string(o.Payload) != "forwarded" {
				t.Fatalf("the home relay holds another envelope (%v)", err)
			}
			if events["replay"] != 0 || events["delivered"] != 1 {
				t.Fatalf("entry relay's events %v, want one delivery and no replay", events)
			}
		})
	}
}

// fullMailboxStore refuses every Put to one mailbox as full.
type fullMailboxStore struct {
	*store.Memory
	full [32]byte
}

func (s *fullMailboxStore) Put(ctx context.Context, id [32]byte, env []byte) (store.Ref, error) {
	if id == s.full {
		return store.Ref{}, store.ErrMailboxFull
	}
	return s.Memory.Put(ctx, id, env)
}

// TestTwoHopFullMailboxDoesNotHoldTheQueue: a forward whose mailbox on the
// home relay is full stays queued, and the forwards behind it to other
// mailboxes there go on in the same drain: one recipient who makes no room
// does not hold everyone else's forwards to that home relay back (for a
// backoff each window's worth; here an hour).
func TestTwoHopFullMailboxDoesNotHoldTheQueue(t *testing.T) {
	st := &fullMailboxStore{Memory: store.NewMemory(store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1})}
	home, homeDesc, homeLine := homeRelayOn(t, st)
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
			return linkTo(ctx, t, home)
		},
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	owner := home.Connect(t)
	full := relaytest.NewMailbox(t, owner, nil)
	other := relaytest.NewMailbox(t, owner, nil)
	st.full = full.ID
	sender := entry.Connect(t)
	const n = 300 // past the pump's window (128) and batch (64)
	for i := range n + 1 {
		mb := other
		if i == 0 {
			mb = full // at the head of the queue
		}
		layer, err := forward.Seal(homeDesc, 1, nil, mb.Seal(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sender.Forward(ctx, homeLine, layer); err != nil {
			t.Fatal(err)
		}
	}
	runForwarder(ctx, t, fw) // after queueing: one drain finds them all
	for {
		m, err := st.Mailbox(ctx, other.ID)
		if err != nil {
			t.Fatal(err)
		}
		if m.Pending == n {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d forwards behind a full mailbox stored", m.Pending, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The entry relay deletes what was delivered once the answers are in,
	// a moment after the home relay stored it.
	for q.len() != 1 {
		if ctx.Err() != nil {
			t.Fatalf("%d forwards queued, want the full mailbox's one", q.len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the deferred one stays queued
	if q.len() != 1 {
		t.Fatalf("%d forwards queued, want the full mailbox's one", q.len())
	}
}
