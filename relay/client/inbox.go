package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/postern/postern/envelope"
)

// Message is one complete message taken from a mailbox.
type Message struct {
	// Sender is the sender's X25519 public key, nil for an anonymous
	// message.
	Sender  []byte
	Payload []byte
	// IDs are the ids of the envelopes the message came in. An
	// application that takes messages from several inboxes at once (a
	// mailbox on several relays, followed together) sees a message a
	// sender put on two relays once from each, and tells them apart by
	// these: each inbox checks only its own replay cache, filled from
	// the store when it was made.
	IDs [][envelope.IDSize]byte
	// ID names the message: a hash of its sender (none if anonymous)
	// and its message id (envelope.Opened.MessageID), the same in every
	// sealing of the message, where IDs differ. A sender seals a message
	// again into smaller envelopes when a censor stalls the larger ones,
	// and the relay may have stored the first sealing too; each inbox
	// takes such a message once, and an application reading several
	// inboxes tells copies apart by ID as well as by IDs. The sender is
	// in it so that nobody else, knowing a message id, could make the
	// message look taken.
	ID [envelope.IDSize]byte
}

// DefaultReplayCap is InboxConfig.ReplayCap's default.
const DefaultReplayCap = 1 << 14

// InboxConfig configures an Inbox. Identity and Take are required.
type InboxConfig struct {
	// Identity opens the envelopes.
	Identity *envelope.Identity
	// Take hands one complete message to the application and returns nil
	// once the application has it (shown, stored; durably once Sync has
	// returned, if Sync is set). An error leaves the message's envelopes
	// on the relay, unacked, and stops the inbox with that error.
	Take func(Message) error
	// Sync, if set, makes what Take was given durable (an application
	// that writes messages to a file syncs it here). The inbox calls it
	// before it records messages as taken and acks them: once per page in
	// Drain and once per batch in Follow, instead of once per message in
	// Take. If it fails (or the replay store's save does), nothing is
	// recorded or acked, and the inbox stops with its error and refuses
	// every later delivery with it: what Take was given may not be
	// durable, so the inbox cannot tell taken messages from lost ones.
	// Start a new Inbox (and check the output) to go on.
	Sync func() error
	// Replay keeps the ids of taken envelopes across runs; nil keeps them
	// in memory only.
	Replay ReplayStore
	// Taken, if set, reports whether the application took the message of
	// envelope id, or the message of that message id (Message.ID), from
	// another inbox (a mailbox on several relays,
	// followed at once: a sender may have put it, or part of it, on two).
	// Such an envelope is acked as a replay is, after the inbox's next
	// Sync, which must make what the other inbox handed over durable too
	// (the same output); it is never held as a fragment.
	Taken func(id [envelope.IDSize]byte) bool
	// Wake, if set, is signalled when Taken may have come to report a
	// message held here as fragments: Follow then gives up such held
	// fragments and acks them as it does a replay (it also looks at each
	// ping). Signal without blocking (a channel with room for one).
	Wake <-chan struct{}
	// Warn, if set, is told about envelopes the inbox gives up on. The
	// text carries no identifier.
	Warn func(string)
	// KeepHeld, if positive, makes the inbox keep a copy of each held
	// envelope (fragments of unfinished messages), up to KeepHeld bytes
	// of them, for PartsConfig.Keep to save between runs: those a whole
	// session or a subscription brought as well as those a DrainParts
	// took. DrainParts given a Keep sets it to MaxKeptBytes if it is 0;
	// more than MaxKeptBytes (what HeldFile loads) counts as that.
	KeepHeld int
	// MaxHeld bounds messages waiting for more fragments; beyond it the
	// oldest is given up (its fragments acked), so fragments that never
	// complete cannot stall the mailbox. Default 64.
	MaxHeld int
	// ReplayCap bounds the remembered envelope ids. Default
	// DefaultReplayCap.
	ReplayCap int
}

