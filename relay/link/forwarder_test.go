package link_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// memQueue is an in-memory link.Queue.
type memQueue struct {
	mu       sync.Mutex
	seq      uint64
	items    map[[32]byte]map[uint64][]byte
	pendings int // calls of Pending
}

func (q *memQueue) Enqueue(_ context.Context, dest [32]byte, item []byte) (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.items == nil {
		q.items = map[[32]byte]map[uint64][]byte{}
	}
	if q.items[dest] == nil {
		q.items[dest] = map[uint64][]byte{}
	}
	q.seq++
	q.items[dest][q.seq] = item
	return q.seq, nil
}

func (q *memQueue) Pending(_ context.Context, dest [32]byte, after uint64, max int) ([]link.Item, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pendings++
	var out []link.Item
	for s, it := range q.items[dest] {
		if s > after {
			out = append(out, link.Item{Seq: s, Data: it})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out[:min(len(out), max)], nil
}

func (q *memQueue) Done(_ context.Context, dest [32]byte, seqs ...uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range seqs {
		delete(q.items[dest], s)
	}
	return nil
}

func (q *memQueue) Dests(context.Context) ([][32]byte, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out [][32]byte
	for d, m := range q.items {
		if len(m) > 0 {
			out = append(out, d)
		}
	}
	return out, nil
}

func (q *memQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, m := range q.items {
		n += len(m)
	}
	return n
}

// opener adapts forward.Opener to server.LayerOpener.
type opener struct{ o *forward.Opener }

func (o opener) Open(layer []byte) ([]byte, []byte, func(bool), error) {
	c, e, done, err := o.o.Open(layer)
	switch {
	case errors.Is(err, forward.ErrReplay):
		err = relay.ErrReplay
	case errors.Is(err, forward.ErrInFlight):
		err = relay.ErrBusy
	}
	return c, e, done, err
}

// homeRelay is a relay with a relay identity, a signed descriptor and a
// layer opener, as `relay serve` makes one.
func homeRelay(t *testing.T) (*relaytest.Relay, *descriptor.Descriptor, string) { return homeRelayB(t) }

func homeRelayB(t testing.TB) (*relaytest.Relay, *descriptor.Descriptor, string) {
	return homeRelayOn(t, store.NewMemory(store.Options{}))
}

// homeRelayOn is homeRelay with the store st.
func homeRelayOn(t testing.TB, st store.Store) (*relaytest.Relay, *descriptor.Descriptor, string) {
	return homeRelayWith(t, st, server.Config{}, nil)
}

// homeRelayWith is homeRelayOn with cfg for the rest of the server's
// config, and its layer opener wrapped by wrap if not nil.
func homeRelayWith(t testing.TB, st store.Store, cfg server.Config, wrap func(server.LayerOpener) server.LayerOpener) (*relaytest.Relay, *descriptor.Descriptor, string) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	id, _ := envelope.NewIdentity()
	o, err := forward.NewOpener(id, pub, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &descriptor.Descriptor{EnvelopeSuite: uint8(envelope.SuiteXWing), EnvelopeKey: id.Public().XWing,
		Endpoints: []descriptor.Endpoint{{Transport: "https", Addr: "127.0.0.1:1", Path: "/p", Key: make([]byte, 32)}},
		Issued:    time.Now().Add(-time.Minute), Expires: time.Now().Add(time.Hour)}
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	d, _ = descriptor.Parse(line, time.Now())
	cfg.Layers, cfg.RelayKey = opener{o}, priv
	if wrap != nil {
		cfg.Layers = wrap(cfg.Layers)
	}
	return relaytest.NewWithStore(t, st, cfg), d, line
}

// linkTo opens a relay link to home as an entry relay does: a session
// bound to home's key, authenticated with the entry relay's descriptor.
func linkTo(ctx context.Context, t testing.TB, home *relaytest.Relay) (*client.Client, error) {
	_, entryKey, _ := ed25519.GenerateKey(nil)
	entryLine, _ := signedDescriptor(t, entryKey, "entry")
	cc, sc := relaytest.Pipe(t)
	home.Serve(sc, "link")
	c, err := client.New(ctx, cc, client.WithRelayKey(home.Server.PublicKey()))
	if err != nil {
		return nil, err
	}
	if err := c.AuthenticateRelay(ctx, entryLine, entryKey); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TestTwoHopForward: a client hands layers to an entry relay, which queues
// them, forwards them over a link and deletes each once the home relay has
// stored it; the owner receives them on the home relay. A layer replayed to
// the home relay is refused and stored once.
func TestTwoHopForward(t *testing.T) {
	home, homeDesc, homeLine := homeRelay(t)
	q := &memQueue{}
	var mu sync.Mutex
	events := map[string]int{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, d *descriptor.Descriptor) (*client.Client, error) {
			if !descriptor.SameRelay(d, homeDesc) {
				t.Error("dialed another relay")
			}
			return linkTo(ctx, t, home)
		},
		Observe:    func(e string) { mu.Lock(); events[e]++; mu.Unlock() },
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runForwarder(ctx, t, fw)

	owner := home.Connect(t)
	mb := relaytest.NewMailbox(t, owner, nil)
	sender := entry.Connect(t)
	var layers [][]byte
	for _, msg := range []string{"one", "two", "three"} {
		layer, err := forward.Seal(homeDesc, 1, nil, mb.Seal(t, msg))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, layer)
		if err := sender.Forward(ctx, homeLine, layer); err != nil {
			t.Fatal(err)
		}
	}
	// The entry relay's own store never saw the mailbox.
	if _, err := entry.Store.Mailbox(ctx, mb.ID); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("entry relay knows the mailbox: %v", err)
	}
	var got []string
	for len(got) < 3 && ctx.Err() == nil {
		ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, d := range ds {
			o, _ := envelope.Open(mb.Ident, d.Envelope)
			got = append(got, string(o.Payload))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != 3 {
		t.Fatalf("home relay holds %q", got)
	}
	for q.len() > 0 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	// Layers are taken only on a session a relay authenticated.
	if err := owner.DeliverLayer(ctx, layers[0]); !errors.Is(err, relay.ErrUnauthorized) {
		t.Fatalf("a layer on a client session: %v", err)
	}
	// A replay to the home relay is refused and not stored twice.
	lk, err := linkTo(ctx, t, home)
	if err != nil {
		t.Fatal(err)
	}
	if err := lk.DeliverLayer(ctx, layers[0]); !errors.Is(err, relay.ErrReplay) {
		t.Fatalf("replayed layer: %v", err)
	}
	if ds, _ := owner.Fetch(ctx, mb.Owner, mb.ID, 0); len(ds) != 3 {
		t.Fatalf("%d envelopes after a replay", len(ds))
	}
	// Replayed to another relay, the layer does not open (it is bound to
	// the home relay's keys) and nothing is stored there.
	other, otherDesc, _ := homeRelay(t)
	olk, err := linkTo(ctx, t, other)
	if err != nil {
		t.Fatal(err)
	}
	if err := olk.DeliverLayer(ctx, layers[0]); !errors.Is(err, relay.ErrBadEnvelope) {
		t.Fatalf("layer replayed to another relay: %v", err)
	}
	if st := other.Store.Stats(); st.Envelopes != 0 {
		t.Fatalf("the other relay stored %d envelopes", st.Envelopes)
	}
	// A layer for another relay than the descriptor names is refused.
	wrong, _ := forward.Seal(otherDesc, 1, nil, mb.Seal(t, "x"))
	if err := sender.Forward(ctx, homeLine, wrong); !errors.Is(err, relay.ErrBadEnvelope) {
		t.Fatalf("mismatched layer: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if events["queued"] != 3 || events["delivered"] != 3 {
		t.Fatalf("events %v", events)
	}
}

// TestTwoHopForwardLargest: an envelope of the largest bucket, X-Wing
// (the default suite), goes through an entry relay. Its layer is 66,778
// bytes, past MaxFrameSize: the entry relay dropped the session at the
// Forward frame, so every message over one 16 KiB envelope sent with
// --via failed (a reviewer's find).
func TestTwoHopForwardLargest(t *testing.T) {
	home, homeDesc, homeLine := homeRelay(t)
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, d *descriptor.Descriptor) (*client.Client, error) {
			return linkTo(ctx, t, home)
		},
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	runForwarder(ctx, t, fw)
	owner := home.Connect(t)
	mb := relaytest.NewMailbox(t, owner, nil)
	env, err := envelope.Seal(mb.Card, nil, bytes.Repeat([]byte("x"), 60<<10), &envelope.Options{Bucket: envelope.Bucket64K})
	if err != nil {
		t.Fatal(err)
	}
	layer, err := forward.Seal(homeDesc, 1, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if len(layer)+len(homeLine) <= relay.MaxFrameSize {
		t.Fatalf("a %d-byte layer with a %d-byte descriptor tests nothing", len(layer), len(homeLine))
	}
	if err := entry.Connect(t).Forward(ctx, homeLine, layer); err != nil {
		t.Fatalf("Forward of a 64 KiB envelope: %v", err)
	}
	for ctx.Err() == nil {
		ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 1 {
			if !bytes.Equal(ds[0].Envelope, env) {
				t.Fatal("the home relay holds another envelope")
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the envelope never reached the home relay")
}

// TestStaleDescriptorAtHead: forwards queued with an old descriptor of a
// home relay that has moved (its old address dead) do not hold the ones
// behind them that carry the present descriptor: the link dials the
// newest descriptor in the queue, whether the fresh forward comes while
// the pump runs or lies past a whole batch of stale ones when it starts.
// Before, the link dialled the head item's descriptor until that item
// expired, a week later (a reviewer's find). Every forward is delivered,
// the stale ones too (they are sealed to the same relay). 70 is more than
// a pump reads at a time (pumpBatch, 64).
func TestStaleDescriptorAtHead(t *testing.T) {
	for _, c := range []struct {
		name         string
		stale        int
		freshWhileUp bool
	}{{"fresh while the pump runs", 1, true}, {"fresh past a batch", 70, false}} {
		t.Run(c.name, func(t *testing.T) {
			pub, priv, _ := ed25519.GenerateKey(nil)
			id, _ := envelope.NewIdentity()
			o, _ := forward.NewOpener(id, pub, 1, 0)
			sign := func(addr string, exp time.Time) (string, *descriptor.Descriptor) {
				d := &descriptor.Descriptor{EnvelopeSuite: uint8(envelope.SuiteXWing), EnvelopeKey: id.Public().XWing,
					Endpoints: []descriptor.Endpoint{{Transport: "https", Addr: addr, Path: "/p", Key: make([]byte, 32)}},
					Issued:    time.Now().Add(-time.Hour), Expires: exp}
				line, err := d.Sign(priv)
				if err != nil {
					t.Fatal(err)
				}
				d, _, err = descriptor.ParseStale(line, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				return line, d
			}
			oldLine, _ := sign("192.0.2.1:443", time.Now().Add(time.Hour))
			newLine, newDesc := sign("198.51.100.1:443", time.Now().Add(48*time.Hour))
			home := relaytest.NewWithStore(t, store.NewMemory(store.Options{}), server.Config{Layers: opener{o}, RelayKey: priv})
			q := &memQueue{}
			fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
				Dial: func(ctx context.Context, d *descriptor.Descriptor) (*client.Client, error) {
					if d.Endpoints[0].Addr != "198.51.100.1:443" {
						return nil, errors.New("connection refused") // the relay left this address
					}
					return linkTo(ctx, t, home)
				},
				MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
			entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
			defer cancel()
			owner := home.Connect(t)
			mb := relaytest.NewMailbox(t, owner, nil)
			sender := entry.Connect(t)
			forwardWith := func(line string) {
				t.Helper()
				layer, err := forward.Seal(newDesc, 1, nil, mb.Seal(t, "x"))
				if err != nil {
					t.Fatal(err)
				}
				if err := sender.Forward(ctx, line, layer); err != nil {
					t.Fatal(err)
				}
			}
			for range c.stale {
				forwardWith(oldLine)
			}
			if c.freshWhileUp {
				runForwarder(ctx, t, fw)
				forwardWith(newLine)
			} else {
				forwardWith(newLine)
				runForwarder(ctx, t, fw)
			}
			want := c.stale + 1
			for ctx.Err() == nil {
				ds, err := owner.Fetch(ctx, mb.Owner, mb.ID, 0)
				if err != nil {
					t.Fatal(err)
				}
				if len(ds) == want {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Fatalf("the home relay never got all %d forwards; the entry relay still queues %d", want, q.len())
		})
	}
}
