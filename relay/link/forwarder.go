package link

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
)

// Item is one queued forward: its sequence number in its destination's
// queue and the Forward payload as the client sent it (descriptor and
// layer).
type Item struct {
	Seq  uint64
	Data []byte
}

// Queue is the entry relay's durable outbox of forwards, by destination
// relay (the SHA-256 of its descriptor key). Enqueue returns once the item
// is durable.
type Queue interface {
	Enqueue(ctx context.Context, dest [32]byte, item []byte) (uint64, error)
	Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]Item, error)
	Done(ctx context.Context, dest [32]byte, seqs ...uint64) error
	Dests(ctx context.Context) ([][32]byte, error)
}

// ForwarderConfig configures a Forwarder. Queue, Dial and Dest are
// required.
type ForwarderConfig struct {
	Queue Queue
	// Dial opens a session to a home relay, through the one dial path.
	Dial func(ctx context.Context, home *descriptor.Descriptor) (*client.Client, error)
	// Dest reads the destination relay hash of a layer (forward.Dest).
	Dest func(layer []byte) ([32]byte, error)
	// Observe, if set, counts forwards: "queued", "delivered", "replay"
	// (the home relay had it: delivered before), "refused" (the home relay
	// will never take it), and links going "up" and "down".
	Observe func(event string)
	// Log gets pump failures, never an address or a relay id. Default:
	// discard.
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// delivery. Defaults 1 s and 1 minute.
	MinBackoff, MaxBackoff time.Duration
	// MaxPumps bounds the home relays handed over to at once, each with a
	// pump and a link (a few goroutines and a session). Destinations past
	// it wait their turn, in order; a pump whose delivery failed gives its
	// turn to one waiting and comes back after its backoff. Default 64.
	MaxPumps int
	// Idle is how long a pump keeps its link once nothing is queued for
	// its home relay; then both end. Default 1 minute.
	Idle time.Duration
	// SourceBytes is how many bytes of forwards one source (a client's
	// address, or IPv6 /64, as the server counts it) may have queued at
	// once; past it Forward is refused relay.ErrOutboxFull, as when the
	// outbox is full. 0: no limit but the outbox's. ItemTTL is how long
	// the queue keeps an item it never delivered (the store's TTL);
	// default 7 days.
	SourceBytes int64
	ItemTTL     time.Duration
}

// Forwarder is the entry side of two-hop sends: it takes Forward frames
// (it implements server.Forwarder), keeps each in the durable Queue before
// the client is acked, and runs a pump per home relay with queued layers
// that hands them over a Link and deletes each once the home relay has it.
//
// Descriptors are self-signed, so anyone can queue layers for relays of
// their own making. What that costs the relay is bounded: at most MaxPumps
// pumps run (the others wait in turn), a pump and its link end once
// nothing is queued for their home relay, and one that fails makes way
// for one waiting and rests for its backoff.
type Forwarder struct {
	cfg ForwarderConfig
	ctx context.Context

	mu       sync.Mutex
	stopping bool                       // Run is waiting for the pumps: start no more
	pumps    map[[32]byte]*pump         // running; with closing, at most cfg.MaxPumps
	closing  int                        // pumps that gave their turn up, closing their links
	turns    [][32]byte                 // destinations waiting for a pump, oldest first
	waiting  map[[32]byte]bool          // the destinations in turns
	resting  map[[32]byte]*rest         // destinations between a failure and their retry
	backoffs map[[32]byte]time.Duration // the next retry delay of a destination that failed
	// full: destinations whose last drain stopped on the home relay's
	// storage full, whichever pump ran it (pump.drain); kept as backoffs
	// are, until a drain ends without it
	full    map[[32]byte]bool
	reached map[[32]byte]struct{} // destinations a link came up to since Run (at most maxReached)
	wg      sync.WaitGroup

	shares *sourceShares
}

// rest is a destination's wait after a failed delivery; kicks meanwhile
// do not cut it short.
type rest struct{ t *time.Timer }

// NewForwarder returns a forwarder; nothing runs until Run.
func NewForwarder(cfg ForwarderConfig) *Forwarder {
	if cfg.Observe == nil {
		cfg.Observe = func(string) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Minute, cfg.MinBackoff)
	}
	if cfg.MaxPumps <= 0 {
		cfg.MaxPumps = 64
	}
	if cfg.Idle <= 0 {
		cfg.Idle = time.Minute
	}
	if cfg.ItemTTL <= 0 {
		cfg.ItemTTL = 7 * 24 * time.Hour
	}
	return &Forwarder{cfg: cfg, pumps: map[[32]byte]*pump{}, waiting: map[[32]byte]bool{},
		resting: map[[32]byte]*rest{}, backoffs: map[[32]byte]time.Duration{}, reached: map[[32]byte]struct{}{},
		full:   map[[32]byte]bool{},
		shares: newSourceShares(cfg.SourceBytes, cfg.ItemTTL+24*time.Hour)}
}

