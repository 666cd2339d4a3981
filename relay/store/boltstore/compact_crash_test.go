package boltstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// A crash in the middle of compaction. crashPoint copies the store
// directory after every step of it (a chunk of live records carried and
// durable, a new segment's temporary file written, renamed, the old
// segment removed, the removal synced): exactly what a kill -9 there
// leaves, since every step is a finished system call. Between two chunks
// the test acks, deletes and adds as a relay would. Every copy must open
// cleanly and hold exactly what had been acknowledged at that step: no
// acked envelope lost, no acked or deleted one back, no seq reused; and a
// store opened on it must finish compacting and reopen the same.

// crashModel is what the store must hold.
type crashModel struct {
	refs    map[int]map[store.Ref]bool // mailbox -> pending refs
	deleted map[int]bool               // deleted (retired) mailboxes
	out     []uint64                   // pending outbox seqs of dest 1
	maxSeq  map[int]uint64             // highest envelope seq ever given per mailbox
	maxOut  uint64
}

func (m *crashModel) clone() *crashModel {
	c := &crashModel{refs: map[int]map[store.Ref]bool{}, deleted: maps.Clone(m.deleted),
		out: slices.Clone(m.out), maxSeq: maps.Clone(m.maxSeq), maxOut: m.maxOut}
	for k, v := range m.refs {
		c.refs[k] = maps.Clone(v)
	}
	return c
}

type crashSnap struct {
	step  string
	dir   string
	model *crashModel
}

const crashBoxes = 6

var crashOpts = store.Options{IDKey: testKey, MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1}

// TestCompactionCrashSteps runs with compacted segments deleted (new
// segments are new files) and kept as the spare (new segments are written
// over it).
func TestCompactionCrashSteps(t *testing.T) {
	t.Run("new files", func(t *testing.T) {
		compactionCrashSteps(t, false, stepSegmentTemp, stepSegmentRenamed)
	})
	t.Run("recycled", func(t *testing.T) {
		compactionCrashSteps(t, true, stepSpareSynced, stepSpareHeader, stepSpareRenamed)
	})
}

func compactionCrashSteps(t *testing.T, recycle bool, steps ...string) {
	defer func(n int64, c int, p func(string), r bool) {
		segmentBytes, carryChunk, crashPoint, recycleSegments = n, c, p, r
	}(segmentBytes, carryChunk, crashPoint, recycleSegments)
	segmentBytes, carryChunk, recycleSegments = 16<<10, 3<<10, recycle
	dir := t.TempDir()
	s, err := Open(dir, crashOpts)
	must(t, err)
	s.compacting.Store(true) // the test compacts, step by step
	m := &crashModel{refs: map[int]map[store.Ref]bool{}, deleted: map[int]bool{}, maxSeq: map[int]uint64{}}
	crashSetup(t, s, m)

	var snaps []crashSnap
	mutated := false
	crashPoint = func(step string) {
		if step == stepCarried && !mutated {
			mutated = true
			snaps = append(snaps, crashSnap{step, copyStore(t, dir), m.clone()})
			crashMutate(t, s, m)
			step += ", then ack, delete, put, done"
		}
		snaps = append(snaps, crashSnap{step, copyStore(t, dir), m.clone()})
	}
	for range 2 {
		s.mu.RLock()
		old := s.ix.segs[s.ix.order[0]]
		s.mu.RUnlock()
		must(t, s.compact(old.num, old.path))
	}
	crashPoint = nil
	crashVerify(t, s, m)
	must(t, s.Close())

	seen := map[string]bool{}
	for i, sn := range snaps {
		seen[sn.step] = true
		t.Run(fmt.Sprintf("%02d %s", i, sn.step), func(t *testing.T) { crashRecover(t, sn) })
	}
	for _, step := range append(steps, stepCarried, stepRemoved, stepRemovalSynced) {
		if !seen[step] {
			t.Errorf("the compactions never reached step %q: the test does not cover it", step)
		}
	}
	t.Logf("%d crash points", len(snaps))
}

