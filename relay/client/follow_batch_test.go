package client_test

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/postern/postern/transport"
)

// ackCounter is a memory store that counts Ack calls (one per Ack frame)
// and records each in ev, if set.
type ackCounter struct {
	store.Store
	acks atomic.Int64
	ev   *events
}

func (s *ackCounter) Ack(ctx context.Context, id [store.IDSize]byte, refs ...store.Ref) (int, error) {
	s.acks.Add(1)
	if s.ev != nil {
		s.ev.add("ack")
	}
	return s.Store.Ack(ctx, id, refs...)
}

// lateWriter is a session whose writes reach the relay rtt late, in
// order, as over a slow path: a request's round trip takes at least rtt.
type lateWriter struct {
	transport.Conn
	rtt    time.Duration
	chunks chan lateChunk
	once   sync.Once
}

type lateChunk struct {
	due time.Time
	b   []byte
}

func newLateWriter(c transport.Conn, rtt time.Duration) *lateWriter {
	w := &lateWriter{Conn: c, rtt: rtt, chunks: make(chan lateChunk, 1024)}
	go func() {
		for ch := range w.chunks {
			time.Sleep(time.Until(ch.due))
			if _, err := w.Conn.Write(ch.b); err != nil {
				w.Conn.Close()
				for range w.chunks {
				}
				return
			}
		}
	}()
	return w
}

func (w *lateWriter) Write(p []byte) (int, error) {
	w.chunks <- lateChunk{time.Now().Add(w.rtt), append([]byte(nil), p...)}
	return len(p), nil
}

func (w *lateWriter) Close() error {
	w.once.Do(func() { close(w.chunks) })
	return w.Conn.Close()
}

// TestFollowAcksBacklogInBatches: a backlog pushed at once is acked in a
// few Acks, not one round trip per envelope. Each Ack is a request the
// client waits for; acking envelope by envelope, a receiver drained a
// backlog at one envelope per round trip (300 envelopes over a 20 ms
// round trip: over 6 s).
func TestFollowAcksBacklogInBatches(t *testing.T) {
	const n, rtt = 300, 20 * time.Millisecond
	r, mb, acks := backlog(t, n, nil)
	var handled atomic.Int64
	start := time.Now()
	followUntilAcked(t, r, mb, client.FollowConfig{
		Dial: lateDial(t, r, rtt),
		Handle: func(d client.Delivery) ([]client.Ref, error) {
			handled.Add(1)
			return []client.Ref{d.Ref}, nil
		},
	})
	took := time.Since(start)
	t.Logf("%d envelopes drained over a %v round trip in %v with %d Acks", n, rtt, took.Round(time.Millisecond), acks.Load())
	if h := handled.Load(); h != n {
		t.Errorf("handled %d deliveries, want %d", h, n)
	}
	if got := acks.Load(); got > n/4 {
		t.Errorf("%d envelopes were acked in %d Acks: a round trip each, nearly", n, got)
	}
}

