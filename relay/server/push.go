package server

import (
	"context"
	"encoding/binary"
	"sync"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
)

// subscription pushes a mailbox's envelopes to the session: every waiting
// one once (past the SubscribeAfter cursor, if any), then each new one,
// reading onward from a cursor (the last sequence number pushed) so
// nothing is read twice. At most MaxUnacked
// pushed envelopes may wait for this session's acks. Envelopes acked on
// another session (a second device), or expired, leave the window when
// it is full (gone).
type subscription struct {
	cancel context.CancelFunc
	kick   chan struct{}
	mu     sync.Mutex
	sent   map[store.Ref]struct{} // pushed, not yet acked on this session
}

func (sub *subscription) acked(refs []store.Ref) {
	sub.mu.Lock()
	for _, r := range refs {
		delete(sub.sent, r)
	}
	sub.mu.Unlock()
	select {
	case sub.kick <- struct{}{}:
	default:
	}
}

// pushed records an envelope about to be pushed.
func (sub *subscription) pushed(it store.Item) {
	sub.mu.Lock()
	sub.sent[it.Ref] = struct{}{}
	sub.mu.Unlock()
}

// refs returns the refs in the window.
func (sub *subscription) refs() []store.Ref {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	out := make([]store.Ref, 0, len(sub.sent))
	for r := range sub.sent {
		out = append(out, r)
	}
	return out
}

// gone drops refs from the window.
func (sub *subscription) gone(refs []store.Ref) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, r := range refs {
		delete(sub.sent, r)
	}
}

// pruneEvery is how often a subscription whose window is full looks at
// the store for envelopes acked elsewhere, when nothing else wakes it.
const pruneEvery = 10 * time.Second

func (sub *subscription) room() int {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return relay.MaxUnacked - len(sub.sent)
}

func (ss *session) subscribe(p []byte) error {
	m, err := relay.ParseSubscribe(p)
	if err != nil {
		return relay.ErrBadFrame
	}
	if err := ss.owned(m.Mailbox, m, m.Sig); err != nil {
		return err
	}
	return ss.subscribeAfter(m.Req, m.Mailbox, 0)
}

// subscribeFrom answers a SubscribeAfter: a subscription that pushes only
// the envelopes after m.After. The Result's body is the cursor it starts
// from (u64): m.After, or 0 (below).
func (ss *session) subscribeFrom(p []byte) ([]byte, error) {
	m, err := relay.ParseSubscribeAfter(p)
	if err != nil {
		return nil, relay.ErrBadFrame
	}
	mb, err := ss.ownedBox(m.Mailbox, m, m.Sig)
	if err != nil {
		return nil, err
	}
	after := m.After
	if mb.NextSeq > 0 && after >= mb.NextSeq {
		// Past every envelope the mailbox has had: the cursor is of a
		// mailbox that was here before (the relay lost it, and its owner
		// made it again, numbering its envelopes from another start:
		// store.FirstSeq). From the start, or what the new one holds,
		// numbered below the cursor, would never be pushed.
		after = 0
	}
	if err := ss.subscribeAfter(m.Req, m.Mailbox, after); err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(nil, after), nil
}

// subscribeAfter starts a subscription to mailbox id whose pushes answer
// request req, from the cursor after. A second subscription to a mailbox
// on one session is the first one (whatever its cursor).
func (ss *session) subscribeAfter(req uint32, id [32]byte, after uint64) error {
	ss.smu.Lock()
	defer ss.smu.Unlock()
	if _, ok := ss.subs[id]; ok {
		return nil
	}
	if len(ss.subs) >= ss.srv.cfg.MaxSubscriptions {
		return relay.ErrBusy
	}
	ctx, cancel := context.WithCancel(ss.ctx)
	sub := &subscription{cancel: cancel, kick: make(chan struct{}, 1), sent: make(map[store.Ref]struct{})}
	ss.subs[id] = sub
	notify, unsub := ss.srv.cfg.Store.Notify(id)
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer unsub()
		ss.push(ctx, req, id, after, sub, notify)
		// However the push ended, the subscription is gone: a new
		// Subscribe must start a new one.
		ss.smu.Lock()
		if ss.subs[id] == sub {
			delete(ss.subs, id)
		}
		ss.smu.Unlock()
		cancel()
	}()
	return nil
}

func (ss *session) unsubscribe(id [32]byte) {
	ss.smu.Lock()
	if sub := ss.subs[id]; sub != nil {
		sub.cancel()
		delete(ss.subs, id)
	}
	ss.smu.Unlock()
}

// push runs a subscription until it is cancelled. A store read error or a
// failed write ends the whole session, so the client notices and
// reconnects instead of waiting for pushes that will never come.
func (ss *session) push(ctx context.Context, req uint32, id [32]byte, after uint64, sub *subscription, notify <-chan struct{}) {
	// Frames queued before the push ends leave now, not with the
	// session's next write.
	defer ss.flush()
	last := after
	var prune *time.Timer
	var pruned time.Time
	defer func() {
		if prune != nil {
			prune.Stop()
		}
	}()
	for {
		more := false
		room := sub.room()
		// Full: what was acked elsewhere leaves the window, looked at no
		// more than once a second (each look is up to MaxUnacked index
		// lookups, and a subscriber that stops reading is woken by every
		// new envelope).
		soon := false // woken while full, too soon to look again
		if room == 0 {
			if time.Since(pruned) < time.Second {
				soon = true
			} else if ss.pruneSent(ctx, id, sub) {
				pruned = time.Now()
				room = sub.room()
			}
		}
		if room > 0 {
			want := min(room, ss.srv.batchItems)
			b, err := ss.readBatch(ctx, id, last, want)
			if err != nil {
				if ctx.Err() == nil {
					ss.cancel()
				}
				return
			}
			got := len(b.items)
			sent, err := ss.deliverBatch(b, req, id, sub.pushed)
			if err != nil {
				ss.cancel()
				return
			}
			if got > 0 {
				last = sent
			}
			more = got == want
		}
		if more {
			continue
		}
		if err := ss.flush(); err != nil {
			ss.cancel()
			return
		}
		var recheck <-chan time.Time
		if room == 0 { // full: look again later for acks elsewhere
			wait := pruneEvery
			if soon {
				wait = time.Until(pruned.Add(time.Second))
			}
			if prune == nil {
				prune = time.NewTimer(wait)
			} else {
				prune.Reset(wait)
			}
			recheck = prune.C
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-notify:
			if !ok {
				return
			}
		case <-sub.kick:
		case <-recheck:
		}
	}
}

// pruneSent drops from sub's full window the envelopes the store no
// longer holds, acked on another session (in any order) or expired, and
// reports whether it could ask the store (its index only: Holds).
func (ss *session) pruneSent(ctx context.Context, id [32]byte, sub *subscription) bool {
	refs := sub.refs()
	held, err := ss.srv.cfg.Store.Holds(ctx, id, refs)
	if err != nil {
		return false // the push's own read reports a failing store
	}
	var gone []store.Ref
	for i, r := range refs {
		if !held[i] {
			gone = append(gone, r)
		}
	}
	sub.gone(gone)
	return true
}
