package boltstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// checkLive recomputes, from what the index points at, the live bytes of
// every segment and compares them with seg.live.
func checkLive(t *testing.T, s *Store, when string) {
	t.Helper()
	s.mu.RLock()
	defer s.mu.RUnlock()
	want := map[uint64]int64{}
	for _, b := range s.ix.boxes {
		if b.exists {
			want[b.at.seg] += int64(b.size)
		}
		for _, e := range b.envs {
			want[e.at.seg] += int64(e.size)
		}
	}
	for _, r := range s.ix.retired {
		want[r.at.seg] += int64(r.size)
	}
	for _, l := range s.ix.out {
		for _, it := range l {
			want[it.at.seg] += int64(it.size)
		}
	}
	for num, seg := range s.ix.segs {
		if seg.live != want[num] {
			t.Errorf("%s: segment %d live %d, index points at %d", when, num, seg.live, want[num])
		}
	}
	for hid := range s.ix.forwards {
		if _, ok := s.ix.retired[hid]; !ok {
			t.Errorf("%s: a forward whose id is not retired", when)
		}
	}
	// What the log says (no acks held: AckSync < 0 in these tests).
	files := map[uint64]*os.File{}
	for num, seg := range s.ix.segs {
		files[num] = seg.f
	}
	fresh, err := loadIndex(s.dir, files, s.keys)
	if err != nil {
		t.Fatalf("%s: replay: %v", when, err)
	}
	for num, seg := range s.ix.segs {
		if f := fresh.segs[num]; f == nil || f.live != seg.live {
			t.Errorf("%s: segment %d live %d, a replay of the log says %v", when, num, seg.live, f)
		}
	}
	if len(fresh.forwards) != len(s.ix.forwards) || len(fresh.retired) != len(s.ix.retired) {
		t.Errorf("%s: forwards %d/%d, retired %d/%d (index/replay)", when, len(s.ix.forwards), len(fresh.forwards), len(s.ix.retired), len(fresh.retired))
	}
}

// TestLiveAccountingNewRecords: rotations (delete + forward in one batch),
// legacy mailboxes sealed by a Put, compaction (whole and cut short),
// a reopen, a failed write's restore and a sweep that ends forwards all
// keep every segment's live bytes equal to what the index points at.
func TestLiveAccountingNewRecords(t *testing.T) {
	ctx := context.Background()
	var clock atomic.Int64
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock.Store(t0.Unix())
	dir := t.TempDir()
	s, opts := clockedStore(t, dir, &clock, func(o *store.Options) { o.AckSync = -1 })
	s.compacting.Store(true)
	var err error
	a, b, c, l, l2, other := storetest.ID(1), storetest.ID(2), storetest.ID(3), storetest.ID(4), storetest.ID(5), storetest.ID(6)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), []byte("cap-a")))
	createLegacy(t, s, l, storetest.Owner(4), []byte("cap-l"))
	must(t, s.CreateMailbox(ctx, other, storetest.Owner(6), nil))
	checkLive(t, s, "created")
	_, err = s.Put(ctx, a, storetest.Envelope(a, 500, 1))
	must(t, err)
	_, err = s.RotateMailbox(ctx, a, b, storetest.Owner(2), []byte("cap-b"))
	must(t, err)
	checkLive(t, s, "rotated")
	_, err = s.Put(ctx, l, storetest.Envelope(l, 500, 2))
	must(t, err)
	checkLive(t, s, "legacy sealed by a Put")
	_, err = s.RotateMailbox(ctx, l, l2, storetest.Owner(5), nil)
	must(t, err)
	_, err = s.RotateMailbox(ctx, b, c, storetest.Owner(3), nil)
	must(t, err)
	checkLive(t, s, "rotated twice")
	for i := 0; len(s.segs()) < 4; i++ {
		ref, err := s.Put(ctx, other, storetest.Envelope(other, 1024, i))
		must(t, err)
		_, err = s.Ack(ctx, other, ref)
		must(t, err)
	}
	checkLive(t, s, "filled")
	first := s.segs()[0]
	must(t, s.compact(first.num, first.path))
	checkLive(t, s, "compacted")
	second := s.segs()[0]
	must(t, s.carryLive(second.num, second.path)) // cut short: not dropped
	checkLive(t, s, "carried, not dropped")
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	s.compacting.Store(true)
	checkLive(t, s, "reopened")
	err = s.do(ctx, func(w *writer) error {
		w.fail = &os.PathError{Op: "write", Path: s.dir, Err: syscall.EIO}
		return nil
	})
	if err == nil {
		t.Fatal("the failed write did not fail")
	}
	checkLive(t, s, "restored")
	for _, id := range [][store.IDSize]byte{a, b, l} {
		if _, _, err := s.Forwarded(ctx, id); err != nil {
			t.Fatalf("forward lost: %v", err)
		}
	}
	clock.Store(t0.Add(4 * 24 * time.Hour).Unix())
	_, err = s.Sweep(ctx, time.Unix(clock.Load(), 0))
	must(t, err)
	checkLive(t, s, "swept")
	for len(s.segs()) > 1 {
		seg := s.segs()[0]
		if err := s.compact(seg.num, seg.path); err != nil && !errors.Is(err, errRestored) {
			t.Fatal(err)
		}
	}
	checkLive(t, s, "all compacted")
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	defer s.Close()
	checkLive(t, s, "reopened at last")
	for _, id := range [][store.IDSize]byte{a, b, l} {
		if err := s.CreateMailbox(ctx, id, storetest.Owner(9), nil); !errors.Is(err, store.ErrMailboxExists) {
			t.Fatalf("a retired id is free: %v", err)
		}
	}
}

