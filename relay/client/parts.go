package client

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
)

// PartsConfig tunes [Inbox.DrainParts].
type PartsConfig struct {
	// Part is the size of the parts asked for (default DefaultPart, at
	// most relay.MaxPart) while PerSession is not known. Once it is,
	// parts are half of it, within MinPart and relay.MaxPart (and at
	// most Part, if set): one part a session on a network that carries
	// little, four of 16 KiB on one that carries 128 KiB, where until
	// 2026-12-06 they stayed at 4 KiB, a round trip each. After a
	// session that carried none, the part is halved, down to MinPart.
	Part int
	// PerSession is how many bytes of parts one session may carry before
	// DrainParts ends it and opens the next, under the censor's limit.
	// 0: not known yet; the first session that is cut after carrying
	// some teaches it (what that one carried).
	PerSession int
	// Learned, if set, is told each PerSession a cut session taught.
	Learned func(perSession int)
	// Cut, if set, is told of each session a censor cut (err: stalled or
	// reset) after it carried carried bytes of parts.
	Cut func(err error, carried int)
	// Keep, if set, keeps the fragments of unfinished messages from one
	// run to the next (HeldStore): DrainParts starts out holding those it
	// kept, and at its end keeps those the inbox holds and has copies of
	// (InboxConfig.KeepHeld). One store is for one mailbox on one relay.
	Keep HeldStore
}

// Part sizes for DrainParts.
const (
	DefaultPart = 4 << 10
	MinPart     = 512
)

// maxIdleSessions bounds the sessions DrainParts opens in a row that end
// before they carried any part.
const maxIdleSessions = 16

// ErrInbox marks DrainParts' and DrainLanes' errors that are the inbox's,
// not the relay's or the network's: Take refused a message, or what was
// taken could not be synced or recorded. Nothing more can be taken.
var ErrInbox = errors.New("relay/client: the inbox cannot take messages")

// DrainParts is Drain for a network that cuts flows after a few kilobytes
// (a censor's per-flow limit, which a Deliver of a 64 KiB envelope never
// passes): it pages once through the mailbox asking for each waiting
// envelope in parts (Client.FetchPart), over as many sessions from dial as
// it takes, each ended (before the limit, once PerSession is known) or cut
// (then the next goes on from the last part that came whole). A complete
// envelope is handled as a delivery: complete messages go to Take and
// are acked; fragments of unfinished messages stay on the relay. It gives
// up after maxIdleSessions sessions in a row that carried nothing. It
// returns how many envelopes it put together (taken, held or dropped).
//
// What the inbox holds (fragments of unfinished messages, from an
// earlier DrainParts of this mailbox on this relay, or a session of it)
// it keeps: before it asks for an envelope that may be one of those, it
// asks which envelope is next (a part past any envelope's end, a few
// bytes), and pages past one it holds. Until 2026-12-06 each drain
// forgot them and fetched them again in parts, 64 KiB each, over as many
// sessions as that took, every time. A pass through the whole mailbox
// forgets the held messages it met nothing of (gone from the relay) and
// leaves the cursor Follow subscribes past.
//
// With cfg.Keep, what it holds outlives the process: a new one (a plain
// `recv` run again) starts out holding the fragments the last one kept,
// where until 2026-12-06 it fetched them again, every run.
func (in *Inbox) DrainParts(ctx context.Context, dial func(context.Context) (*Client, error), owner ed25519.PrivateKey, mailbox [32]byte, cfg PartsConfig) (int, error) {
	d := &partsDrain{in: in, dial: dial, owner: owner, mailbox: mailbox, cfg: cfg, seen: map[Ref]bool{}}
	d.part = min(relay.MaxPart, max(MinPart, cmp.Or(cfg.Part, DefaultPart)))
	if cfg.PerSession > 0 {
		d.part = d.partFor(cfg.PerSession)
	}
	defer d.end()
	if cfg.Keep != nil {
		if in.keepMax <= 0 {
			in.keepMax = MaxKeptBytes
		}
		defer d.save()
		if err := d.restore(); err != nil {
			return 0, err
		}
	}
	for {
		done, err := d.step(ctx)
		if err != nil {
			return d.whole, err
		}
		if done {
			in.sweep(d.seen)
			in.cursor = d.after
			return d.whole, nil
		}
	}
}

