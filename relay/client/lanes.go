package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/relay"
)

// LanesConfig tunes [Inbox.DrainLanes].
type LanesConfig struct {
	// Lanes is how many sessions DrainLanes uses at once, the first
	// included (at least 1; 1 is the first session alone).
	Lanes int
	// Have are envelopes of the mailbox of which the first bytes came
	// already (a page left: PageLeft.Came; a part fetched): DrainLanes
	// asks only for the rest of each it finds waiting, with the same
	// sequence number, ref and size, and the same first bytes (it asks
	// for up to 128 of them, to check them by). One with more data than
	// its size is not used. Each counts at its size, at once, toward the
	// 32 KiB that open the sessions beside the first (the caller left one
	// connection because much waits), found or not.
	Have []Begun
	// Stats, if set, is filled in as DrainLanes returns.
	Stats *LanesStats
}

// LanesStats is what DrainLanes' sessions carried together.
type LanesStats struct {
	// Sessions is the most that took part at once, the first included.
	Sessions int
	// Bytes is what parts brought of envelopes from when the first
	// session beside the first joined, and Span how long from then to
	// the last part: their rate together.
	Bytes int
	Span  time.Duration
	// Kept is what of the envelopes found came already
	// (LanesConfig.Have) past the first part a probe asks for, and was
	// not asked for again.
	Kept int
	// New is the size of the envelopes found that the inbox did not
	// hold as the drain began, less what was given of them (Have): what
	// there was to take that had not come before. Bytes asked for to
	// check what was given, and held envelopes fetched again (past the
	// inbox's copies, KeepHeld), count for nothing.
	New int
}

// Begun is an envelope of which the first len(Data) bytes, of Total,
// came: the envelope whole if they are all.
type Begun struct {
	Seq   uint64
	Ref   Ref
	Total int
	Data  []byte
}

// errNoLane is DrainLanes' error when no session is left and none says
// why (not expected: a session that ends says why).
var errNoLane = errors.New("relay/client: no session is left to receive on")

// laneDepth is how many requests each session of DrainLanes has out at
// once: two keep a throttled flow busy across the round trip between one
// answer and the next request.
const laneDepth = 2

// laneWindow is how many sequence numbers, per session, DrainLanes looks
// at ahead of the first one not yet handed to the inbox: it holds at
// most that many envelopes (each at most relay.MaxFrameSize).
const laneWindow = 2

