package boltstore

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// lingerSetup opens a store with a mailbox, in a synctest bubble (where
// an fdatasync takes no time, so the store would never linger by itself),
// and returns a function that sets what the committer lingers by: the
// size of the last batch (as if it ended now) and the average fdatasync.
func lingerSetup(t *testing.T, opts store.Options) (*Store, [store.IDSize]byte, func(last int, sync time.Duration)) {
	t.Helper()
	s, err := Open(t.TempDir(), opts)
	must(t, err)
	t.Cleanup(func() { s.Close() })
	id := storetest.ID(1)
	must(t, s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil))
	set := func(last int, sync time.Duration) {
		t.Helper()
		// On the committer, whose own fields they are; commit sets
		// lastBatch before it applies the batch.
		must(t, s.do(context.Background(), func(*writer) error {
			s.lastBatch, s.lastEnd, s.syncAvg = last, time.Now(), sync
			return nil
		}))
	}
	return s, id, set
}

// putTook puts one envelope and returns how long the Put took; a failed
// Put fails the test (t.Error: it may run on another goroutine).
func putTook(t *testing.T, s *Store, id [store.IDSize]byte, i int) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := s.Put(context.Background(), id, storetest.Envelope(id, 512, i)); err != nil {
		t.Errorf("Put %d: %v", i, err)
	}
	return time.Since(start)
}

// After a batch of several writes, the committer waits for the next
// write, and a write that comes while it waits shares the first one's
// commit.
func TestLingerGathers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, id, set := lingerSetup(t, crashOpts)
		set(2, time.Hour)
		syncs := s.Stats().Syncs
		var wg sync.WaitGroup
		wg.Go(func() { putTook(t, s, id, 1) })
		synctest.Wait() // the Put is with the committer
		if got := s.Stats().Syncs; got != syncs {
			t.Fatalf("the first Put was committed at once (%d syncs, had %d)", got, syncs)
		}
		wg.Go(func() { putTook(t, s, id, 2) })
		wg.Wait()
		if got := s.Stats().Syncs - syncs; got != 1 {
			t.Fatalf("two Puts took %d syncs, want 1", got)
		}
	})
}

// The committer waits until no write has come for an eighth of an
// fdatasync (at most lingerGap), never after a lone write, and never
// with a negative CommitDelay.
func TestLingerGap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		last  int
		sync  time.Duration
		delay time.Duration
		want  time.Duration
	}{
		{"after a lone write", 1, time.Hour, 0, 0},
		{"an eighth of a sync", 2, 200 * time.Microsecond, 0, 25 * time.Microsecond},
		{"capped", 8, time.Hour, 0, lingerGap},
		{"no sync measured", 8, 0, 0, 0},
		{"negative CommitDelay", 8, time.Hour, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				opts := crashOpts
				opts.CommitDelay = tc.delay
				s, id, set := lingerSetup(t, opts)
				set(tc.last, tc.sync)
				if took := putTook(t, s, id, 1); took != tc.want {
					t.Fatalf("a lone Put took %v, want %v", took, tc.want)
				}
			})
		})
	}
}

// While writes keep coming, the committer stops waiting a quarter of an
// fdatasync (at most lingerMost) after it took the first.
func TestLingerMost(t *testing.T) {
	for _, tc := range []struct {
		name string
		sync time.Duration
		want time.Duration
	}{
		{"capped", time.Hour, lingerMost},
		{"a quarter of a sync", 160 * time.Microsecond, 40 * time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, id, set := lingerSetup(t, crashOpts)
				set(2, tc.sync)
				// Inside the gap, and not a divisor of the most: a wait
				// reset by a whole gap would overshoot it.
				every := min(tc.sync/8, lingerGap) * 2 / 3
				var wg sync.WaitGroup
				var took time.Duration
				wg.Go(func() { took = putTook(t, s, id, 0) })
				synctest.Wait()
				for i := 1; i <= 40; i++ { // far past the most
					time.Sleep(every)
					wg.Go(func() { putTook(t, s, id, i) })
				}
				wg.Wait()
				if took != tc.want {
					t.Fatalf("the first Put took %v with writes every %v, want %v", took, every, tc.want)
				}
			})
		})
	}
}

// The average starts at the first fdatasync and moves an eighth of the way
// to each later one.
func TestNoteSync(t *testing.T) {
	var s Store
	for _, c := range []struct{ took, want time.Duration }{
		{800 * time.Microsecond, 800 * time.Microsecond},
		{0, 700 * time.Microsecond},
		{1500 * time.Microsecond, 800 * time.Microsecond},
	} {
		s.noteSync(c.took)
		if s.syncAvg != c.want {
			t.Fatalf("after a %v sync the average is %v, want %v", c.took, s.syncAvg, c.want)
		}
	}
}

// What the committer lingers by comes from the batches it wrote: after a
// batch of two, the next write waits a gap; after a lone one, or once the
// last commit is an fdatasync or more in the past, it does not; nor does
// a batch of Acks alone, which is held.
func TestLingerAfterBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const avg = 400 * time.Microsecond
		opts := crashOpts
		opts.AckSync = time.Minute
		s, id, set := lingerSetup(t, opts)
		set(0, avg)
		// The batch's fdatasync takes no time here: the average moves an
		// eighth of the way to 0 before the next Put.
		gap := min(avg*7/8/8, lingerGap)
		// Two Puts wait while an op holds the committer: they make one
		// batch.
		hold := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := s.do(context.Background(), func(*writer) error { <-hold; return nil }); err != nil {
				t.Error(err)
			}
		})
		synctest.Wait()
		wg.Go(func() { putTook(t, s, id, 1) })
		wg.Go(func() { putTook(t, s, id, 2) })
		synctest.Wait()
		close(hold)
		wg.Wait()
		if took := putTook(t, s, id, 3); took != gap {
			t.Fatalf("a Put after a batch of two took %v, want the gap %v", took, gap)
		}
		if took := putTook(t, s, id, 4); took != 0 {
			t.Fatalf("a Put after a lone one took %v, want 0", took)
		}
		set(2, avg)
		time.Sleep(avg + time.Microsecond)
		if took := putTook(t, s, id, 5); took != 0 {
			t.Fatalf("a Put more than an fdatasync after the last commit took %v, want 0", took)
		}
		refs := heldRefs(t, s, id)
		set(2, avg)
		for ref := range refs {
			start := time.Now()
			if _, err := s.Ack(context.Background(), id, ref); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took != 0 {
				t.Fatalf("a lone Ack took %v, want 0 (it is held, not written)", took)
			}
			break
		}
	})
}

// The running average is fed by the store's own fdatasyncs (real ones:
// no synctest here).
func TestSyncAverageFed(t *testing.T) {
	s, err := Open(t.TempDir(), crashOpts)
	must(t, err)
	defer s.Close()
	id := storetest.ID(1)
	must(t, s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil))
	putTook(t, s, id, 1)
	var avg time.Duration
	must(t, s.do(context.Background(), func(*writer) error { avg = s.syncAvg; return nil }))
	if avg <= 0 {
		t.Fatalf("average fdatasync %v after two commits, want above 0", avg)
	}
}