// Run starts a pump for every destination with queued items and serves
// until ctx ends.
func (f *Forwarder) Run(ctx context.Context) error {
	f.mu.Lock()
	f.ctx = ctx
	f.mu.Unlock()
	dests, err := f.cfg.Queue.Dests(ctx)
	if err != nil {
		return err
	}
	for _, d := range dests {
		f.kick(d, nil)
	}
	<-ctx.Done()
	f.mu.Lock()
	f.stopping = true
	for _, r := range f.resting {
		r.t.Stop()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return nil
}

// errNotForThisRelay: the layer is sealed to another relay than the
// descriptor names.
var errNotForThisRelay = errors.New("link: the forward layer is not sealed to the relay its descriptor names")

// Forward checks a Forward payload, queues it durably within the share of
// its source src and wakes its pump.
func (f *Forwarder) Forward(ctx context.Context, src [16]byte, payload []byte) error {
	fp, err := relay.ParseForwardPayload(payload)
	if err != nil {
		return relay.ErrBadFrame
	}
	home, _, err := descriptor.ParseStale(fp.Descriptor, time.Now())
	if err != nil {
		return relay.ErrBadFrame
	}
	dest, err := f.cfg.Dest(fp.Layer)
	if err != nil || dest != sha256.Sum256(home.RelayKey) {
		return relay.ErrBadEnvelope
	}
	n, now := int64(len(payload)), time.Now()
	if !f.shares.reserve(src, n, now) {
		return relay.ErrOutboxFull
	}
	seq, err := f.cfg.Queue.Enqueue(ctx, dest, payload)
	if err != nil {
		f.shares.cancel(src, n)
		return err
	}
	f.shares.queued(src, n, itemKey{dest, seq}, now)
	f.cfg.Observe("queued")
	f.kick(dest, home)
	return nil
}

// kick wakes the pump for dest, or gives dest a turn: at once if fewer
// than MaxPumps run, else after those waiting before it. A destination
// resting after a failure gets its turn when the rest ends. A running
// pump follows home, the descriptor of what was queued, if it is newer.
func (f *Forwarder) kick(dest [32]byte, home *descriptor.Descriptor) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx == nil || f.ctx.Err() != nil || f.stopping {
		return // not running: Run starts the pumps for what is queued
	}
	if p := f.pumps[dest]; p != nil {
		if home != nil {
			p.follow(home)
		}
		if p.idle { // it has work now (a resting one still rests)
			p.yields, p.idle = false, false
		}
		select {
		case p.wake <- struct{}{}:
		default:
		}
		return
	}
	if f.resting[dest] != nil || f.waiting[dest] {
		return
	}
	f.waiting[dest] = true
	f.turns = append(f.turns, dest)
	f.startLocked()
	if len(f.turns) > 0 { // at the cap: a pump idle or resting makes way
		for _, p := range f.pumps {
			if p.yields {
				p.yields, p.idle = false, false
				select {
				case p.yield <- struct{}{}:
				default:
				}
				break
			}
		}
	}
}

// working is told by a pump that goes to work: it no longer yields.
func (f *Forwarder) working(p *pump) {
	f.mu.Lock()
	p.yields, p.idle = false, false
	f.mu.Unlock()
}

// startLocked starts pumps for the destinations waiting their turn while
// fewer than MaxPumps run; f.mu is held.
func (f *Forwarder) startLocked() {
	for len(f.pumps)+f.closing < f.cfg.MaxPumps && len(f.turns) > 0 && !f.stopping && f.ctx.Err() == nil {
		dest := f.turns[0]
		f.turns = f.turns[1:]
		delete(f.waiting, dest)
		p := &pump{f: f, dest: dest, wake: make(chan struct{}, 1), yield: make(chan struct{}, 1)}
		f.pumps[dest] = p
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.run(f.ctx)
		}()
	}
	if len(f.turns) == 0 {
		f.turns = nil // let a long queue's array go
	}
}

