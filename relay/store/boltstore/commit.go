package boltstore

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// Group commit (see the package comment).
//
// Every write is an op handed to the committer goroutine (run) over an
// unbuffered channel. The committer applies a batch of ops in order inside
// one bbolt read-write transaction and reports each op's result only after
// the commit. An op that fails a check (store.ErrNoMailbox, a quota) returns
// a *store.Error and fails alone, so it must make every check before it
// writes anything: what it wrote would be committed with the batch. Any
// other error rolls the whole batch back and fails every op in it.

// op is one write waiting for the committer.
type op struct {
	apply func(w *writer) error
	done  chan error // buffered, 1
}

// writer is the state of the batch being built.
type writer struct {
	s  *Store
	tx *bolt.Tx

	// Changes to the store totals made by this batch, applied after commit.
	dMailboxes, dEnvelopes, dBytes int64
	dOutItems, dOutBytes           int64
	wake                           [][32]byte
}

// do hands apply to the committer and waits for its durable result.
func (s *Store) do(ctx context.Context, apply func(w *writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return store.ErrClosed
	}
	o := &op{apply: apply, done: make(chan error, 1)}
	select {
	case s.ops <- o:
	case <-s.quit:
		return store.ErrClosed
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

func (s *Store) run() {
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

func (s *Store) commit(batch []*op) {
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
		err = s.writeFailed(err)
		for _, o := range batch {
			o.done <- err
		}
		return
	}
	s.commits.Add(1)
	s.diskFull.Store(false)
	s.mailboxes.Add(w.dMailboxes)
	s.envelopes.Add(w.dEnvelopes)
	s.bytes.Add(w.dBytes)
	s.outItems.Add(w.dOutItems)
	s.outBytes.Add(w.dOutBytes)
	if s.opts.OnCommit != nil {
		s.opts.OnCommit(len(batch), time.Since(start))
	}
	// Wake subscribers before reporting, so a Put that returned has already
	// signalled its mailbox.
	for _, h := range w.wake {
		s.notes.Wake(h)
	}
	for i, o := range batch {
		o.done <- results[i]
	}
}

// writeFailed classifies the error of a failed commit. A full disk or
// quota (ENOSPC, EDQUOT) becomes store.ErrDiskFull (wrapping the cause
// for the relay's log) and sets Stats.DiskFull until a commit succeeds.
func (s *Store) writeFailed(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		s.diskFull.Store(true)
		return fmt.Errorf("%w (write %s: %w)", store.ErrDiskFull, s.path, err)
	}
	return fmt.Errorf("store: write %s: %w", s.path, err)
}