// DrainLanes is Drain for a network that throttles each flow (a censor's
// per-flow rate limit, where one session carries a few kilobytes a
// second however fast the line): it pages once through the mailbox over
// first and up to cfg.Lanes-1 more sessions from dial, each carrying
// different parts of the waiting envelopes (Client.FetchPart) at once,
// and hands every envelope to the inbox whole, in mailbox order, acking
// what may be acked, as Drain does. It returns how many envelopes it put
// together (taken, held or dropped).
//
// Which envelopes wait it learns without a listing: it asks for the
// first envelope past each sequence number in turn, with its first
// 4 KiB (an envelope of the smallest bucket comes whole). A mailbox's
// envelopes are numbered one after another, so the next numbers are
// asked for at once, on several sessions, within a window of
// laneWindow numbers per session it may use; a gap (envelopes acked
// meanwhile) costs at most a window of such questions, and is jumped.
// Of an envelope whose first bytes it was given (LanesConfig.Have) it
// asks its first 128 bytes, to check them by, and the rest; it holds
// what it was given until it finds the envelope.
//
// The sessions beside the first are opened once the envelopes found and
// those the caller gave (LanesConfig.Have, at their size, from the
// start; not the inbox's copies of what it holds) come to two full parts
// (32 KiB), with work left or the mailbox's end not yet found. A session that fails
// (stalled, reset) leaves its parts to the others, and an Ack cut with
// its session goes again on another; DrainLanes fails when none is
// left, with that session's error, and at once on an error of the
// relay's (a relay.Error other than relay.ErrBusy) or a malformed
// answer, or on the inbox's (ErrInbox: Take refused a message, or what
// was taken could not be synced or recorded).
// first is not closed; the others are. Once it has paged through the
// mailbox, Follow subscribes past the last envelope it handed over.
func (in *Inbox) DrainLanes(ctx context.Context, first *Client, dial func(context.Context) (*Client, error), owner ed25519.PrivateKey, mailbox [32]byte, cfg LanesConfig) (int, error) {
	// The copies it keeps of what it holds (InboxConfig.KeepHeld) are
	// given too: a follower's lanes, after each session, fetched the
	// fragments it held again, whole.
	kept := heldBegun(in.keptHeld())
	held := maps.Clone(in.heldRefs)
	in.Reset()
	ctx, cancel := context.WithCancel(ctx)
	d := &laneDrain{in: in, dial: dial, owner: owner, mailbox: mailbox, cfg: cfg, ctx: ctx,
		slots: map[uint64]*laneSlot{}, endSeq: math.MaxUint64, have: map[uint64]Begun{}, held: held}
	d.give(kept, cfg.Have)
	d.cfg.Lanes = max(1, cfg.Lanes)
	d.cond = sync.NewCond(&d.mu)
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	d.retry = []laneTask{{probe: true, n: probePart}} // the first envelope past 0
	d.mu.Lock()
	d.register(first, false)
	d.mu.Unlock()
	d.run(first, true)
	err := d.deliver()
	cancel() // the requests still out, and the dials
	stop()
	// Workers waiting in take for the window see ctx ended (the
	// AfterFunc may have been stopped before it ran: a reviewer's find,
	// a hang when Take refused a message with the window full).
	d.mu.Lock()
	d.cond.Broadcast()
	d.mu.Unlock()
	d.wg.Wait()
	for _, c := range d.opened {
		c.Close()
	}
	if err == nil {
		// Every envelope up to the last handed over that is still on
		// the relay is held (fragments of unfinished messages): Follow
		// subscribes past it, as after DrainParts (until 2026-12-07 it
		// subscribed from the start, and the relay pushed what was held
		// again). Not after an error: the last handed over may be one
		// refused, not taken.
		in.cursor = d.last
	}
	if cfg.Stats != nil {
		*cfg.Stats = LanesStats{Sessions: d.most, Bytes: d.jBytes, Kept: d.kept, New: d.newBytes}
		if !d.joinedAt.IsZero() {
			cfg.Stats.Span = d.jLast.Sub(d.joinedAt)
		}
	}
	return d.whole, err
}

// give takes what DrainLanes is given, the inbox's copies of what it
// holds (kept) and the caller's (LanesConfig.Have), as d.have: the most
// of each envelope. What the caller gave counts toward widenBytes whole,
// at once (given): it left its one connection for lanes (a recv's page,
// a follower's push) because much waits, and gives what came of it and
// a trial's parts. Counting only what was left to fetch of what probes
// found (as since 08daeb3, 2026-12-07), the first session fetched the
// rest of one envelope, or probed through the short ones given, before
// the sessions beside it opened: a first recv's switch took 16.2 s for
// 200 KB behind 64 kbit/s a flow, and 16.0 s for 48 messages of 2 KB,
// where it took 14.3 and 13.1 before. The inbox's copies count for
// nothing: a follower's lanes, given the fragments it held, opened
// every session beside the first for a probe of each (a reviewer's
// find).
func (d *laneDrain) give(kept, caller []Begun) {
	for i, b := range append(kept, caller...) {
		if b.Total <= 0 || len(b.Data) > b.Total {
			continue // of no use; one of size 0 would hide the one found
		}
		if len(b.Data) > len(d.have[b.Seq].Data) {
			d.have[b.Seq] = b
		}
		if i >= len(kept) && !d.given[b.Seq] {
			if d.given == nil {
				d.given = map[uint64]bool{}
			}
			d.given[b.Seq] = true
			d.foundBytes += b.Total
		}
	}
}

// begun is the envelope of d, come whole, as a Begun.
func (d Delivery) begun() Begun {
	return Begun{Seq: d.Seq, Ref: d.Ref, Total: len(d.Envelope), Data: d.Envelope}
}

