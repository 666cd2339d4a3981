package link_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// TestSourceLimitStopsDrain: a home relay that answers relay full (here:
// its store half full and the entry relay past its allowance of envelope
// bytes) stops the drain: what is in flight is collected, nothing more is
// sent until the destination's rest is over, every layer stays queued,
// and the session is kept. Each later try opens one layer, not a window
// of them, while the answer stands, and delivers again once the
// allowance grows back. Before, a drain went on through the whole queue
// at every try, each layer opened by the home relay only to be refused
// (a reviewer's find: 300 openings where 16 layers could be stored), and
// then each try sent the window's 128 (the next reviewer's: 2,077
// openings in 17 tries).
func TestSourceLimitStopsDrain(t *testing.T) {
	const queued, allowed = 300, 16 // 16 envelopes of 4 KiB: the 64 KiB allowance
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var opens, dials atomic.Int64
	st := store.NewMemory(store.Options{MaxStoreBytes: -1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newHalfFullHome(ctx, t, st, st, server.Config{Now: clock, SendBytes: 64 << 10, StoreBytes: 64 * 4096},
		func(l server.LayerOpener) server.LayerOpener { return countingOpener{l, &opens} }, &dials, queued)
	home, mb, q, fw, tries := r.home, r.mb, r.q, r.fw, r.tries
	stored := func() int {
		box, err := home.Store.Mailbox(ctx, mb.ID)
		if err != nil {
			t.Fatal(err)
		}
		return box.Pending
	}
	runForwarder(ctx, t, fw)
	waitFor(ctx, t, "six tries refused", func() bool { return tries() >= 6 })
	n, opened := tries(), opens.Load()
	if got := stored(); got != allowed || q.len() != queued-allowed {
		t.Fatalf("%d stored, %d left queued; want %d and %d", got, q.len(), allowed, queued-allowed)
	}
	// The first drain: at most the window in flight when the first
	// refusal came back; each later one: one layer (and perhaps one
	// more try under way).
	if opened > int64(allowed+128+n+1) {
		t.Fatalf("the home relay opened %d layers in %d tries, %d of them refused", opened, n, opened-allowed)
	}
	if k := dials.Load(); k != 1 {
		t.Fatalf("%d links dialed: a refusal for now closed the session", k)
	}
	mu.Lock()
	now = now.Add(6 * time.Hour) // a quarter of the allowance grows back: 4 envelopes
	mu.Unlock()
	waitFor(ctx, t, "the next four stored", func() bool { return stored() == allowed+4 })
}

// halfFullHome is a home relay whose store holds half its quota in
// another mailbox, so that it answers relay full once the entry relay's
// allowance of envelope bytes is spent, and an entry relay's forwarder
// with layers for mb on it queued, not yet run.
type halfFullHome struct {
	home       *relaytest.Relay
	others, mb *relaytest.Mailbox
	q          *memQueue
	fw         *link.Forwarder
	logs       *lockedBuf
	desc       *descriptor.Descriptor // the home relay's
	line       string                 // its signed descriptor
}

// newHalfFullHome starts a home relay on st with cfg (its opener wrapped by
// wrap if not nil), fills half of cfg.StoreBytes through fill (st, or what
// it wraps), and queues n layers at an entry relay whose forwarder dials
// the home relay (counted in dials if not nil), with rests of 20–40 ms.
func newHalfFullHome(ctx context.Context, t *testing.T, st, fill store.Store, cfg server.Config,
	wrap func(server.LayerOpener) server.LayerOpener, dials *atomic.Int64, n int) *halfFullHome {
	t.Helper()
	home, homeDesc, line := homeRelayWith(t, st, cfg, wrap)
	owner := home.Connect(t)
	r := &halfFullHome{home: home, others: relaytest.NewMailbox(t, owner, nil), mb: relaytest.NewMailbox(t, owner, nil),
		q: &memQueue{}, logs: &lockedBuf{}, desc: homeDesc, line: line}
	for st.Stats().Bytes < cfg.StoreBytes/2 {
		if _, err := fill.Put(ctx, r.others.ID, r.others.Seal(t, "o")); err != nil {
			t.Fatal(err)
		}
	}
	r.fw = link.NewForwarder(link.ForwarderConfig{Queue: r.q, Dest: forward.Dest,
		Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
			if dials != nil {
				dials.Add(1)
			}
			return linkTo(ctx, t, home)
		},
		Log: slog.New(slog.NewTextHandler(r.logs, nil)), MinBackoff: 20 * time.Millisecond, MaxBackoff: 40 * time.Millisecond})
	sender := relaytest.New(t, store.Options{}, server.Config{Forwarder: r.fw}).Connect(t)
	for range n { // queued before the forwarder runs: one drain finds them all
		layer, err := forward.Seal(homeDesc, 1, nil, r.mb.Seal(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if err := sender.Forward(ctx, line, layer); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// tries counts the drains the home relay stopped with relay full.
func (r *halfFullHome) tries() int {
	return strings.Count(r.logs.String(), "storage is full for this relay's forwards")
}

// countingOpener counts the layers a home relay opens.
type countingOpener struct {
	o server.LayerOpener
	n *atomic.Int64
}

func (c countingOpener) Open(l []byte) ([]byte, []byte, func(bool), error) {
	c.n.Add(1)
	return c.o.Open(l)
}

// TestDuplicateLayerKeepsDrain: a layer queued twice (a client that
// forwarded it twice) does not stop the drain: its copy, answered busy
// while the first is being stored, waits queued, and every other layer
// is delivered in the same drain. A client could otherwise hold
// everyone's forwards to a home relay back at will (a reviewer's find,
// when busy stopped the drain: 174 of 301 layers waited a rest).
func TestDuplicateLayerKeepsDrain(t *testing.T) {
	// A store whose commits take a while, as a group commit's do, so the
	// two copies meet in flight.
	home, homeDesc, line := homeRelayOn(t, slowStore{store.NewMemory(store.Options{})})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mb := relaytest.NewMailbox(t, home.Connect(t), nil)
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
			return linkTo(ctx, t, home)
		},
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	sender := entry.Connect(t)
	seal := func() []byte {
		layer, err := forward.Seal(homeDesc, 1, nil, mb.Seal(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		return layer
	}
	twice := seal()
	layers := [][]byte{twice, twice}
	for range 150 {
		layers = append(layers, seal())
	}
	for _, l := range layers {
		if err := sender.Forward(ctx, line, l); err != nil {
			t.Fatal(err)
		}
	}
	runForwarder(ctx, t, fw)
	// Every layer stored, and deleted from the queue (a moment after it
	// is stored: the pump deletes what the home relay took once no more
	// answers are ready), but perhaps the copy, which waits its turn.
	waitFor(ctx, t, "every layer stored and deleted but the copy", func() bool {
		box, err := home.Store.Mailbox(ctx, mb.ID)
		return err == nil && box.Pending == 151 && q.len() <= 1
	})
}

// TestRelayFullWindowGrowsBack: after a drain stopped on relay full, the
// next starts with one delivery in flight (TestSourceLimitStopsDrain);
// once the home relay takes layers again, the window doubles at each
// delivery, back to pumpWindow, so a relay that recovered is not fed one
// layer a round trip for the rest of the queue.
func TestRelayFullWindowGrowsBack(t *testing.T) {
	const queued = 200
	st := &inflightStore{Memory: store.NewMemory(store.Options{MaxStoreBytes: -1})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newHalfFullHome(ctx, t, st, st.Memory, server.Config{SendBytes: 64 << 10, StoreBytes: 1024 * 4096}, nil, nil, queued)
	runForwarder(ctx, t, r.fw)
	waitFor(ctx, t, "two tries refused", func() bool { return r.tries() >= 2 })
	// The store falls below half: nothing is refused any more.
	if err := st.DeleteMailbox(ctx, r.others.ID); err != nil {
		t.Fatal(err)
	}
	st.resetMax()
	waitFor(ctx, t, "every layer stored", func() bool {
		box, err := st.Mailbox(ctx, r.mb.ID)
		return err == nil && box.Pending == queued
	})
	if m := st.max.Load(); m < 2 {
		t.Fatalf("at most %d Put in flight after the home relay recovered: the window did not grow back", m)
	}
}

// inflightStore is a slow memory store that counts the most Puts in
// flight at once.
type inflightStore struct {
	*store.Memory
	now, max atomic.Int64
}

func (s *inflightStore) Put(ctx context.Context, id [32]byte, env []byte) (store.Ref, error) {
	n := s.now.Add(1)
	defer s.now.Add(-1)
	for m := s.max.Load(); n > m && !s.max.CompareAndSwap(m, n); m = s.max.Load() {
	}
	time.Sleep(5 * time.Millisecond)
	return s.Memory.Put(ctx, id, env)
}

func (s *inflightStore) resetMax() { s.max.Store(s.now.Load()) }
