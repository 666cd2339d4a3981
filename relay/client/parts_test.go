package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
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
	"github.com/postern/postern/transport/censortest"
)

// partsWorld is a relay behind a middlebox, with a mailbox, and a way to
// open sessions through the middlebox that counts them.
type partsWorld struct {
	r        *relaytest.Relay
	mb       *censortest.Middlebox
	owner    *client.Client // straight to the relay
	box      *relaytest.Mailbox
	sessions atomic.Int64
	// stall is the sessions' stall window: long enough that a slow
	// answer on a loaded machine is not taken for a frozen flow.
	stall time.Duration
}

func newPartsWorld(t *testing.T) *partsWorld {
	w := &partsWorld{r: relaytest.New(t, store.Options{}, server.Config{}), stall: 2 * time.Second}
	w.mb = censortest.NewMiddlebox(t, w.r.ServeTCP(t, "test"))
	w.owner = w.r.Connect(t)
	w.box = relaytest.NewMailbox(t, w.owner, nil)
	return w
}

func (w *partsWorld) dial(ctx context.Context) (*client.Client, error) {
	w.sessions.Add(1)
	return w.r.DialTCP(ctx, w.mb.Addr(), w.stall)
}

// send stores msg (see relaytest.Mailbox.Store) through the direct
// session.
func (w *partsWorld) send(t *testing.T, msg []byte) { w.box.Store(t, w.owner, msg) }

// stored stores a random message of size bytes (see send) and returns
// it.
func (w *partsWorld) stored(t *testing.T, size int) []byte {
	msg := make([]byte, size)
	rand.Read(msg)
	w.send(t, msg)
	return msg
}

// inbox returns an inbox of the mailbox whose taken messages go to got.
func (w *partsWorld) inbox(t *testing.T, got *[][]byte) *client.Inbox { return w.box.Inbox(t, got) }

// waiting is how many envelopes the mailbox holds.
func (w *partsWorld) waiting(t *testing.T) int {
	ds, err := w.owner.Fetch(context.Background(), w.box.Owner, w.box.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(ds)
}

// TestDrainPartsThroughFreezingCensor: behind a censor that freezes every
// flow after 16 KiB, Drain cannot take a message sealed in 64 KiB
// envelopes (it stalls at the first of them, every time); DrainParts
// takes it, and a small one beside it, part by part over several
// sessions, learns from the first stall how much a session carries, and
// then ends each session before that: a second DrainParts told the
// learnt figure never stalls. Nothing is left on the relay.
func TestDrainPartsThroughFreezingCensor(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	big := w.stored(t, 100<<10)
	w.send(t, []byte("small"))
	w.mb.SetRule(censortest.FreezeAfter(16 << 10))

	var got [][]byte
	in := w.inbox(t, &got)
	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Drain(ctx, c, w.box.Owner, w.box.ID); !errors.Is(err, transport.ErrStalled) {
		t.Fatalf("Drain through the censor: %v, want a stall (test setup)", err)
	}
	c.Close()

	var learned []int
	cfg := client.PartsConfig{Learned: func(n int) { learned = append(learned, n) }}
	w.sessions.Store(0)
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, cfg); err != nil {
		t.Fatalf("DrainParts: %v", err)
	}
	if len(got) != 2 || !bytes.Equal(got[0], big) || string(got[1]) != "small" {
		t.Fatalf("took %d messages, want the large one whole and the small one", len(got))
	}
	if n := w.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left on the relay", n)
	}
	if len(learned) != 1 || learned[0] <= 0 || learned[0] >= 16<<10 {
		t.Fatalf("learnt %v bytes per session, want one figure under the censor's 16 KiB", learned)
	}
	if s := w.sessions.Load(); s < 7 {
		t.Fatalf("%d sessions carried 100 KiB through a 16 KiB limit", s)
	}
	t.Logf("learnt %v, %d sessions", learned, w.sessions.Load())
	learned0 := learned[0]

	// Told what a session carries, the next drain ends each session in
	// time: no session is cut, nothing more learnt.
	w.send(t, big)
	got, learned = nil, nil
	cfg.PerSession = learned0
	cuts := 0
	cfg.Cut = func(error, int) { cuts++ }
	if _, err := in.DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, cfg); err != nil {
		t.Fatalf("DrainParts with a known budget: %v", err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], big) || len(learned) != 0 || cuts != 0 {
		t.Fatalf("with a known budget: took %d messages, learnt %v, %d sessions cut", len(got), learned, cuts)
	}
}