// idle is told by a pump with nothing queued. It ends the pump (true),
// and gives its turn to the next waiting, when another destination waits
// for a turn, or when it is told to (the idle period is over, or another
// destination waited); not if the pump was kicked meanwhile: there is
// work. Else the pump idles, and a destination that comes to wait for a
// turn makes it yield (pump.yield).
func (f *Forwarder) idle(p *pump, end bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-p.wake:
		p.wake <- struct{}{} // for the pump's next wait: there is work
		return false
	default:
	}
	if !end && len(f.turns) == 0 && !f.stopping {
		p.yields, p.idle = true, true
		return false
	}
	f.endLocked(p)
	return true
}

// endLocked takes p out of the running pumps: its turn is free once its
// link is closed (closed). f.mu is held.
func (f *Forwarder) endLocked(p *pump) {
	delete(f.pumps, p.dest)
	f.closing++
}

// closed is told by a pump that gave its turn up once its link is closed:
// the turn goes to the next destination waiting.
func (f *Forwarder) closed() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closing--
	f.startLocked()
}

// othersWait reports whether a destination waits for a turn.
func (f *Forwarder) othersWait() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.turns) > 0
}

// turnOver is told by a pump that had its turn while others wait: it ends
// (true) and its destination waits for a turn again, behind the others;
// false if none waits any more.
func (f *Forwarder) turnOver(p *pump) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.turns) == 0 || f.stopping {
		return false
	}
	f.endLocked(p)
	f.waiting[p.dest] = true
	f.turns = append(f.turns, p.dest)
	return true
}

// failed is told by a pump whose delivery failed: when another
// destination waits for a turn, the pump ends (true) and its destination
// rests for d before it waits for a turn again; else the pump rests
// itself, until the rest is over or a destination comes to wait.
func (f *Forwarder) failed(p *pump, d time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.turns) == 0 && !f.stopping {
		p.yields = true // resting: a destination that comes to wait takes the turn
		return false
	}
	f.endLocked(p)
	if !f.stopping {
		f.restLocked(p.dest, d)
	}
	return true
}

// restLocked keeps dest from a turn for d, then gives it one; f.mu is
// held.
func (f *Forwarder) restLocked(dest [32]byte, d time.Duration) {
	f.resting[dest] = &rest{t: time.AfterFunc(d, func() {
		f.mu.Lock()
		delete(f.resting, dest)
		f.mu.Unlock()
		f.kick(dest, nil)
	})}
}

// backoff returns dest's retry delay after a failure (jittered to between
// half and all of it) and doubles it for the next, up to MaxBackoff, or
// up to unreachedBackoff times that for a destination no link has come
// up to since Run; success resets it. Descriptors are self-signed and
// name addresses of the signer's choosing: one source's share of the
// outbox, as some 3,600 made-up destinations retried every minute for
// the items' week, made the relay dial about 90 of them a second (a
// reviewer's count), at addresses an attacker picked.
func (f *Forwarder) backoff(dest [32]byte, failed bool) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !failed {
		delete(f.backoffs, dest)
		return 0
	}
	b := f.backoffs[dest]
	if b == 0 {
		b = f.cfg.MinBackoff
	}
	most := f.cfg.MaxBackoff
	if _, ok := f.reached[dest]; !ok {
		most *= unreachedBackoff
	}
	f.backoffs[dest] = min(2*b, most)
	return b/2 + rand.N(b/2+1)
}

// wasFull reports whether dest's last drain stopped on relay full: the
// next starts with one layer in flight, in the fair order (drainer).
// Kept here, not in the pump: a pump that gives its turn up, or whose
// session fails, is replaced by one that must know (a reviewer's find:
// the new pump went back to the queue's order and a window of 128).
func (f *Forwarder) wasFull(dest [32]byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.full[dest]
}

// setFull records how dest's last drain that the home relay answered
// ended: stopped on relay full, or not.
func (f *Forwarder) setFull(dest [32]byte, full bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if full {
		f.full[dest] = true
	} else {
		delete(f.full, dest)
	}
}

// unreachedBackoff is how many times MaxBackoff a destination that no
// link has come up to may rest between tries (10 minutes by default);
// maxReached bounds the destinations remembered as reached (past it, new
// ones rest as if never reached).
const (
	unreachedBackoff = 10
	maxReached       = 1 << 16
)

// reachedDest is told that a link to dest came up.
func (f *Forwarder) reachedDest(dest [32]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reached) < maxReached {
		f.reached[dest] = struct{}{}
	}
}