// heldBegun is ds, envelopes whole, as Begun.
func heldBegun(ds []Delivery) []Begun {
	bs := make([]Begun, 0, len(ds))
	for _, d := range ds {
		bs = append(bs, d.begun())
	}
	return bs
}

// laneDrain is one DrainLanes.
type laneDrain struct {
	in      *Inbox
	dial    func(context.Context) (*Client, error)
	owner   ed25519.PrivateKey
	mailbox [32]byte
	cfg     LanesConfig
	ctx     context.Context
	wg      sync.WaitGroup
	whole   int    // envelopes handed to the inbox
	last    uint64 // the number of the last one

	mu   sync.Mutex
	cond *sync.Cond
	// slots are the sequence numbers from next to probe (each asked
	// for, or found): an envelope, or known not to wait.
	slots   map[uint64]*laneSlot
	started bool   // the first envelope's number is known (next is set)
	next    uint64 // the first number not yet handed to the inbox
	probe   uint64 // the next number to ask for
	endSeq  uint64 // no envelope waits from it on
	retry   []laneTask
	out     int // requests out
	live    []*Client
	opened  []*Client // sessions DrainLanes opened (closed at its end)
	workers int       // workers running
	dialing int       // sessions being opened
	widened bool
	done    bool       // every envelope was handed over
	fatal   error      // ends DrainLanes
	lastCut error      // the last session's failure
	acked   chan error // the last Ack, while it is out
	// For LanesStats: the most sessions live at once; when the first
	// beside the first joined, bytes of parts since and the last's time.
	most     int
	joinedAt time.Time
	jBytes   int
	jLast    time.Time
	// foundBytes is the size each envelope the caller gave some of
	// claims (given: LanesConfig.Have, see give; found or not, matched or
	// not) and that of every other found, less what of it was given (the
	// inbox's copies of what it holds);
	// newBytes that of those the inbox did not hold (held, its refs as
	// the drain began), less what was given of them (LanesStats.New).
	foundBytes, newBytes int
	given                map[uint64]bool
	held                 map[Ref]int
	// have is LanesConfig.Have by sequence number (the most of each),
	// kept what of it was used.
	have map[uint64]Begun
	kept int
}

// laneSlot is one sequence number: asked for, known to hold no
// envelope, or holding one (whose parts are asked for from nextOff on).
type laneSlot struct {
	state   slotState
	gone    bool // the envelope went away meanwhile (acked elsewhere)
	ref     Ref
	total   int
	part    int
	nextOff int
	got     int
	buf     []byte
}

type slotState uint8

const (
	slotAsked slotState = iota
	slotAbsent
	slotEnv
)

// laneTask is one request: a probe (the first envelope past after, with
// its first n bytes) or a part of the envelope at seq.
type laneTask struct {
	probe  bool
	seq    uint64 // the envelope's (a part), or the one asked for (a probe; 0 for the first)
	off, n int
}

// after is what the task's FetchPart asks past.
func (t laneTask) after() uint64 {
	if t.seq == 0 {
		return 0
	}
	return t.seq - 1
}

// register counts c's workers in, under d.mu; run starts them.
func (d *laneDrain) register(c *Client, lane bool) {
	d.live = append(d.live, c)
	d.most = max(d.most, len(d.live))
	if lane {
		d.opened = append(d.opened, c)
		if d.joinedAt.IsZero() {
			d.joinedAt = time.Now()
		}
	}
	d.workers += laneDepth
	d.wg.Add(laneDepth)
}

// run starts c's workers (registered).
func (d *laneDrain) run(c *Client, first bool) {
	for range laneDepth {
		go d.work(c, first)
	}
}

