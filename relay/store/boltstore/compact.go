package boltstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"

	"github.com/postern/postern/relay/store"
)

// Compaction (see the package comment). The oldest segment is compacted
// once at most half of it is live, or once the log holds more dead bytes
// than live ones (and at least a segment's worth): the records the index
// still points at are copied, through the committer, to the end of the
// log, and once those copies are durable the segment is deleted or kept
// as the spare (discard). Only the
// oldest segment is ever compacted, so a tombstone (ack, delete, sweep,
// done, expire) never outlives a segment it applies to, and is never
// copied.
//
// A record the index no longer points at is dead for good: a record is
// only ever made live at the end of the log, never at an old place. The
// one exception is a failed write, whose restore replays the log and so
// undoes the acks that were held and not yet written. So compaction skips
// the records it finds dead as it reads (it copies and hands the
// committer only those that look live, which the committer checks again),
// and a segment the index holds nothing of is dropped without being read;
// if a restore happened since compaction began, the drop is refused
// (errRestored) and a later commit starts compaction again. (dropSegments checks too: it keeps a segment
// that still holds a live record.)

// carryChunk bounds the record bytes one compaction op copies, so that
// puts queued behind it wait for a few megabytes at most. Tests lower it.
var carryChunk = 4 << 20

// Steps of compaction and segment creation after which a crash leaves a
// different directory (see crashPoint).
const (
	stepSegmentTemp    = "segment temp file written"
	stepSegmentRenamed = "segment renamed"
	stepCarried        = "chunk of live records carried and durable"
	stepRemoved        = "compacted segment removed or made the spare"
	stepSpareSynced    = "spare's own rename synced"
	stepSpareHeader    = "new segment's header written over the spare"
	stepSpareRenamed   = "spare renamed to the new segment"
	stepRemovalSynced  = "removal synced"
)

// crashPoint, if a test sets it before Open, is called after each step
// above; the test copies the store directory there, which is what a
// kill -9 at that point leaves.
var crashPoint func(step string)

// compactScanned, if a test sets it, is called once compaction has read
// the segment, before it copies what it found live.
var compactScanned func()

func atStep(step string) {
	if crashPoint != nil {
		crashPoint(step)
	}
}

// maybeCompact starts compacting if it is due and no compaction is
// running. The committer calls it after each batch.
func (s *Store) maybeCompact() {
	if s.compacting.Load() || s.closed.Load() {
		return
	}
	num, path, ok := s.due()
	if !ok {
		return
	}
	s.compacting.Store(true)
	s.bg.Go(func() {
		defer s.compacting.Store(false)
		for ok && !s.closed.Load() {
			if err := s.compact(num, path); err != nil {
				return // a later commit starts it again
			}
			s.mu.RLock()
			num, path, ok = s.due()
			s.mu.RUnlock()
		}
	})
}

// due returns the oldest segment if compacting it is due. The caller is
// the committer or holds s.mu.
func (s *Store) due() (uint64, string, bool) {
	ix := s.ix
	if len(ix.order) < 2 {
		return 0, "", false
	}
	var live, dead int64
	for _, num := range ix.order[:len(ix.order)-1] {
		seg := ix.segs[num]
		live += seg.live
		dead += seg.size - segHeader - seg.live
	}
	old := ix.segs[ix.order[0]]
	if old.num == s.stuck || (2*old.live > old.size && (dead <= live || dead < segmentBytes)) {
		return 0, "", false
	}
	return old.num, old.path, true
}

// carried is a record of the segment being compacted that may be live.
type carried struct {
	r   record
	at  loc
	raw []byte
}

