package boltstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// ackSyncSetup opens a store in dir with the given AckSync, creates a
// mailbox and puts n envelopes into it.
func ackSyncSetup(t *testing.T, dir string, ackSync time.Duration, n int) (*Store, [store.IDSize]byte, []store.Ref) {
	t.Helper()
	opts := crashOpts
	opts.AckSync = ackSync
	return ackSyncSetupWith(t, dir, opts, n)
}

// ackSyncSetupWith is ackSyncSetup with the store's options given whole.
func ackSyncSetupWith(t *testing.T, dir string, opts store.Options, n int) (*Store, [store.IDSize]byte, []store.Ref) {
	t.Helper()
	s, err := Open(dir, opts)
	must(t, err)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil))
	var refs []store.Ref
	for i := range n {
		ref, err := s.Put(context.Background(), id, storetest.Envelope(id, 512, i))
		must(t, err)
		refs = append(refs, ref)
	}
	return s, id, refs
}

// An Ack is held, not written: the next write's frame carries it, or the
// committer writes and syncs it AckSync later, or Close does. Nothing else
// waits for a sync.
func TestAckSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const wait = 5 * time.Second
		s, id, refs := ackSyncSetup(t, t.TempDir(), wait, 4)
		defer s.Close()
		syncs := func() uint64 { return s.Stats().Syncs }
		before := syncs()
		if n, err := s.Ack(ctx, id, refs[0]); n != 1 || err != nil {
			t.Fatalf("Ack = %d, %v", n, err)
		}
		synctest.Wait()
		if got := syncs(); got != before {
			t.Fatalf("an Ack synced at once (%d syncs, had %d)", got, before)
		}
		if heldRefs(t, s, id)[refs[0]] {
			t.Fatal("an acked envelope is still fetched")
		}
		time.Sleep(wait - time.Millisecond)
		synctest.Wait()
		if got := syncs(); got != before {
			t.Fatalf("synced before AckSync passed (%d syncs, had %d)", got, before)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := syncs(); got != before+1 {
			t.Fatalf("%d syncs AckSync after an Ack, want %d", got, before+1)
		}
		// Two Acks, then a Put: the Put's one sync covers all three.
		for _, r := range refs[1:3] {
			if _, err := s.Ack(ctx, id, r); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Put(ctx, id, storetest.Envelope(id, 512, 99)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := syncs(); got != before+2 {
			t.Fatalf("%d syncs after two Acks and a Put, want %d", got, before+2)
		}
		time.Sleep(2 * wait)
		synctest.Wait()
		if got := syncs(); got != before+2 {
			t.Fatalf("%d syncs: a sync after AckSync though the Put covered the Acks", got)
		}
		// An Ack that deletes nothing writes nothing.
		if _, err := s.Ack(ctx, id, refs[0]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * wait)
		synctest.Wait()
		if got := syncs(); got != before+2 {
			t.Fatalf("%d syncs after an Ack of nothing, want %d", got, before+2)
		}
		// Close syncs an Ack still waiting.
		if _, err := s.Ack(ctx, id, refs[3]); err != nil {
			t.Fatal(err)
		}
		must(t, s.Close())
		if got := syncs(); got != before+3 {
			t.Fatalf("%d syncs after Close with an Ack waiting, want %d", got, before+3)
		}
	})
}

// Acks that would hold more than maxHeld bytes are written at once.
func TestAckSyncMaxHeld(t *testing.T) {
	defer func(n int) { maxHeld = n }(maxHeld)
	maxHeld = 4 << 10
	s, id, refs := ackSyncSetup(t, t.TempDir(), time.Hour, 1000)
	defer s.Close()
	before := s.Stats().Syncs
	if _, err := s.Ack(context.Background(), id, refs[:10]...); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Syncs; got != before {
		t.Fatalf("a small Ack synced (%d syncs, had %d)", got, before)
	}
	if _, err := s.Ack(context.Background(), id, refs[10:]...); err != nil { // about 8 KB of records
		t.Fatal(err)
	}
	if got := s.Stats().Syncs; got != before+1 {
		t.Fatalf("%d syncs after acks over maxHeld, want %d", got, before+1)
	}
}

