package store

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Group commit.
//
// Every write (Put, Ack, mailbox changes, Sweep) is an op handed to one
// committer goroutine over an unbuffered channel. The committer takes the
// first op, then every op already waiting (up to Options.MaxBatch, waiting
// up to Options.CommitDelay for more), applies them in order inside one bbolt
// read-write transaction, commits (bbolt fsyncs on commit) and only then
// reports each op's result. An op that fails a check (ErrNoMailbox, a quota)
// fails alone; an op must make such checks before it writes anything. A
// storage error rolls the whole batch back and fails every op in it.

// op is one write waiting for the committer.
type op struct {
	apply func(w *writer) error
	done  chan error // buffered, 1
}

// writer is the state of the batch being built.
type writer struct {
	s  *Bolt
	tx *bolt.Tx

	// Changes to the store totals made by this batch, applied after commit.
	dMailboxes, dEnvelopes, dBytes int64
	wake                           [][32]byte
}

// do hands apply to the committer and waits for its durable result.
func (s *Bolt) do(ctx context.Context, apply func(w *writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	o := &op{apply: apply, done: make(chan error, 1)}
	select {
	case s.ops <- o:
	case <-s.quit:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-o.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Bolt) run() {
	defer close(s.stopped)
	batch := make([]*op, 0, s.opts.MaxBatch)
	for {
		batch = batch[:0]
		select {
		case o := <-s.ops:
			batch = append(batch, o)
		case <-s.quit:
			return
		}
		batch = s.collect(batch)
		s.commit(batch)
		clear(batch)
	}
}

// collect adds the ops already waiting and, with a CommitDelay, those that
// arrive within it.
func (s *Bolt) collect(batch []*op) []*op {
	for len(batch) < s.opts.MaxBatch {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
			continue
		default:
		}
		break
	}
	if s.opts.CommitDelay <= 0 || len(batch) >= s.opts.MaxBatch {
		return batch
	}
	t := time.NewTimer(s.opts.CommitDelay)
	defer t.Stop()
	for len(batch) < s.opts.MaxBatch {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
		case <-t.C:
			return batch
		case <-s.quit:
			return batch
		}
	}
	return batch
}