// Inbox turns deliveries into messages. It opens each envelope, drops
// replays, holds the fragments of an unfinished message unacked on the
// relay (so a crash or exit loses nothing), and returns refs to ack only
// for envelopes whose message the application has taken.
//
// An Inbox is not safe for concurrent use.
type Inbox struct {
	cfg    InboxConfig
	replay *replayLog
	join   *envelope.Joiner
	held   map[string]*heldMessage // fragments of unfinished messages
	order  []string                // keys of held, oldest first
	// heldRefs counts the refs of held (each is one envelope's: once).
	heldRefs map[Ref]int
	// kept has copies of held envelopes (cfg.KeepHeld), keptBytes of
	// them, keepMax at most.
	kept      map[Ref]Delivery
	keptBytes int
	keepMax   int
	failed    error // a flush failed: see InboxConfig.Sync
	// rateBytes, rateTook and ratePages are the bytes of the last
	// Drain's pages of at least minRatePage, how long they took to come
	// and how many they were; rateRTT is how long its last page (empty)
	// took, or 0 (see DrainRate).
	rateBytes int
	rateTook  time.Duration
	ratePages int
	rateRTT   time.Duration
	// last is the key in held of the message of the last fragment
	// handed over that did not complete its message (Awaited).
	last string
	// cursor is where the last DrainParts paged through the mailbox to:
	// every envelope up to it that is still on the relay is held here
	// (fragments of unfinished messages) or was acked. Follow subscribes
	// past it (SubscribeAfter). Reset clears it.
	cursor uint64
}

// heldMessage is what the inbox keeps of a message whose fragments are
// still arriving.
type heldMessage struct {
	refs []Ref
	seqs []uint64 // the refs' sequence numbers, in the same order
	ids  map[[envelope.IDSize]byte]bool
	// first names the message to the joiner (its sender and the first
	// 16 bytes of a fragment's payload, its message id on the wire).
	first *envelope.Opened
	// message names the message (Message.ID): another sealing of the
	// same message, held under another key, has the same.
	message [envelope.IDSize]byte
	// count is how many fragments the message has (its fragments say),
	// size the largest of its envelopes held (Awaited).
	count, size int
}

// NewInbox returns an inbox, loading the replay store.
func NewInbox(cfg InboxConfig) (*Inbox, error) {
	if cfg.Identity == nil || cfg.Take == nil {
		return nil, fmt.Errorf("client: InboxConfig needs Identity and Take")
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = 64
	}
	if cfg.ReplayCap <= 0 {
		cfg.ReplayCap = DefaultReplayCap
	}
	if cfg.Warn == nil {
		cfg.Warn = func(string) {}
	}
	rl, err := loadReplayLog(cfg.Replay, cfg.ReplayCap)
	if err != nil {
		return nil, err
	}
	in := &Inbox{cfg: cfg, replay: rl, keepMax: min(max(cfg.KeepHeld, 0), MaxKeptBytes)}
	in.Reset()
	return in, nil
}

// Reset forgets held fragments. Call it before the inbox takes
// deliveries of another relay (refs and sequence numbers are a relay's
// own), and when a new session starts from the mailbox's first envelope
// (a Subscribe, a Drain): the relay delivers every waiting envelope
// again, held fragments included. DrainParts, and Follow past the
// cursor DrainParts left, keep what is held.
func (in *Inbox) Reset() {
	in.held = map[string]*heldMessage{}
	in.heldRefs = map[Ref]int{}
	in.kept, in.keptBytes = map[Ref]Delivery{}, 0
	in.order = nil
	in.join = &envelope.Joiner{MaxPending: in.cfg.MaxHeld + 1}
	in.cursor = 0
}