// Held acks count as writes of the commit that writes them (OnCommit, the
// postern_store_commit_writes metric), not of a commit of their own.
func TestAckSyncCounted(t *testing.T) {
	ctx := context.Background()
	var writes []int // OnCommit runs on the committer, before the op returns
	opts := crashOpts
	opts.AckSync = time.Hour
	opts.OnCommit = func(n int, _ time.Duration) { writes = append(writes, n) }
	s, id, refs := ackSyncSetupWith(t, t.TempDir(), opts, 2)
	defer s.Close()
	for _, r := range refs {
		if _, err := s.Ack(ctx, id, r); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Put(ctx, id, storetest.Envelope(id, 512, 9))
	must(t, err)
	if want := []int{1, 1, 1, 3}; !slices.Equal(writes, want) {
		t.Fatalf("commits of %v writes, want %v", writes, want)
	}
}

// Held acks lead the frame that writes them, before the batch's own
// records, as the index applied them: with ids reusable at once (Retire
// < 0), a held ack of seq 1, then a delete, a create and a put of seq 1
// again, all in one frame, replay to the new envelope.
func TestAckSyncHeldFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		dir := t.TempDir()
		opts := crashOpts
		opts.AckSync, opts.Retire = time.Hour, -1
		s, id, refs := ackSyncSetupWith(t, dir, opts, 1)
		defer s.Close()
		if n, err := s.Ack(ctx, id, refs[0]); n != 1 || err != nil {
			t.Fatalf("Ack = %d, %v", n, err)
		}
		// Hold the committer (in a held batch, which writes nothing) while
		// the next three queue up, so that they make one batch.
		release := make(chan struct{})
		go s.doLazy(ctx, func(*writer) error { <-release; return nil })
		synctest.Wait()
		go s.DeleteMailbox(ctx, id)
		synctest.Wait()
		go s.CreateMailbox(ctx, id, storetest.Owner(1), nil)
		synctest.Wait()
		put := make(chan store.Ref, 1)
		go func() {
			ref, err := s.Put(ctx, id, storetest.Envelope(id, 512, 2))
			if err != nil {
				t.Error(err)
			}
			put <- ref
		}()
		synctest.Wait()
		commits := s.Stats().Commits
		close(release)
		ref := <-put
		if got := s.Stats().Commits - commits; got != 1 {
			t.Fatalf("the delete, create and put took %d commits, want one", got)
		}
		c, err := Open(copyStore(t, dir), opts)
		must(t, err)
		defer c.Close()
		if got := heldRefs(t, c, id); len(got) != 1 || !got[ref] {
			t.Fatalf("after a crash: %d envelopes (the new one among them: %v), want the new one", len(got), got[ref])
		}
	})
}

// A batch of acks held while writes fail for lack of space leaves
// DiskFull set: it wrote nothing.
func TestAckSyncDiskFull(t *testing.T) {
	ctx := context.Background()
	s, id, refs := ackSyncSetup(t, t.TempDir(), time.Hour, 2)
	defer s.Close()
	must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = syscall.ENOSPC; return nil }))
	if _, err := s.Put(ctx, id, storetest.Envelope(id, 512, 9)); !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("Put on a full disk returned %v", err)
	}
	if _, err := s.Ack(ctx, id, refs[0]); err != nil {
		t.Fatal(err)
	}
	if !s.Stats().DiskFull {
		t.Fatal("a held Ack cleared DiskFull")
	}
	must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = nil; return nil }))
	_, err := s.Put(ctx, id, storetest.Envelope(id, 512, 10))
	must(t, err)
	if s.Stats().DiskFull {
		t.Fatal("a Put that was written left DiskFull set")
	}
}

// With a negative AckSync every Ack is synced before it returns.
func TestAckSyncOff(t *testing.T) {
	s, id, refs := ackSyncSetup(t, t.TempDir(), -1, 2)
	defer s.Close()
	before := s.Stats().Syncs
	for i, r := range refs {
		if _, err := s.Ack(context.Background(), id, r); err != nil {
			t.Fatal(err)
		}
		if got := s.Stats().Syncs; got != before+uint64(i+1) {
			t.Fatalf("%d syncs after %d Acks, want %d", got, i+1, before+uint64(i+1))
		}
	}
}

