package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/postern/postern/relay/store"
)

// Group commit (see the package comment).
//
// Every write is an op handed to the committer goroutine (run) over an
// unbuffered channel. The committer applies a batch of ops in order to the
// index, each appending its records to the batch, writes the batch as one
// frame at the end of the newest segment, fdatasyncs it, and only then
// reports each op's result and lets readers see what the batch added. An
// op checks everything that can fail before it changes anything, so an op
// that fails (store.ErrNoMailbox, a quota, a damaged envelope) fails
// alone. A failed write or sync fails every op of the batch: the segment
// is cut back to where the batch began and the index is replayed from the
// log.
//
// A batch of Acks alone (with Options.AckSync above 0) is applied to the
// index and reported, but its records are held in memory (s.held), not
// written: they lead the next batch's frame and share its fdatasync, or
// the committer writes and syncs them once the first of them has waited
// AckSync, or at Close. So the log still only ever has one frame not yet
// synced, at its end (the crash rules of segment.go hold), and at moderate
// rates, where every envelope is put and then acked, an envelope costs one
// fdatasync instead of two. A crash of the process or of the machine
// before then undoes those acks, and so does a failed write or sync of the
// batch they lead: the envelopes are delivered again (a live subscription
// pushes them once the client subscribes again), and the recipient drops
// what it has seen.

// op is one write waiting for the committer.
type op struct {
	apply func(w *writer) error
	done  chan error // buffered, 1
	lazy  bool       // an Ack: may be reported before it is in the log
}

// writer is the state of the batch being built. The committer holds s.mu
// while ops run.
type writer struct {
	s     *Store
	ix    *index
	seg   *segment
	buf   []byte // frame header (filled at flush) and records
	batch uint64

	// Applied once the batch is durable: moves of records that
	// compaction copied, and segments to delete.
	relocs []func()
	drops  []uint64
	fail   error // tests: fail the write with this error

	// Changes to the store totals made by this batch, applied after commit.
	dMailboxes, dEnvelopes, dBytes int64
	dOutItems, dOutBytes           int64
	wake                           [][32]byte
}

// at is where the next record appended to the batch will lie.
func (w *writer) at() loc { return loc{w.seg.num, w.seg.size + int64(len(w.buf))} }

// do hands apply to the committer and waits for its durable result.
func (s *Store) do(ctx context.Context, apply func(w *writer) error) error {
	return s.submit(ctx, &op{apply: apply})
}

// doLazy is do for a write that may be reported before it is in the log
// (an Ack; see the comment at the top).
func (s *Store) doLazy(ctx context.Context, apply func(w *writer) error) error {
	return s.submit(ctx, &op{apply: apply, lazy: true})
}

func (s *Store) submit(ctx context.Context, o *op) error {
	return s.submitThen(ctx, o, nil)
}

// submitThen is submit that calls release, if set, once the committer is
// done with o: before it returns, or, if ctx ends while the committer
// has o, when the committer reports it.
func (s *Store) submitThen(ctx context.Context, o *op, release func()) error {
	now := func(err error) error {
		if release != nil {
			release()
		}
		return err
	}
	if err := ctx.Err(); err != nil {
		return now(err)
	}
	if s.closed.Load() {
		return now(store.ErrClosed)
	}
	o.done = make(chan error, 1)
	select {
	case s.ops <- o:
	case <-s.quit:
		return now(store.ErrClosed)
	case <-ctx.Done():
		return now(ctx.Err())
	}
	select {
	case err := <-o.done:
		return now(err)
	case <-ctx.Done():
		if release != nil {
			go func() { <-o.done; release() }()
		}
		return ctx.Err()
	}
}

func (s *Store) run() {
	defer close(s.stopped)
	batch := make([]*op, 0, s.opts.MaxBatch)
	due := time.NewTimer(time.Hour)
	due.Stop()
	for {
		batch = batch[:0]
		var dueC <-chan time.Time
		if len(s.held) > 0 {
			due.Reset(time.Until(s.heldSince.Add(s.opts.AckSync)))
			dueC = due.C
		}
		select {
		case o := <-s.ops:
			batch = append(batch, o)
		case <-dueC:
			if s.commit(nil) != nil { // writes and syncs the held acks
				s.heldSince = time.Now() // kept if no batch began: try again later
			}
			continue
		case <-s.quit:
			if len(s.held) > 0 {
				s.closeErr = s.commit(nil)
			}
			return
		}
		due.Stop()
		batch = s.collect(batch)
		s.commit(batch)
		clear(batch)
		s.maybeCompact()
	}
}