// followUntilAcked runs Follow with cfg on mailbox mb of r until nothing
// is pending there, then stops it.
func followUntilAcked(t testing.TB, r *relaytest.Relay, mb *relaytest.Mailbox, cfg client.FollowConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a deadlock guard
	defer cancel()
	fctx, stop := context.WithCancel(ctx)
	cfg.Owner, cfg.Mailbox = mb.Owner, mb.ID
	done := make(chan error, 1)
	go func() { done <- client.Follow(fctx, cfg) }()
	for n := pending(t, r, mb); n > 0; n = pending(t, r, mb) {
		select {
		case <-ctx.Done():
			t.Fatalf("%d envelopes still pending", n)
		case <-time.After(5 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// lateDial opens sessions to r whose writes reach it rtt late.
func lateDial(t testing.TB, r *relaytest.Relay, rtt time.Duration) func(context.Context) (*client.Client, error) {
	return func(ctx context.Context) (*client.Client, error) {
		cc, sc := relaytest.Pipe(t)
		r.Serve(sc, "test")
		return client.New(ctx, newLateWriter(cc, rtt), client.WithRelayKey(r.Server.PublicKey()))
	}
}

// events is an ordered record of saves and acks, from either side.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) { e.mu.Lock(); e.log = append(e.log, s); e.mu.Unlock() }

// savedReplay is a ReplayStore in memory that records each Save.
type savedReplay struct {
	ev   *events
	mu   sync.Mutex
	last int
}

func (r *savedReplay) Load() ([][envelope.IDSize]byte, error) { return nil, nil }

func (r *savedReplay) Save(ids [][envelope.IDSize]byte) error {
	r.mu.Lock()
	r.last = len(ids)
	r.mu.Unlock()
	r.ev.add("save")
	return nil
}

// TestInboxFollowSavesOncePerBatch: an Inbox following a backlog saves
// its replay ids once per batch of deliveries, not once per message
// (each save writes the whole file and syncs it), and always before the
// Ack that covers them. When Take refuses a message, what was taken
// before it in the batch is saved and acked, and nothing after it is
// taken.
func TestInboxFollowSavesOncePerBatch(t *testing.T) {
	ev := &events{}
	const n, refuseAt = 40, 30
	r, mb, _ := backlog(t, n, ev)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a deadlock guard
	defer cancel()
	refusal := errors.New("the terminal went away")
	taken, calls := 0, 0
	replay := &savedReplay{ev: ev}
	in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Replay: replay, Take: func(client.Message) error {
		calls++
		if taken == refuseAt-1 {
			return refusal
		}
		taken++
		return nil
	}, Sync: func() error { ev.add("sync"); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Follow(ctx, lateDial(t, r, 10*time.Millisecond), mb.Owner, mb.ID, nil); !errors.Is(err, refusal) {
		t.Fatalf("Follow = %v, want the refusal", err)
	}
	if left := pending(t, r, mb); taken != refuseAt-1 || calls != refuseAt || left != n-refuseAt+1 {
		t.Fatalf("%d taken of %d offered, %d still on the relay; want %d of %d, %d", taken, calls, left, refuseAt-1, refuseAt, n-refuseAt+1)
	}
	if replay.last != refuseAt-1 {
		t.Errorf("the replay ids saved last hold %d ids, want the %d taken", replay.last, refuseAt-1)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	// Each Ack needs a sync and then a save since the last one.
	saves, synced, saved := 0, false, false
	for _, e := range ev.log {
		switch e {
		case "sync":
			synced = true
		case "save":
			if !synced {
				t.Fatalf("ids saved before what was taken was synced: %v", ev.log)
			}
			saves++
			saved = true
		case "ack":
			if !saved {
				t.Fatalf("an Ack without a save before it: %v", ev.log)
			}
			synced, saved = false, false
		}
	}
	t.Logf("%d messages taken with %d saves: %v", taken, saves, ev.log)
	if saves > taken/4 {
		t.Errorf("%d saves for %d messages taken", saves, taken)
	}
}

// backlog starts a relay with n envelopes waiting in a new mailbox. acks
// counts the Ack frames the relay has answered; ev, if set, records them.
func backlog(t testing.TB, n int, ev *events) (r *relaytest.Relay, mb *relaytest.Mailbox, acks *atomic.Int64) {
	t.Helper()
	st := &ackCounter{Store: store.NewMemory(store.Options{}), ev: ev}
	r, mb = backlogIn(t, st, n)
	return r, mb, &st.acks
}

// backlogIn starts a relay on st with n envelopes waiting in a new mailbox.
func backlogIn(t testing.TB, st store.Store, n int) (*relaytest.Relay, *relaytest.Mailbox) {
	t.Helper()
	r := relaytest.NewWithStore(t, st, server.Config{})
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	sender := r.Connect(t)
	for i := range n {
		if _, err := sender.Send(context.Background(), mb.Seal(t, fmt.Sprint(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	return r, mb
}

func pending(t testing.TB, r *relaytest.Relay, mb *relaytest.Mailbox) int {
	t.Helper()
	m, err := r.Store.Mailbox(context.Background(), mb.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m.Pending
}

// A refusal stops Follow even when the Ack of what was taken before it
// fails (here the session ends during the refused Take): Follow must not
// reconnect and offer the refused message again.
func TestFollowRefusalStandsWhenAckFails(t *testing.T) {
	r, mb, _ := backlog(t, 10, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	var session atomic.Pointer[client.Client]
	refusal := errors.New("the terminal went away")
	calls := 0
	in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Take: func(client.Message) error {
		calls++
		if calls == 5 {
			session.Load().Close()
			return refusal
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	dial := func(ctx context.Context) (*client.Client, error) {
		c := r.Connect(t)
		session.Store(c)
		return c, nil
	}
	if err := in.Follow(ctx, dial, mb.Owner, mb.ID, func(error, time.Duration) {}); !errors.Is(err, refusal) {
		t.Fatalf("Follow = %v, want the refusal", err)
	}
	if calls != 5 {
		t.Fatalf("Take was called %d times, want 5: the refused message was offered again", calls)
	}
}

// A failed replay save, or a failed Sync of what was taken, acks
// nothing, in Follow and in Drain, after a refusal from Take too: an
// envelope acked but not recorded could be brought back as new, one acked
// but not durable could be lost. The inbox then stays failed: run again,
// with the save or Sync working, it still takes and acks nothing.
func TestReplaySaveFailureAcksNothing(t *testing.T) {
	const n = 10
	diskFull := errors.New("no space left on device")
	refusal := errors.New("the terminal went away")
	for _, tc := range []struct {
		name           string
		follow, onSync bool
		refuseAt       int // the Take call that refuses; 0: none
	}{
		{"follow", true, false, 0},
		{"drain", false, false, 0},
		{"follow-sync", true, true, 0},
		{"drain-sync", false, true, 0},
		{"follow-refusal-sync", true, true, 5},
		{"drain-refusal-sync", false, true, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, mb, acks := backlog(t, n, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
			defer cancel()
			failing := true
			fail := func() error {
				if failing {
					return diskFull
				}
				return nil
			}
			calls := 0
			cfg := client.InboxConfig{Identity: mb.Ident, Take: func(client.Message) error {
				calls++
				if calls == tc.refuseAt {
					return refusal
				}
				return nil
			}}
			if tc.onSync {
				cfg.Sync = fail
			} else {
				cfg.Replay = funcReplay(fail)
			}
			in, err := client.NewInbox(cfg)
			if err != nil {
				t.Fatal(err)
			}
			run := func() error {
				if tc.follow {
					dial := func(context.Context) (*client.Client, error) { return r.Connect(t), nil }
					return in.Follow(ctx, dial, mb.Owner, mb.ID, nil)
				}
				return in.Drain(ctx, r.Connect(t), mb.Owner, mb.ID)
			}
			if err := run(); !errors.Is(err, diskFull) {
				t.Fatalf("%s = %v, want the save's error", tc.name, err)
			}
			if got := pending(t, r, mb); got != n || acks.Load() != 0 {
				t.Fatalf("%d of %d envelopes left on the relay after %d Acks: acked without a saved replay id", got, n, acks.Load())
			}
			failing, calls = false, 0
			if err := run(); !errors.Is(err, diskFull) || calls != 0 {
				t.Fatalf("run again: %v after %d Takes, want the first failure and none", err, calls)
			}
			if got := pending(t, r, mb); got != n || acks.Load() != 0 {
				t.Fatalf("run again: %d of %d envelopes left after %d Acks", got, n, acks.Load())
			}
		})
	}
}

// funcReplay is a ReplayStore in memory whose saves return what fn does.
type funcReplay func() error

func (funcReplay) Load() ([][envelope.IDSize]byte, error) { return nil, nil }
func (f funcReplay) Save([][envelope.IDSize]byte) error   { return f() }

// A batch ends after FollowConfig.Ping even with more deliveries waiting,
// so a slow Handle still acks (and so is heard from) that often.
func TestFollowBatchEndsAfterPing(t *testing.T) {
	const n = 12
	r, mb, acks := backlog(t, n, nil)
	followUntilAcked(t, r, mb, client.FollowConfig{
		Dial: func(context.Context) (*client.Client, error) { return r.Connect(t), nil },
		Ping: time.Millisecond,
		Handle: func(d client.Delivery) ([]client.Ref, error) {
			time.Sleep(2 * time.Millisecond) // longer than Ping: every batch ends after one
			return []client.Ref{d.Ref}, nil
		},
	})
	if got := acks.Load(); got < n {
		t.Fatalf("%d envelopes acked in %d Acks: a batch outlived Ping", n, got)
	}
}

// fetchCounter is a client's session that counts the Fetch frames the
// client writes and closes second when it writes the second.
type fetchCounter struct {
	transport.Conn
	fetches atomic.Int64
	second  chan struct{}
}

func (f *fetchCounter) Write(p []byte) (int, error) {
	if len(p) > 0 && relay.FrameType(p[0]) == relay.FrameFetch && f.fetches.Add(1) == 2 {
		close(f.second)
	}
	return f.Conn.Write(p)
}

// heldAck is a memory store whose first Ack, once it has entered (closed
// entered), waits for release; released reports whether it came (not the
// guard).
type heldAck struct {
	store.Store
	once             sync.Once
	entered, release chan struct{}
	released         atomic.Bool
}

func newHeldAck() *heldAck {
	return &heldAck{Store: store.NewMemory(store.Options{}), entered: make(chan struct{}), release: make(chan struct{})}
}

func (s *heldAck) Ack(ctx context.Context, id [store.IDSize]byte, refs ...store.Ref) (int, error) {
	s.once.Do(func() {
		close(s.entered)
		select {
		case <-s.release:
			s.released.Store(true)
		case <-time.After(10 * time.Second): // a deadlock guard
		}
	})
	return s.Store.Ack(ctx, id, refs...)
}

// TestDrainPipelines: Drain fetches the next page before it opens this
// one, and opens the next page while this page's Ack is out. It did
// neither: fetch, open, ack and wait, so a backlog of p pages cost 2p+1
// round trips and the opening on top. Each wait below lasts until its
// guard (and the test fails) if Drain waits for that round trip.
func TestDrainPipelines(t *testing.T) {
	const n = relay.MaxFetch + 44
	st := newHeldAck()
	r, mb := backlogIn(t, st, n)
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	conn := &fetchCounter{Conn: cc, second: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	c, err := client.New(ctx, conn, client.WithRelayKey(r.Server.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	taken := 0
	var prefetched bool
	in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Take: func(client.Message) error {
		taken++
		switch taken {
		case 1: // the first page is being opened: the second is asked for
			select {
			case <-conn.second:
				prefetched = true
			case <-time.After(10 * time.Second):
			}
		case relay.MaxFetch + 1: // the second page is opened with the first's Ack held
			close(st.release)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Drain(ctx, c, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	if !prefetched {
		t.Error("the first page was opened before the second was fetched")
	}
	if !st.released.Load() {
		t.Error("the second page was not opened while the first page's Ack was out")
	}
	if left := pending(t, r, mb); taken != n || left != 0 {
		t.Fatalf("took %d of %d messages, %d left on the relay", taken, n, left)
	}
}

// TestFollowAcksWithoutWaiting: Follow hands over the next deliveries
// while a batch's Ack is out. It waited for each Ack's answer, idle for a
// round trip per batch while the relay, its window full, was idle too.
// Here the relay holds the first Ack until the next delivery is handled
// (or the guard passes, and the test fails).
func TestFollowAcksWithoutWaiting(t *testing.T) {
	const n = relay.MaxUnacked + 44
	st := newHeldAck()
	r, mb := backlogIn(t, st, n)
	var flushed atomic.Bool
	var releaseOnce sync.Once
	followUntilAcked(t, r, mb, client.FollowConfig{
		Dial: func(context.Context) (*client.Client, error) { return r.Connect(t), nil },
		Handle: func(d client.Delivery) ([]client.Ref, error) {
			if flushed.Load() { // a later batch: the first one's Ack is out
				select {
				case <-st.entered:
					releaseOnce.Do(func() { close(st.release) })
				case <-time.After(10 * time.Second): // a deadlock guard
				}
			}
			return []client.Ref{d.Ref}, nil
		},
		Flush: func() error { flushed.Store(true); return nil },
	})
	if !st.released.Load() {
		t.Error("no delivery was handled while the first batch's Ack was out")
	}
}

// TestFollowAcksAllBeforeRefusal: when the application refuses a message,
// Follow stops with everything handled before it acked, the batches whose
// Acks were still out included. With Acks sent without waiting, a Follow
// that returned at once left them unanswered, and the session's close
// dropped them: taken messages stayed on the relay, to be shown again.
// The refusal here opens a batch (after the second Flush), so no Ack of
// its own goes out after the others.
func TestFollowAcksAllBeforeRefusal(t *testing.T) {
	const n = 200
	r, mb, _ := backlog(t, n, nil)
	refusal := errors.New("the terminal went away")
	handled, flushes := 0, 0
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	err := client.Follow(ctx, client.FollowConfig{
		Dial: lateDial(t, r, 20*time.Millisecond), Owner: mb.Owner, Mailbox: mb.ID,
		Handle: func(d client.Delivery) ([]client.Ref, error) {
			if flushes == 2 {
				return nil, refusal
			}
			handled++
			return []client.Ref{d.Ref}, nil
		},
		Flush: func() error { flushes++; return nil },
	})
	if !errors.Is(err, refusal) {
		t.Fatalf("Follow = %v, want the refusal", err)
	}
	if got, want := pending(t, r, mb), n-handled; got != want {
		t.Fatalf("%d envelopes left on the relay after the refusal, want %d: what was handled before it was not all acked", got, want)
	}
}