// work asks for parts on c until there is nothing left to ask for, or c
// fails.
func (d *laneDrain) work(c *Client, first bool) {
	defer d.wg.Done()
	for {
		t, ok := d.take()
		if !ok {
			d.mu.Lock()
			d.workers--
			d.cond.Broadcast()
			d.mu.Unlock()
			return
		}
		off, n := t.off, t.n
		if t.probe {
			off = 0 // n is probePart, or haveCheck or less (an envelope given)
		}
		p, found, err := c.FetchPart(d.ctx, d.owner, d.mailbox, t.after(), off, n)
		if err != nil {
			d.failed(c, t, err, first)
			return
		}
		d.put(t, p, found)
	}
}

// take waits for a task: a request that failed on another session first,
// then the next part of the first envelope with one left, then the next
// number to ask for within the window. It reports false when there is
// nothing left to ask for.
func (d *laneDrain) take() (laneTask, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if d.fatal != nil || d.done || d.ctx.Err() != nil {
			return laneTask{}, false
		}
		for len(d.retry) > 0 {
			t := d.retry[0]
			d.retry = d.retry[1:]
			if d.needless(t) {
				continue
			}
			d.out++
			return t, true
		}
		if t, ok := d.nextPart(); ok {
			d.out++
			return t, true
		}
		if d.started && d.probe < d.endSeq && len(d.slots) < laneWindow*d.cfg.Lanes {
			t := laneTask{probe: true, seq: d.probe, n: probePart}
			if h := d.have[d.probe]; len(h.Data) > 0 {
				// Enough to check them by: a short message's
				// envelope that came whole is not asked for again
				// (a 4 KiB probe would bring it whole).
				t.n = min(len(h.Data), haveCheck)
			}
			d.slots[d.probe] = &laneSlot{}
			d.probe++
			d.out++
			return t, true
		}
		if d.out == 0 && d.started && d.probe >= d.endSeq && d.partsLeft() == 0 {
			return laneTask{}, false // all asked for and answered: deliver hands the rest over
		}
		d.cond.Wait()
	}
}

// needless reports whether a request to send again has been answered
// meanwhile: a probe of a number found to hold nothing or an envelope,
// or a part of an envelope gone away.
func (d *laneDrain) needless(t laneTask) bool {
	if t.seq == 0 {
		return false // the first probe
	}
	s := d.slots[t.seq]
	if t.probe {
		return s == nil || s.state != slotAsked
	}
	return s == nil || s.gone
}

// nextPart is the next part to ask for, of the envelope first in order
// with one left.
func (d *laneDrain) nextPart() (laneTask, bool) {
	best := uint64(0)
	var bs *laneSlot
	for seq, s := range d.slots {
		if s.state == slotEnv && !s.gone && s.nextOff < s.total && (bs == nil || seq < best) {
			best, bs = seq, s
		}
	}
	if bs == nil {
		return laneTask{}, false
	}
	t := laneTask{seq: best, off: bs.nextOff, n: min(bs.part, bs.total-bs.nextOff)}
	bs.nextOff += t.n
	return t, true
}

// partsLeft is how many bytes of envelopes found no request is out for.
func (d *laneDrain) partsLeft() int {
	n := 0
	for _, s := range d.slots {
		if s.state == slotEnv && !s.gone {
			n += s.total - s.nextOff
		}
	}
	return n
}

// widenBytes is how many bytes of envelopes found open the sessions
// beside the first, while work is left: two full parts, more than the
// first's two requests out carry at once.
const widenBytes = 2 * relay.MaxPart

// probePart is how much of an envelope a probe asks for, from its start:
// the smallest bucket, so a short message's envelope takes one request
// (a reviewer's find: probed with no data, each took two, and 25 of
// them over a 300 ms path took 8.8 s where a Drain took 1.2). A probe
// that meets a gap brings the next envelope's first part again, at most
// a window's worth per gap.
const probePart = 4 << 10

// haveCheck is how much of an envelope given (LanesConfig.Have) a probe
// asks for, to check what was given by: an envelope's first 34 bytes are
// the same in every envelope of a mailbox (its version, suite and
// mailbox id: a second reviewer's find, one byte checked nothing); the
// rest of these are of its encapsulated key, random for each.
const haveCheck = 128