// collect adds the ops already waiting and, with a CommitDelay, those that
// arrive within it; with none set, those that arrive while it lingers.
func (s *Store) collect(batch []*op) []*op {
	for len(batch) < s.opts.MaxBatch {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
			continue
		default:
		}
		break
	}
	if len(batch) >= s.opts.MaxBatch {
		return batch
	}
	if s.opts.CommitDelay == 0 {
		if gap, most := s.lingerTimes(batch, time.Now()); gap > 0 {
			return s.gather(batch, gap, most)
		}
		return batch
	}
	if s.opts.CommitDelay < 0 {
		return batch
	}
	return s.gather(batch, s.opts.CommitDelay, s.opts.CommitDelay)
}

// Lingering. With several writers each waiting for its write before it
// sends the next (a relay's sessions, one Send in flight each), batches
// settle into cohorts: the writes a commit reports come back while the
// next commit, holding the others, syncs, and so on. At 8 such writers
// that is 3–4 writes per commit, and each commit costs the device more
// than its records: the block the last commit ended in, written again,
// and for a log that appends, a journal block. So after a commit of two or
// more writes, the committer waits a little for more before it writes the
// next batch: until no write has come for a gap, an eighth of an
// fdatasync (a running average), and at most a quarter of one. A write
// that comes while it waits is durable a whole commit sooner than had it
// waited for the next one; those already in the batch wait at most a
// quarter of an fdatasync more. lingerGap and lingerMost cap both, so a
// slow disk adds no more than lingerMost. It does not wait after a lone
// write, nor when the batch's first write came more than an fdatasync
// after the last commit ended (writes are not coming back to back: a
// quiet store), nor for a batch of Acks alone, which is held, not
// written.
//
// Go wakes a timer this short late when the process has nothing else to
// do (its poller waits in whole milliseconds), so a wait can outlast
// these bounds, by up to a millisecond, when the writes it waits for do
// not come; it only waits while writes come back to back.
//
// It costs such writers some of their rate: while the committer waits,
// the disk is idle, where two cohorts kept it busy in turn. Waits of a
// quarter and a half of an fdatasync (capped at 100 and 250 µs) took
// 12–34 % off the rate of 8 closed-loop https senders; these cost less,
// though 8 senders were still slower in most pairs measured (README,
// "Lingering").
var (
	lingerGap  = 50 * time.Microsecond
	lingerMost = 100 * time.Microsecond
)

// lingerTimes returns how long the committer may wait for the next write
// and in all after batch, collected at now, or 0 not to wait.
func (s *Store) lingerTimes(batch []*op, now time.Time) (gap, most time.Duration) {
	if s.lastBatch < 2 || s.syncAvg <= 0 || now.Sub(s.lastEnd) > s.syncAvg {
		return 0, 0
	}
	if s.opts.AckSync > 0 && !slices.ContainsFunc(batch, func(o *op) bool { return !o.lazy }) {
		return 0, 0 // Acks alone: held, not written
	}
	return min(s.syncAvg/8, lingerGap), min(s.syncAvg/4, lingerMost)
}

// gather adds the ops that arrive until none has for gap, and at most
// until most has passed.
func (s *Store) gather(batch []*op, gap, most time.Duration) []*op {
	end := time.Now().Add(most)
	t := time.NewTimer(min(gap, most))
	defer t.Stop()
	for len(batch) < s.opts.MaxBatch {
		select {
		case o := <-s.ops:
			batch = append(batch, o)
			left := time.Until(end)
			if left <= 0 {
				return batch
			}
			t.Reset(min(gap, left))
		case <-t.C:
			return batch
		case <-s.quit:
			return batch
		}
	}
	return batch
}

