package boltstore

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"slices"
	"time"

	"github.com/postern/postern/relay/bufpool"
	"github.com/postern/postern/relay/store"
)

// Write operations. Each runs in the committer (see commit.go), checks
// everything that can fail before it changes anything, then appends its
// records to the batch and applies them to the index.

func (s *Store) CreateMailbox(ctx context.Context, id [store.IDSize]byte, owner ed25519.PublicKey, sendCap []byte) error {
	if err := store.ValidateMailbox(owner, sendCap); err != nil {
		return err
	}
	hid := s.keys.MailboxHash(id)
	keys := s.keys.SealMailbox(id, store.MailboxKeys{Owner: owner, SendCap: sendCap})
	return s.do(ctx, func(w *writer) error {
		if w.taken(hid) {
			return store.ErrMailboxExists
		}
		if err := s.opts.MailboxQuota(w.held()); err != nil {
			return err
		}
		w.createMailbox(hid, keys)
		return nil
	})
}

// createMailbox creates mailbox hid with its owner key and send capability
// verifier sealed (store.Keys.SealMailbox).
func (w *writer) createMailbox(hid [32]byte, keys []byte) {
	at := w.at()
	first := store.FirstSeq()
	w.buf = appendBox(w.buf, hid, first, keys)
	w.ix.setMailbox(hid, keys, nil, nil, first, at, uint32(w.at().off-at.off))
	w.dMailboxes++
}

// sealKeys writes mailbox b (hash hid, id id), whose record has its owner
// key and send capability verifier in the clear, anew with them sealed.
func (w *writer) sealKeys(id [store.IDSize]byte, hid [32]byte, b *mailbox) {
	keys := w.s.keys.SealMailbox(id, store.MailboxKeys{Owner: b.owner, SendCap: b.sendCap})
	at := w.at()
	w.buf = appendBox(w.buf, hid, b.nextSeq, keys)
	w.ix.setMailbox(hid, keys, nil, nil, b.nextSeq, at, uint32(w.at().off-at.off))
}

// ownerKeys returns the owner key, send capability verifier and forward
// chain of mailbox b, whose id is id.
func (b *mailbox) ownerKeys(k *store.Keys, id [store.IDSize]byte) (store.MailboxKeys, error) {
	if b.keys == nil {
		return store.MailboxKeys{Owner: slices.Clone(b.owner), SendCap: slices.Clone(b.sendCap)}, nil
	}
	return k.OpenMailbox(id, b.keys)
}

// held is how many mailbox ids the store holds: its mailboxes and the
// ids retired, which MaxMailboxes bounds together (store.Options).
func (w *writer) held() int {
	return int(w.s.mailboxes.Load()+w.dMailboxes) + len(w.ix.retired)
}

// taken reports whether mailbox hid exists or is retired.
func (w *writer) taken(hid [32]byte) bool {
	_, retired := w.ix.retired[hid]
	return w.ix.mailbox(hid) != nil || retired
}

func (s *Store) DeleteMailbox(ctx context.Context, id [store.IDSize]byte) error {
	hid := s.keys.MailboxHash(id)
	return s.do(ctx, func(w *writer) error {
		if w.ix.mailbox(hid) == nil {
			return store.ErrNoMailbox
		}
		w.deleteMailbox(hid)
		return nil
	})
}

// deleteMailbox deletes mailbox hid and its envelopes and retires its id.
func (w *writer) deleteMailbox(hid [32]byte) {
	day, retire := w.s.opts.RetiredUntil(w.s.opts.Now())
	at := w.at()
	w.buf = appendDelete(w.buf, hid, retire, day)
	n, bytes := w.ix.dropMailbox(hid)
	if retire {
		w.ix.retire(hid, retirement{day, at, uint32(w.at().off - at.off)})
	}
	w.dMailboxes--
	w.dEnvelopes -= int64(n)
	w.dBytes -= bytes
}

