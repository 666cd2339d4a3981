package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
)

// errStop marks Handle's error: Follow returns it instead of reconnecting.
var errStop = errors.New("client: follow stopped")

type stopError struct{ err error }

func (e *stopError) Error() string        { return e.err.Error() }
func (e *stopError) Is(target error) bool { return target == errStop }

// Unwrap is Handle's error.
func (e *stopError) Unwrap() error {
	return e.err
}

// FollowConfig configures Follow. Dial, Owner, Mailbox and Handle are
// required.
type FollowConfig struct {
	// Dial opens a new session (for example a closure over Dial).
	Dial func(ctx context.Context) (*Client, error)
	// Owner and Mailbox name the mailbox to follow.
	Owner   ed25519.PrivateKey
	Mailbox [32]byte
	// After, if set, gives the cursor each subscription starts from: one
	// past a cursor (not 0) pushes only the envelopes after it
	// (Client.SubscribeAfter), for a caller that paged through the
	// mailbox up to it and holds what it did not ack there (an Inbox
	// after DrainParts). A relay that does not know SubscribeAfter gets a
	// plain Subscribe.
	After func() uint64
	// Connected, if set, is called after each successful subscribe from
	// the mailbox's start (not one past a cursor): every waiting envelope
	// is pushed again on a new session, so a caller that holds envelopes
	// unacked (fragments) resets that state here.
	Connected func()
	// Gone, if set, is called when the relay answers a subscription that
	// it has no such mailbox: what the caller holds, and its cursor, are
	// of a mailbox that is no more there, and one made again there (its
	// owner runs `mailbox create --again` while Follow retries) numbers
	// its envelopes from another start, perhaps below an old cursor.
	Gone func()
	// Handle takes one delivery and returns the refs to ack (possibly
	// none, possibly refs of earlier deliveries). Follow acks them in
	// batches: once it has handed over the deliveries that arrived
	// meanwhile, or a quarter of relay.MaxUnacked refs, with one Ack for
	// all, and hands over the next deliveries while that Ack is out (so a
	// backlog is not held up by a round trip per batch, let alone per
	// envelope). If Handle returns an error, Follow acks the batch so far
	// and stops with that error without handing over more.
	Handle func(Delivery) ([]Ref, error)
	// Flush, if set, is called before each Ack of what Handle returned,
	// so that a batch's state is saved once (an Inbox syncs what it gave
	// the application and saves its replay ids there). If it fails,
	// Follow acks nothing of the batch and stops with its error.
	Flush func() error
	// Release, if set, returns refs to ack that no delivery brought (an
	// Inbox's held fragments of a message another inbox took). Follow
	// calls it when Wake is signalled and at each ping, and acks what it
	// returns as it does a batch's, after Flush.
	Release func() []Ref
	Wake    <-chan struct{}
	// Held, if set, reports how many delivered envelopes Handle holds
	// unacked (an Inbox's fragments of unfinished messages). The relay
	// pushes at most relay.MaxUnacked envelopes ahead of the Acks, so held
	// envelopes that fill its window stop the subscription: a few large
	// messages whose fragments interleave on the relay (several senders at
	// once), or fragments that never complete (anyone with the card can
	// send them), held the mailbox still until they expired. Once
	// heldForPaging are held, Follow pages past them (FetchAfter) and
	// hands what it finds to Handle as it does pushed envelopes, after
	// the batch that got there and again at each ping while as many are
	// held (so new envelopes still arrive, within a ping, while the
	// window stays full).
	Held func() int
	// Lost, if set, is told why a session ended and how long Follow waits
	// before reconnecting. It never receives an address.
	Lost func(err error, wait time.Duration)
	// Leave, if set, is asked whether to leave the session about every
	// 250 ms while part of an envelope pushed came and the rest has not, at
	// once after each batch of deliveries, and when Look asks (else never
	// while nothing comes), and shown the envelope the subscription is
	// pushing, timed, if some of it came and some is still to come (else a
	// Pushing with only Idle, Below and Last: over TLS, what comes of a
	// frame grows a record, up to 16 KiB, at a time, so a 16 KiB envelope
	// shows up, if at all, almost whole). When it returns true, Follow
	// leaves the session: it closes
	// it, tells Left what came, and dials again at once (no backoff, no
	// Lost), so that Dial can take what waits another way (over lanes, on
	// a network that throttles each flow: Inbox.DrainLanes with what came
	// as LanesConfig.Have) before the next subscription. Leave should say
	// true once per envelope at most: the next subscription pushes one not
	// taken meanwhile again. It is not asked on a subscription asked past
	// a cursor (After) that the relay began from the mailbox's start (a
	// relay from before SubscribeAfter, a mailbox made again): that one
	// pushes again what the caller held, which Leave would take for new (a
	// reviewer's find: a follower left such a subscription, and the next,
	// for ever).
	Leave func(Pushing) bool
	// Look, if set, asks for a look when signalled: Leave is asked about
	// 250 ms later even if nothing comes (a caller whose Leave waits on
	// work of its own signals it when that work is done: a look it
	// missed would otherwise wait until something came, hours perhaps).
	Look <-chan struct{}
	// Watch, if set, is asked as each subscription begins whether Leave
	// is to be asked on it (where it would never leave, a follower
	// would wake four times a second, while pushes come, for nothing).
	Watch func() bool
	// Left, if set, is told what came of the session Leave ended: Came
	// are the envelopes pushed whole and not yet handed to Handle, and
	// the first bytes of the one that was coming, in mailbox order; none
	// of them was acked. Unacked are the refs of Acks whose answers had
	// not come (the relay answers a session's requests in turn, and
	// they may wait behind the envelope being pushed): ack them on the
	// next session, else they come again and are acked as replays.
	Left func(*PageLeft)
	// Ping is how often an idle session is pinged. Default 1 minute.
	Ping time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// after each failed attempt. Defaults 1 s and 1 minute.
	MinBackoff, MaxBackoff time.Duration
}