// TestFailedRotationRestored: a rotation, and a Put that seals a
// legacy mailbox's keys, whose write fails leave the index as the log says
// after the restore: no forward, the old mailbox back with its keys, the
// legacy record still the clear one (and live accounting right).
func TestFailedRotationRestored(t *testing.T) {
	ctx := context.Background()
	opts := crashOpts
	opts.TTL, opts.Retire = 3*24*time.Hour, 30*24*time.Hour
	opts.AckSync = -1
	s, err := Open(t.TempDir(), opts)
	must(t, err)
	defer s.Close()
	a, b, l := storetest.ID(1), storetest.ID(2), storetest.ID(3)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), []byte("cap-a")))
	createLegacy(t, s, l, storetest.Owner(3), []byte("cap-l"))
	must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = syscall.EIO; return nil }))
	if _, err := s.RotateMailbox(ctx, a, b, storetest.Owner(2), nil); err == nil {
		t.Fatal("rotation did not fail")
	}
	if _, err := s.Put(ctx, l, storetest.Envelope(l, 100, 1)); err == nil {
		t.Fatal("put did not fail")
	}
	must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = nil; return nil }))
	checkLive(t, s, "restored")
	if _, _, err := s.Forwarded(ctx, a); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("a failed rotation's forward: %v", err)
	}
	mb, err := s.Mailbox(ctx, a)
	if err != nil || string(mb.SendCap) != "cap-a" {
		t.Fatalf("old mailbox after a failed rotation: %v %q", err, mb.SendCap)
	}
	s.mu.RLock()
	legacyClear := s.ix.mailbox(s.keys.MailboxHash(l)).keys == nil
	s.mu.RUnlock()
	if !legacyClear {
		t.Fatal("a failed Put's seal is in the restored index")
	}
	_, err = s.RotateMailbox(ctx, a, b, storetest.Owner(2), nil)
	must(t, err)
	_, err = s.Put(ctx, l, storetest.Envelope(l, 100, 1))
	must(t, err)
	checkLive(t, s, "after")
	if to, v, err := s.Forwarded(ctx, a); err != nil || to != b || string(v) != "cap-a" {
		t.Fatalf("Forwarded after retry: %v", err)
	}
}