func (s *Bolt) commit(batch []*op) {
	start := time.Now()
	results := make([]error, len(batch))
	w := &writer{s: s}
	err := s.db.Update(func(tx *bolt.Tx) error {
		w.tx = tx
		for i, o := range batch {
			err := o.apply(w)
			if err != nil && !isLogical(err) {
				return err
			}
			results[i] = err
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("store: write %s: %w", s.path, err)
		for _, o := range batch {
			o.done <- err
		}
		return
	}
	s.commits.Add(1)
	s.mailboxes.Add(w.dMailboxes)
	s.envelopes.Add(w.dEnvelopes)
	s.bytes.Add(w.dBytes)
	if s.opts.OnCommit != nil {
		s.opts.OnCommit(len(batch), time.Since(start))
	}
	// Wake subscribers before reporting, so a Put that returned has already
	// signalled its mailbox.
	for _, h := range w.wake {
		s.notes.wake(h)
	}
	for i, o := range batch {
		o.done <- results[i]
	}
}

// Write operations. Each checks everything that can fail logically before
// writing.

func (s *Bolt) CreateMailbox(ctx context.Context, id [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) error {
	if err := checkMailboxArgs(owner, sendCap); err != nil {
		return err
	}
	hid := s.keys.hid(id)
	rec := mailboxRecord{owner: slices.Clone(owner), nextSeq: 1, sendCap: slices.Clone(sendCap)}
	return s.do(ctx, func(w *writer) error {
		mb := w.tx.Bucket(bucketMailboxes)
		if mb.Get(hid[:]) != nil || w.tx.Bucket(bucketRetired).Get(hid[:]) != nil {
			return ErrMailboxExists
		}
		if err := s.opts.mailboxQuota(int(s.mailboxes.Load() + w.dMailboxes)); err != nil {
			return err
		}
		if err := mb.Put(hid[:], rec.encode()); err != nil {
			return err
		}
		w.dMailboxes++
		return nil
	})
}

func (s *Bolt) DeleteMailbox(ctx context.Context, id [IDSize]byte) error {
	hid := s.keys.hid(id)
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
func (w *writer) retire(o Options, hid [32]byte) error {
	day, ok := o.retiredUntil(o.Now())
	if !ok {
		return nil
	}
	return w.tx.Bucket(bucketRetired).Put(hid[:], binary.BigEndian.AppendUint32(nil, day))
}

// dropEnvelopes deletes every envelope of mailbox hid with its ref and
// expiry index entries. It does not touch counters.
func (w *writer) dropEnvelopes(hid [32]byte) error {
	envs := w.tx.Bucket(bucketEnvelopes)
	eb := envs.Bucket(hid[:])
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
	if err := envs.DeleteBucket(hid[:]); err != nil {
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

func (s *Bolt) RotateMailbox(ctx context.Context, oldID, newID [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) (int, error) {
	if err := checkMailboxArgs(owner, sendCap); err != nil {
		return 0, err
	}
	oldH, newH := s.keys.hid(oldID), s.keys.hid(newID)
	moved := 0
	err := s.do(ctx, func(w *writer) error {
		moved = 0
		old, err := getMailbox(w.tx, oldH)
		if err != nil {
			return err
		}
		mb := w.tx.Bucket(bucketMailboxes)
		if mb.Get(newH[:]) != nil || w.tx.Bucket(bucketRetired).Get(newH[:]) != nil {
			return ErrMailboxExists
		}
		if err := w.retire(s.opts, oldH); err != nil {
			return err
		}
		rec := mailboxRecord{owner: slices.Clone(owner), nextSeq: 1, sendCap: slices.Clone(sendCap),
			count: old.count, bytes: old.bytes}
		if eb := w.tx.Bucket(bucketEnvelopes).Bucket(oldH[:]); eb != nil {
			nb, err := w.tx.Bucket(bucketEnvelopes).CreateBucket(newH[:])
			if err != nil {
				return err
			}
			nr, err := w.tx.Bucket(bucketRefs).CreateBucket(newH[:])
			if err != nil {
				return err
			}
			err = eb.ForEach(func(k, v []byte) error {
				r, err := decodeEnvelope(v)
				if err != nil {
					return err
				}
				env, err := s.keys.open(oldID, r.ref, r.sealed)
				if err != nil {
					return err
				}
				nrec := envelopeRecord{day: r.day, ref: r.ref, sealed: s.keys.seal(newID, r.ref, env)}
				seq := rec.nextSeq
				rec.nextSeq++
				if err := nb.Put(seqKey(seq), nrec.encode()); err != nil {
					return err
				}
				if err := nr.Put(r.ref[:], seqKey(seq)); err != nil {
					return err
				}
				if err := w.unindexExpiry(r.day, oldH, binary.BigEndian.Uint64(k)); err != nil {
					return err
				}
				moved++
				return w.indexExpiry(r.day, newH, seq)
			})
			if err != nil {
				return err
			}
			if err := w.tx.Bucket(bucketEnvelopes).DeleteBucket(oldH[:]); err != nil {
				return err
			}
			if w.tx.Bucket(bucketRefs).Bucket(oldH[:]) != nil {
				if err := w.tx.Bucket(bucketRefs).DeleteBucket(oldH[:]); err != nil {
					return err
				}
			}
		}
		if err := mb.Delete(oldH[:]); err != nil {
			return err
		}
		if err := mb.Put(newH[:], rec.encode()); err != nil {
			return err
		}
		if moved > 0 {
			w.wake = append(w.wake, newH)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return moved, nil
}

func (s *Bolt) Put(ctx context.Context, id [IDSize]byte, env []byte) (Ref, error) {
	if err := checkEnvelope(env); err != nil {
		return Ref{}, err
	}
	if err := ctx.Err(); err != nil {
		return Ref{}, err
	}
	hid := s.keys.hid(id)
	ref := s.keys.refOf(env)
	n := len(env)
	// Encrypt here, in the caller's goroutine, not in the committer.
	rec := envelopeRecord{day: expiryDay(s.opts.Now(), s.opts.TTL), ref: ref, sealed: s.keys.seal(id, ref, env)}
	val := rec.encode()
	err := s.do(ctx, func(w *writer) error {
		box, err := getMailbox(w.tx, hid)
		if err != nil {
			return err
		}
		if rb := w.tx.Bucket(bucketRefs).Bucket(hid[:]); rb != nil && rb.Get(ref[:]) != nil {
			return nil // duplicate: stored once
		}
		if err := w.s.opts.quota(int(box.count), int64(box.bytes), w.s.bytes.Load()+w.dBytes, n); err != nil {
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
		return Ref{}, err
	}
	return ref, nil
}

func (s *Bolt) Ack(ctx context.Context, id [IDSize]byte, refs ...Ref) (int, error) {
	hid := s.keys.hid(id)
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

// Sweep deletes whole expiry-day buckets whose day has begun, and the
// envelopes they list.
func (s *Bolt) Sweep(ctx context.Context, now time.Time) (int, error) {
	last := today(now)
	expired := 0
	err := s.do(ctx, func(w *writer) error {
		expired = 0
		exp := w.tx.Bucket(bucketExpiry)
		var days [][]byte
		c := exp.Cursor()
		for k, _ := c.First(); k != nil && len(k) == 4 && binary.BigEndian.Uint32(k) <= last; k, _ = c.Next() {
			days = append(days, slices.Clone(k))
		}
		boxes := make(map[[32]byte]*mailboxRecord)
		for _, dk := range days {
			var entries [][]byte
			err := exp.Bucket(dk).ForEach(func(k, _ []byte) error {
				entries = append(entries, slices.Clone(k))
				return nil
			})
			if err != nil {
				return err
			}
			for _, e := range entries {
				if len(e) != 40 {
					return errRecord
				}
				hid := [32]byte(e[:32])
				eb := w.tx.Bucket(bucketEnvelopes).Bucket(hid[:])
				rb := w.tx.Bucket(bucketRefs).Bucket(hid[:])
				if eb == nil || rb == nil || eb.Get(e[32:]) == nil {
					continue
				}
				box := boxes[hid]
				if box == nil {
					r, err := getMailbox(w.tx, hid)
					if err != nil {
						return errRecord
					}
					box = &r
					boxes[hid] = box
				}
				n, err := w.deleteEnvelope(hid, eb, rb, e[32:])
				if err != nil {
					return err
				}
				box.count--
				box.bytes -= uint64(n)
				expired++
			}
			if exp.Bucket(dk) != nil {
				if err := exp.DeleteBucket(dk); err != nil {
					return err
				}
			}
		}
		for hid, box := range boxes {
			if err := w.tx.Bucket(bucketMailboxes).Put(hid[:], box.encode()); err != nil {
				return err
			}
		}
		// Free retired ids whose retirement is over.
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
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}
