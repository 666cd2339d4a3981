package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// The forward outbox (store.Outbox), in the outbox bucket of the same data
// file: one sub-bucket per destination relay, items keyed by sequence
// number, which is the outbox bucket's own bbolt sequence (see the package
// comment). Writes go through the committer like every other write.

func (s *Store) Enqueue(ctx context.Context, dest [32]byte, item []byte) (store.OutboxItem, error) {
	if err := store.ValidateForward(item); err != nil {
		return store.OutboxItem{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.OutboxItem{}, err
	}
	n := len(item)
	// Encrypt here, in the caller's goroutine, not in the committer.
	rec := outboxRecord{day: store.ExpiryDay(s.opts.Now(), s.opts.TTL), sealed: s.keys.SealOutbox(dest, item)}
	val := rec.encode()
	var seq uint64
	err := s.do(ctx, func(w *writer) error {
		if err := s.opts.OutboxQuota(s.outBytes.Load()+w.dOutBytes, n); err != nil {
			return err
		}
		ob := w.tx.Bucket(bucketOutbox)
		var err error
		if seq, err = ob.NextSequence(); err != nil {
			return err
		}
		db, err := ob.CreateBucketIfNotExists(dest[:])
		if err != nil {
			return err
		}
		w.dOutItems++
		w.dOutBytes += int64(n)
		return db.Put(seqKey(seq), val)
	})
	if err != nil {
		return store.OutboxItem{}, err
	}
	return store.OutboxItem{Seq: seq, Item: slices.Clone(item)}, nil
}

func (s *Store) Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]store.OutboxItem, error) {
	if max <= 0 {
		max = store.DefaultFetchMax
	}
	var items []store.OutboxItem
	err := s.view(ctx, func(tx *bolt.Tx) error {
		db := tx.Bucket(bucketOutbox).Bucket(dest[:])
		if db == nil || after == ^uint64(0) {
			return nil
		}
		c := db.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(items) < max; k, v = c.Next() {
			r, err := decodeOutbox(v)
			if err != nil {
				return err
			}
			item, err := s.keys.OpenOutbox(dest, r.sealed)
			if err != nil {
				return err
			}
			items = append(items, store.OutboxItem{Seq: binary.BigEndian.Uint64(k), Item: item})
		}
		return nil
	})
	return items, err
}

func (s *Store) Done(ctx context.Context, dest [32]byte, seqs ...uint64) error {
	seqs = slices.Clone(seqs)
	return s.do(ctx, func(w *writer) error {
		ob := w.tx.Bucket(bucketOutbox)
		db := ob.Bucket(dest[:])
		if db == nil {
			return nil
		}
		for _, seq := range seqs {
			if err := w.deleteOut(db, seqKey(seq)); err != nil {
				return err
			}
		}
		return dropIfEmpty(ob, dest[:])
	})
}

// deleteOut deletes the outbox item at key sk of destination bucket db, if
// there is one, and updates the batch totals.
func (w *writer) deleteOut(db *bolt.Bucket, sk []byte) error {
	v := db.Get(sk)
	if v == nil {
		return nil
	}
	r, err := decodeOutbox(v)
	if err != nil {
		return err
	}
	w.dOutItems--
	w.dOutBytes -= int64(r.plainLen())
	return db.Delete(sk)
}

// dropIfEmpty deletes the destination bucket dest of the outbox bucket ob
// once it holds no items, so that Dests lists only destinations with
// pending items.
func dropIfEmpty(ob *bolt.Bucket, dest []byte) error {
	if k, _ := ob.Bucket(dest).Cursor().First(); k != nil {
		return nil
	}
	return ob.DeleteBucket(dest)
}

func (s *Store) Dests(ctx context.Context) ([][32]byte, error) {
	var dests [][32]byte
	err := s.view(ctx, func(tx *bolt.Tx) error {
		// walkOutbox checked at Open that every key is 32 bytes.
		return tx.Bucket(bucketOutbox).ForEach(func(k, _ []byte) error {
			dests = append(dests, [32]byte(k))
			return nil
		})
	})
	return dests, err
}

// Expire deletes the outbox items whose expiry day has begun. Unlike
// Sweep it has no per-day index: it reads the header of every item, which
// MaxOutboxBytes bounds, and never decrypts one.
func (s *Store) Expire(ctx context.Context, now time.Time) (int, error) {
	last := store.Today(now)
	expired := 0
	err := s.do(ctx, func(w *writer) error {
		expired = 0
		ob := w.tx.Bucket(bucketOutbox)
		var dests [][]byte
		c := ob.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			dests = append(dests, slices.Clone(k))
		}
		for _, d := range dests {
			n, err := w.expireOut(ob, d, last)
			if err != nil {
				return err
			}
			expired += n
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}

// expireOut deletes the items of destination bucket dest whose expiry day
// is at most last, and the bucket if that empties it.
func (w *writer) expireOut(ob *bolt.Bucket, dest []byte, last uint32) (int, error) {
	db := ob.Bucket(dest) // walkOutbox checked at Open that it is a bucket
	var old [][]byte
	err := db.ForEach(func(k, v []byte) error {
		r, err := decodeOutbox(v)
		if err == nil && r.day <= last {
			old = append(old, slices.Clone(k))
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	for _, k := range old {
		if err := w.deleteOut(db, k); err != nil {
			return 0, err
		}
	}
	return len(old), dropIfEmpty(ob, dest)
}

func (s *Store) OutboxStats() store.OutboxStats {
	return store.OutboxStats{Items: int(s.outItems.Load()), Bytes: s.outBytes.Load()}
}

// walkOutbox checks the outbox's layout, if the file has an outbox bucket
// (files made before it existed do not): only destination buckets with
// 32-byte names, holding 8-byte keys and records that parse. It calls fn
// with each record.
func walkOutbox(tx *bolt.Tx, fn func(outboxRecord)) error {
	ob := tx.Bucket(bucketOutbox)
	if ob == nil {
		return nil
	}
	return ob.ForEach(func(k, v []byte) error {
		if v != nil || len(k) != 32 {
			return errors.New("the outbox bucket holds an entry that is not a destination bucket")
		}
		return ob.Bucket(k).ForEach(func(k, v []byte) error {
			r, err := decodeOutbox(v)
			if err != nil || len(k) != 8 {
				return errors.New("an outbox record is damaged")
			}
			fn(r)
			return nil
		})
	})
}

// outboxTotals counts the outbox's items and their bytes.
func outboxTotals(tx *bolt.Tx) (items, bytes int64, err error) {
	err = walkOutbox(tx, func(r outboxRecord) {
		items++
		bytes += int64(r.plainLen())
	})
	return items, bytes, err
}