// Follow keeps a subscription to a mailbox alive until ctx ends: it dials,
// subscribes, hands every pushed envelope to Handle and acks what Handle
// returns, pings an idle session, and after any failure reconnects with
// exponential backoff. It returns nil when ctx ends, or Handle's error.
func Follow(ctx context.Context, cfg FollowConfig) error {
	if cfg.Ping <= 0 {
		cfg.Ping = time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Minute, cfg.MinBackoff)
	}
	backoff := cfg.MinBackoff
	for ctx.Err() == nil {
		c, err := cfg.Dial(ctx)
		if err == nil {
			var subscribed bool
			subscribed, err = follow(ctx, c, &cfg)
			c.Close()
			if errors.Is(err, errStop) {
				return errors.Unwrap(err)
			}
			if subscribed {
				backoff = cfg.MinBackoff
			}
			if l, ok := errors.AsType[*pushLeft](err); ok {
				l.left.Unacked = l.a.unanswered()
				if cfg.Left != nil {
					cfg.Left(l.left)
				}
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		if cfg.Lost != nil {
			cfg.Lost(err, backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
	return nil
}

// batchRefs ends a batch of Follow's: a quarter of the envelopes a
// subscription pushes ahead of the receiver's Acks, so that while the
// receiver handles the next ones, the Ack of these lets the relay push
// more. Smaller batches keep the relay's window fuller, larger ones cost
// fewer Flushes and Acks (BenchmarkFollowOverRTT: a backlog of 1,000 over
// a 20 ms path took 8.8 round trips in batches of 128, 8.2 of 64, 7.6 of
// 32; 6 is the floor).
const batchRefs = relay.MaxUnacked / 4

// acksOut bounds the Acks Follow has sent and not yet had answered: one
// per batch the relay's window holds.
const acksOut = relay.MaxUnacked / batchRefs

// heldForPaging is how many held envelopes make Follow page past them:
// half the relay's window, so that paging starts while the window still
// has room for what completes the held messages.
const heldForPaging = relay.MaxUnacked / 2

// follow runs one session; subscribed reports whether it got as far as a
// subscription (which resets the backoff).
func follow(ctx context.Context, c *Client, cfg *FollowConfig) (subscribed bool, err error) {
	var after uint64
	if cfg.After != nil {
		after = cfg.After()
	}
	from, err := c.SubscribeAfter(ctx, cfg.Owner, cfg.Mailbox, after)
	if after > 0 && errors.Is(err, relay.ErrUnknownFrame) {
		from = 0 // a relay from before SubscribeAfter
		err = c.Subscribe(ctx, cfg.Owner, cfg.Mailbox)
	}
	if err != nil {
		if errors.Is(err, relay.ErrNoMailbox) && cfg.Gone != nil {
			cfg.Gone()
		}
		return false, err
	}
	if from == 0 && cfg.Connected != nil {
		cfg.Connected()
	}
	ping := time.NewTicker(cfg.Ping)
	defer ping.Stop()
	var w *pushWatch
	if cfg.Leave != nil && (after == 0 || from != 0) && (cfg.Watch == nil || cfg.Watch()) {
		w = newPushWatch(c, cfg.Look)
		defer w.t.Stop()
	}
	// Paging (when too much is held) goes on from the cursor.
	a := &acker{ctx: ctx, c: c, cfg: cfg, results: make(chan ackAnswer, acksOut), last: from, paged: from}
	for {
		var err error
		select {
		case <-ctx.Done():
			return true, nil
		case r := <-a.results:
			a.out--
			err = r.err
		case <-w.signal():
			w.arm()
		case <-w.asked():
			w.arm()
		case <-w.tick():
			if req, leave := w.ask(ctx, cfg, a.last); leave {
				return true, a.leave(req)
			}
		case <-ping.C:
			if err = c.Ping(ctx); err == nil {
				err = a.release()
			}
			if err == nil && a.heldFull() {
				err = a.page()
			}
		case <-cfg.Wake:
			err = a.release()
		case d, ok := <-c.Deliveries():
			if !ok {
				return true, c.Err()
			}
			err = a.batch(d)
			if err == nil && w != nil { // Leave judges what a fragment left to come
				if req, leave := w.ask(ctx, cfg, a.last); leave {
					return true, a.leave(req)
				}
			}
			if err == nil && a.last > a.paged && a.heldFull() {
				err = a.page()
			}
		}
		if err != nil {
			return true, err
		}
	}
}

// batch hands d and the deliveries waiting after it to cfg.Handle
// (handleBatch), saves them (Flush) and acks what Handle returned.
func (a *acker) batch(d Delivery) error {
	c, cfg := a.c, a.cfg
	acks, last, herr := handleBatch(a.ctx, c, cfg, d, a.paged)
	a.last = max(a.last, last)
	return a.settle(acks, herr)
}

// settle saves what Handle was given (Flush) and acks acks; herr is
// Handle's refusal, which stops Follow once what came before it is acked.
func (a *acker) settle(acks []Ref, herr error) error {
	c, cfg := a.c, a.cfg
	if cfg.Flush != nil { // for the deliveries handled before a refusal too
		if err := cfg.Flush(); err != nil {
			return a.stop(errors.Join(herr, err)) // nothing of this batch acked unsaved
		}
	}
	if herr != nil {
		// Ack what was handled before the refusal, then stop: the
		// refusal stands even if that Ack fails.
		if len(acks) > 0 {
			c.Ack(a.ctx, cfg.Owner, cfg.Mailbox, acks...)
		}
		return a.stop(herr)
	}
	if len(acks) > 0 {
		return a.send(acks)
	}
	return nil
}

// heldFull reports whether Handle holds enough envelopes unacked to page
// past them.
func (a *acker) heldFull() bool { return a.cfg.Held != nil && a.cfg.Held() >= heldForPaging }

// page fetches, page by page, the envelopes after the last one this
// session has seen (pushed or fetched) and hands them to Handle, saving
// and acking each page as a batch, until a page comes back empty or
// fewer are held than make paging worth it. An envelope the relay pushes
// later as well is known again by Handle (a replay, or a fragment it
// holds).
func (a *acker) page() error {
	defer func() { a.paged = a.last }()
	for a.heldFull() && a.ctx.Err() == nil {
		// Pages free the relay's window (their Acks), so it pushes again:
		// once a batch's worth waits, those go first. They are known (each
		// was paged: its Seq is at most a.paged, handleBatch skips it), so
		// the wait is short, and the Client's queue stays far from its cap.
		if a.c.queued() >= batchRefs {
			return nil
		}
		ds, err := a.c.FetchAfter(a.ctx, a.cfg.Owner, a.cfg.Mailbox, a.last, 0)
		if err != nil || len(ds) == 0 {
			return err
		}
		var acks []Ref
		var herr error
		for _, d := range ds {
			var refs []Ref
			refs, herr = a.cfg.Handle(d)
			acks = append(acks, refs...)
			a.last = max(a.last, d.Seq)
			if herr != nil {
				break
			}
		}
		if err := a.settle(acks, herr); err != nil {
			return err
		}
	}
	return nil
}

// release acks what cfg.Release gives up, once Flush has saved it; a
// failed Flush stops Follow, as it does for a batch.
func (a *acker) release() error {
	if a.cfg.Release == nil {
		return nil
	}
	refs := a.cfg.Release()
	if len(refs) == 0 {
		return nil
	}
	if a.cfg.Flush != nil {
		if err := a.cfg.Flush(); err != nil {
			return a.stop(err)
		}
	}
	return a.send(refs)
}

// stop is the error that ends Follow with err, once the Acks still out
// are answered, so that what was handled before a refusal or a failed
// Flush is acked. (When ctx ends, the Acks out end with it: their
// envelopes come again and are known as replays.)
func (a *acker) stop(err error) error {
	a.wait()
	return &stopError{err}
}

// handleBatch hands d, and the deliveries already waiting after it, to
// cfg.Handle, and returns the refs to ack and Handle's error. Acking each
// delivery on its own cost a round trip per envelope, and a backlog
// drained at one envelope per round trip. A batch ends at batchRefs, at a
// refusal, when ctx does, and after cfg.Ping (so a slow Handle still acks,
// and so talks to the relay, that often).
//
// A pushed delivery whose Seq is at most paged was handed to Handle by
// paging on this session already (paging fetched it while it waited in
// the Client's queue): it is skipped. Handed over again it was acked
// twice, or, once the replay cache had forgotten it, taken twice.
func handleBatch(ctx context.Context, c *Client, cfg *FollowConfig, d Delivery, paged uint64) (acks []Ref, last uint64, err error) {
	began := time.Now()
	for {
		var refs []Ref
		if d.Seq > paged {
			refs, err = cfg.Handle(d)
		}
		acks = append(acks, refs...)
		last = max(last, d.Seq)
		if err != nil || len(acks) >= batchRefs || ctx.Err() != nil || time.Since(began) >= cfg.Ping {
			return acks, last, err
		}
		var ok bool
		if d, ok = c.waiting(); !ok {
			return acks, last, nil
		}
	}
}

// acker sends a Follow session's Acks without waiting for their answers,
// which come back on results, at most acksOut of them out: a receiver
// that waited for each Ack idled for a round trip per batch, and the
// relay, its window full, idled too. Only follow's goroutine uses it.
type acker struct {
	ctx     context.Context
	c       *Client
	cfg     *FollowConfig
	results chan ackAnswer
	out     int // Acks sent whose answers were not taken from results
	// last is the highest sequence number this session has handed to
	// Handle (pushed or paged), paged what it was at the end of the last
	// paging.
	last, paged uint64
}

// send acks refs once fewer than acksOut Acks are out; its error is that
// of an earlier Ack it waited for.
func (a *acker) send(refs []Ref) error {
	if a.out == acksOut {
		a.out--
		if r := <-a.results; r.err != nil {
			return r.err
		}
	}
	a.out++
	go func() {
		_, err := a.c.Ack(a.ctx, a.cfg.Owner, a.cfg.Mailbox, refs...)
		a.results <- ackAnswer{refs, err}
	}()
	return nil
}

// ackAnswer is how an Ack of refs ended.
type ackAnswer struct {
	refs []Ref
	err  error
}

// wait waits for the answers of the Acks still out.
func (a *acker) wait() {
	for ; a.out > 0; a.out-- {
		<-a.results
	}
}

// unanswered waits for the Acks still out, once the session is closed,
// and returns the refs of those that failed (PageLeft.Unacked).
func (a *acker) unanswered() []Ref {
	var refs []Ref
	for ; a.out > 0; a.out-- {
		if r := <-a.results; r.err != nil {
			refs = append(refs, r.refs...)
		}
	}
	return refs
}

// pushLeft is follow's error when Leave ended the session: Follow fills
// in left.Unacked (from a, once it has closed the session) and tells
// Left.
type pushLeft struct {
	left *PageLeft
	a    *acker
}

func (e *pushLeft) Error() string { return "relay/client: follow left a push" }

// leave is follow's error when Leave ended the session, the
// subscription req pushing an envelope (0: none): what was pushed whole
// and not handed over (in the Client's queue), then what came of that
// one.
func (a *acker) leave(req uint32) error {
	var came []Begun
	for {
		d, ok := a.c.waiting()
		if !ok {
			break
		}
		if d.Seq > a.paged { // else paging handed it over
			came = append(came, d.begun())
		}
	}
	if b, ok := a.c.begun(req); req != 0 && ok && (len(came) == 0 || b.Seq > came[len(came)-1].Seq) {
		came = append(came, b)
	}
	return &pushLeft{left: &PageLeft{Came: came}, a: a}
}

// waiting returns the next delivery if one has arrived and not been
// taken: handed over by forward at once, or still queued (forward is
// about to hand it over). It reports false when none has, or when the
// session has ended (the next receive in follow sees that).
func (c *Client) waiting() (Delivery, bool) {
	select {
	case d, ok := <-c.deliveries:
		return d, ok
	default:
	}
	c.qmu.Lock()
	queued := len(c.queue) > 0
	c.qmu.Unlock()
	if !queued {
		return Delivery{}, false
	}
	select {
	case d, ok := <-c.deliveries:
		return d, ok
	case <-c.done:
		return Delivery{}, false
	}
}

// pushWatch is when follow asks Leave: about every watchEvery while a
// Deliver frame came in part (FollowConfig.Look arms it for one look),
// at once after each batch of deliveries, and never while nothing
// comes, so that an idle follower does not wake four times a second. It
// times the envelope being pushed (Pushing.Bytes, Since, Idle). A nil
// pushWatch never fires.
type pushWatch struct {
	c     *Client
	t     *time.Ticker
	asks  <-chan struct{} // FollowConfig.Look
	armed bool
	seq   uint64    // the envelope being timed (0: none)
	first time.Time // the look that first saw it
	base  int64     // the session's byte count then
}

func newPushWatch(c *Client, look <-chan struct{}) *pushWatch {
	w := &pushWatch{c: c, t: time.NewTicker(watchEvery), asks: look}
	w.t.Stop()
	return w
}

// signal is what arms w: a Deliver frame that came in part. Not listened
// to while w is armed.
func (w *pushWatch) signal() <-chan struct{} {
	if w == nil || w.armed {
		return nil
	}
	return w.c.pushed
}

// asked is FollowConfig.Look, which arms w too. Not listened to while w
// is armed (a signal then arms it again after).
func (w *pushWatch) asked() <-chan struct{} {
	if w == nil || w.armed {
		return nil
	}
	return w.asks
}

// tick is w's looks, while armed.
func (w *pushWatch) tick() <-chan time.Time {
	if w == nil || !w.armed {
		return nil
	}
	return w.t.C
}

func (w *pushWatch) arm() {
	if !w.armed {
		w.t.Reset(watchEvery)
		w.armed = true
	}
}

// ask looks (look) and asks cfg.Leave, and says whether to leave, with
// the request id of the subscription pushing (0: none).
func (w *pushWatch) ask(ctx context.Context, cfg *FollowConfig, last uint64) (uint32, bool) {
	p, req, ok := w.c.pushing()
	p = w.look(p, ok)
	p.Last = last
	return req, ctx.Err() == nil && cfg.Leave(p)
}

// look is p (ok: an envelope being pushed) timed; a look with nothing
// being pushed disarms w (Leave is asked on it still, with Idle).
func (w *pushWatch) look(p Pushing, ok bool) Pushing {
	now := time.Now()
	p.Idle = now.Sub(time.Unix(0, w.c.lastRead.Load()))
	p.Below = p.Idle
	if a, has := w.c.conn.(transport.Arrivals); has {
		if below, _ := a.Arrivals(); now.Sub(below) < p.Below {
			p.Below = now.Sub(below)
		}
	}
	if !ok {
		w.seq = 0
		w.t.Stop()
		w.armed = false
		return p
	}
	got := w.c.Received()
	if p.Seq != w.seq {
		w.seq, w.first, w.base = p.Seq, now, got
	}
	p.Bytes, p.Since = int(got-w.base), now.Sub(w.first)
	return p
}