// What a crash leaves of held acks: nothing of them is in the log, so a
// crash of the process (the files as the page cache holds them) or of the
// machine undoes them; once a Put's commit carried them they stay.
func TestAckSyncCrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := ackSyncSetup(t, dir, time.Hour, 3)
	defer s.Close()
	s.mu.RLock()
	seg := s.ix.active()
	size := seg.size
	s.mu.RUnlock()
	if _, err := s.Ack(ctx, id, refs[0], refs[1]); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, seg.path); got != size {
		t.Fatalf("the held Ack wrote to the log: %d bytes, had %d", got, size)
	}
	reopen := func(what string, want ...store.Ref) {
		t.Helper()
		c, err := Open(copyStore(t, dir), crashOpts)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer c.Close()
		got := heldRefs(t, c, id)
		for _, r := range want {
			if !got[r] {
				t.Fatalf("%s: an envelope is missing (%d held)", what, len(got))
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d envelopes, want %d", what, len(got), len(want))
		}
	}
	reopen("a crash with the acks held", refs...)
	ref, err := s.Put(ctx, id, storetest.Envelope(id, 512, 7))
	must(t, err)
	reopen("a crash after a Put carried the acks", refs[2], ref)
}

// fileSize returns the size of the file at path.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	return fi.Size()
}

// Held acks lead the next batch's frame, so the log keeps a single unsynced
// frame at its end: a crash that tore that frame anywhere (a page of it
// missing, with pages after it written) opens with every Put that returned
// before it, the frame's acks undone.
func TestAckSyncTornFrame(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := ackSyncSetup(t, dir, time.Hour, 1200)
	s.mu.RLock()
	seg := s.ix.active()
	start := seg.size
	s.mu.RUnlock()
	if n, err := s.Ack(ctx, id, refs[:1000]...); n != 1000 || err != nil {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	_, err := s.Put(ctx, id, storetest.Envelope(id, 8192, 5000))
	must(t, err)
	crashed := copyStore(t, dir)
	must(t, s.Close())
	if size := fileSize(t, filepath.Join(crashed, LogDir, segName(seg.num))); size < start+3*4096 {
		t.Fatalf("the last frame is %d bytes, want three pages or more", size-start)
	}
	f, err := os.OpenFile(filepath.Join(crashed, LogDir, segName(seg.num)), os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(make([]byte, 4096), start+4096) // a page inside the frame never written
	must(t, err)
	must(t, f.Close())
	c, err := Open(crashed, crashOpts)
	if err != nil {
		t.Fatalf("Open after a torn last frame: %v", err)
	}
	defer c.Close()
	if got := heldRefs(t, c, id); len(got) != 1200 {
		t.Fatalf("after a torn last frame: %d envelopes, want the 1,200 put before it", len(got))
	}
}

// An Ack and a Put in one batch: the batch is written and synced before
// either returns, the Ack with it.
func TestAckSyncMixedBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s, id, refs := ackSyncSetup(t, t.TempDir(), time.Hour, 1)
		defer s.Close()
		release := make(chan struct{})
		go s.do(ctx, func(*writer) error { <-release; return nil }) // holds the committer
		synctest.Wait()
		go s.Ack(ctx, id, refs[0])
		synctest.Wait() // the Ack waits first
		put := make(chan error, 1)
		go func() { _, err := s.Put(ctx, id, storetest.Envelope(id, 512, 9)); put <- err }()
		synctest.Wait()
		before := s.Stats().Syncs
		close(release)
		must(t, <-put)
		synctest.Wait()
		if got := s.Stats().Syncs; got != before+1 {
			t.Fatalf("a batch of an Ack and a Put returned the Put after %d syncs, want 1", got-before)
		}
		if len(s.held) != 0 {
			t.Fatal("the Ack of a mixed batch is held")
		}
	})
}

// Acks that keep coming without a Put are written AckSync after the first
// of them was held, not pushed back by each new one.
func TestAckSyncSteadyAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		const wait = time.Second
		s, id, refs := ackSyncSetup(t, t.TempDir(), wait, 40)
		defer s.Close()
		before := s.Stats().Syncs
		for _, r := range refs { // one every 100 ms for 4 s
			if _, err := s.Ack(ctx, id, r); err != nil {
				t.Fatal(err)
			}
			time.Sleep(wait / 10)
		}
		synctest.Wait()
		if got := s.Stats().Syncs - before; got < 3 || got > 4 {
			t.Fatalf("%d syncs for 4 s of acks with AckSync %v, want 3 or 4", got, wait)
		}
	})
}

