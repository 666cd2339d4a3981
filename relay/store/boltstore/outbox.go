package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"slices"
	"time"

	"github.com/postern/postern/relay/store"
)

// The forward outbox (store.Outbox), in the same log: outbox, done and
// expire records (see the package comment). Sequence numbers are global
// and never reused: each segment's header carries the next one as it was
// when the segment began, so numbers stay above every item ever stored
// even once compaction has deleted their records. Writes go through the
// committer like every other write.

func (s *Store) Enqueue(ctx context.Context, dest [32]byte, item []byte) (store.OutboxItem, error) {
	if err := store.ValidateForward(item); err != nil {
		return store.OutboxItem{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.OutboxItem{}, err
	}
	n := len(item)
	// Encrypt here, in the caller's goroutine, not in the committer.
	day := store.ExpiryDay(s.opts.Now(), s.opts.TTL)
	rec := appendOutbox(nil, dest, 0, day, s.keys.SealOutbox(dest, item))
	var seq uint64
	err := s.do(ctx, func(w *writer) error {
		if err := s.opts.OutboxQuota(s.outBytes.Load()+w.dOutBytes, n); err != nil {
			return err
		}
		seq = w.ix.outNext
		at := w.at()
		i := len(w.buf)
		w.buf = append(w.buf, rec...)
		binary.BigEndian.PutUint64(w.buf[i+recHeader+32:], seq)
		w.ix.addOut(dest, outItem{seq: seq, day: day, size: uint32(len(rec)), at: at, batch: w.batch})
		w.dOutItems++
		w.dOutBytes += int64(n)
		return nil
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
	var where []loc
	err := s.read(ctx, func(ix *index) error {
		l := ix.out[dest]
		durable := s.durable.Load()
		i, _ := slices.BinarySearchFunc(l, after+1, byOutSeq)
		for ; i < len(l) && len(items) < max && after != ^uint64(0); i++ {
			if l[i].batch > durable {
				continue
			}
			at, n := l[i].sealed()
			sealed, err := s.readAt(at, n)
			if err != nil {
				return err
			}
			items = append(items, store.OutboxItem{Seq: l[i].seq, Item: sealed})
			where = append(where, l[i].at)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range items {
		item, err := s.keys.OpenOutbox(dest, items[i].Item)
		if err != nil {
			return nil, s.damaged(where[i], err)
		}
		items[i].Item = item
	}
	return items, nil
}

func (s *Store) Done(ctx context.Context, dest [32]byte, seqs ...uint64) error {
	seqs = slices.Clone(seqs)
	return s.do(ctx, func(w *writer) error {
		var done []uint64
		for _, seq := range seqs {
			if it, ok := w.ix.removeOut(dest, seq); ok {
				done = append(done, seq)
				w.dOutItems--
				w.dOutBytes -= it.plainLen()
			}
		}
		if len(done) > 0 {
			w.buf = appendSeqs(w.buf, recDone, dest, done)
		}
		return nil
	})
}

func (s *Store) Dests(ctx context.Context) ([][32]byte, error) {
	var dests [][32]byte
	err := s.read(ctx, func(ix *index) error {
		dests = slices.SortedFunc(maps.Keys(ix.out), func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		return nil
	})
	return dests, err
}

// Expire deletes the outbox items whose expiry day has begun: one small
// record in the log, which replaying repeats.
func (s *Store) Expire(ctx context.Context, now time.Time) (int, error) {
	last := store.Today(now)
	expired := 0
	err := s.do(ctx, func(w *writer) error {
		n, bytes := w.ix.expireOut(last)
		expired = n
		w.dOutItems -= int64(n)
		w.dOutBytes -= bytes
		if n > 0 {
			w.buf = appendDay(w.buf, recExpire, last)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}

func (s *Store) OutboxStats() store.OutboxStats {
	return store.OutboxStats{Items: int(s.outItems.Load()), Bytes: s.outBytes.Load()}
}
