package link_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// homes is a set of home relays an entry relay forwards to, and the
// dialer it reaches them through: it counts dials and links up at once,
// and refuses the dead ones.
type homes struct {
	t     *testing.T
	relay map[[32]byte]*relaytest.Relay
	dead  map[[32]byte]bool
	dials atomic.Int32
	// slowDown delays the count of a link going down, as a close that
	// takes time (a TLS close_notify to a slow peer) would.
	slowDown time.Duration

	mu          sync.Mutex
	up, mostUp  int
	upDownCount int
}

func (h *homes) dial(ctx context.Context, d *descriptor.Descriptor) (*client.Client, error) {
	h.dials.Add(1)
	k := forward.RelayHash(d.RelayKey)
	h.mu.Lock()
	dead := h.dead[k]
	h.mu.Unlock()
	if dead {
		return nil, errors.New("home relay unreachable")
	}
	return linkTo(ctx, h.t, h.relay[k])
}

func (h *homes) observe(e string) {
	if e == "down" {
		time.Sleep(h.slowDown)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch e {
	case "up":
		h.up++
		h.mostUp = max(h.mostUp, h.up)
		h.upDownCount++
	case "down":
		h.up--
		h.upDownCount++
	}
}

func (h *homes) links() (up, most int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up, h.mostUp
}

// forwardTo starts an entry relay with forwarder fw's config and returns
// a function that queues a layer for each home relay given.
func newHomes(t *testing.T, n int) (*homes, []string, []*descriptor.Descriptor) {
	h := &homes{t: t, relay: map[[32]byte]*relaytest.Relay{}, dead: map[[32]byte]bool{}}
	var lines []string
	var descs []*descriptor.Descriptor
	for range n {
		r, d, line := homeRelay(t)
		h.relay[forward.RelayHash(d.RelayKey)] = r
		lines = append(lines, line)
		descs = append(descs, d)
	}
	return h, lines, descs
}

// forwardOne has sender forward a layer for a new mailbox on home relay
// d (descriptor line line) and returns that relay.
func (h *homes) forwardOne(ctx context.Context, t *testing.T, sender *client.Client, line string, d *descriptor.Descriptor) *relaytest.Relay {
	t.Helper()
	r := h.relay[forward.RelayHash(d.RelayKey)]
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	layer, err := forward.Seal(d, 1, nil, mb.Seal(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.Forward(ctx, line, layer); err != nil {
		t.Fatal(err)
	}
	return r
}

// start runs a forwarder of cfg (its queue q, dialing h) in an entry
// relay, and returns a context bounded by a minute (a deadlock guard,
// cancelled when the test ends) and a client session to the entry relay.
func (h *homes) start(t *testing.T, q link.Queue, cfg link.ForwarderConfig) (context.Context, *client.Client) {
	cfg.Queue, cfg.Dest, cfg.Dial, cfg.Observe = q, forward.Dest, h.dial, h.observe
	fw := link.NewForwarder(cfg)
	entry := relaytest.New(t, store.Options{}, server.Config{Forwarder: fw})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	runForwarder(ctx, t, fw)
	return ctx, entry.Connect(t)
}

// runForwarder runs fw until ctx ends or the test does, and waits, as the
// test ends, for Run and every pump and link of fw to return: a dial
// still running (through linkTo, with the test's t) after the test had
// ended raced with the testing package's own cleanup (seen in CI on
// 2026-12-06: TestTwoHopStoreFailureRetried, a link of an earlier test
// dialing as it ended).
func runForwarder(ctx context.Context, t testing.TB, fw *link.Forwarder) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fw.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitFor polls cond until it holds or ctx ends (a deadlock guard).
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestForwarderPumpsEndWhenIdle: once nothing is queued for a home relay,
// its pump and link end (the link goes down, and nothing dials it again);
// a later forward starts them again.
func TestForwarderPumpsEndWhenIdle(t *testing.T) {
	h, lines, descs := newHomes(t, 3)
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Idle: 20 * time.Millisecond})
	forwardAll := func() {
		for i, d := range descs {
			h.forwardOne(ctx, t, sender, lines[i], d)
		}
	}
	forwardAll()
	waitFor(ctx, t, "the queue emptied", func() bool { return q.len() == 0 })
	waitFor(ctx, t, "the idle links went down", func() bool { up, _ := h.links(); return up == 0 })
	dials := h.dials.Load()
	if dials < 3 {
		t.Fatalf("%d dials for 3 home relays", dials)
	}
	// Nothing queued: nothing dials, however long (here 30 idle periods).
	time.Sleep(600 * time.Millisecond)
	if d := h.dials.Load(); d != dials {
		t.Fatalf("%d dials with nothing queued", d-dials)
	}
	forwardAll()
	waitFor(ctx, t, "the second round was delivered", func() bool { return q.len() == 0 })
	for k, r := range h.relay {
		if n := r.Store.Stats().Envelopes; n != 2 {
			t.Fatalf("home relay %x holds %d envelopes, want 2", k[:4], n)
		}
	}
}

// TestForwarderMaxPumps: no more than MaxPumps links run at once, and
// home relays that cannot be reached do not keep the others from their
// turn: each failure gives the turn to one waiting.
func TestForwarderMaxPumps(t *testing.T) {
	h, lines, descs := newHomes(t, 6)
	for _, d := range descs[:3] { // the first three forwarded to are dead
		h.dead[forward.RelayHash(d.RelayKey)] = true
	}
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Idle: time.Hour, MaxPumps: 2})
	for i, d := range descs {
		h.forwardOne(ctx, t, sender, lines[i], d)
	}
	for _, d := range descs[3:] {
		r := h.relay[forward.RelayHash(d.RelayKey)]
		waitFor(ctx, t, "every live home relay had its layer", func() bool { return r.Store.Stats().Envelopes == 1 })
	}
	waitFor(ctx, t, "the live relays' layers left the queue", func() bool { return q.len() == 3 })
	if _, most := h.links(); most > 2 {
		t.Fatalf("%d links up at once, MaxPumps 2", most)
	}
}

