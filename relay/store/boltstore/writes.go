package boltstore

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// Write operations. Each runs in the committer (see commit.go) and checks
// everything that can fail logically before writing.

func (s *Store) CreateMailbox(ctx context.Context, id [store.IDSize]byte, owner ed25519.PublicKey, sendCap []byte) error {
	if err := store.ValidateMailbox(owner, sendCap); err != nil {
		return err
	}
	hid := s.keys.MailboxHash(id)
	rec := mailboxRecord{owner: slices.Clone(owner), nextSeq: 1, sendCap: slices.Clone(sendCap)}
	return s.do(ctx, func(w *writer) error {
		if w.taken(hid) {
			return store.ErrMailboxExists
		}
		if err := s.opts.MailboxQuota(int(s.mailboxes.Load() + w.dMailboxes)); err != nil {
			return err
		}
		if err := w.tx.Bucket(bucketMailboxes).Put(hid[:], rec.encode()); err != nil {
			return err
		}
		w.dMailboxes++
		return nil
	})
}

// taken reports whether mailbox hid exists or is retired.
func (w *writer) taken(hid [32]byte) bool {
	return w.tx.Bucket(bucketMailboxes).Get(hid[:]) != nil || w.tx.Bucket(bucketRetired).Get(hid[:]) != nil
}

func (s *Store) DeleteMailbox(ctx context.Context, id [store.IDSize]byte) error {
	hid := s.keys.MailboxHash(id)
	return s.do(ctx, func(w *writer) error {
		rec, err := getMailbox(w.tx, hid)
		if err != nil {
			return err
		}
		if err := w.dropEnvelopes(hid); err != nil {
			return err
		}
		if err := w.tx.Bucket(bucketMailboxes).Delete(hid[:]); err != nil {
			return err
		}
		if err := w.retire(s.opts, hid); err != nil {
			return err
		}
		w.dMailboxes--
		w.dEnvelopes -= int64(rec.count)
		w.dBytes -= int64(rec.bytes)
		return nil
	})
}

// retire records that hid may not be created again before its
// retirement day.
func (w *writer) retire(o store.Options, hid [32]byte) error {
	day, ok := o.RetiredUntil(o.Now())
	if !ok {
		return nil
	}
	return w.tx.Bucket(bucketRetired).Put(hid[:], binary.BigEndian.AppendUint32(nil, day))
}

// dropEnvelopes deletes every envelope of mailbox hid with its ref and
// expiry index entries. It does not touch counters.
func (w *writer) dropEnvelopes(hid [32]byte) error {
	eb := w.tx.Bucket(bucketEnvelopes).Bucket(hid[:])
	if eb == nil {
		return nil
	}
	err := eb.ForEach(func(k, v []byte) error {
		r, err := decodeEnvelope(v)
		if err != nil {
			return err
		}
		return w.unindexExpiry(r.day, hid, binary.BigEndian.Uint64(k))
	})
	if err != nil {
		return err
	}
	return w.deleteBuckets(hid)
}

// deleteBuckets deletes the envelope bucket of mailbox hid, which must
// exist, and its ref bucket if there is one.
func (w *writer) deleteBuckets(hid [32]byte) error {
	if err := w.tx.Bucket(bucketEnvelopes).DeleteBucket(hid[:]); err != nil {
		return err
	}
	if w.tx.Bucket(bucketRefs).Bucket(hid[:]) != nil {
		return w.tx.Bucket(bucketRefs).DeleteBucket(hid[:])
	}
	return nil
}

func (w *writer) indexExpiry(day uint32, hid [32]byte, seq uint64) error {
	db, err := w.tx.Bucket(bucketExpiry).CreateBucketIfNotExists(dayKey(day))
	if err != nil {
		return err
	}
	return db.Put(expiryKey(hid, seq), nil)
}