// commit applies batch, writes and syncs it (led by the held acks), and
// reports each op's result; a batch of Acks alone is held instead (see the
// comment at the top). It returns the error of a failed write or sync.
func (s *Store) commit(batch []*op) error {
	start := time.Now()
	results := make([]error, len(batch))
	lazy := s.opts.AckSync > 0 && len(batch) > 0
	for _, o := range batch {
		lazy = lazy && o.lazy
	}
	w, err := s.begin(lazy)
	if err == nil {
		lazy, err = s.applyBatch(w, batch, results, lazy)
	}
	if err != nil {
		err = s.failed(w, err)
		for _, o := range batch {
			o.done <- err
		}
		return err
	}
	s.mu.Lock()
	writes := len(batch)
	if lazy {
		if len(s.held) == 0 && len(w.buf) > frameHeader {
			s.heldSince = time.Now()
		}
		s.held = append(s.held, w.buf[frameHeader:]...)
		s.heldOps += len(batch)
	} else {
		s.held = s.held[:0] // they led the batch, which is durable
		writes += s.heldOps
		s.heldOps = 0
		if len(w.buf) > frameHeader {
			w.seg.size += int64(len(w.buf))
			if len(batch) > 0 { // what lingering goes by
				s.lastBatch, s.lastEnd = len(batch), time.Now()
			}
		}
	}
	if len(s.held) == 0 && cap(s.held) > maxHeld {
		s.held = nil
	}
	s.buf = w.buf[:0] // reused by the next batch: nothing points into it now
	for _, fn := range w.relocs {
		fn()
	}
	s.dropSegments(w.drops)
	s.durable.Store(w.batch)
	s.mu.Unlock()
	if !lazy { // a held batch wrote nothing: it says nothing of the disk
		s.commits.Add(1)
		s.diskFull.Store(false)
	}
	s.mailboxes.Add(w.dMailboxes)
	s.envelopes.Add(w.dEnvelopes)
	s.bytes.Add(w.dBytes)
	s.outItems.Add(w.dOutItems)
	s.outBytes.Add(w.dOutBytes)
	if s.opts.OnCommit != nil && !lazy { // the held acks count in the commit that writes them
		s.opts.OnCommit(writes, time.Since(start))
	}
	// Wake subscribers before reporting, so a Put that returned has already
	// signalled its mailbox.
	for _, h := range w.wake {
		s.notes.Wake(h)
	}
	for i, o := range batch {
		o.done <- results[i]
	}
	return nil
}

// applyBatch runs batch's ops on w, under s.mu, into results, and writes
// and syncs w unless it is held (lazy: Acks alone, and the held ones
// with it under maxHeld); it reports whether it was held.
func (s *Store) applyBatch(w *writer, batch []*op, results []error, lazy bool) (bool, error) {
	if s.applying != nil {
		s.applying()
	}
	s.mu.Lock()
	for i, o := range batch {
		results[i] = o.apply(w)
	}
	s.mu.Unlock()
	if lazy && len(s.held)+len(w.buf)-frameHeader > maxHeld {
		lazy = false // written now, the held acks first
		w.buf = slices.Concat(w.buf[:frameHeader], s.held, w.buf[frameHeader:])
	}
	if lazy {
		return true, nil
	}
	return false, s.flush(w)
}

// maxHeld bounds the ack records held in memory: a batch of acks that
// would hold more is written and synced at once. (A variable for tests.)
var maxHeld = 1 << 20

// begin starts a batch, in a new segment if the newest is full, led by the
// held acks unless it is to be held too.
func (s *Store) begin(held bool) (*writer, error) {
	if s.broken != nil {
		return nil, s.broken
	}
	seg := s.ix.active()
	if seg.size >= segmentBytes {
		next, err := s.nextSegment(seg)
		if err != nil {
			return nil, err
		}
		seg = next
		s.mu.Lock()
		s.ix.segs[seg.num], s.ix.order = seg, append(s.ix.order, seg.num)
		s.mu.Unlock()
	}
	s.batch++
	if cap(s.buf) > maxKeptBuf {
		s.buf = nil
	}
	if s.buf == nil {
		s.buf = make([]byte, 0, 64<<10)
	}
	buf := s.buf[:frameHeader]
	if !held { // the held acks lead the batch (see the comment at the top)
		buf = append(buf, s.held...)
	}
	return &writer{s: s, ix: s.ix, seg: seg, batch: s.batch, buf: buf}, nil
}