// TestDrainPartsThroughResettingCensor: a censor that resets every flow
// after 16 KiB costs DrainParts the part in flight, not the message, and
// teaches no budget (a relay restarting resets too).
func TestDrainPartsThroughResettingCensor(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	big := w.stored(t, 150<<10)
	w.mb.SetRule(censortest.ResetAfter(16 << 10))
	var got [][]byte
	var learned []int
	cfg := client.PartsConfig{Learned: func(n int) { learned = append(learned, n) }}
	if _, err := w.inbox(t, &got).DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, cfg); err != nil {
		t.Fatalf("DrainParts: %v", err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], big) || len(learned) != 0 {
		t.Fatalf("took %d messages, learnt %v", len(got), learned)
	}
	if s := w.sessions.Load(); s < 10 {
		t.Fatalf("%d sessions carried 150 KiB through a 16 KiB limit (test setup)", s)
	}
	t.Logf("%d sessions", w.sessions.Load())
	if n := w.waiting(t); n != 0 {
		t.Fatalf("%d envelopes left on the relay", n)
	}
}

// TestDrainPartsEnvelopeGone: the envelope being put together is acked
// from another session between two parts; the next part names the next
// envelope, which DrainParts starts over, and takes whole.
func TestDrainPartsEnvelopeGone(t *testing.T) {
	w := newPartsWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	first := make([]byte, 30<<10) // one 64 KiB envelope
	rand.Read(first)
	w.send(t, first)
	w.send(t, []byte("next"))
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetch: %d, %v", len(ds), err)
	}

	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, ok, err := c.FetchPart(ctx, w.box.Owner, w.box.ID, 0, 0, 4096)
	if err != nil || !ok || p.Ref != ds[0].Ref || len(p.Data) != 4096 || int(p.Total) != len(ds[0].Envelope) {
		t.Fatalf("first part: ok %v, %d of %d bytes, %v", ok, len(p.Data), p.Total, err)
	}
	if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, ds[0].Ref); err != nil {
		t.Fatal(err)
	}
	// The next part of it: the relay now answers with the next envelope,
	// with no data (4096 is past the end of that 4 KiB envelope).
	p, ok, err = c.FetchPart(ctx, w.box.Owner, w.box.ID, ds[0].Seq-1, 4096, 4096)
	if err != nil || !ok || p.Ref != ds[1].Ref || len(p.Data) != 0 {
		t.Fatalf("after the ack: ok %v, ref of the next %v, %d bytes, %v", ok, p.Ref == ds[1].Ref, len(p.Data), err)
	}
	p, ok, err = c.FetchPart(ctx, w.box.Owner, w.box.ID, ds[1].Seq, 0, 4096)
	if err != nil || ok {
		t.Fatalf("past the last envelope: ok %v, %v", ok, err)
	}
	c.Close()

	// Now within DrainParts: a censor cuts the first session in the
	// middle of the first envelope, and that envelope is acked before the
	// next session asks for the rest.
	if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, ds[1].Ref); err != nil {
		t.Fatal(err)
	}
	w.send(t, first)
	w.send(t, []byte("after"))
	ds, err = w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetch: %d, %v", len(ds), err)
	}
	w.mb.SetRule(censortest.FreezeAfter(16 << 10))
	dial := func(ctx context.Context) (*client.Client, error) {
		if w.sessions.Load() == 1 { // the second session: the first was cut
			if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, ds[0].Ref); err != nil {
				return nil, err
			}
		}
		return w.dial(ctx)
	}
	w.sessions.Store(0)
	var got [][]byte
	cuts := 0
	cfg := client.PartsConfig{Cut: func(error, int) { cuts++ }}
	if _, err := w.inbox(t, &got).DrainParts(ctx, dial, w.box.Owner, w.box.ID, cfg); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || string(got[0]) != "after" || cuts == 0 {
		t.Fatalf("took %q (%d sessions cut)", got, cuts)
	}
}