// TestForwardAfterLaterFrames: a forward and a sealed mailbox
// record replayed from a frame that later, larger frames follow still
// open (replay must not keep slices of its frame buffer).
func TestForwardAfterLaterFrames(t *testing.T) {
	ctx := context.Background()
	opts := crashOpts
	opts.TTL, opts.Retire = 3*24*time.Hour, 30*24*time.Hour
	dir := t.TempDir()
	s, err := Open(dir, opts)
	must(t, err)
	a, b, c := storetest.ID(1), storetest.ID(2), storetest.ID(3)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), []byte("cap-a")))
	_, err = s.RotateMailbox(ctx, a, b, storetest.Owner(2), nil)
	must(t, err)
	must(t, s.CreateMailbox(ctx, c, storetest.Owner(3), []byte("cap-c")))
	for i := range 3 {
		_, err = s.Put(ctx, b, storetest.Envelope(b, 8192, i))
		must(t, err)
	}
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	defer s.Close()
	if to, v, err := s.Forwarded(ctx, a); err != nil || to != b || string(v) != "cap-a" {
		t.Fatalf("Forwarded after reopen: %v", err)
	}
	if mb, err := s.Mailbox(ctx, c); err != nil || string(mb.SendCap) != "cap-c" {
		t.Fatalf("Mailbox after reopen: %v", err)
	}
}