// Handle takes one delivery and returns the refs that may now be acked,
// possibly none, possibly refs of earlier deliveries. An error is the
// application's refusal from Take: nothing more may be acked.
func (in *Inbox) Handle(d Delivery) ([]Ref, error) {
	if in.failed != nil {
		return nil, in.failed
	}
	o, err := envelope.Open(in.cfg.Identity, d.Envelope)
	if err != nil {
		// Not for us or damaged: nothing to keep it for.
		in.cfg.Warn(fmt.Sprintf("dropping an envelope that does not open: %v", err))
		return []Ref{d.Ref}, nil
	}
	return in.handleOpened(d, o)
}

// restore takes an envelope kept from an earlier run (PartsConfig.Keep)
// as Handle takes a delivery, but only a fragment that opens: anything
// else is skipped, and never acked, as the kept copy is all it is (the
// relay's may be whole).
func (in *Inbox) restore(d Delivery) ([]Ref, error) {
	if in.failed != nil {
		return nil, in.failed
	}
	o, err := envelope.Open(in.cfg.Identity, d.Envelope)
	if err != nil || !o.Fragment {
		return nil, nil
	}
	return in.handleOpened(d, o)
}

// handleOpened is Handle for the envelope of d, opened to o.
func (in *Inbox) handleOpened(d Delivery, o *envelope.Opened) ([]Ref, error) {
	message := MessageKey(o)
	if in.taken(o.ID) || in.taken(message) {
		// Taken before (the ack was lost), from another inbox, or in
		// another sealing of the same message. Ack it.
		return []Ref{d.Ref}, nil
	}
	if !o.Fragment {
		if err := in.cfg.Take(Message{Sender: o.Sender, Payload: o.Payload, IDs: [][envelope.IDSize]byte{o.ID}, ID: message}); err != nil {
			return nil, err
		}
		// The message's key covers this envelope when it comes again (a
		// whole envelope's id is its message id), and another sealing of
		// the message; o.ID is still looked for above, as replay files
		// written before message keys hold envelope ids.
		in.replay.add(message)
		return append([]Ref{d.Ref}, in.dropSealings(message)...), nil
	}
	return in.fragment(d, o, message)
}

// MessageKey names the message o carries, or carries part of, among all
// senders' (Message.ID).
func MessageKey(o *envelope.Opened) [envelope.IDSize]byte {
	h := sha256.New()
	h.Write([]byte("postern message key v1\x00"))
	h.Write([]byte{byte(len(o.Sender))})
	h.Write(o.Sender)
	h.Write(o.MessageID[:])
	return [envelope.IDSize]byte(h.Sum(nil))
}

// taken reports whether id, an envelope's or a message's, is that of a
// message taken: recorded here, or taken from another inbox.
func (in *Inbox) taken(id [envelope.IDSize]byte) bool {
	return in.replay.contains(id) || (in.cfg.Taken != nil && in.cfg.Taken(id))
}

// dropSealings gives up the fragments held of message (Message.ID: the
// other sealings of a message just taken) and returns their refs, to ack.
func (in *Inbox) dropSealings(message [envelope.IDSize]byte) []Ref {
	var refs []Ref
	for _, key := range slices.Clone(in.order) {
		if h := in.held[key]; h != nil && h.message == message {
			refs = append(refs, in.drop(key)...)
		}
	}
	return refs
}