// TestForwarderTurnWaitsForLinkDown: a pump that gives its turn up frees
// it only once its link is closed, so a slow close does not let one more
// link than MaxPumps be up at once.
func TestForwarderTurnWaitsForLinkDown(t *testing.T) {
	h, lines, descs := newHomes(t, 3)
	h.slowDown = 50 * time.Millisecond
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Idle: time.Hour, MaxPumps: 1})
	first := h.forwardOne(ctx, t, sender, lines[0], descs[0])
	waitFor(ctx, t, "the first home relay had its layer", func() bool { return first.Store.Stats().Envelopes == 1 })
	// The second forward makes the idle first pump give its turn up; the
	// third comes while the first link is still closing, and must not
	// start a pump before the close is done.
	second := h.forwardOne(ctx, t, sender, lines[1], descs[1])
	third := h.forwardOne(ctx, t, sender, lines[2], descs[2])
	for _, r := range []*relaytest.Relay{second, third} {
		waitFor(ctx, t, "the other home relays had their layers", func() bool { return r.Store.Stats().Envelopes == 1 })
	}
	if _, most := h.links(); most > 1 {
		t.Fatalf("%d links up at once, MaxPumps 1", most)
	}
}

// TestForwarderIdleYields: with MaxPumps pumps idle, each holding its
// link after its queue emptied, a forward to another home relay is not
// kept waiting for their idle period: an idle pump makes way.
func TestForwarderIdleYields(t *testing.T) {
	h, lines, descs := newHomes(t, 2)
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, Idle: time.Hour, MaxPumps: 1})
	for i, d := range descs {
		r := h.forwardOne(ctx, t, sender, lines[i], d)
		waitFor(ctx, t, "the home relay had its layer", func() bool { return r.Store.Stats().Envelopes == 1 })
	}
}

// TestForwarderRestsAfterFailure: after a failed delivery, with no other
// home relay waiting, the pump rests for its backoff; forwards queued
// meanwhile do not cut the rest short (each would cost a try, and a dial
// if the link did not back off too).
func TestForwarderRestsAfterFailure(t *testing.T) {
	h, lines, descs := newHomes(t, 1)
	h.dead[forward.RelayHash(descs[0].RelayKey)] = true
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	for range 10 {
		h.forwardOne(ctx, t, sender, lines[0], descs[0])
		waitFor(ctx, t, "a dial", func() bool { return h.dials.Load() > 0 })
	}
	time.Sleep(50 * time.Millisecond) // time for tries that should not come
	q.mu.Lock()
	tries := q.pendings
	q.mu.Unlock()
	if n := h.dials.Load(); n != 1 || tries != 1 {
		t.Fatalf("%d dials and %d tries to a home relay out of reach, within its first backoff", n, tries)
	}
}