// partFor is the part size for sessions that carry perSession bytes: a
// session ends before half of that, so parts no larger (or each session
// would end frozen), and as large as that within MinPart, relay.MaxPart
// and cfg.Part, so each session carries as much as it may in as few
// round trips.
func (d *partsDrain) partFor(perSession int) int {
	p := min(relay.MaxPart, perSession/2)
	if d.cfg.Part > 0 {
		p = min(p, d.cfg.Part)
	}
	return max(MinPart, p)
}

// ackCost is what DrainParts counts against a session's budget for an
// Ack frame of restored envelopes, beside their refs.
const ackCost = 192

// peekCost is what DrainParts counts against a session's budget for
// asking which envelope is next: the request and its answer, with no
// data.
const peekCost = 192

// partsDrain is one DrainParts.
type partsDrain struct {
	in      *Inbox
	dial    func(context.Context) (*Client, error)
	owner   ed25519.PrivateKey
	mailbox [32]byte
	cfg     PartsConfig
	part    int

	c       *Client
	carried int  // bytes of parts on c, and peekCost for each peek
	data    int  // bytes of parts on c, alone: what a cut teaches
	paged   bool // c paged past a held envelope
	idle    int  // sessions in a row that carried nothing
	after   uint64
	cur     *partial // the envelope being put together, if any
	whole   int      // envelopes put together
	seen    map[Ref]bool

	pending []Ref // restored envelopes to ack on the first session
}

// restore starts the inbox out holding the envelopes cfg.Keep kept. An
// envelope kept that completes a message with what the inbox holds
// already, or whose message was taken meanwhile, is acked on the first
// session (once what was taken is durable and recorded).
func (d *partsDrain) restore() error {
	ds, err := d.cfg.Keep.Load()
	if err != nil {
		d.in.cfg.Warn(err.Error() + "; fetching its fragments again")
		ds = nil
	}
	for _, k := range ds {
		k.Mailbox = d.mailbox
		if d.in.holds(k.Ref) {
			// Held already (an earlier drain of this process, as
			// `recv --follow` makes): no need to open it again.
			d.in.keep(k)
			continue
		}
		refs, err := d.in.restore(k)
		if err != nil {
			// Take refused a message: what it took before is
			// recorded all the same (as Drain acks it), or a later
			// run would show it again.
			if len(d.pending) > 0 {
				err = errors.Join(err, d.in.flush())
			}
			return fmt.Errorf("%w: %w", ErrInbox, err)
		}
		d.pending = append(d.pending, refs...)
	}
	if len(d.pending) > 0 {
		if err := d.in.flush(); err != nil {
			return fmt.Errorf("%w: %w", ErrInbox, err)
		}
	}
	return nil
}

// save keeps the envelopes the inbox holds and has copies of (cfg.Keep).
// Failing to is only warned of: they are fetched again.
func (d *partsDrain) save() {
	if err := d.cfg.Keep.Save(d.in.keptHeld()); err != nil {
		d.in.cfg.Warn(err.Error())
	}
}

// full reports whether the next part would take the session past its
// share of PerSession: half of it in parts, three quarters with the
// peeks (a peek's bytes count against the censor's limit too, but a part
// as large as half of PerSession after a single peek should not need a
// session of its own).
func (d *partsDrain) full() bool {
	return d.data+d.part > d.cfg.PerSession/2 || d.carried+d.part > d.cfg.PerSession*3/4
}

// partial is an envelope whose first bytes have come.
type partial struct {
	ref   Ref
	seq   uint64
	total int
	buf   []byte
}

// end closes the session, if one is open.
func (d *partsDrain) end() {
	if d.c != nil {
		d.c.Close()
		d.c = nil
	}
}