// compact copies the live records of segment num (at path) to the end of
// the log and deletes it. It stops when the store closes, a write fails or
// a restore happened meanwhile (errRestored); a later commit starts it
// again.
func (s *Store) compact(num uint64, path string) error {
	// A removal by the last compaction whose directory sync failed must
	// be durable before this younger segment's tombstones can go.
	if err := syncDir(s.dir); err != nil {
		return err
	}
	gen := s.restores.Load() // before any record is judged dead
	if !s.holdsNothing(num) {
		if err := s.carryLive(num, path); err != nil {
			return err
		}
	}
	return s.dropCompacted(num, gen)
}

// holdsNothing reports whether the index points at nothing in segment num,
// which can then be dropped without being read.
func (s *Store) holdsNothing(num uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	seg := s.ix.segs[num]
	return seg != nil && seg.live == 0
}

// carryLive copies the records of segment num (at path) that the index
// still points at to the end of the log, a chunk at a time through the
// committer, which checks each again.
func (s *Store) carryLive(num uint64, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	s.compactScans.Add(1)
	var chunk []carried
	size := 0
	flush := func() error {
		c := chunk
		chunk, size = nil, 0
		err := s.do(context.Background(), func(w *writer) error {
			for i := range c {
				w.carry(c[i])
			}
			return nil
		})
		if err == nil {
			atStep(stepCarried)
		}
		return err
	}
	// The segment is read one batch at a time; a carried record keeps a copy
	// of its bytes (at most carryChunk of them wait for a flush), and none of
	// the slices into the frame buffer.
	var buf []byte
	_, _, _, err = scanSegment(f, fi.Size(), false, s.keys, &buf, func(r record, off int64, raw []byte) error {
		switch r.typ {
		case recMailbox, recBox, recDelete, recEnvelope, recRetired, recOutbox, recForward:
			at := loc{num, off}
			s.mu.RLock()
			live := s.ix.points(r, at)
			s.mu.RUnlock()
			if !live {
				return nil // dead for good, unless a restore comes (see the top)
			}
			r.owner, r.sendCap, r.sealed, r.seqs = nil, nil, nil, nil
			chunk = append(chunk, carried{r, at, slices.Clone(raw)})
			size += r.size
			s.compactCarried.Add(1)
		}
		if size >= carryChunk {
			return flush()
		}
		return nil
	})
	if compactScanned != nil {
		compactScanned()
	}
	if err != nil {
		return err
	}
	return flush()
}

// dropCompacted drops segment num, whose live records are copied and
// durable, unless the index was restored since gen (errRestored).
func (s *Store) dropCompacted(num, gen uint64) error {
	err := s.do(context.Background(), func(w *writer) error {
		if s.restores.Load() != gen {
			return errRestored
		}
		w.drops = append(w.drops, num)
		return nil
	})
	if err == nil && s.segmentExists(num) {
		err = errNoSegment
	}
	return err
}

func (s *Store) segmentExists(num uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ix.segs[num] != nil
}

// errRestored ends a compaction during which the index was rebuilt.
var errRestored = errors.New("store: index restored during compaction")

// points reports whether the index points at record r, read at at: that
// is, whether compaction must copy it. The caller holds s.mu or is the
// committer.
func (ix *index) points(r record, at loc) bool {
	switch r.typ {
	case recEnvelope:
		b := ix.boxes[r.key]
		return b != nil && hasEnvelope(b, r.seq, at)
	case recMailbox, recBox:
		b := ix.mailbox(r.key)
		return b != nil && b.at == at
	case recDelete, recRetired, recForward:
		rt, ok := ix.retired[r.key]
		return ok && rt.at == at
	case recOutbox:
		l := ix.out[r.key]
		i, found := slices.BinarySearchFunc(l, r.seq, byOutSeq)
		return found && l[i].at == at
	}
	return false
}

