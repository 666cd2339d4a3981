package boltstore

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// skipSetup opens a store with 16 KiB segments (until the test ends) that
// compacts only when the test says, and fills its first segments with
// 1 KiB envelopes to one mailbox. Acks are held for an hour.
func skipSetup(t *testing.T, dir string) (*Store, [store.IDSize]byte, []store.Ref) {
	t.Helper()
	old := segmentBytes
	t.Cleanup(func() { segmentBytes = old })
	segmentBytes = 16 << 10
	opts := crashOpts
	opts.AckSync = time.Hour
	s, err := Open(dir, opts)
	must(t, err)
	s.compacting.Store(true) // the test compacts
	id := storetest.ID(1)
	must(t, s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil))
	var refs []store.Ref
	for i := 0; len(s.segs()) < 4; i++ {
		ref, err := s.Put(context.Background(), id, storetest.Envelope(id, 1024, i))
		must(t, err)
		refs = append(refs, ref)
	}
	return s, id, refs
}

// segs lists the segments the index holds, oldest first.
func (s *Store) segs() []*segment {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var l []*segment
	for _, n := range s.ix.order {
		l = append(l, s.ix.segs[n])
	}
	return l
}

// inSegment returns the refs of the envelopes of refs that lie in segment num.
func inSegment(t *testing.T, s *Store, id [store.IDSize]byte, refs []store.Ref, num uint64) []store.Ref {
	t.Helper()
	hid := s.keys.MailboxHash(id)
	s.mu.RLock()
	defer s.mu.RUnlock()
	b := s.ix.boxes[hid]
	var in []store.Ref
	for _, e := range b.envs {
		if e.at.seg == num {
			in = append(in, e.ref)
		}
	}
	return in
}

// Compaction hands the committer only the records the index still points
// at, and drops a segment that holds nothing live without reading it.
func TestCompactionSkipsDeadRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := skipSetup(t, dir)
	defer func() { s.Close() }()
	segs := s.segs()
	first, second := segs[0], segs[1]
	one, two := inSegment(t, s, id, refs, first.num), inSegment(t, s, id, refs, second.num)
	if len(one) < 4 || len(two) < 4 {
		t.Fatalf("segments hold %d and %d envelopes: too few for the test", len(one), len(two))
	}
	// Keep two envelopes of the first segment; ack every other envelope
	// of the first two.
	keep := map[store.Ref]bool{one[0]: true, one[len(one)-1]: true}
	for _, r := range append(one, two...) {
		if !keep[r] {
			if n, err := s.Ack(ctx, id, r); n != 1 || err != nil {
				t.Fatalf("Ack = %d, %v", n, err)
			}
		}
	}
	must(t, s.compact(first.num, first.path))
	// The mailbox record and the two envelopes kept.
	if got := s.compactCarried.Load(); got != 3 {
		t.Errorf("compacting the first segment carried %d records, want 3 (the mailbox and 2 envelopes; it holds %d envelopes)", got, len(one))
	}
	must(t, s.compact(second.num, second.path))
	if got := s.compactScans.Load(); got != 1 {
		t.Errorf("compaction read %d segments, want 1: the second held nothing live", got)
	}
	for _, seg := range []*segment{first, second} {
		if _, err := os.Stat(seg.path); !os.IsNotExist(err) {
			t.Errorf("segment %d is still there after its compaction (%v)", seg.num, err)
		}
	}
	check := func(s *Store, when string) {
		t.Helper()
		got := heldRefs(t, s, id)
		for r := range keep {
			if !got[r] {
				t.Fatalf("%s: a kept envelope is gone", when)
			}
		}
		for _, r := range append(one, two...) {
			if got[r] && !keep[r] {
				t.Fatalf("%s: an acked envelope came back", when)
			}
		}
	}
	check(s, "after compaction")
	must(t, s.Close())
	s, err := Open(dir, crashOpts)
	must(t, err)
	check(s, "after reopen")
}

// An envelope compaction skipped as dead can be live again: a failed
// write undoes the held acks that led it. Compaction must then not drop
// the segment.
func TestCompactionRestoreAfterSkip(t *testing.T) {
	defer func(f func()) { compactScanned = f }(compactScanned)
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := skipSetup(t, dir)
	defer func() { s.Close() }()
	first := s.segs()[0]
	one := inSegment(t, s, id, refs, first.num)
	// Every envelope of the first segment acked (held): it looks dead,
	// but for the mailbox record.
	for _, r := range one {
		if n, err := s.Ack(ctx, id, r); n != 1 || err != nil {
			t.Fatalf("Ack = %d, %v", n, err)
		}
	}
	failed := false
	compactScanned = func() {
		// A write fails after the scan: the held acks that led it are
		// undone, and the first segment's envelopes are live again.
		must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = syscall.EIO; return nil }))
		if _, err := s.Put(ctx, id, storetest.Envelope(id, 64, 1_000_000)); err == nil {
			t.Fatal("a Put succeeded with every sync failing")
		}
		must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = nil; return nil }))
		failed = true
	}
	err := s.compact(first.num, first.path)
	compactScanned = nil
	if !failed {
		t.Fatal("the compaction never scanned the segment")
	}
	if !errors.Is(err, errRestored) {
		t.Errorf("compaction across a restore returned %v, want errRestored", err)
	}
	// Refused, not given up on: dropSegments marks a segment it cannot
	// drop (one still live) as stuck, and due() never offers it again.
	var stuck uint64
	must(t, s.do(ctx, func(*writer) error { stuck = s.stuck; return nil })) // on the committer, which owns it
	if stuck == first.num {
		t.Error("the segment was left stuck: compaction would never try it again in this process")
	}
	if got := heldRefs(t, s, id); len(got) != len(refs) {
		t.Fatalf("after the failed write %d envelopes are pending, want all %d", len(got), len(refs))
	}
	// Compacting again copies them.
	must(t, s.compact(first.num, first.path))
	if _, err := os.Stat(first.path); !os.IsNotExist(err) {
		t.Errorf("the segment is still there after a second compaction (%v)", err)
	}
	must(t, s.Close())
	s, err = Open(dir, crashOpts)
	must(t, err)
	if got := heldRefs(t, s, id); len(got) != len(refs) {
		t.Fatalf("after reopen %d envelopes are pending, want all %d", len(got), len(refs))
	}
}