// forward retires hid, a mailbox id just deleted by a rotation, anew
// with where it went (sealed), so that Forwarded finds it until the
// forward's day (store.Options.ForwardUntil).
func (w *writer) forward(hid [32]byte, sealed []byte) {
	now := w.s.opts.Now()
	day, _ := w.s.opts.RetiredUntil(now)
	until, ok := w.s.opts.ForwardUntil(now)
	if !ok {
		return
	}
	f := forward{until, sealed}
	at := w.at()
	w.buf = appendForward(w.buf, hid, day, until, f.sealed)
	w.ix.retire(hid, retirement{day, at, uint32(w.at().off - at.off)})
	w.ix.forwards[hid] = f
}

// RotateMailbox moves mailbox oldID's envelopes to newID in one batch:
// each is decrypted and sealed anew under the new id, so until the batch
// is durable it takes about 2.7 times the mailbox's bytes of memory.
// One rotation at a time is in the committer's hands (s.rotating): until
// 2026-12-07 rotations that shared a batch added up (an audit: four
// 16 MiB mailboxes rotated at once took the heap from 4 to 170-176 MiB;
// a full default store, rotated at once, about 2.7 GiB). A rotation
// whose caller gave up holds its turn until the committer is done with it.
func (s *Store) RotateMailbox(ctx context.Context, oldID, newID [store.IDSize]byte, owner ed25519.PublicKey, sendCap []byte) (int, error) {
	if err := store.ValidateMailbox(owner, sendCap); err != nil {
		return 0, err
	}
	oldH, newH := s.keys.MailboxHash(oldID), s.keys.MailboxHash(newID)
	owner, sendCap = slices.Clone(owner), slices.Clone(sendCap)
	moved := 0
	select {
	case s.rotating <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	o := &op{apply: func(w *writer) error {
		old := w.ix.mailbox(oldH)
		if old == nil {
			return store.ErrNoMailbox
		}
		if w.taken(newH) {
			return store.ErrMailboxExists
		}
		if _, retire := s.opts.RetiredUntil(s.opts.Now()); retire {
			// The old id stays retired beside the new mailbox.
			if err := s.opts.MailboxQuota(w.held()); err != nil {
				return err
			}
		}
		oldKeys, err := old.ownerKeys(s.keys, oldID)
		if err != nil {
			return err
		}
		chain, err := s.opts.NextChain(oldKeys.Chain, s.opts.Now())
		if err != nil {
			return err
		}
		envs, err := w.openAll(oldID, old)
		if err != nil {
			return err
		}
		keys := s.keys.SealMailbox(newID, store.MailboxKeys{Owner: owner, SendCap: sendCap, Chain: chain})
		w.deleteMailbox(oldH)
		w.forward(oldH, s.keys.SealForward(oldID, newID, oldKeys.SendCap))
		w.createMailbox(newH, keys)
		c := s.keys.Envelopes(newID)
		for i, e := range old.envs {
			sealed := c.Seal(e.ref, envs[i])
			w.addEnvelope(newH, w.ix.boxes[newH], uint64(i+1), appendRecord(nil, recEnvelope, envelopeHead(newH, 0, e.day, e.ref), sealed))
		}
		moved = len(envs)
		if moved > 0 {
			w.wake = append(w.wake, newH)
		}
		return nil
	}}
	if err := s.submitThen(ctx, o, func() { <-s.rotating }); err != nil {
		return 0, err
	}
	return moved, nil
}

// openAll reads and decrypts every envelope of mailbox b, whose id is id.
func (w *writer) openAll(id [store.IDSize]byte, b *mailbox) ([][]byte, error) {
	envs := make([][]byte, len(b.envs))
	c := w.s.keys.Envelopes(id)
	for i := range b.envs {
		e := &b.envs[i]
		l, n := e.sealed()
		sealed, err := w.readSealed(l, n)
		if err != nil {
			return nil, err
		}
		// Not in place: sealed may lie in the batch being built.
		if envs[i], err = c.Open(e.ref, sealed); err != nil {
			return nil, w.s.damaged(e.at, err)
		}
	}
	return envs, nil
}

// readSealed reads n bytes at l, from the batch being built if they are
// in it.
func (w *writer) readSealed(l loc, n int) ([]byte, error) {
	if l.seg == w.seg.num && l.off >= w.seg.size {
		i := int(l.off - w.seg.size)
		return slices.Clone(w.buf[i : i+n]), nil
	}
	return w.s.readAt(l, n)
}

func (s *Store) Put(ctx context.Context, id [store.IDSize]byte, env []byte) (store.Ref, error) {
	if err := store.ValidateEnvelope(env); err != nil {
		return store.Ref{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.Ref{}, err
	}
	hid := s.keys.MailboxHash(id)
	ref := s.keys.Ref(env)
	n := len(env)
	// Encrypt and encode here, in the caller's goroutine, not in the
	// committer; the committer fills in the seq.
	// The record is built in a pooled buffer, which the committer gives
	// back once it has copied the record into its batch.
	day := store.ExpiryDay(s.opts.Now(), s.opts.TTL)
	rec := appendEnvelopeRecordHead(bufpool.Get(recHeader + envelopeBody + n + store.SealOverhead)[:0], hid, day, ref, n+store.SealOverhead)
	rec = s.keys.Envelopes(id).AppendSeal(rec, ref, env)
	err := s.do(ctx, func(w *writer) error {
		defer bufpool.Put(rec)
		b := w.ix.mailbox(hid)
		if b == nil {
			return store.ErrNoMailbox
		}
		if _, dup := b.refs.seq(b, ref); dup {
			return nil // duplicate: stored once
		}
		if err := s.opts.EnvelopeQuota(len(b.envs), b.bytes, s.bytes.Load()+w.dBytes, n); err != nil {
			return err
		}
		if b.keys == nil {
			w.sealKeys(id, hid, b)
		}
		w.addEnvelope(hid, b, b.nextSeq, rec)
		return nil
	})
	if err != nil {
		return store.Ref{}, err
	}
	return ref, nil
}

// addEnvelope appends the envelope record made of parts to the batch
// with seq filled in and adds it to mailbox b (hash hid).
func (w *writer) addEnvelope(hid [32]byte, b *mailbox, seq uint64, parts ...[]byte) {
	at := w.at()
	i := len(w.buf)
	for _, p := range parts {
		w.buf = append(w.buf, p...)
	}
	binary.BigEndian.PutUint64(w.buf[i+recHeader+32:], seq)
	r := w.buf[i+recHeader:]
	e := entry{seq: seq, day: binary.BigEndian.Uint32(r[40:]), size: uint32(len(w.buf) - i), at: at}
	copy(e.ref[:], r[44:])
	w.ix.addEnvelope(hid, e)
	if b = w.ix.boxes[hid]; b.newBatch != w.batch {
		b.newBatch, b.newFrom = w.batch, seq
	}
	w.dEnvelopes++
	w.dBytes += e.plainLen()
	w.wake = append(w.wake, hid)
}

func (s *Store) Ack(ctx context.Context, id [store.IDSize]byte, refs ...store.Ref) (int, error) {
	hid := s.keys.MailboxHash(id)
	refs = slices.Clone(refs)
	acked := 0
	err := s.doLazy(ctx, func(w *writer) error {
		b := w.ix.mailbox(hid)
		if b == nil {
			return store.ErrNoMailbox
		}
		var seqs []uint64
		for _, ref := range refs {
			seq, ok := b.refs.seq(b, ref)
			if !ok {
				continue
			}
			e, _ := w.ix.removeEnvelope(b, seq)
			w.dEnvelopes--
			w.dBytes -= e.plainLen()
			seqs = append(seqs, seq)
		}
		acked = len(seqs)
		if acked > 0 {
			w.buf = appendSeqs(w.buf, recAck, hid, seqs)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return acked, nil
}

// Sweep deletes the envelopes whose expiry day has begun and frees the
// retired ids whose day has begun: one small record in the log, which
// replaying repeats.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	last := store.Today(now)
	expired := 0
	err := s.do(ctx, func(w *writer) error {
		n, bytes := w.ix.sweep(last)
		freed := w.ix.freeRetired(last) + w.ix.endForwards(last)
		expired = n
		w.dEnvelopes -= int64(n)
		w.dBytes -= bytes
		if n > 0 || freed > 0 {
			w.buf = appendDay(w.buf, recSweep, last)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}