func (in *Inbox) fragment(d Delivery, o *envelope.Opened, message [envelope.IDSize]byte) ([]Ref, error) {
	if len(o.Payload) < 16 {
		return []Ref{d.Ref}, nil
	}
	key := string(o.Sender) + "|" + string(o.Payload[:16])
	h := in.held[key]
	if h != nil && h.ids[o.ID] {
		return nil, nil // the same fragment delivered again
	}
	var acks []Ref
	if h == nil {
		acks = in.makeRoom()
		h = &heldMessage{ids: map[[envelope.IDSize]byte]bool{}, message: message,
			first: &envelope.Opened{Sender: o.Sender, Fragment: true, Payload: append([]byte(nil), o.Payload[:16]...)}}
		in.held[key] = h
		in.order = append(in.order, key)
	}
	h.refs = append(h.refs, d.Ref)
	h.seqs = append(h.seqs, d.Seq)
	if len(o.Payload) >= 20 { // else the joiner refuses it, below
		h.count = int(binary.BigEndian.Uint16(o.Payload[18:20]))
	}
	h.size = max(h.size, len(d.Envelope))
	in.heldRefs[d.Ref]++
	in.keep(d)
	h.ids[o.ID] = true
	msg, done, err := in.join.Add(o)
	if err != nil {
		in.cfg.Warn(fmt.Sprintf("dropping a bad fragment: %v", err))
		return append(acks, in.drop(key)...), nil
	}
	if !done {
		in.last = key
		return acks, nil
	}
	ids := make([][envelope.IDSize]byte, 0, len(h.ids))
	for id := range h.ids {
		ids = append(ids, id)
	}
	if err := in.cfg.Take(Message{Sender: o.Sender, Payload: msg, IDs: ids, ID: h.message}); err != nil {
		return acks, err
	}
	for id := range h.ids {
		in.replay.add(id)
	}
	in.replay.add(h.message)
	acks = append(acks, in.drop(key)...)
	return append(acks, in.dropSealings(h.message)...), nil
}

// holds reports whether the envelope ref is one the inbox holds.
func (in *Inbox) holds(ref Ref) bool { return in.heldRefs[ref] > 0 }

// keep keeps a copy of the held envelope of d (cfg.KeepHeld), if there is
// room for it. What is kept goes when its message is dropped from held
// (taken, given up, swept), so the bound counts only what is held. (Until
// a reviewer's find DrainParts kept them itself and counted what it had
// noted, and a drain that took 16 MiB of messages in parts kept nothing
// after.)
func (in *Inbox) keep(d Delivery) {
	if _, dup := in.kept[d.Ref]; dup || in.keepMax <= 0 || in.keptBytes+len(d.Envelope) > in.keepMax || !in.holds(d.Ref) {
		return
	}
	d.Envelope = bytes.Clone(d.Envelope)
	in.kept[d.Ref] = d
	in.keptBytes += len(d.Envelope)
}

// SaveHeld saves in st the copies of the envelopes the inbox holds
// (InboxConfig.KeepHeld), for one mailbox on one relay, replacing what
// st kept: call it once a Drain has paged through the whole mailbox, so
// that the next run starts out holding them (PartsConfig.Keep); after a
// Follow, use AddHeld. DrainParts given a Keep saves at its end itself.
func (in *Inbox) SaveHeld(st HeldStore) error { return st.Save(in.keptHeld()) }