// evenPart is the part size that asks for total bytes in as few parts
// of at most relay.MaxPart as it takes, of about the same size.
func evenPart(total int) int {
	if total <= 0 {
		return relay.MaxPart
	}
	k := (total + relay.MaxPart - 1) / relay.MaxPart
	return (total + k - 1) / k
}

// put records an answer to t, under d.mu.
func (d *laneDrain) put(t laneTask, p relay.Part, found bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.cond.Broadcast()
	d.out--
	if found && p.Seq <= t.after() {
		d.malformed("an envelope at or before the one asked past")
		return
	}
	if found && p.Seq == math.MaxUint64 {
		// No relay numbers so far (a mailbox starts under 2^62), and
		// DrainLanes would take it for the end it has not found.
		d.malformed("an envelope numbered 2^64-1")
		return
	}
	if t.probe {
		d.probed(t, p, found)
		return
	}
	s := d.slots[t.seq]
	if s == nil || s.state != slotEnv || s.gone {
		return
	}
	if !found || p.Ref != s.ref {
		if found && p.Seq == t.seq {
			d.malformed("another envelope in the place of one asked for")
			return
		}
		s.gone = true // acked elsewhere, or expired: the next one answered
		return
	}
	if p.Seq != t.seq || int(p.Total) != s.total {
		d.malformed("an envelope changed between its parts")
		return
	}
	copy(s.buf[t.off:], p.Data)
	s.got += len(p.Data)
	if !d.joinedAt.IsZero() {
		d.jBytes += len(p.Data)
		d.jLast = time.Now()
	}
	if len(p.Data) < t.n { // less than asked for: the rest again
		d.retry = append(d.retry, laneTask{seq: t.seq, off: t.off + len(p.Data), n: t.n - len(p.Data)})
	}
}

// malformed ends DrainLanes: a relay that answers so could keep it
// asking for ever.
func (d *laneDrain) malformed(what string) {
	if d.fatal == nil {
		d.fatal = fmt.Errorf("%w: %s", relay.ErrMalformed, what)
	}
}

// probed records the answer to a probe, under d.mu: nothing waits at
// t.seq or after it (not found), or nothing before p.Seq, which holds
// an envelope.
func (d *laneDrain) probed(t laneTask, p relay.Part, found bool) {
	first := t.seq == 0
	if first {
		d.started = true
		if !found {
			d.endSeq = 0 // an empty mailbox
			return
		}
		d.next, d.probe = p.Seq, p.Seq+1
		d.found(p)
		return
	}
	if !found {
		// Nothing waits from t.seq on: an envelope found there
		// meanwhile is gone (or the relay contradicts itself).
		d.endSeq = min(d.endSeq, t.seq)
		for seq, s := range d.slots {
			if seq >= t.seq {
				s.gone = s.state == slotEnv
				s.state = max(s.state, slotAbsent)
			}
		}
		return
	}
	for seq, s := range d.slots {
		if seq >= t.seq && seq < p.Seq && s.state == slotAsked {
			s.state = slotAbsent
		}
	}
	if p.Seq >= d.endSeq {
		return // arrived since the mailbox's end was found: the next pass's
	}
	s := d.slots[p.Seq]
	switch {
	case s == nil && p.Seq >= d.probe:
		d.probe = p.Seq + 1 // the numbers between hold nothing
		d.found(p)
	case s != nil && s.state == slotAsked:
		d.found(p)
	}
}

