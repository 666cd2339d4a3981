package boltstore_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
)

func TestOutboxConformance(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T, opts store.Options) store.Outbox {
		s, err := boltstore.Open(t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestOutboxReopen: items, totals and the sequence survive Close and Open,
// beside mailboxes in the same file, and items are not stored in the clear.
func TestOutboxReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, store.Options{})
	id := storetest.ID(1)
	if err := s.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	env := storetest.Envelope(id, 1000, 1)
	if _, err := s.Put(ctx, id, env); err != nil {
		t.Fatal(err)
	}
	a, b := storetest.Dest(1), storetest.Dest(2)
	var items []store.OutboxItem
	for i := range 4 {
		it, err := s.Enqueue(ctx, a, storetest.Forward(3000, i))
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	last, err := s.Enqueue(ctx, b, storetest.Forward(3000, 9))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, a, items[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, b, last.Seq); err != nil {
		t.Fatal(err)
	}
	s.Close()

	raw := storeData(t, dir)
	if bytes.Contains(raw, items[1].Item[:64]) {
		t.Fatal("an outbox item is stored in the clear")
	}

	s = open(t, dir, store.Options{})
	defer s.Close()
	if st := s.OutboxStats(); st.Items != 3 || st.Bytes != 9000 {
		t.Fatalf("after reopen OutboxStats = %+v, want 3 items, 9000 bytes", st)
	}
	if st := s.Stats(); st.Envelopes != 1 {
		t.Fatalf("after reopen Stats = %+v, want the envelope", st)
	}
	got, err := s.Pending(ctx, a, 0, 0)
	if err != nil || len(got) != 3 {
		t.Fatalf("Pending after reopen = %d items, %v", len(got), err)
	}
	for i, it := range got {
		if it.Seq != items[i+1].Seq || !bytes.Equal(it.Item, items[i+1].Item) {
			t.Fatalf("item %d changed across reopen", i)
		}
	}
	dests, err := s.Dests(ctx)
	if err != nil || len(dests) != 1 || dests[0] != a {
		t.Fatalf("Dests after reopen = %d, %v; want only the destination with items", len(dests), err)
	}
	next, err := s.Enqueue(ctx, b, storetest.Forward(10, 10))
	if err != nil || next.Seq <= last.Seq {
		t.Fatalf("Enqueue after reopen = seq %d, %v; want more than %d (no reuse)", next.Seq, err, last.Seq)
	}
	if envs, err := s.Fetch(ctx, id, 0); err != nil || len(envs) != 1 || !bytes.Equal(envs[0].Envelope, env) {
		t.Fatalf("the mailbox beside the outbox: %d envelopes, %v", len(envs), err)
	}
}

// TestOutboxQuotaReopen: the outbox byte total is loaded at Open, so the
// quota holds across restarts.
func TestOutboxQuotaReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := store.Options{MaxOutboxBytes: 2000}
	s := open(t, dir, opts)
	if _, err := s.Enqueue(ctx, storetest.Dest(1), make([]byte, 1500)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, opts)
	defer s.Close()
	if _, err := s.Enqueue(ctx, storetest.Dest(2), make([]byte, 600)); err != store.ErrOutboxFull {
		t.Fatalf("Enqueue past the quota after reopen: %v, want ErrOutboxFull", err)
	}
}

const outboxCrashEnv = "POSTERN_OUTBOX_CRASH_CHILD"

// TestOutboxCrashChild is the child of TestOutboxCrash: it enqueues items
// for three destinations from several goroutines and prints, for each one
// acknowledged, "dest seq seed".
func TestOutboxCrashChild(t *testing.T) {
	dir := os.Getenv(outboxCrashEnv)
	if dir == "" {
		t.Skip("run by TestOutboxCrash")
	}
	s, err := boltstore.Open(dir, store.Options{MaxOutboxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	const workers, each = 8, 2000
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				seed := w*each + i
				it, err := s.Enqueue(context.Background(), storetest.Dest(seed%3), storetest.Forward(4096, seed))
				if err != nil {
					fmt.Fprintln(os.Stderr, "enqueue:", err)
					os.Exit(2)
				}
				// One write per line: a pipe write under PIPE_BUF is atomic.
				mu.Lock()
				fmt.Fprintf(out, "%d %d %d\n", seed%3, it.Seq, seed)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s.Close()
}

// TestOutboxCrash kills a process that is enqueueing with SIGKILL and
// checks that every Enqueue that had returned is pending after reopen,
// exactly once, under its seq, with its bytes.
func TestOutboxCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOutboxCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), outboxCrashEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const killAfter = 300
	type key struct{ dest, seq uint64 }
	acked := make(map[key]int) // -> seed
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue // "PASS" etc. if the child ever finished
		}
		d, _ := strconv.ParseUint(f[0], 10, 64)
		seq, _ := strconv.ParseUint(f[1], 10, 64)
		seed, _ := strconv.Atoi(f[2])
		acked[key{d, seq}] = seed
		if len(acked) == killAfter && !killed {
			cmd.Process.Kill() // SIGKILL: no deferred Close, no flush
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before %d enqueues: %v\n%s", killAfter, err, stderr.String())
	}
	t.Logf("child acknowledged %d enqueues before SIGKILL", len(acked))

	s := open(t, dir, store.Options{})
	defer s.Close()
	found := make(map[key][]byte)
	total := 0
	for d := range uint64(3) {
		items, err := s.Pending(context.Background(), storetest.Dest(int(d)), 0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			k := key{d, it.Seq}
			if found[k] != nil {
				t.Fatalf("seq %d pending twice", it.Seq)
			}
			found[k] = it.Item
		}
		total += len(items)
	}
	for k, seed := range acked {
		item := found[k]
		if item == nil {
			t.Fatalf("an acknowledged item (seq %d) is lost after SIGKILL", k.seq)
		}
		if !bytes.Equal(item, storetest.Forward(4096, seed)) {
			t.Fatalf("the item at seq %d is not the one acknowledged there", k.seq)
		}
	}
	t.Logf("outbox holds %d items after the crash", total)
	if st := s.OutboxStats(); st.Items != total || st.Bytes != int64(total)*4096 {
		t.Fatalf("OutboxStats = %+v, Pending found %d items", st, total)
	}
}
