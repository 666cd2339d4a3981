package boltstore

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// clockedStore opens a store in dir with 16 KiB segments (until the test
// ends), a TTL of 3 days and retirements of 30, on clock (Unix seconds),
// with opts changed by tune if not nil.
func clockedStore(t *testing.T, dir string, clock *atomic.Int64, tune func(*store.Options)) (*Store, store.Options) {
	t.Helper()
	old := segmentBytes
	t.Cleanup(func() { segmentBytes = old })
	segmentBytes = 16 << 10
	opts := crashOpts
	opts.Now = func() time.Time { return time.Unix(clock.Load(), 0) }
	opts.TTL, opts.Retire = 3*24*time.Hour, 30*24*time.Hour
	if tune != nil {
		tune(&opts)
	}
	s, err := Open(dir, opts)
	must(t, err)
	return s, opts
}

// forwardSetup opens a clockedStore that compacts only when the test
// says, rotates mailbox A (capability verifier "cap-a") to B, and fills
// segments after it with 1 KiB envelopes to another mailbox, so that the
// forward's record lies in the first segment, which no longer takes
// writes.
func forwardSetup(t *testing.T, dir string, clock *atomic.Int64) (*Store, store.Options) {
	t.Helper()
	s, opts := clockedStore(t, dir, clock, nil)
	s.compacting.Store(true) // the test compacts
	ctx := context.Background()
	a, b, other := storetest.ID(1), storetest.ID(2), storetest.ID(3)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), []byte("cap-a")))
	_, err := s.RotateMailbox(ctx, a, b, storetest.Owner(2), nil)
	must(t, err)
	must(t, s.CreateMailbox(ctx, other, storetest.Owner(3), nil))
	for i := 0; len(s.segs()) < 3; i++ {
		ref, err := s.Put(ctx, other, storetest.Envelope(other, 1024, i))
		must(t, err)
		_, err = s.Ack(ctx, other, ref)
		must(t, err)
	}
	return s, opts
}

func wantForwardTo(t *testing.T, s *Store, when string, ok bool) {
	t.Helper()
	to, verifier, err := s.Forwarded(context.Background(), storetest.ID(1))
	if !ok {
		if !errors.Is(err, store.ErrNoMailbox) {
			t.Fatalf("%s: Forwarded = %v, want ErrNoMailbox", when, err)
		}
		return
	}
	if err != nil || to != storetest.ID(2) || string(verifier) != "cap-a" {
		t.Fatalf("%s: Forwarded = (to B: %v, %q), %v", when, to == storetest.ID(2), verifier, err)
	}
}

// A forward survives a restart and its segment's compaction: the
// compaction carries it whole (the new id still opens, under the old id's
// key), and the id stays retired.
func TestForwardCarried(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC).Unix())
	dir := t.TempDir()
	s, opts := forwardSetup(t, dir, &clock)
	first := s.segs()[0]
	before := s.compactCarried.Load()
	must(t, s.compact(first.num, first.path))
	if got := s.compactCarried.Load() - before; got != 3 {
		t.Errorf("compaction carried %d records, want 3 (the forward and the two mailboxes)", got)
	}
	wantForwardTo(t, s, "after compaction", true)
	must(t, s.Close())
	s, err := Open(dir, opts)
	must(t, err)
	defer s.Close()
	wantForwardTo(t, s, "reopened", true)
	err = s.CreateMailbox(context.Background(), storetest.ID(1), storetest.Owner(9), nil)
	if !errors.Is(err, store.ErrMailboxExists) {
		t.Fatalf("creating the forwarded id after a reopen: %v", err)
	}
}

// TestForwardEnded: a forward whose day has begun stays ended across a
// restart with the clock set back, whichever record ended it:
//   - compacted: compaction carries the id as retired alone (it stays
//     retired); the forward's old bytes stay in the spare until the log
//     writes over them (see the package comment, Forwards);
//   - carried, not dropped: a compaction cut short between its copy and
//     the segment's removal leaves the forward record and the retirement
//     it was carried as, and replayed in order the retirement ends it;
//   - swept: a Sweep on or after its day ends it in the log.
func TestForwardEnded(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, s *Store, now time.Time, first *segment)
	}{
		{"compacted", func(t *testing.T, s *Store, _ time.Time, first *segment) {
			must(t, s.compact(first.num, first.path))
		}},
		{"carried, not dropped", func(t *testing.T, s *Store, _ time.Time, first *segment) {
			must(t, s.carryLive(first.num, first.path))
		}},
		{"swept", func(t *testing.T, s *Store, now time.Time, _ *segment) {
			_, err := s.Sweep(context.Background(), now)
			must(t, err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var clock atomic.Int64
			t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
			clock.Store(t0.Unix())
			dir := t.TempDir()
			s, opts := forwardSetup(t, dir, &clock)
			later := t0.Add(4 * 24 * time.Hour)
			clock.Store(later.Unix())
			wantForwardTo(t, s, "ended", false)
			first := s.segs()[0]
			tc.end(t, s, later, first)
			must(t, s.Close())
			clock.Store(t0.Unix())
			s, err := Open(dir, opts)
			must(t, err)
			defer s.Close()
			if kept := s.segs()[0].num == first.num; kept != (tc.name != "compacted") {
				t.Fatalf("the forward's segment kept: %v", kept)
			}
			wantForwardTo(t, s, "ended, reopened with the clock set back", false)
			err = s.CreateMailbox(context.Background(), storetest.ID(1), storetest.Owner(9), nil)
			if !errors.Is(err, store.ErrMailboxExists) {
				t.Fatalf("the id is no longer retired after its forward ended: %v", err)
			}
		})
	}
}

// A mailbox's forward chain is kept, sealed, across a restart: after
// MaxForwardChain rotations and a reopen, one more is still refused.
func TestForwardChainAfterReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	opts := crashOpts
	opts.Now = func() time.Time { return now }
	s, err := Open(dir, opts)
	must(t, err)
	must(t, s.CreateMailbox(ctx, storetest.ID(0), storetest.Owner(0), nil))
	for i := range store.MaxForwardChain {
		_, err := s.RotateMailbox(ctx, storetest.ID(i), storetest.ID(i+1), storetest.Owner(i+1), nil)
		must(t, err)
	}
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	defer s.Close()
	n := store.MaxForwardChain
	_, err = s.RotateMailbox(ctx, storetest.ID(n), storetest.ID(n+1), storetest.Owner(n+1), nil)
	if !errors.Is(err, store.ErrRotatedOften) {
		t.Fatalf("one rotation past the chain, reopened: %v", err)
	}
}