// crashSetup fills s with several segments of envelopes (some acked), a
// deleted mailbox and outbox items (some done).
func crashSetup(t *testing.T, s *Store, m *crashModel) {
	ctx := context.Background()
	for b := range crashBoxes {
		must(t, s.CreateMailbox(ctx, storetest.ID(b), storetest.Owner(b), nil))
		m.refs[b] = map[store.Ref]bool{}
		mb, err := s.Mailbox(ctx, storetest.ID(b))
		must(t, err)
		m.maxSeq[b] = mb.NextSeq - 1 // numbering starts at store.FirstSeq
	}
	var refs []store.Ref
	for i := range 60 {
		b := i % crashBoxes
		refs = append(refs, crashPut(t, s, m, b, i))
		if i%3 == 2 {
			crashAck(t, s, m, (i-2)%crashBoxes, refs[i-2])
		}
		it, err := s.Enqueue(ctx, storetest.Dest(1), storetest.Forward(300, i))
		must(t, err)
		m.out, m.maxOut = append(m.out, it.Seq), it.Seq
		if i%4 == 3 {
			must(t, s.Done(ctx, storetest.Dest(1), m.out[0]))
			m.out = m.out[1:]
		}
	}
	must(t, s.DeleteMailbox(ctx, storetest.ID(crashBoxes-1)))
	m.deleted[crashBoxes-1] = true
	delete(m.refs, crashBoxes-1)
	s.mu.RLock()
	n := len(s.ix.order)
	s.mu.RUnlock()
	if n < 4 {
		t.Fatalf("setup wrote %d segments, want at least 4", n)
	}
}

// crashMutate is what a relay does while a compaction runs: it acks an
// envelope of the oldest segment (carried or not yet), deletes a mailbox,
// puts a new envelope and marks an outbox item done.
func crashMutate(t *testing.T, s *Store, m *crashModel) {
	ctx := context.Background()
	for _, b := range []int{0, 1} {
		for ref := range m.refs[b] {
			crashAck(t, s, m, b, ref)
			break
		}
	}
	must(t, s.DeleteMailbox(ctx, storetest.ID(2)))
	m.deleted[2] = true
	delete(m.refs, 2)
	crashPut(t, s, m, 3, 1000)
	must(t, s.Done(ctx, storetest.Dest(1), m.out[0]))
	m.out = m.out[1:]
}

func crashPut(t *testing.T, s *Store, m *crashModel, b, n int) store.Ref {
	t.Helper()
	id := storetest.ID(b)
	ref, err := s.Put(context.Background(), id, storetest.Envelope(id, 1024, n))
	must(t, err)
	m.refs[b][ref] = true
	m.maxSeq[b]++
	return ref
}

func crashAck(t *testing.T, s *Store, m *crashModel, b int, ref store.Ref) {
	t.Helper()
	if n, err := s.Ack(context.Background(), storetest.ID(b), ref); err != nil || n != 1 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	delete(m.refs[b], ref)
}

// crashRecover opens the copy of a store that a crash at sn.step left,
// checks it, lets it compact every segment it can, and checks it again,
// also after a reopen.
func crashRecover(t *testing.T, sn crashSnap) {
	s, err := Open(sn.dir, crashOpts)
	if err != nil {
		t.Fatalf("open after a crash: %v", err)
	}
	s.compacting.Store(true) // before any write: the test compacts
	crashVerify(t, s, sn.model)
	m := sn.model.clone()
	crashPut(t, s, m, 0, 2000)
	if got, _ := s.Fetch(context.Background(), storetest.ID(0), 0); len(got) == 0 || got[len(got)-1].Seq != m.maxSeq[0] {
		t.Fatalf("a put after the crash got seq %v, want %d: seqs reused", got, m.maxSeq[0])
	}
	it, err := s.Enqueue(context.Background(), storetest.Dest(1), []byte("after"))
	if err != nil || it.Seq <= m.maxOut {
		t.Fatalf("enqueue after the crash: seq %d, %v; want above %d", it.Seq, err, m.maxOut)
	}
	m.out = append(m.out, it.Seq)
	// Finish the compaction the crash cut short, and compact every other
	// segment once: each must go.
	s.mu.RLock()
	var olds []*segment
	for _, num := range s.ix.order[:len(s.ix.order)-1] {
		olds = append(olds, s.ix.segs[num])
	}
	s.mu.RUnlock()
	for _, old := range olds {
		if err := s.compact(old.num, old.path); err != nil {
			t.Fatalf("compact segment %d after the crash: %v", old.num, err)
		}
		if _, err := os.Stat(old.path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("segment %d is still there after its compaction: %v", old.num, err)
		}
	}
	crashVerify(t, s, m)
	must(t, s.Close())
	s, err = Open(sn.dir, crashOpts)
	if err != nil {
		t.Fatalf("reopen after compacting: %v", err)
	}
	defer s.Close()
	crashVerify(t, s, m)
}