// nextSegment starts the segment after cur, in the spare file if there is
// one (see "Recycled segments" in the package comment), else in a new file.
// A recycled segment's file is longer than what it holds, and only the
// newest segment may have bytes past its last batch (replay stops at them
// there, and refuses them anywhere else), so cur is cut to its end first
// and that is durable before the new segment exists. Both run every time
// (once a segment): a sync that failed after the cut is tried again.
func (s *Store) nextSegment(cur *segment) (*segment, error) {
	if err := cur.f.Truncate(cur.size); err != nil {
		return nil, err
	}
	if err := cur.f.Sync(); err != nil {
		return nil, err
	}
	h := segHead{num: cur.num + 1, check: s.check, outNext: s.ix.outNext}
	var f *os.File
	var err error
	if s.spare && !s.spareInUse() { // else a new file: a reader still reads the spare
		s.spare = false
		if f, err = reuseSegment(s.dir, h); err != nil {
			// A new file instead (renamed over the spare if the spare got
			// its name).
			os.Remove(filepath.Join(s.dir, spareName))
			f = nil
		}
	}
	if f == nil {
		if f, err = createSegment(s.dir, h); err != nil {
			return nil, err
		}
	}
	return &segment{num: h.num, path: filepath.Join(s.dir, segName(h.num)), f: f, size: segHeader, seed: h.seed(s.keys)}, nil
}

// maxKeptBuf bounds the batch buffer the committer keeps between commits
// (a batch of 256 sealed 4 KiB envelopes is about 1 MiB).
const maxKeptBuf = 4 << 20

// flush writes the batch's frame and syncs it. A batch without records
// writes nothing.
func (s *Store) flush(w *writer) error {
	if w.fail != nil {
		return w.fail
	}
	if len(w.buf) == frameHeader {
		return nil
	}
	payload := w.buf[frameHeader:]
	putFrameHeader(w.buf, payload, w.seg.seed)
	if _, err := w.seg.f.WriteAt(w.buf, w.seg.size); err != nil {
		return err
	}
	if s.syncFail != nil {
		return s.syncFail
	}
	start := time.Now()
	if err := fdatasync(w.seg.f); err != nil {
		return err
	}
	s.noteSync(time.Since(start))
	s.syncs.Add(1)
	s.written.Add(int64(len(w.buf)))
	return nil
}

// noteSync adds one fdatasync's time to the running average lingering
// takes its times from.
func (s *Store) noteSync(took time.Duration) {
	if s.syncAvg <= 0 {
		s.syncAvg = took
		return
	}
	s.syncAvg += (took - s.syncAvg) / 8
}

// failed handles a batch whose write or sync failed: it cuts the segment
// back to where the batch began, drops the held acks that led it, replays
// the log into a new index and returns the error for the batch's ops. A full disk or quota (ENOSPC,
// EDQUOT) becomes store.ErrDiskFull (wrapping the cause for the relay's
// log) and sets Stats.DiskFull until a commit succeeds.
func (s *Store) failed(w *writer, err error) error {
	if w != nil {
		s.held, s.heldOps = s.held[:0], 0 // undone: the replayed index has their envelopes
		if rerr := s.restore(w.seg); rerr != nil {
			s.broken = fmt.Errorf("store: %s could not be restored after a failed write (%v); restart the relay", s.dir, rerr)
		}
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		s.diskFull.Store(true)
		return fmt.Errorf("%w (write %s: %w)", store.ErrDiskFull, s.dir, err)
	}
	return fmt.Errorf("store: write %s: %w", s.dir, err)
}

// restore cuts seg back to its durable size, durably (or the failed
// batch, written whole, could come back after a crash, its callers told
// it failed), and rebuilds the index from the log.
func (s *Store) restore(seg *segment) error {
	if err := seg.f.Truncate(seg.size); err != nil {
		return err
	}
	if err := fdatasync(seg.f); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	files := make(map[uint64]*os.File, len(s.ix.segs))
	for num, sg := range s.ix.segs {
		files[num] = sg.f
	}
	ix, err := loadIndex(s.dir, files, s.keys)
	if err != nil {
		return err
	}
	s.setIndex(ix)
	s.restores.Add(1)
	return nil
}
