package link

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// pumpBatch is how many queued items a pump reads at a time.
const pumpBatch = 64

// pump hands one home relay's queued layers over its link.
type pump struct {
	f     *Forwarder
	dest  [32]byte
	wake  chan struct{} // work was queued
	yield chan struct{} // an idle pump gives its turn up (Forwarder.idle)
	// yields is set while the pump waits, idle or resting after a
	// failure, and would give its turn up to a destination waiting for
	// one (Forwarder.kick); idle says which. Both under f.mu.
	yields, idle bool

	home    atomic.Pointer[descriptor.Descriptor] // newest descriptor seen in the queue
	scanned uint64                                // the queue looked through up to this seq (lookFurther)
	link    *Link
	stop    context.CancelFunc
	done    chan struct{} // closed when the link's Run returned
}

func (p *pump) run(ctx context.Context) {
	ended := p.loop(ctx)
	p.close()
	if ended {
		p.f.closed() // only now: a turn given up holds no link
	}
}

// loop drains, rests and idles until the pump gives its turn up (true)
// or ctx ends (false).
func (p *pump) loop(ctx context.Context) bool {
	for {
		p.f.working(p)
		err := p.drain(ctx)
		if ctx.Err() != nil {
			return false
		}
		if errors.Is(err, errTurnOver) {
			if p.f.turnOver(p) {
				return true
			}
			continue // nothing waits any more
		}
		if err != nil {
			wait := p.f.backoff(p.dest, true)
			switch {
			case errors.Is(err, errHomeFull):
				p.f.cfg.Log.Warn("a home relay's storage is full for this relay's forwards (full, or half full and this relay has sent its share for now); retrying")
			case errors.Is(err, errDeferred):
				p.f.cfg.Log.Info("forwards refused for now by a home relay (a full mailbox, a copy being stored); retrying")
			default:
				p.f.cfg.Log.Warn("forwarding to a home relay failed; retrying", "reason", failure(err))
			}
			if p.f.failed(p, wait) {
				return true // another destination's turn; this one rests
			}
			// Nothing waits for a turn: rest here, until one does. A kick
			// does not cut the rest short, or every new forward would
			// retry at once.
			until := time.Now().Add(wait)
			_, yielded, ok := p.wait(ctx, wait, false)
			if !ok {
				return false
			}
			if yielded && p.f.failed(p, max(0, time.Until(until))) {
				return true
			}
			continue
		}
		p.f.backoff(p.dest, false)
		if p.f.idle(p, false) {
			return true // nothing queued, and another destination waits
		}
		kicked, _, ok := p.wait(ctx, p.f.cfg.Idle, true)
		if !ok {
			return false
		}
		if !kicked && p.f.idle(p, true) {
			return true // nothing queued for a while, or another destination waits
		}
	}
}

// failure names what made a delivery fail, for the log: a relay's code or
// a transport's class, never the error's text (a route error names the
// relay).
func failure(err error) string {
	var re *relay.Error
	if errors.As(err, &re) {
		return re.Code.String()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, transport.ErrNotPublic):
		return "not a public address (link_private_peers allows it)"
	}
	return transport.ClassOf(err).String()
}

// wait waits d, or until told to yield (Forwarder.kick), or if kicks
// until kicked, and reports which; ok is false when ctx ends first.
func (p *pump) wait(ctx context.Context, d time.Duration, kicks bool) (kicked, yielded, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	var wake <-chan struct{}
	if kicks {
		wake = p.wake
	}
	select {
	case <-ctx.Done():
		return false, false, false
	case <-wake:
		return true, false, true
	case <-p.yield:
		return false, true, true
	case <-t.C:
		return false, false, true
	}
}

// pumpWindow bounds the layers a pump has in flight on its link: two
// batches, so the next batch goes out while the last one's answers come
// back and its deletions commit.
const pumpWindow = 2 * pumpBatch

// outcome is one delivery's result.
type outcome struct {
	seq uint64
	err error
}