// crashVerify checks that s holds exactly what m says.
func crashVerify(t *testing.T, s *Store, m *crashModel) {
	t.Helper()
	ctx := context.Background()
	total := 0
	for b := range crashBoxes {
		id := storetest.ID(b)
		items, err := s.Fetch(ctx, id, 1<<20)
		if m.deleted[b] {
			if !errors.Is(err, store.ErrNoMailbox) {
				t.Fatalf("deleted mailbox %d is back: %d items, %v", b, len(items), err)
			}
			if err := s.CreateMailbox(ctx, id, storetest.Owner(b), nil); !errors.Is(err, store.ErrMailboxExists) {
				t.Fatalf("deleted mailbox %d is no longer retired: create = %v", b, err)
			}
			continue
		}
		must(t, err)
		got := map[store.Ref]bool{}
		for _, it := range items {
			if got[it.Ref] {
				t.Fatalf("mailbox %d holds an envelope twice", b)
			}
			got[it.Ref] = true
			if !m.refs[b][it.Ref] {
				t.Fatalf("mailbox %d holds an envelope that was acked (seq %d)", b, it.Seq)
			}
		}
		if len(got) != len(m.refs[b]) {
			t.Fatalf("mailbox %d holds %d envelopes, want %d: acknowledged puts lost", b, len(got), len(m.refs[b]))
		}
		total += len(got)
	}
	pend, err := s.Pending(ctx, storetest.Dest(1), 0, 1<<20)
	must(t, err)
	var seqs []uint64
	for _, it := range pend {
		seqs = append(seqs, it.Seq)
	}
	if !slices.Equal(seqs, m.out) {
		t.Fatalf("outbox holds seqs %v, want %v", seqs, m.out)
	}
	if st := s.Stats(); st.Envelopes != total || st.Mailboxes != crashBoxes-len(m.deleted) {
		t.Fatalf("stats %+v, want %d envelopes in %d mailboxes", st, total, crashBoxes-len(m.deleted))
	}
}