// TestForwarderSourceShare: one source fills no more than SourceBytes of
// the outbox (past it Forward is refused as when the outbox is full),
// another source is not held back by it, and what a home relay took is
// given back to its source.
func TestForwarderSourceShare(t *testing.T) {
	h, lines, descs := newHomes(t, 1)
	k := forward.RelayHash(descs[0].RelayKey)
	h.dead[k] = true
	mb := relaytest.NewMailbox(t, h.relay[k].Connect(t), nil)
	payload := func() []byte {
		layer, err := forward.Seal(descs[0], 1, nil, mb.Seal(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		return relay.ForwardPayload{Descriptor: lines[0], Layer: layer}.Append(nil)
	}
	size := int64(len(payload()))
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest, Dial: h.dial,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, SourceBytes: 2 * size})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	runForwarder(ctx, t, fw)
	a, b := [16]byte{1}, [16]byte{2}
	for i := range 2 {
		if err := fw.Forward(ctx, a, payload()); err != nil {
			t.Fatalf("a's forward %d: %v", i, err)
		}
	}
	if err := fw.Forward(ctx, a, payload()); !errors.Is(err, relay.ErrOutboxFull) {
		t.Fatalf("a past its share: %v, want ErrOutboxFull", err)
	}
	if err := fw.Forward(ctx, b, payload()); err != nil {
		t.Fatalf("b, while a holds its share: %v", err)
	}
	h.mu.Lock()
	h.dead[k] = false // the home relay comes back
	h.mu.Unlock()
	waitFor(ctx, t, "the queue emptied", func() bool { return q.len() == 0 })
	for i := range 2 {
		if err := fw.Forward(ctx, a, payload()); err != nil {
			t.Fatalf("a's forward %d once the others were delivered: %v", i, err)
		}
	}
}

// TestForwarderRestingYields: a pump resting after a failure, its turn
// kept while nothing waited, gives the turn up when a forward to another
// home relay comes, instead of keeping it for the rest of its backoff
// (here an hour).
func TestForwarderRestingYields(t *testing.T) {
	h, lines, descs := newHomes(t, 2)
	h.dead[forward.RelayHash(descs[0].RelayKey)] = true
	q := &memQueue{}
	ctx, sender := h.start(t, q, link.ForwarderConfig{
		MinBackoff: time.Hour, MaxBackoff: time.Hour, MaxPumps: 1})
	for i, d := range descs {
		h.forwardOne(ctx, t, sender, lines[i], d)
		if i == 0 {
			waitFor(ctx, t, "the dead home relay was tried", func() bool { return h.dials.Load() > 0 })
			time.Sleep(50 * time.Millisecond) // into its rest (sooner, it sees the other waiting)
		}
	}
	r := h.relay[forward.RelayHash(descs[1].RelayKey)]
	waitFor(ctx, t, "the live home relay had its layer", func() bool { return r.Store.Stats().Envelopes == 1 })
}

// endlessQueue is memQueue, but destination busy always has one more item,
// traffic that never lets its queue empty: the same layer again, which
// the home relay answers CodeReplay once it has it (delivered).
type endlessQueue struct {
	memQueue
	busy    [32]byte
	payload []byte
}

func (q *endlessQueue) Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]link.Item, error) {
	if dest == q.busy {
		time.Sleep(time.Millisecond)
		return []link.Item{{Seq: after + 1, Data: q.payload}}, nil
	}
	return q.memQueue.Pending(ctx, dest, after, max)
}

func (q *endlessQueue) Dests(context.Context) ([][32]byte, error) { return [][32]byte{q.busy}, nil }

// TestForwarderTurnsRoundRobin: with MaxPumps pumps whose queues never
// empty, a home relay waiting for a turn still gets one: a pump that has
// had its turn while another waits goes to the back of the line.
func TestForwarderTurnsRoundRobin(t *testing.T) {
	h, lines, descs := newHomes(t, 2)
	ka, kb := forward.RelayHash(descs[0].RelayKey), forward.RelayHash(descs[1].RelayKey)
	mbA := relaytest.NewMailbox(t, h.relay[ka].Connect(t), nil)
	layerA, err := forward.Seal(descs[0], 1, nil, mbA.Seal(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	q := &endlessQueue{busy: ka, payload: relay.ForwardPayload{Descriptor: lines[0], Layer: layerA}.Append(nil)}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest, Dial: h.dial,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, MaxPumps: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	runForwarder(ctx, t, fw)
	waitFor(ctx, t, "A's pump at work", func() bool { return h.relay[ka].Store.Stats().Envelopes == 1 })
	mbB := relaytest.NewMailbox(t, h.relay[kb].Connect(t), nil)
	layerB, err := forward.Seal(descs[1], 1, nil, mbB.Seal(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.Forward(ctx, [16]byte{7}, relay.ForwardPayload{Descriptor: lines[1], Layer: layerB}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "B's forward delivered while A's queue never empties", func() bool { return h.relay[kb].Store.Stats().Envelopes == 1 })
}