// TestFetchPartChecks: asking for no bytes is refused before anything is
// sent; the relay answers only the mailbox's owner; a large max is cut to
// relay.MaxPart.
func TestFetchPartChecks(t *testing.T) {
	w := newPartsWorld(t)
	ctx := context.Background()
	if _, _, err := w.owner.FetchPart(ctx, w.box.Owner, w.box.ID, 0, 0, 0); err == nil {
		t.Fatal("a part of 0 bytes was asked for")
	}
	w.send(t, []byte("x"))
	_, stranger, _ := ed25519.GenerateKey(nil)
	if _, _, err := w.owner.FetchPart(ctx, stranger, w.box.ID, 0, 0, 4096); !errors.Is(err, relay.ErrUnauthorized) {
		t.Fatalf("a part asked for with another key than the owner's: %v", err)
	}
	p, ok, err := w.owner.FetchPart(ctx, w.box.Owner, w.box.ID, 0, 0, 1<<20)
	if err != nil || !ok || len(p.Data) != int(p.Total) || p.Total > relay.MaxPart {
		t.Fatalf("a whole 4 KiB envelope: ok %v, %d of %d bytes, %v", ok, len(p.Data), p.Total, err)
	}
}

// TestSubscriptionFrozenMidPushStalls: a subscription whose push of a
// 64 KiB envelope a censor freezes at 16 KiB stalls within the stall
// window, though no request waits (until 2026-12-06 it waited for the
// next ping, a minute later); a subscription with nothing to push stays
// up past several windows. The envelope comes after the subscription's
// answer (ci88: stored before, its push could come first, freeze, and
// hold back the answer, a request that then stalled in its turn).
func TestSubscriptionFrozenMidPushStalls(t *testing.T) {
	w := newPartsWorld(t)
	w.stall = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	w.mb.SetRule(censortest.FreezeAfter(16 << 10))
	c, err := w.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(ctx, w.box.Owner, w.box.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // five stall windows
	select {
	case <-c.Done():
		t.Fatalf("an idle subscription ended: %v", c.Err())
	default:
	}
	big := make([]byte, 100<<10)
	rand.Read(big)
	w.send(t, big)
	relaytest.WaitStalled(t, ctx, c)
}

// TestDrainPartsRefusesDisorderedParts: a relay whose answers to
// FetchPart are not the first envelope past the cursor, or change the
// envelope being put together, ends DrainParts with relay.ErrMalformed
// rather than keeping it asking for ever (a reviewer's find: the same ref
// answered with a smaller total and no data looped).
func TestDrainPartsRefusesDisorderedParts(t *testing.T) {
	ref := [relay.RefSize]byte{1}
	for name, answers := range map[string][]relay.Part{
		"not past the cursor": {{Ref: ref, Seq: 0, Total: 4096, Data: make([]byte, 4096)}},
		"the same envelope, shorter": {
			{Ref: ref, Seq: 5, Total: 8192, Data: make([]byte, 4096)},
			{Ref: ref, Seq: 5, Total: 4096},
		},
		"the same envelope, another seq": {
			{Ref: ref, Seq: 5, Total: 8192, Data: make([]byte, 4096)},
			{Ref: ref, Seq: 6, Total: 8192, Data: make([]byte, 4096)},
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a deadlock guard
			defer cancel()
			cc, sc := relaytest.Pipe(t)
			defer sc.Close()
			go func() {
				relay.ReadFrame(sc)
				sc.Write(relay.AppendFrame(nil, relay.ServerHello{Version: relay.ProtocolVersion}))
				for i := 0; ; {
					typ, p, err := relay.ReadFrame(sc)
					if err != nil {
						return
					}
					req, _ := relay.RequestID(p)
					if typ != relay.FrameFetchPart { // an Ack of an envelope that did not open
						sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: relay.CountBody(1)}))
						continue
					}
					a := answers[min(i, len(answers)-1)]
					i++
					sc.Write(relay.AppendFrame(nil, relay.Result{Req: req, Body: a.Append(nil)}))
				}
			}()
			_, key, _ := ed25519.GenerateKey(nil)
			c, err := client.New(ctx, cc, client.WithRelayKey(key.Public().(ed25519.PublicKey)))
			if err != nil {
				t.Fatal(err)
			}
			dialed := false
			dial := func(context.Context) (*client.Client, error) {
				if dialed {
					return nil, errors.New("one session only")
				}
				dialed = true
				return c, nil
			}
			in, err := client.NewInbox(client.InboxConfig{Identity: mustIdentity(t), Take: func(client.Message) error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := in.DrainParts(ctx, dial, key, [32]byte{}, client.PartsConfig{}); !errors.Is(err, relay.ErrMalformed) {
				t.Fatalf("DrainParts = %v, want ErrMalformed", err)
			}
		})
	}
}