// found makes a slot of the envelope a probe found, under d.mu.
func (d *laneDrain) found(p relay.Part) {
	total := int(p.Total)
	s := &laneSlot{state: slotEnv, ref: p.Ref, total: total, buf: make([]byte, total)}
	s.got = copy(s.buf, p.Data) // the probe's part, from offset 0
	if !d.joinedAt.IsZero() {
		d.jBytes += s.got
		d.jLast = time.Now()
	}
	fetch := total
	if h, ok := d.have[p.Seq]; ok && h.Ref == p.Ref && h.Total == total && len(h.Data) > s.got && bytes.Equal(h.Data[:s.got], s.buf[:s.got]) {
		d.kept += len(h.Data) - s.got
		fetch -= len(h.Data) // the probe's bytes too: they check it
		s.got = copy(s.buf, h.Data)
	}
	delete(d.have, p.Seq) // in the slot now, or of no use
	s.nextOff, s.part = s.got, evenPart(total-s.got)
	d.slots[p.Seq] = s
	// What the inbox's copies gave counts for nothing: a follower's
	// lanes, given the fragments it held, opened every session beside
	// the first for a probe of each (a reviewer's find; a second's: the
	// 128 bytes that check each counted, 32 KiB for 224 held). What the
	// caller gave was counted whole (give).
	if !d.given[p.Seq] {
		d.foundBytes += fetch
	}
	if d.held[p.Ref] == 0 {
		d.newBytes += fetch
	}
	if d.widened || d.cfg.Lanes < 2 || d.dial == nil {
		return
	}
	left := 0
	for _, s := range d.slots {
		if s.state == slotEnv && !s.gone {
			left += s.total - s.got
		}
	}
	// Bytes found in all, and work left: many small envelopes each
	// come whole in their probe, and no envelope's bytes wait long (a
	// reviewer's find: with bytes waiting alone, a backlog of 48
	// messages of 3 KB behind a per-flow throttle never opened a lane).
	if d.foundBytes < widenBytes || (left == 0 && d.endSeq != math.MaxUint64) {
		return
	}
	d.widened = true
	d.dialing = d.cfg.Lanes - 1
	d.wg.Add(d.dialing)
	for range d.dialing {
		go d.dialLane()
	}
}

// dialLane opens a session beside the first and runs its workers. One
// that cannot be opened is no loss: the others carry its share.
func (d *laneDrain) dialLane() {
	defer d.wg.Done()
	c, err := d.dial(d.ctx)
	d.mu.Lock()
	d.dialing--
	join := err == nil && !d.done && d.fatal == nil && d.ctx.Err() == nil
	if join {
		d.register(c, true)
	}
	d.cond.Broadcast()
	d.mu.Unlock()
	switch {
	case join:
		d.run(c, false)
	case err == nil:
		c.Close()
	}
}

// failed records that t failed on c with err, under d.mu: t goes to
// another session, and c takes no more (a session DrainLanes opened is
// closed, and its other requests fail at once and go to the others).
func (d *laneDrain) failed(c *Client, t laneTask, err error, first bool) {
	d.mu.Lock()
	d.out--
	d.workers--
	d.retry = append(d.retry, t)
	if d.fatal == nil && d.ctx.Err() == nil && fatalLaneErr(err) {
		d.fatal = err
	}
	d.lastCut = err
	d.live = slices.DeleteFunc(d.live, func(x *Client) bool { return x == c })
	d.cond.Broadcast()
	d.mu.Unlock()
	if !first {
		c.Close()
	}
}

// fatalLaneErr reports whether err, from one session's request, ends
// DrainLanes: the relay's refusal (but "busy", which is that session's)
// or a malformed answer. A session's failure (stalled, reset) leaves its
// work to the others.
func fatalLaneErr(err error) bool {
	var re *relay.Error
	return errors.Is(err, relay.ErrMalformed) || (errors.As(err, &re) && !errors.Is(err, relay.ErrBusy))
}

// ready waits for envelopes to hand to the inbox, in order, and reports
// done once every envelope was handed over (and the error that ends
// DrainLanes, if any).
func (d *laneDrain) ready() ([]Delivery, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		before := d.next
		batch := d.advance()
		if d.next != before || d.done {
			// The window moved, with envelopes or past numbers that
			// hold none (a reviewer's find: workers waiting for it
			// were not woken when no envelope came with it).
			d.cond.Broadcast()
		}
		if len(batch) > 0 {
			return batch, false, nil
		}
		switch {
		case d.done:
			return nil, true, nil
		case d.fatal != nil:
			return nil, false, d.fatal
		case d.ctx.Err() != nil:
			return nil, false, d.ctx.Err()
		case d.workers == 0 && d.dialing == 0:
			return nil, false, cmp.Or(d.lastCut, errNoLane)
		}
		d.cond.Wait()
	}
}