// copyStore copies the store directory dir, as a crash would leave it.
func copyStore(t *testing.T, dir string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

const compactCrashEnv = "POSTERN_STORE_COMPACT_CRASH_CHILD"

// TestCompactionKillChild is the child of TestCompactionKill: on tiny
// segments, so that compaction runs all the time, each worker puts into
// its own mailbox and acks every other envelope, printing "P box ref"
// once a put returned, "a box ref" before an ack and "A box ref" once it
// returned, and "R 0 0" each time a new segment was written over the spare.
func TestCompactionKillChild(t *testing.T) {
	dir := os.Getenv(compactCrashEnv)
	if dir == "" {
		t.Skip("run by TestCompactionKill")
	}
	segmentBytes, carryChunk = 32<<10, 8<<10
	opts := crashOpts
	if os.Getenv(compactCrashEnv+"_ACKS") == "synced" {
		opts.AckSync = -1
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(what string, b int, ref store.Ref) {
		mu.Lock() // one write per line: a pipe write under PIPE_BUF is atomic
		fmt.Fprintf(out, "%s %d %x\n", what, b, ref)
		out.Flush()
		mu.Unlock()
	}
	crashPoint = func(step string) {
		if step == stepSpareRenamed {
			say("R", 0, store.Ref{})
		}
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for b := range crashBoxes {
		wg.Go(func() {
			id := storetest.ID(b)
			for i := range 3000 {
				ref, err := s.Put(ctx, id, storetest.Envelope(id, 1024, i))
				if err != nil {
					fmt.Fprintln(os.Stderr, "put:", err)
					os.Exit(2)
				}
				say("P", b, ref)
				if i%2 == 1 {
					say("a", b, ref)
					if _, err := s.Ack(ctx, id, ref); err != nil {
						fmt.Fprintln(os.Stderr, "ack:", err)
						os.Exit(2)
					}
					say("A", b, ref)
				}
			}
		})
	}
	wg.Wait()
	s.Close()
}

// TestCompactionKill kills a process that puts and acks on a log that
// compacts all the time with SIGKILL, and checks that every envelope
// whose put returned is there unless an ack of it had begun, and, with
// every ack synced (AckSync < 0), that no envelope whose ack returned is
// back. With acks held (the default), those back are only counted: a
// crash undoes held acks by design.
func TestCompactionKill(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	for _, acks := range []string{"synced", "held"} {
		t.Run(acks, func(t *testing.T) { compactionKill(t, acks) })
	}
}

func compactionKill(t *testing.T, acks string) {
	dir := t.TempDir()
	s, err := Open(dir, crashOpts)
	must(t, err)
	for b := range crashBoxes {
		must(t, s.CreateMailbox(context.Background(), storetest.ID(b), storetest.Owner(b), nil))
	}
	must(t, s.Close())

	cmd := exec.Command(os.Args[0], "-test.run=^TestCompactionKillChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), compactCrashEnv+"="+dir, compactCrashEnv+"_ACKS="+acks)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	must(t, cmd.Start())
	const killAfter = 4000       // puts: about 2 MiB through 32 KiB segments
	state := map[string]string{} // "box ref" -> last of P, a, A
	// Each worker puts after its ack returned, so a Put that returned
	// after an Ack of the same worker carried that ack if it was held:
	// line numbers of each box's last P and of each key's A.
	lastPut := map[string]int{}
	ackedAt := map[string]int{}
	puts, recycled, killed := 0, 0, false
	sc := bufio.NewScanner(stdout)
	for line := 0; sc.Scan(); line++ {
		what, key, ok := strings.Cut(sc.Text(), " ")
		if what == "R" {
			recycled++
		}
		if !ok || (what != "P" && what != "a" && what != "A") {
			continue
		}
		state[key] = what
		box, _, _ := strings.Cut(key, " ")
		switch what {
		case "P":
			puts++
			lastPut[box] = line
		case "A":
			ackedAt[key] = line
		}
		if puts == killAfter && !killed {
			cmd.Process.Kill() // SIGKILL: no Close, no flush
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before %d puts: %v\n%s", killAfter, err, stderr.String())
	}

	nums, err := listSegments(filepath.Join(dir, LogDir))
	must(t, err)
	if nums[0] == 1 {
		t.Fatalf("segment 1 is still there: the child never compacted, the test proves nothing")
	}
	if recycled == 0 {
		t.Fatalf("no segment was written over the spare: the test proves nothing of recycled segments")
	}
	t.Logf("%d segments written over the spare before the kill", recycled)
	s, err = Open(dir, crashOpts)
	if err != nil {
		t.Fatalf("open after SIGKILL during compaction: %v", err)
	}
	defer s.Close()
	stored := map[string]bool{}
	for b := range crashBoxes {
		items, err := s.Fetch(context.Background(), storetest.ID(b), 1<<20)
		must(t, err)
		for _, it := range items {
			key := fmt.Sprintf("%d %x", b, it.Ref)
			if stored[key] {
				t.Fatalf("mailbox %d holds an envelope twice", b)
			}
			stored[key] = true
		}
	}
	lost, back, carried := 0, 0, 0
	for key, what := range state {
		box, _, _ := strings.Cut(key, " ")
		switch {
		case what == "P" && !stored[key]:
			lost++
		case what == "A" && stored[key]:
			back++
			if lastPut[box] > ackedAt[key] {
				carried++ // a later Put of the worker returned: the ack was written
			}
		}
	}
	t.Logf("%d puts acknowledged before SIGKILL; segments %x…; %d envelopes after reopen", puts, nums[0], len(stored))
	t.Logf("acks %s: %d acked envelopes back after the kill (at most one a worker, its last ack, may be when acks are held)", acks, back)
	if lost > 0 || carried > 0 || (back > 0 && acks == "synced") {
		t.Fatalf("after SIGKILL during compaction: %d acknowledged puts lost, %d acked envelopes back (%d of them after a later put returned)", lost, back, carried)
	}
}