// unindexExpiry removes an expiry entry, and its day bucket once empty.
func (w *writer) unindexExpiry(day uint32, hid [32]byte, seq uint64) error {
	exp := w.tx.Bucket(bucketExpiry)
	db := exp.Bucket(dayKey(day))
	if db == nil {
		return nil
	}
	if err := db.Delete(expiryKey(hid, seq)); err != nil {
		return err
	}
	if k, _ := db.Cursor().First(); k == nil {
		return exp.DeleteBucket(dayKey(day))
	}
	return nil
}

// rotation is one RotateMailbox: the mailbox oldID becomes newID.
type rotation struct {
	oldID, newID [store.IDSize]byte
	oldH, newH   [32]byte
}

func (s *Store) RotateMailbox(ctx context.Context, oldID, newID [store.IDSize]byte, owner ed25519.PublicKey, sendCap []byte) (int, error) {
	if err := store.ValidateMailbox(owner, sendCap); err != nil {
		return 0, err
	}
	rot := rotation{oldID: oldID, newID: newID, oldH: s.keys.MailboxHash(oldID), newH: s.keys.MailboxHash(newID)}
	moved := 0
	err := s.do(ctx, func(w *writer) error {
		moved = 0
		old, err := getMailbox(w.tx, rot.oldH)
		if err != nil {
			return err
		}
		if w.taken(rot.newH) {
			return store.ErrMailboxExists
		}
		if err := w.retire(s.opts, rot.oldH); err != nil {
			return err
		}
		rec := mailboxRecord{owner: slices.Clone(owner), nextSeq: 1, sendCap: slices.Clone(sendCap),
			count: old.count, bytes: old.bytes}
		if moved, err = w.moveEnvelopes(rot, &rec); err != nil {
			return err
		}
		mb := w.tx.Bucket(bucketMailboxes)
		if err := mb.Delete(rot.oldH[:]); err != nil {
			return err
		}
		if err := mb.Put(rot.newH[:], rec.encode()); err != nil {
			return err
		}
		if moved > 0 {
			w.wake = append(w.wake, rot.newH)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return moved, nil
}

// moveEnvelopes moves every envelope of the old mailbox to the new one, in
// order, re-encrypting it for the new id and numbering it from rec.nextSeq
// on, and deletes the old mailbox's buckets. It returns how many it moved.
func (w *writer) moveEnvelopes(rot rotation, rec *mailboxRecord) (int, error) {
	eb := w.tx.Bucket(bucketEnvelopes).Bucket(rot.oldH[:])
	if eb == nil {
		return 0, nil
	}
	nb, err := w.tx.Bucket(bucketEnvelopes).CreateBucket(rot.newH[:])
	if err != nil {
		return 0, err
	}
	nr, err := w.tx.Bucket(bucketRefs).CreateBucket(rot.newH[:])
	if err != nil {
		return 0, err
	}
	moved := 0
	err = eb.ForEach(func(k, v []byte) error {
		seq := rec.nextSeq
		rec.nextSeq++
		if err := w.moveEnvelope(rot, nb, nr, binary.BigEndian.Uint64(k), v, seq); err != nil {
			return err
		}
		moved++
		return nil
	})
	if err != nil {
		return 0, err
	}
	return moved, w.deleteBuckets(rot.oldH)
}

// moveEnvelope stores the envelope record v, found at oldSeq in the old
// mailbox, at seq in the new mailbox's envelope and ref buckets nb and nr,
// and moves its expiry entry. The caller deletes the old buckets.
func (w *writer) moveEnvelope(rot rotation, nb, nr *bolt.Bucket, oldSeq uint64, v []byte, seq uint64) error {
	r, err := decodeEnvelope(v)
	if err != nil {
		return err
	}
	env, err := w.s.keys.Open(rot.oldID, r.ref, r.sealed)
	if err != nil {
		return err
	}
	nrec := envelopeRecord{day: r.day, ref: r.ref, sealed: w.s.keys.Seal(rot.newID, r.ref, env)}
	if err := nb.Put(seqKey(seq), nrec.encode()); err != nil {
		return err
	}
	if err := nr.Put(r.ref[:], seqKey(seq)); err != nil {
		return err
	}
	if err := w.unindexExpiry(r.day, rot.oldH, oldSeq); err != nil {
		return err
	}
	return w.indexExpiry(r.day, rot.newH, seq)
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
	// Encrypt here, in the caller's goroutine, not in the committer.
	rec := envelopeRecord{day: store.ExpiryDay(s.opts.Now(), s.opts.TTL), ref: ref, sealed: s.keys.Seal(id, ref, env)}
	val := rec.encode()
	err := s.do(ctx, func(w *writer) error {
		box, err := getMailbox(w.tx, hid)
		if err != nil {
			return err
		}
		if rb := w.tx.Bucket(bucketRefs).Bucket(hid[:]); rb != nil && rb.Get(ref[:]) != nil {
			return nil // duplicate: stored once
		}
		if err := w.s.opts.EnvelopeQuota(int(box.count), int64(box.bytes), w.s.bytes.Load()+w.dBytes, n); err != nil {
			return err
		}
		eb, err := w.tx.Bucket(bucketEnvelopes).CreateBucketIfNotExists(hid[:])
		if err != nil {
			return err
		}
		rb, err := w.tx.Bucket(bucketRefs).CreateBucketIfNotExists(hid[:])
		if err != nil {
			return err
		}
		seq := box.nextSeq
		box.nextSeq++
		box.count++
		box.bytes += uint64(n)
		if err := eb.Put(seqKey(seq), val); err != nil {
			return err
		}
		if err := rb.Put(ref[:], seqKey(seq)); err != nil {
			return err
		}
		if err := w.indexExpiry(rec.day, hid, seq); err != nil {
			return err
		}
		if err := w.tx.Bucket(bucketMailboxes).Put(hid[:], box.encode()); err != nil {
			return err
		}
		w.dEnvelopes++
		w.dBytes += int64(n)
		w.wake = append(w.wake, hid)
		return nil
	})
	if err != nil {
		return store.Ref{}, err
	}
	return ref, nil
}

func (s *Store) Ack(ctx context.Context, id [store.IDSize]byte, refs ...store.Ref) (int, error) {
	hid := s.keys.MailboxHash(id)
	refs = slices.Clone(refs)
	acked := 0
	err := s.do(ctx, func(w *writer) error {
		acked = 0
		box, err := getMailbox(w.tx, hid)
		if err != nil {
			return err
		}
		rb := w.tx.Bucket(bucketRefs).Bucket(hid[:])
		eb := w.tx.Bucket(bucketEnvelopes).Bucket(hid[:])
		if rb == nil || eb == nil {
			return nil
		}
		for _, ref := range refs {
			sk := rb.Get(ref[:])
			if sk == nil {
				continue
			}
			sk = slices.Clone(sk)
			n, err := w.deleteEnvelope(hid, eb, rb, sk)
			if err != nil {
				return err
			}
			box.count--
			box.bytes -= uint64(n)
			acked++
		}
		if acked == 0 {
			return nil
		}
		return w.tx.Bucket(bucketMailboxes).Put(hid[:], box.encode())
	})
	if err != nil {
		return 0, err
	}
	return acked, nil
}

// deleteEnvelope deletes the envelope at seq key sk of mailbox hid, its ref
// and its expiry entry, updates the batch totals and returns the envelope's
// size. The caller updates the mailbox record.
func (w *writer) deleteEnvelope(hid [32]byte, eb, rb *bolt.Bucket, sk []byte) (int, error) {
	v := eb.Get(sk)
	if v == nil {
		return 0, errRecord
	}
	r, err := decodeEnvelope(v)
	if err != nil {
		return 0, err
	}
	n := r.plainLen()
	if err := rb.Delete(r.ref[:]); err != nil {
		return 0, err
	}
	if err := eb.Delete(sk); err != nil {
		return 0, err
	}
	if err := w.unindexExpiry(r.day, hid, binary.BigEndian.Uint64(sk)); err != nil {
		return 0, err
	}
	w.dEnvelopes--
	w.dBytes -= int64(n)
	return n, nil
}

// Sweep deletes whole expiry-day buckets whose day has begun, with the
// envelopes they list, and frees retired ids whose day has begun.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	last := store.Today(now)
	expired := 0
	err := s.do(ctx, func(w *writer) error {
		var err error
		if expired, err = w.expire(last); err != nil {
			return err
		}
		return w.freeRetired(last)
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}

// expire deletes the expiry-day buckets of days up to last and the
// envelopes they list, updates the mailbox records once each, and returns
// how many envelopes it deleted.
func (w *writer) expire(last uint32) (int, error) {
	var days [][]byte
	c := w.tx.Bucket(bucketExpiry).Cursor()
	for k, _ := c.First(); k != nil && len(k) == 4 && binary.BigEndian.Uint32(k) <= last; k, _ = c.Next() {
		days = append(days, slices.Clone(k))
	}
	boxes := make(map[[32]byte]*mailboxRecord)
	expired := 0
	for _, dk := range days {
		n, err := w.expireDay(dk, boxes)
		if err != nil {
			return 0, err
		}
		expired += n
	}
	for hid, box := range boxes {
		if err := w.tx.Bucket(bucketMailboxes).Put(hid[:], box.encode()); err != nil {
			return 0, err
		}
	}
	return expired, nil
}

// expireDay deletes the envelopes listed in the expiry-day bucket dk and
// then the bucket. boxes holds the mailbox records changed so far, which
// the caller writes back.
func (w *writer) expireDay(dk []byte, boxes map[[32]byte]*mailboxRecord) (int, error) {
	exp := w.tx.Bucket(bucketExpiry)
	day := exp.Bucket(dk)
	if day == nil {
		return 0, nil // emptied, and so deleted, by an earlier day
	}
	var entries [][]byte
	err := day.ForEach(func(k, _ []byte) error {
		entries = append(entries, slices.Clone(k))
		return nil
	})
	if err != nil {
		return 0, err
	}
	expired := 0
	for _, e := range entries {
		gone, err := w.expireEntry(e, boxes)
		if err != nil {
			return 0, err
		}
		if gone {
			expired++
		}
	}
	// Deleting the last envelope of a day deletes its bucket.
	if exp.Bucket(dk) != nil {
		if err := exp.DeleteBucket(dk); err != nil {
			return 0, err
		}
	}
	return expired, nil
}

// expireEntry deletes the envelope that expiry entry e (mailbox hash ||
// seq) lists, if it is still there, and reports whether it was.
func (w *writer) expireEntry(e []byte, boxes map[[32]byte]*mailboxRecord) (bool, error) {
	if len(e) != 40 {
		return false, errRecord
	}
	hid := [32]byte(e[:32])
	eb := w.tx.Bucket(bucketEnvelopes).Bucket(hid[:])
	rb := w.tx.Bucket(bucketRefs).Bucket(hid[:])
	if eb == nil || rb == nil || eb.Get(e[32:]) == nil {
		return false, nil
	}
	box := boxes[hid]
	if box == nil {
		r, err := getMailbox(w.tx, hid)
		if err != nil {
			return false, errRecord
		}
		box = &r
		boxes[hid] = box
	}
	n, err := w.deleteEnvelope(hid, eb, rb, e[32:])
	if err != nil {
		return false, err
	}
	box.count--
	box.bytes -= uint64(n)
	return true, nil
}

// freeRetired frees the retired ids whose retirement ends by day last.
func (w *writer) freeRetired(last uint32) error {
	ret := w.tx.Bucket(bucketRetired)
	var free [][]byte
	err := ret.ForEach(func(k, v []byte) error {
		if len(v) != 4 {
			return errRecord
		}
		if binary.BigEndian.Uint32(v) <= last {
			free = append(free, slices.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range free {
		if err := ret.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