// drain delivers queued items until none are left (nil) or one fails:
// it reads a batch after the last item it started, starts each item's
// request as soon as the window has room (they are pipelined on the one
// session), and deletes delivered items from the queue in groups while
// more are in flight. After a failure it waits for what is in flight,
// deletes what was delivered and returns; the next drain starts over at
// the queue's head, and anything delivered twice is answered CodeReplay.
func (p *pump) drain(ctx context.Context) error {
	d := &drainer{p: p, sem: make(chan struct{}, pumpWindow), out: make(chan outcome, pumpWindow), limit: pumpWindow}
	wasFull := p.f.wasFull(p.dest)
	if wasFull {
		d.limit = 1
	}
	defer func() {
		if d.full || d.firstErr == nil { // the home relay answered
			p.f.setFull(p.dest, d.full)
		}
	}()
	if wasFull {
		if err := d.startFair(ctx); err != nil {
			d.finish(ctx)
			return err
		}
	}
	var after uint64
	began := time.Now()
	for d.firstErr == nil && !d.full {
		if time.Since(began) >= turnSlice && p.f.othersWait() {
			if err := d.finish(ctx); err != nil {
				return err
			}
			return errTurnOver
		}
		items, err := p.f.cfg.Queue.Pending(ctx, p.dest, after, pumpBatch)
		if err != nil {
			d.finish(ctx)
			return err
		}
		if len(items) == 0 {
			break
		}
		after = items[len(items)-1].Seq
		if err := d.start(ctx, items); err != nil {
			d.finish(ctx)
			return err
		}
	}
	return d.finish(ctx)
}

// startFair starts, after a drain that the home relay stopped with relay
// full, the items it may take in the order that shares them out among
// sources: first those queued before this run (they count for no source;
// oldest first, as they went before), then the ones counted, by
// sourceShares.fairOrder. It waits for them: the drain then goes on
// through the queue in order, if the home relay takes more.
func (d *drainer) startFair(ctx context.Context) error {
	seqs, before := d.p.f.shares.fairOrder(d.p.dest, pumpWindow)
	if before > 1 {
		old, err := d.p.f.cfg.Queue.Pending(ctx, d.p.dest, 0, pumpWindow)
		if err != nil {
			return err
		}
		old = slices.DeleteFunc(old, func(it Item) bool { return it.Seq >= before })
		if err := d.start(ctx, old); err != nil {
			return err
		}
	}
	for _, seq := range seqs {
		if d.firstErr != nil || d.full {
			break
		}
		items, err := d.p.f.cfg.Queue.Pending(ctx, d.p.dest, seq-1, 1)
		if err != nil {
			return err
		}
		if len(items) == 0 || items[0].Seq != seq {
			continue // delivered or expired meanwhile
		}
		if err := d.start(ctx, items); err != nil {
			return err
		}
	}
	for d.running > 0 {
		d.collect(ctx, true)
	}
	return nil
}

// drainer is one drain's deliveries in flight.
type drainer struct {
	p         *pump
	c         *client.Client
	sem       chan struct{} // window slots
	out       chan outcome
	running   int
	delivered []uint64 // done, not yet deleted from the queue
	firstErr  error
	waiting   int  // refused for now (full mailboxes, busy, relay full), left queued
	full      bool // the home relay answered relay full: start no more
	// limit is how many deliveries may be in flight: the window, or,
	// after a drain that stopped on relay full, one, doubled at each
	// delivery, so that a home relay still full opens one layer a try,
	// not the window's 128 (a reviewer's find: 2,077 opened in 17 tries
	// where 16 could be stored).
	limit int
}

// errDeferred is a drain's result when it delivered all it could but the
// home relay refused some layers for now: their mailboxes full, a copy of
// the layer being stored (busy: a client that forwarded it twice), or
// the relay's storage full (for everyone, or for this relay: its
// allowance of envelope bytes spent while the home relay's store is half
// full, relay/server's sendlimit.go). Those stay queued, for a later
// try. A full mailbox or a copy being stored is one item's refusal, not
// the link's, so it neither stops the drain nor closes the session: a
// full mailbox at the head of the queue would otherwise hold every other
// forward to that home relay back until the recipient made room, and a
// client that forwarded a layer twice would stop the drain at will.
// Relay full stops the drain (what is in flight is collected, nothing
// more is started) but keeps the session: going on sent the whole queue
// again at every try, each layer opened by the home relay to be refused
// (a reviewer's find).
var errDeferred = errors.New("some forwards were refused for now by the home relay")

