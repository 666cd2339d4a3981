package link

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
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
}

// Forwarder is the entry side of two-hop sends: it takes Forward frames
// (it implements server.Forwarder), keeps each in the durable Queue before
// the client is acked, and runs one pump per home relay that hands the
// layers over a Link and deletes each once the home relay has it.
type Forwarder struct {
	cfg ForwarderConfig
	ctx context.Context

	mu    sync.Mutex
	pumps map[[32]byte]*pump
	wg    sync.WaitGroup
}

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
	return &Forwarder{cfg: cfg, pumps: map[[32]byte]*pump{}}
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
		f.kick(d)
	}
	<-ctx.Done()
	f.wg.Wait()
	return nil
}

// errNotForThisRelay: the layer is sealed to another relay than the
// descriptor names.
var errNotForThisRelay = errors.New("link: the forward layer is not sealed to the relay its descriptor names")

// Forward checks a Forward payload, queues it durably and wakes its pump.
func (f *Forwarder) Forward(ctx context.Context, payload []byte) error {
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
	if _, err := f.cfg.Queue.Enqueue(ctx, dest, payload); err != nil {
		return err
	}
	f.cfg.Observe("queued")
	f.kick(dest)
	return nil
}

// kick wakes the pump for dest, starting it if needed.
func (f *Forwarder) kick(dest [32]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx == nil || f.ctx.Err() != nil {
		return // not running: Run starts the pumps for what is queued
	}
	p := f.pumps[dest]
	if p == nil {
		p = &pump{f: f, dest: dest, wake: make(chan struct{}, 1)}
		f.pumps[dest] = p
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.run(f.ctx)
		}()
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}