// step asks for one part (opening a session first if none is open) and
// reports whether the mailbox has been paged through.
func (d *partsDrain) step(ctx context.Context) (bool, error) {
	if d.c != nil && d.cfg.PerSession > 0 && d.carried > 0 && d.full() {
		d.end() // before the censor's limit: a planned new session
	}
	if d.c == nil {
		c, err := d.dial(ctx)
		if err != nil {
			return false, err
		}
		d.c, d.carried, d.data, d.paged = c, 0, 0, false
		if len(d.pending) > 0 {
			refs := d.pending
			d.pending = nil
			d.carried += ackCost + relay.RefSize*len(refs)
			if err := d.in.ack(ctx, d.c, d.owner, d.mailbox, refs); err != nil {
				if d.in.failed != nil {
					return false, fmt.Errorf("%w: %w", ErrInbox, err)
				}
				// Recorded as taken: acked when a later drain meets them.
				return false, d.cut(err)
			}
		}
	}
	after, offset, size, peek := d.after, 0, d.part, false
	if d.cur != nil {
		after, offset = d.cur.seq-1, len(d.cur.buf)
	} else if d.in.heldPast(after) {
		// The next envelope may be one the inbox holds: ask which it is
		// (past any envelope's end, so with no data) before its bytes.
		offset, size, peek = relay.MaxFrameSize, 1, true
	}
	p, ok, err := d.c.FetchPart(ctx, d.owner, d.mailbox, after, offset, size)
	if err != nil {
		return false, d.cut(err)
	}
	if ok && (p.Seq <= after || (d.cur != nil && p.Ref == d.cur.ref && (p.Seq != d.cur.seq || int(p.Total) != d.cur.total)) ||
		(d.cur != nil && p.Ref != d.cur.ref && p.Seq <= d.cur.seq)) {
		// Not past the cursor, the same envelope changed, or another
		// in the place of one said to be gone: a relay that answers so
		// could keep DrainParts asking for ever.
		return false, fmt.Errorf("%w: a part out of order", relay.ErrMalformed)
	}
	d.carried += len(p.Data)
	d.data += len(p.Data)
	if peek {
		d.carried += peekCost
	}
	if !ok {
		return true, nil
	}
	if d.cur != nil && p.Ref != d.cur.ref {
		d.cur = nil // gone meanwhile: p is the next one
		return false, nil
	}
	if d.cur == nil {
		if d.in.holds(p.Ref) {
			d.seen[p.Ref] = true
			d.after, d.paged = p.Seq, true // held: page past it
			return false, nil
		}
		d.cur = &partial{ref: p.Ref, seq: p.Seq, total: int(p.Total), buf: make([]byte, 0, p.Total)}
	}
	d.cur.buf = append(d.cur.buf, p.Data...)
	if len(d.cur.buf) < d.cur.total {
		return false, nil
	}
	return false, d.complete(ctx)
}

// complete hands the envelope put together to the inbox and acks what it
// may.
func (d *partsDrain) complete(ctx context.Context) error {
	e := d.cur
	d.cur, d.after = nil, e.seq
	d.whole++
	d.seen[e.ref] = true
	refs, err := d.in.Handle(Delivery{Mailbox: d.mailbox, Ref: e.ref, Seq: e.seq, Envelope: e.buf})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInbox, err) // Take refused it: nothing more is taken or acked
	}
	if err := d.in.ack(ctx, d.c, d.owner, d.mailbox, refs); err != nil {
		if d.in.failed != nil {
			return fmt.Errorf("%w: %w", ErrInbox, err) // not durable or not recorded: nothing was acked
		}
		// What was taken is recorded (ack flushes first): the envelope
		// stays on the relay until a later recv meets it again and acks
		// it then (this one has paged past it).
		return d.cut(err)
	}
	return nil
}

// cut ends a session that failed with err: one a censor cut (stalled or
// reset) is followed by another, learning from it; any other error ends
// DrainParts. Only a stall teaches PerSession: a reset costs the part in
// flight, not a stall window, and a relay that restarts resets too.
func (d *partsDrain) cut(err error) error {
	d.end()
	stalled := errors.Is(err, transport.ErrStalled)
	if !stalled && transport.ClassOf(err) != transport.ClassReset {
		return err
	}
	if d.cfg.Cut != nil {
		d.cfg.Cut(err, d.data)
	}
	// Peeks teach nothing: a session cut after peeks alone counted as
	// having carried their 192 bytes each, and one that stalled on its
	// first part after a peek taught a budget of 192 bytes (a reviewer's
	// find), saved for the network. One that paged past held envelopes
	// made progress, though.
	if d.data == 0 && d.paged {
		d.idle = 0
		return nil
	}
	if d.data == 0 {
		d.idle++
		if d.idle >= maxIdleSessions {
			return err
		}
		d.part = max(MinPart, d.part/2)
		return nil
	}
	d.idle = 0
	if stalled && (d.cfg.PerSession == 0 || d.data < d.cfg.PerSession) {
		d.cfg.PerSession = d.data
		d.part = d.partFor(d.data)
		if d.cfg.Learned != nil {
			d.cfg.Learned(d.data)
		}
	}
	return nil
}