// errHomeFull is errDeferred when the home relay's storage was full (for
// everyone, or for this relay's forwards), which stopped the drain.
var errHomeFull = fmt.Errorf("%w: its storage is full", errDeferred)

// errTurnOver ends a drain that has had its turn while another
// destination waits for one (turnSlice).
var errTurnOver = errors.New("the pump's turn is over")

// turnSlice is how long a drain goes on while another destination waits
// for a turn: with MaxPumps home relays that always have something
// queued, the others would otherwise never get one.
const turnSlice = 2 * time.Second

// start delivers items, collecting finished ones whenever the window is
// full.
func (d *drainer) start(ctx context.Context, items []Item) error {
	for _, it := range items {
		fp, err := relay.ParseForwardPayload(it.Data)
		if err != nil { // checked before it was queued: the queue is damaged
			d.p.f.cfg.Observe("refused")
			d.delivered = append(d.delivered, it.Seq)
			continue
		}
		if d.c == nil {
			d.p.followAll(items)
			if d.c, err = d.p.session(ctx); err != nil {
				if len(items) == pumpBatch { // more may be queued behind
					d.p.lookFurther(ctx, items[len(items)-1].Seq)
				}
				return err
			}
		}
		for (len(d.sem) == cap(d.sem) || d.running >= d.limit) && d.firstErr == nil && !d.full {
			d.collect(ctx, true)
		}
		if d.firstErr != nil || d.full {
			return nil
		}
		d.sem <- struct{}{}
		d.running++
		go func(seq uint64, fp relay.ForwardPayload) {
			d.out <- outcome{seq, d.p.deliver(ctx, d.c, fp)}
		}(it.Seq, fp)
		d.collect(ctx, false)
	}
	return nil
}

// collect takes finished deliveries (waiting for one if wait) and deletes
// the delivered ones from the queue once no more are ready.
func (d *drainer) collect(ctx context.Context, wait bool) {
	for d.running > 0 {
		var o outcome
		if wait {
			o = <-d.out
			wait = false
		} else {
			select {
			case o = <-d.out:
			default:
				d.flush(ctx)
				return
			}
		}
		<-d.sem
		d.running--
		var re *relay.Error
		switch {
		case o.err == nil:
			d.delivered = append(d.delivered, o.seq)
			d.limit = min(2*d.limit, pumpWindow)
		case errors.As(o.err, &re) && (re.Code == relay.CodeMailboxFull || re.Code == relay.CodeBusy):
			d.waiting++
		case errors.As(o.err, &re) && re.Code == relay.CodeRelayFull:
			d.waiting++
			d.full = true
		case d.firstErr == nil:
			d.firstErr = o.err
		}
	}
	d.flush(ctx)
}

// flush deletes delivered items from the queue.
func (d *drainer) flush(ctx context.Context) {
	if len(d.delivered) == 0 {
		return
	}
	// Delivered, the items weigh on no source's share any more, whether or
	// not their deletion from the queue goes through.
	d.p.f.shares.done(d.p.dest, d.delivered)
	if err := d.p.f.cfg.Queue.Done(ctx, d.p.dest, d.delivered...); err != nil && d.firstErr == nil {
		d.firstErr = err
	}
	d.delivered = d.delivered[:0]
}

// finish waits for every delivery in flight, deletes what was delivered
// and returns the first error, or errMailboxFull if some layers wait for
// room; after an error of the link's, the session is closed so the link
// redials.
func (d *drainer) finish(ctx context.Context) error {
	for d.running > 0 {
		d.collect(ctx, true)
	}
	d.flush(ctx)
	if d.firstErr != nil && d.c != nil {
		d.c.Close()
	}
	switch {
	case d.firstErr == nil && d.full:
		return errHomeFull
	case d.firstErr == nil && d.waiting > 0:
		return errDeferred
	}
	return d.firstErr
}