// Held acks when the segment is full go into the next segment's first
// frame.
func TestAckSyncRollover(t *testing.T) {
	defer func(n int64) { segmentBytes = n }(segmentBytes)
	segmentBytes = 16 << 10
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := ackSyncSetup(t, dir, time.Hour, 0)
	active := func() (uint64, int64) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.ix.active().num, s.ix.active().size
	}
	first, _ := active()
	for i := 0; ; i++ { // fill the segment: the next batch starts a new one
		ref, err := s.Put(ctx, id, storetest.Envelope(id, 512, i))
		must(t, err)
		refs = append(refs, ref)
		if num, size := active(); num != first {
			t.Fatal("a new segment before the test's Ack")
		} else if size >= segmentBytes {
			break
		}
	}
	if _, err := s.Ack(ctx, id, refs[0]); err != nil {
		t.Fatal(err)
	}
	ref, err := s.Put(ctx, id, storetest.Envelope(id, 512, 99))
	must(t, err)
	if next, _ := active(); next == first {
		t.Fatal("no new segment")
	}
	crashed := copyStore(t, dir)
	must(t, s.Close())
	c, err := Open(crashed, crashOpts)
	must(t, err)
	defer c.Close()
	if got := heldRefs(t, c, id); len(got) != len(refs) || got[refs[0]] || !got[ref] {
		t.Fatalf("after the rollover: %d envelopes (the acked one among them: %v), want %d without it", len(got), got[refs[0]], len(refs))
	}
}

// A write of the held acks that fails at Close is reported by Close, and
// the acks are undone.
func TestAckSyncCloseFails(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := ackSyncSetup(t, dir, time.Hour, 2)
	if _, err := s.Ack(ctx, id, refs[0]); err != nil {
		t.Fatal(err)
	}
	must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = syscall.EIO; return nil }))
	if err := s.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close with the held acks' sync failing returned %v", err)
	}
	c, err := Open(dir, crashOpts)
	must(t, err)
	defer c.Close()
	if got := heldRefs(t, c, id); len(got) != 2 {
		t.Fatalf("reopened: %d envelopes, want both (the held Ack undone)", len(got))
	}
}

// A sync that fails, at AckSync or under the next batch, undoes the held
// Acks with the batch (the envelopes come back), and the store goes on
// once syncs work again.
func TestAckSyncFails(t *testing.T) {
	for _, under := range []string{"AckSync", "Put"} {
		t.Run(under, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				dir := t.TempDir()
				s, id, refs := ackSyncSetup(t, dir, time.Second, 2)
				defer s.Close()
				failSyncs := func(err error) {
					// On the committer, which reads syncFail, in a
					// batch that writes nothing.
					must(t, s.doLazy(ctx, func(*writer) error { s.syncFail = err; return nil }))
				}
				eio := syscall.EIO
				if _, err := s.Ack(ctx, id, refs[0]); err != nil {
					t.Fatal(err)
				}
				failSyncs(eio)
				switch under {
				case "AckSync":
					time.Sleep(2 * time.Second)
					synctest.Wait()
				case "Put":
					if _, err := s.Put(ctx, id, storetest.Envelope(id, 512, 50)); !errors.Is(err, eio) {
						t.Fatalf("Put with a failing sync returned %v", err)
					}
				}
				if got := heldRefs(t, s, id); len(got) != 2 {
					t.Fatalf("after the failed sync the mailbox holds %d envelopes, want both (the Ack undone)", len(got))
				}
				failSyncs(nil)
				ref, err := s.Put(ctx, id, storetest.Envelope(id, 512, 51))
				must(t, err)
				if n, err := s.Ack(ctx, id, refs[1]); n != 1 || err != nil {
					t.Fatalf("Ack after the failure = %d, %v", n, err)
				}
				must(t, s.Close())
				c, err := Open(dir, crashOpts)
				must(t, err)
				defer c.Close()
				if got := heldRefs(t, c, id); len(got) != 2 || !got[refs[0]] || !got[ref] {
					t.Fatalf("reopened: %d envelopes, want the undone ack's and the later Put's", len(got))
				}
			})
		})
	}
}