// advance takes the envelopes next in order that came whole, past the
// numbers that hold none (or whose envelope went away), under d.mu.
func (d *laneDrain) advance() []Delivery {
	var batch []Delivery
	for d.started && d.next < d.endSeq {
		s := d.slots[d.next]
		if s == nil {
			if d.next >= d.probe {
				break // not asked for yet
			}
			d.next = d.lowestSlot() // a gap a probe found
			continue
		}
		if s.state == slotAsked || (s.state == slotEnv && !s.gone && s.got < s.total) {
			break
		}
		delete(d.slots, d.next)
		if s.state == slotEnv && !s.gone {
			batch = append(batch, Delivery{Mailbox: d.mailbox, Ref: s.ref, Seq: d.next, Envelope: s.buf})
		}
		d.next++
	}
	if d.started && d.next >= d.endSeq {
		d.done = true
	}
	return batch
}

// lowestSlot is the lowest number with a slot, or probe if none has.
func (d *laneDrain) lowestSlot() uint64 {
	low := d.probe
	for seq := range d.slots {
		low = min(low, seq)
	}
	return low
}

// deliver hands the envelopes to the inbox as they come, in order, and
// acks what it may (after what was taken is durable and recorded), one
// Ack out at a time, as Drain does.
func (d *laneDrain) deliver() (err error) {
	defer func() {
		if d.acked != nil {
			err = errors.Join(err, <-d.acked)
		}
	}()
	for {
		batch, done, err := d.ready()
		if err != nil || done {
			return err
		}
		var acks []Ref
		for _, dv := range batch {
			refs, err := d.in.Handle(dv)
			acks = append(acks, refs...)
			d.whole++
			d.last = dv.Seq
			if err != nil {
				// Ack what was taken before the refusal, then stop.
				return errors.Join(fmt.Errorf("%w: %w", ErrInbox, err), d.ack(acks))
			}
		}
		if err := d.ack(acks); err != nil {
			return err
		}
	}
}

// ack makes what was taken durable and recorded, then acks refs on the
// first session left, once the Ack before has been answered.
func (d *laneDrain) ack(refs []Ref) error {
	if err := d.in.flush(); err != nil {
		return fmt.Errorf("%w: %w", ErrInbox, err) // nothing is acked that is not durable and recorded
	}
	if d.acked != nil {
		err := <-d.acked
		d.acked = nil
		if err != nil {
			return err // recorded as taken: acked when it comes again
		}
	}
	if len(refs) == 0 {
		return nil
	}
	c := d.session(nil)
	if c == nil { // recorded as taken: acked when it comes again
		d.mu.Lock()
		defer d.mu.Unlock()
		return cmp.Or(d.lastCut, errNoLane)
	}
	d.acked = make(chan error, 1)
	go func(done chan<- error) { done <- d.sendAck(c, refs) }(d.acked)
	return nil
}

// session is the first session live that tried does not hold, waiting
// for the sessions being opened if none is (the first cut as an
// envelope completed, before another joined); nil if none is left.
func (d *laneDrain) session(tried map[*Client]bool) *Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if i := slices.IndexFunc(d.live, func(x *Client) bool { return !tried[x] }); i >= 0 {
			return d.live[i]
		}
		if d.dialing == 0 || d.ctx.Err() != nil || d.fatal != nil {
			return nil
		}
		d.cond.Wait()
	}
}

// sendAck acks refs on c, and again on another session left each time
// one fails (a lane cut while the Ack was out, which would otherwise end
// DrainLanes with work left that other sessions could do: a reviewer's
// find); acking a ref twice deletes it once.
func (d *laneDrain) sendAck(c *Client, refs []Ref) error {
	tried := map[*Client]bool{}
	for {
		err := sendAck(d.ctx, c, d.owner, d.mailbox, refs)
		if err == nil || fatalLaneErr(err) || d.ctx.Err() != nil {
			return err
		}
		tried[c] = true
		if c = d.session(tried); c == nil {
			return err
		}
	}
}