// carry copies record c to the batch if the index still points at it,
// and moves the index to the copy once the batch is durable.
func (w *writer) carry(c carried) {
	ix, key := w.ix, c.r.key
	if !ix.points(c.r, c.at) {
		return
	}
	at := w.at()
	switch c.r.typ {
	case recEnvelope:
		w.buf = append(w.buf, c.raw...)
		w.relocs = append(w.relocs, func() { relocateEnvelope(ix, key, c.r.seq, c.at, at) })
	case recMailbox, recBox:
		b := ix.mailbox(key)
		if b.keys != nil {
			w.buf = appendBox(w.buf, key, b.nextSeq, b.keys)
		} else {
			w.buf = appendMailbox(w.buf, key, b.owner, b.nextSeq, b.sendCap) // no id here to seal them
		}
		size := uint32(w.at().off - at.off)
		w.relocs = append(w.relocs, func() {
			if b := ix.mailbox(key); b != nil && b.at == c.at {
				ix.dead(b.at, b.size)
				b.at, b.size = at, size
				ix.live(at, size)
			}
		})
	case recDelete, recRetired, recForward:
		r := ix.retired[key]
		if f, ok := ix.forwards[key]; ok && f.until > store.Today(w.s.opts.Now()) {
			w.buf = appendForward(w.buf, key, r.day, f.until, f.sealed)
		} else {
			w.buf = appendRetired(w.buf, key, r.day) // a forward that ended stays behind
		}
		size := uint32(w.at().off - at.off)
		w.relocs = append(w.relocs, func() {
			if r, ok := ix.retired[key]; ok && r.at == c.at {
				ix.retire(key, retirement{r.day, at, size})
			}
		})
	case recOutbox:
		w.carryOut(c, at)
	}
}

func (w *writer) carryOut(c carried, at loc) {
	ix, dest := w.ix, c.r.key
	w.buf = append(w.buf, c.raw...)
	w.relocs = append(w.relocs, func() {
		l := ix.out[dest]
		if i, found := slices.BinarySearchFunc(l, c.r.seq, byOutSeq); found && l[i].at == c.at {
			ix.dead(l[i].at, l[i].size)
			l[i].at = at
			ix.live(at, l[i].size)
		}
	})
}

func hasEnvelope(b *mailbox, seq uint64, at loc) bool {
	i, found := slices.BinarySearchFunc(b.envs, seq, bySeq)
	return found && b.envs[i].at == at
}

func relocateEnvelope(ix *index, hid [32]byte, seq uint64, from, to loc) {
	b := ix.boxes[hid]
	if b == nil {
		return
	}
	if i, found := slices.BinarySearchFunc(b.envs, seq, bySeq); found && b.envs[i].at == from {
		ix.dead(from, b.envs[i].size)
		b.envs[i].at = to
		ix.live(to, b.envs[i].size)
	}
}

// discard takes segment seg out of the log: its file becomes the spare
// if there is none (a rename, which for the log is the same as removing
// it), else it is removed.
func (s *Store) discard(seg *segment) error {
	if recycleSegments && !s.spare {
		if err := os.Rename(seg.path, filepath.Join(s.dir, spareName)); err != nil {
			return err
		}
		s.spare, s.spareFrom = true, seg.num
		return nil
	}
	return os.Remove(seg.path)
}

// dropSegments deletes the segments nums, whose live records have all
// been copied by durable batches; the caller holds s.mu. A segment the
// index still points into is kept.
func (s *Store) dropSegments(nums []uint64) {
	for _, num := range nums {
		seg := s.ix.segs[num]
		if seg == nil || num == s.ix.active().num {
			continue
		}
		if seg.live != 0 {
			s.stuck = num // never try this segment again in this process
			continue
		}
		if err := s.discard(seg); err != nil {
			s.stuck = num
			continue
		}
		atStep(stepRemoved)
		s.closeSegment(num, seg.f)
		delete(s.ix.segs, num)
		s.ix.order = slices.DeleteFunc(s.ix.order, func(n uint64) bool { return n == num })
		// The removal must be durable before a younger segment's
		// tombstones can be compacted away.
		syncDir(s.dir)
		atStep(stepRemovalSynced)
	}
}