func mustIdentity(t *testing.T) *envelope.Identity {
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// countingStore counts the store reads of one envelope (max 1): a
// FetchPart's, which is one round trip each.
type countingStore struct {
	store.Store
	ones atomic.Int64
}

func (s *countingStore) FetchAfter(ctx context.Context, id [store.IDSize]byte, after uint64, max int) ([]store.Item, error) {
	if max == 1 {
		s.ones.Add(1)
	}
	return s.Store.FetchAfter(ctx, id, after, max)
}

// TestDrainPartsSizedByBudget: told that a session carries 128 KiB
// (behind a censor that freezes flows at 150 KiB), DrainParts asks for
// 16 KiB parts, the most a FetchPart gives: a 100 KB message in two 64 KiB
// envelopes takes 9 round trips (8 parts and the answer that nothing is
// left), where 4 KiB parts (the baseline, same run; until 2026-12-06 every
// budget's parts) take 33. No session is cut either way.
func TestDrainPartsSizedByBudget(t *testing.T) {
	st := &countingStore{Store: store.NewMemory(store.Options{})}
	w := &partsWorld{r: relaytest.NewWithStore(t, st, server.Config{}), stall: 2 * time.Second}
	w.mb = censortest.NewMiddlebox(t, w.r.ServeTCP(t, "test"))
	w.owner = w.r.Connect(t)
	w.box = relaytest.NewMailbox(t, w.owner, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	w.mb.SetRule(censortest.FreezeAfter(150 << 10))
	drain := func(part int) int64 {
		t.Helper()
		msg := w.stored(t, 100<<10)
		var got [][]byte
		cuts := 0
		st.ones.Store(0)
		cfg := client.PartsConfig{PerSession: 128 << 10, Part: part, Cut: func(error, int) { cuts++ }}
		if _, err := w.inbox(t, &got).DrainParts(ctx, w.dial, w.box.Owner, w.box.ID, cfg); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || !bytes.Equal(got[0], msg) || cuts != 0 {
			t.Fatalf("parts of %d bytes: took %d messages, %d sessions cut", part, len(got), cuts)
		}
		return st.ones.Load()
	}
	sized, small := drain(0), drain(client.DefaultPart)
	t.Logf("round trips for two 64 KiB envelopes: %d sized by the budget, %d in 4 KiB parts", sized, small)
	if sized != 2*envelope.Bucket64K/relay.MaxPart+1 || small != 2*envelope.Bucket64K/client.DefaultPart+1 {
		t.Fatalf("%d round trips sized by the budget, %d in 4 KiB parts; want 9 and 33", sized, small)
	}
}