// AddHeld adds the copies of the envelopes the inbox holds to what st
// keeps, within MaxKeptBytes (the inbox's first), for a run that may not
// have seen the whole mailbox: a Follow that ended before its first push,
// or that subscribed from the start and was stopped midway, holds less
// than is there, and SaveHeld would have put less in st than it kept (a
// reviewer's find). What is no longer on the relay goes at the next
// DrainParts that pages through the whole mailbox.
func (in *Inbox) AddHeld(st HeldStore) error {
	ds := in.keptHeld()
	n := in.keptBytes
	old, err := st.Load()
	if err != nil {
		old = nil // damaged: what the inbox holds replaces it
	}
	for _, d := range old {
		if _, dup := in.kept[d.Ref]; !dup && n+len(d.Envelope) <= MaxKeptBytes {
			ds = append(ds, d)
			n += len(d.Envelope)
		}
	}
	if len(ds) == 0 && len(old) == 0 && err == nil {
		return nil
	}
	slices.SortFunc(ds, func(a, b Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	return st.Save(ds)
}

// keptHeld returns the copies kept of held envelopes, in sequence order.
func (in *Inbox) keptHeld() []Delivery {
	ds := make([]Delivery, 0, len(in.kept))
	for _, d := range in.kept {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	return ds
}

// Awaited names the message of the last fragment handed over that did
// not complete its message, by its Message.ID, if it is still held (not
// complete, not given up), and how many bytes are still to come of it:
// its fragments not yet held, each as large as the largest of its
// envelopes held (a sender seals a message's fragments in one bucket; a
// fragment sealed again in another counts as one more held, so this is
// then too few). Zero bytes when there is none. A follower on a network
// that throttles each flow leaves a subscription that pushes a message
// of many small envelopes one by one (FollowConfig.Leave), as it leaves
// one that pushes a large envelope.
func (in *Inbox) Awaited() ([envelope.IDSize]byte, int) {
	h := in.held[in.last]
	if h == nil {
		return [envelope.IDSize]byte{}, 0
	}
	return h.message, max(0, h.count-len(h.ids)) * h.size
}

// heldPast reports whether the inbox holds an envelope with seq > after.
func (in *Inbox) heldPast(after uint64) bool {
	for _, h := range in.held {
		for _, s := range h.seqs {
			if s > after {
				return true
			}
		}
	}
	return false
}

// sweep forgets, without acking them, the held messages none of whose
// envelopes are in seen, the refs a whole pass through the mailbox met:
// all of them are gone from the relay (acked by another device, which
// took the message, or expired), and nothing more of them will come.
func (in *Inbox) sweep(seen map[Ref]bool) {
	for _, key := range slices.Clone(in.order) {
		if h := in.held[key]; h != nil && !slices.ContainsFunc(h.refs, func(r Ref) bool { return seen[r] }) {
			in.drop(key)
		}
	}
}

// heldPushed is how many envelopes past the cursor the inbox holds
// unacked: those a subscription past the cursor pushed, which fill the
// relay's window for it (FollowConfig.Held). Those at or before it, held
// from DrainParts, were never pushed: counted, they made Follow page
// after every batch for good once 128 were held (a reviewer's find).
func (in *Inbox) heldPushed() int {
	n := 0
	for _, h := range in.held {
		for _, s := range h.seqs {
			if s > in.cursor {
				n++
			}
		}
	}
	return n
}

// makeRoom gives up an unfinished message when MaxHeld are held: the
// oldest of the sender that holds the most (anonymous messages count as
// one sender). Giving up the oldest of all let anyone with the card
// destroy another sender's half-received message with MaxHeld one-fragment
// envelopes (its fragments are acked, so deleted from the relay); now such
// a flood gives up its own. (A flood from as many identities as MaxHeld,
// which cost nothing to make, still can; the room each sender gets is a
// bound on memory, not an authority.)
func (in *Inbox) makeRoom() []Ref {
	if len(in.order) < in.cfg.MaxHeld {
		return nil
	}
	count := map[string]int{}
	most := ""
	for _, key := range in.order {
		sender := string(in.held[key].first.Sender)
		count[sender]++
		if count[sender] > count[most] {
			most = sender
		}
	}
	victim := in.order[0]
	for _, key := range in.order {
		if string(in.held[key].first.Sender) == most {
			victim = key // the sender's oldest: order is oldest first
			break
		}
	}
	in.cfg.Warn("dropping an unfinished message: too many messages waiting for fragments")
	return in.drop(victim)
}

// drop forgets a held message and returns its refs.
func (in *Inbox) drop(key string) []Ref {
	h := in.held[key]
	delete(in.held, key)
	for i, k := range in.order {
		if k == key {
			in.order = append(in.order[:i], in.order[i+1:]...)
			break
		}
	}
	if h == nil {
		return nil
	}
	for _, r := range h.refs {
		if in.heldRefs[r]--; in.heldRefs[r] <= 0 {
			delete(in.heldRefs, r)
		}
		if k, ok := in.kept[r]; ok {
			delete(in.kept, r)
			in.keptBytes -= len(k.Envelope)
		}
	}
	in.join.Forget(h.first)
	return h.refs
}

// release gives up the held fragments of every message that another
// inbox's application took (InboxConfig.Taken) and returns their refs,
// to ack after the next flush as a replay's are: without it they stay
// held, and unacked on the relay, until the next session, as a message
// that can never complete here.
func (in *Inbox) release() []Ref {
	if in.cfg.Taken == nil || in.failed != nil {
		return nil
	}
	var refs []Ref
	for _, key := range slices.Clone(in.order) {
		h := in.held[key]
		if h == nil {
			continue
		}
		if in.cfg.Taken(h.message) {
			refs = append(refs, in.drop(key)...)
			continue
		}
		for id := range h.ids {
			if in.cfg.Taken(id) {
				refs = append(refs, in.drop(key)...)
				break
			}
		}
	}
	return refs
}

// flush makes what Take was given durable (Sync), then records the taken
// ids in the replay store. Once either fails, the inbox has failed.
func (in *Inbox) flush() error {
	if in.failed != nil {
		return in.failed
	}
	if in.cfg.Sync != nil {
		if err := in.cfg.Sync(); err != nil {
			in.failed = err
			return err
		}
	}
	if err := in.replay.save(); err != nil {
		in.failed = err
		return err
	}
	return nil
}

// ack flushes, then acks refs. What was taken is synced and recorded in
// the replay store first, and if that fails nothing is acked: a message
// acked but not durable could be lost, an envelope acked but not recorded
// could be brought back by a relay as new, and one recorded but not acked
// is recognised when it comes again.
func (in *Inbox) ack(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte, refs []Ref) error {
	if err := in.flush(); err != nil {
		return err // nothing is acked that is not durable and recorded
	}
	return sendAck(ctx, c, owner, mailbox, refs)
}

// sendAck acks refs, if any, on c.
func sendAck(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte, refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	_, err := c.Ack(ctx, owner, mailbox, refs...)
	return err
}

// Drain pages once through the mailbox on c, handing complete messages to
// Take and acking them; fragments of unfinished messages stay on the relay.
//
// Drain keeps the round trips out of the way of its work: it fetches the
// next page (past this one by sequence number) before it opens this one,
// and acks a page without waiting for the answer, which it checks before
// it acks the next. A backlog of p pages costs about p+1 round trips or
// the time to open it, whichever is longer, where fetching, opening and
// acking in turn cost 2p+1 round trips and the opening on top. Drain
// returns once every request it sent has been answered, or has failed
// (as they do when ctx ends), but for a page asked for ahead when it
// ends on an error, which is given up (it stays on the relay). It holds
// at most two pages.
func (in *Inbox) Drain(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte) error {
	return in.DrainWatched(ctx, c, owner, mailbox, nil)
}

// DrainWatched is Drain, showing watch, if not nil, how each page is
// coming while it comes (PageProgress); when watch returns true it
// leaves that page and returns a *PageLeft (ErrPageLeft). A page comes
// whole in one answer, up to relay.MaxFetch envelopes: what a backlog's
// first page shows of the flow that carries it (a throttle) is known
// only while it comes.
func (in *Inbox) DrainWatched(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte, watch func(PageProgress) bool) (err error) {
	in.Reset()
	in.rateBytes, in.rateTook, in.ratePages, in.rateRTT = 0, 0, 0, 0
	fctx, leave := context.WithCancel(ctx) // a page left is not waited for
	defer leave()
	next := startFetch(fctx, c, owner, mailbox, 0)
	var acked chan error // the last page's Ack, while it is out
	var lastAcks []Ref   // its refs
	defer func() {
		if next != nil {
			// Fetched, not opened: it stays on the relay, and is not
			// waited for (it may be coming over a slow flow: a
			// reviewer's find).
			leave()
			<-next.ch
		}
		if acked != nil {
			if aerr := <-acked; err == nil || ctx.Err() == nil { // else err says ctx ended
				err = errors.Join(err, aerr)
			}
		}
	}()
	for {
		p, left := next.wait(watch)
		if left {
			// The last page's Ack is not waited for: its answer may
			// come behind this page, over the flow found slow.
			came := next.came()
			leave()
			return leftPage(&acked, lastAcks, came)
		}
		next = nil
		if p.err != nil || len(p.ds) == 0 {
			if p.err == nil {
				in.rateRTT = p.took
			}
			return p.err
		}
		next = startFetch(fctx, c, owner, mailbox, p.ds[len(p.ds)-1].Seq)
		in.countRate(p.ds, p.took)
		var acks []Ref
		for _, d := range p.ds {
			refs, err := in.Handle(d)
			acks = append(acks, refs...)
			if err != nil {
				// Ack what was taken before the refusal, then stop.
				return errors.Join(err, in.ack(ctx, c, owner, mailbox, acks))
			}
		}
		if err := in.flush(); err != nil {
			return err // nothing is acked that is not durable and recorded
		}
		if acked != nil {
			err := <-acked
			acked = nil
			if err != nil {
				return err // this page is recorded as taken: acked when it comes again
			}
		}
		acked, lastAcks = make(chan error, 1), acks
		go func(refs []Ref, done chan<- error) { done <- sendAck(ctx, c, owner, mailbox, refs) }(acks, acked)
	}
}

// minRatePage is the least a page must carry to count in DrainRate: a
// smaller one's time is mostly the round trip.
const minRatePage = 16 << 10

// countRate counts a page of ds that took took to come in DrainRate.
func (in *Inbox) countRate(ds []Delivery, took time.Duration) {
	n := 0
	for _, d := range ds {
		n += len(d.Envelope)
	}
	if n >= minRatePage {
		in.rateBytes += n
		in.rateTook += took
		in.ratePages++
	}
}

// DrainRate is what the last Drain's pages of at least 16 KiB carried,
// and how long they took from request to answer less a round trip each
// (what its last, empty, page took): the session's throughput, apart
// from how fast the application took the messages (Drain asks for the
// next page before it hands this one over) and from the path's latency
// (a reviewer's find: 10 KiB messages over a fast path with 2.2 s of
// latency read 14.8 KB/s). Zero when the Drain did not page through the
// mailbox to its end, or when that time is under 4 round trips (a fresh
// connection's slow start over a long path takes a few: a reviewer's
// caveat).
func (in *Inbox) DrainRate() (int, time.Duration) {
	if in.rateRTT <= 0 {
		return 0, 0
	}
	took := in.rateTook - time.Duration(in.ratePages)*in.rateRTT
	if took < 4*in.rateRTT {
		return 0, 0
	}
	return in.rateBytes, took
}

// Follow keeps a subscription to mailbox alive through Follow, handing
// every complete message to Take. It returns nil when ctx ends, or the
// error that Take, Sync or the replay store gave.
func (in *Inbox) Follow(ctx context.Context, dial func(context.Context) (*Client, error), owner ed25519.PrivateKey, mailbox [32]byte, lost func(error, time.Duration)) error {
	cfg := in.FollowConfig(dial, owner, mailbox)
	cfg.Lost = lost
	return Follow(ctx, cfg)
}

// FollowConfig is the FollowConfig of Inbox.Follow, for a caller that
// sets more of it (Lost, Leave and Left, Ping, the backoff) and calls
// Follow itself.
func (in *Inbox) FollowConfig(dial func(context.Context) (*Client, error), owner ed25519.PrivateKey, mailbox [32]byte) FollowConfig {
	return FollowConfig{
		Dial: dial, Owner: owner, Mailbox: mailbox,
		After:     func() uint64 { return in.cursor },
		Connected: in.Reset,
		Gone:      in.Reset,
		Handle:    in.Handle,
		Flush:     in.flush,
		Release:   in.release,
		Wake:      in.cfg.Wake,
		Held:      in.heldPushed,
	}
}