// TestForwardStress: rotations, legacy seals, Forwarded and Mailbox
// readers, Sweeps and compaction at once (run with -race); then a reopen
// reads the same forwards.
func TestForwardStress(t *testing.T) {
	ctx := context.Background()
	var clock atomic.Int64
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock.Store(t0.Unix())
	dir := t.TempDir()
	s, opts := clockedStore(t, dir, &clock, nil)
	var err error
	const chains = 4
	const hops = store.MaxForwardChain
	id := func(c, h int) [store.IDSize]byte { return storetest.ID(1000 + c*100 + h) }
	for c := range chains {
		if c%2 == 0 {
			createLegacy(t, s, id(c, 0), storetest.Owner(c), []byte{byte(c)})
		} else {
			must(t, s.CreateMailbox(ctx, id(c, 0), storetest.Owner(c), []byte{byte(c)}))
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for c := range chains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range hops {
				for i := range 6 {
					ref, err := s.Put(ctx, id(c, h), storetest.Envelope(id(c, h), 1500, i))
					if err != nil {
						t.Error(err)
						return
					}
					if i%2 == 0 {
						if _, err := s.Ack(ctx, id(c, h), ref); err != nil {
							t.Error(err)
						}
					}
				}
				if _, err := s.RotateMailbox(ctx, id(c, h), id(c, h+1), storetest.Owner(c), []byte{byte(c), byte(h + 1)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				for c := range chains {
					for h := range hops {
						to, v, err := s.Forwarded(ctx, id(c, h))
						if err == nil && (to != id(c, h+1) || len(v) == 0 || v[0] != byte(c)) {
							t.Errorf("reader %d: wrong forward", r)
						}
						if mb, err := s.Mailbox(ctx, id(c, h)); err == nil && (len(mb.SendCap) == 0 || mb.SendCap[0] != byte(c)) {
							t.Errorf("reader %d: wrong mailbox", r)
						}
					}
				}
				s.Sweep(ctx, time.Unix(clock.Load(), 0))
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			s.mu.RLock()
			num, path, ok := s.due()
			s.mu.RUnlock()
			if ok && !s.compacting.Load() {
				s.compact(num, path)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(10 * time.Millisecond)
	// wait for the writers, then stop readers
	for {
		all := true
		for c := range chains {
			if _, err := s.Mailbox(ctx, id(c, hops)); err != nil {
				all = false
			}
		}
		if all || t.Failed() {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(done)
	wg.Wait()
	check := func(when string) {
		for c := range chains {
			for h := range hops {
				to, v, err := s.Forwarded(ctx, id(c, h))
				want := []byte{byte(c)}
				if h > 0 {
					want = []byte{byte(c), byte(h)}
				}
				if err != nil || to != id(c, h+1) || !bytes.Equal(v, want) {
					t.Fatalf("%s: chain %d hop %d: %v %v", when, c, h, err, v)
				}
			}
			mb, err := s.Mailbox(ctx, id(c, hops))
			if err != nil || mb.Pending != 3*(hops+1)-3 && mb.Pending != 3*hops {
				t.Fatalf("%s: chain %d end: %v pending %d", when, c, err, mb.Pending)
			}
		}
	}
	check("live")
	t.Logf("segments %d, compactions carried %d", len(s.segs()), s.compactCarried.Load())
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	defer s.Close()
	check("reopened")
}

// TestCutShortCompactionNewRecords: a compaction cut short after
// its copies (segment 1 kept) of a live forward, a sealed mailbox record
// and a legacy one, the legacy one sealed by a Put after its copy: the
// replay merges the duplicates (forward, keys, live bytes).
func TestCutShortCompactionNewRecords(t *testing.T) {
	ctx := context.Background()
	old := segmentBytes
	t.Cleanup(func() { segmentBytes = old })
	segmentBytes = 16 << 10
	opts := crashOpts
	opts.TTL, opts.Retire = 3*24*time.Hour, 30*24*time.Hour
	opts.AckSync = -1
	dir := t.TempDir()
	s, err := Open(dir, opts)
	must(t, err)
	s.compacting.Store(true)
	a, b, l, other := storetest.ID(1), storetest.ID(2), storetest.ID(3), storetest.ID(4)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), []byte("cap-a")))
	_, err = s.RotateMailbox(ctx, a, b, storetest.Owner(2), []byte("cap-b"))
	must(t, err)
	createLegacy(t, s, l, storetest.Owner(3), []byte("cap-l"))
	must(t, s.CreateMailbox(ctx, other, storetest.Owner(4), nil))
	for i := 0; len(s.segs()) < 3; i++ {
		ref, err := s.Put(ctx, other, storetest.Envelope(other, 1024, i))
		must(t, err)
		_, err = s.Ack(ctx, other, ref)
		must(t, err)
	}
	first := s.segs()[0]
	must(t, s.carryLive(first.num, first.path))
	_, err = s.Put(ctx, l, storetest.Envelope(l, 100, 1)) // seals l after its copy
	must(t, err)
	checkLive(t, s, "carried")
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	s.compacting.Store(true)
	if s.segs()[0].num != first.num {
		t.Fatal("segment 1 gone")
	}
	checkLive(t, s, "reopened with duplicates")
	check := func(when string) {
		t.Helper()
		if to, v, err := s.Forwarded(ctx, a); err != nil || to != b || string(v) != "cap-a" {
			t.Fatalf("%s: Forwarded: %v", when, err)
		}
		for _, c := range []struct {
			id  [store.IDSize]byte
			cap string
		}{{b, "cap-b"}, {l, "cap-l"}} {
			mb, err := s.Mailbox(ctx, c.id)
			if err != nil || string(mb.SendCap) != c.cap {
				t.Fatalf("%s: Mailbox: %v %q", when, err, mb.SendCap)
			}
		}
		s.mu.RLock()
		sealed := s.ix.mailbox(s.keys.MailboxHash(l)).keys != nil
		s.mu.RUnlock()
		if !sealed {
			t.Fatalf("%s: the legacy mailbox is in the clear again", when)
		}
	}
	check("reopened")
	for len(s.segs()) > 1 {
		seg := s.segs()[0]
		must(t, s.compact(seg.num, seg.path))
	}
	checkLive(t, s, "compacted")
	must(t, s.Close())
	s, err = Open(dir, opts)
	must(t, err)
	defer s.Close()
	check("compacted, reopened")
	// (The copy of the legacy record, in the clear, stays in the active
	// segment until it is compacted: documented, "Mailbox keys".)
}