// deliver hands one layer to the home relay. Errors that retrying cannot
// fix (the home relay refuses the layer or its envelope) drop it.
func (p *pump) deliver(ctx context.Context, c *client.Client, fp relay.ForwardPayload) error {
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := c.DeliverLayer(dctx, fp.Layer)
	var re *relay.Error
	switch {
	case err == nil:
		p.f.cfg.Observe("delivered")
	case errors.Is(err, relay.ErrReplay):
		p.f.cfg.Observe("replay")
	case errors.As(err, &re) && permanent(re.Code):
		p.f.cfg.Observe("refused")
	default:
		return err
	}
	return nil
}

// permanent reports whether a home relay's refusal will not change on
// retry.
func permanent(c relay.Code) bool {
	switch c {
	case relay.CodeBadFrame, relay.CodeBadEnvelope, relay.CodeNoMailbox, relay.CodeCapability, relay.CodeUnsupported:
		return true
	}
	return false
}

// follow makes d the descriptor the link dials if it is newer than the
// one it has (a relay re-signs its descriptor as its addresses change).
func (p *pump) follow(d *descriptor.Descriptor) {
	for {
		h := p.home.Load()
		if (h != nil && !d.Expires.After(h.Expires)) || p.home.CompareAndSwap(h, d) {
			return
		}
	}
}

// followAll follows the newest descriptor of items. The link dials the
// newest descriptor the pump has seen, which was the one of the queue's
// head: a relay that moved, or a forward queued on purpose with an old
// descriptor (they are public, and the entry relay cannot open the
// layer), held every forward behind it until it expired, a week later,
// though a later item named the relay's present address (a reviewer's
// find). Only lines unlike the one before are parsed: most items carry
// the same.
func (p *pump) followAll(items []Item) {
	var last string
	for _, it := range items {
		fp, err := relay.ParseForwardPayload(it.Data)
		if err != nil || fp.Descriptor == last {
			continue
		}
		last = fp.Descriptor
		if d, _, err := descriptor.ParseStale(fp.Descriptor, time.Now()); err == nil {
			p.follow(d)
		}
	}
}

// lookFurther follows the newest descriptor among the items queued past
// seq from and past those it looked through before: the link did not
// come up with the descriptors of a whole batch. Each item is looked at
// once per pump.
func (p *pump) lookFurther(ctx context.Context, from uint64) {
	p.scanned = max(p.scanned, from)
	for {
		items, err := p.f.cfg.Queue.Pending(ctx, p.dest, p.scanned, pumpBatch)
		if err != nil || len(items) == 0 {
			return
		}
		p.followAll(items)
		p.scanned = items[len(items)-1].Seq
	}
}

// errNoDescriptor is a drain's error when no queued item's descriptor
// parses (the queue is damaged: they were checked when queued).
var errNoDescriptor = errors.New("link: no queued descriptor parses")

// session returns the link's session, starting the link the first time;
// the link dials the newest descriptor followed (followAll).
func (p *pump) session(ctx context.Context) (*client.Client, error) {
	if p.home.Load() == nil {
		return nil, errNoDescriptor
	}
	if p.link == nil {
		p.link = New(Config{
			Dial:       func(ctx context.Context) (*client.Client, error) { return p.f.cfg.Dial(ctx, p.home.Load()) },
			MinBackoff: p.f.cfg.MinBackoff, MaxBackoff: p.f.cfg.MaxBackoff,
			Observe: func(up bool) {
				if up {
					p.f.reachedDest(p.dest)
					p.f.cfg.Observe("up")
				} else {
					p.f.cfg.Observe("down")
				}
			},
		})
		lctx, cancel := context.WithCancel(ctx)
		p.stop, p.done = cancel, make(chan struct{})
		go func() {
			defer close(p.done)
			p.link.Run(lctx)
		}()
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.link.Session(sctx)
}

func (p *pump) close() {
	if p.stop != nil {
		p.stop()
		<-p.done
	}
}
