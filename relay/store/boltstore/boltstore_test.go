package boltstore_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
)

var unlimited = store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
		s, err := boltstore.Open(t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func open(t testing.TB, dir string, opts store.Options) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, store.Options{})
	a, b := storetest.ID(1), storetest.ID(2)
	for i, id := range [][32]byte{a, b} {
		if err := s.CreateMailbox(ctx, id, storetest.Owner(i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var refs []store.Ref
	for i := range 5 {
		r, err := s.Put(ctx, a, storetest.Envelope(a, 4096*(1+i%2), i))
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, r)
	}
	if _, err := s.Put(ctx, b, storetest.Envelope(b, 65536, 9)); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Ack(ctx, a, refs[1]); n != 1 || err != nil {
		t.Fatal("ack failed")
	}
	before := s.Stats()
	mbA, _ := s.Mailbox(ctx, a)
	itemsA, _ := s.Fetch(ctx, a, 0)
	itemsB, _ := s.Fetch(ctx, b, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, store.Options{})
	defer s.Close()
	after := s.Stats()
	if after.Mailboxes != before.Mailboxes || after.Envelopes != before.Envelopes || after.Bytes != before.Bytes {
		t.Fatalf("Stats after reopen = %+v, before %+v", after, before)
	}
	for _, tc := range []struct {
		id    [32]byte
		items []store.Item
		owner int
	}{{a, itemsA, 0}, {b, itemsB, 1}} {
		got, err := s.Fetch(ctx, tc.id, 0)
		if err != nil || len(got) != len(tc.items) {
			t.Fatalf("Fetch after reopen = %d items, %v; want %d", len(got), err, len(tc.items))
		}
		for i := range got {
			if got[i].Ref != tc.items[i].Ref || !bytes.Equal(got[i].Envelope, tc.items[i].Envelope) {
				t.Fatalf("envelope %d changed across reopen", i)
			}
		}
		mb, err := s.Mailbox(ctx, tc.id)
		if err != nil || !mb.Owner.Equal(storetest.Owner(tc.owner)) || mb.Pending != len(tc.items) {
			t.Fatalf("Mailbox after reopen = %+v, %v", mb, err)
		}
	}
	// Sequence numbers go on from where they were (a SubscribeAfter
	// cursor past NextSeq is taken for a mailbox made again).
	if mb, err := s.Mailbox(ctx, a); err != nil || mb.NextSeq == 0 || mb.NextSeq < mbA.NextSeq {
		t.Fatalf("NextSeq %d after reopen, %d before", mb.NextSeq, mbA.NextSeq)
	}
	// Dedupe and ordering continue where they were.
	if r, err := s.Put(ctx, a, storetest.Envelope(a, 4096, 0)); err != nil || r != refs[0] {
		t.Fatal("duplicate after reopen not recognised")
	}
	e := storetest.Envelope(a, 4096, 100)
	if _, err := s.Put(ctx, a, e); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Fetch(ctx, a, 0)
	if len(got) != 5 || !bytes.Equal(got[4].Envelope, e) {
		t.Fatal("envelope put after reopen is not last")
	}
}

func TestFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	s := open(t, dir, store.Options{})
	s.Close()
	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o700 | os.ModeDir},
		{filepath.Join(dir, boltstore.LogDir), 0o700 | os.ModeDir},
		{filepath.Join(dir, boltstore.LogDir, "0000000000000001.seg"), 0o600},
		{filepath.Join(dir, boltstore.KeyFile), 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.mode {
			t.Errorf("%s has mode %v, want %v", tc.path, fi.Mode(), tc.mode)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, boltstore.KeyFile)); fi.Size() != store.KeySize {
		t.Errorf("key file holds %d bytes, want %d", fi.Size(), store.KeySize)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	// A store with one mailbox, whose key we know.
	key := bytes.Repeat([]byte{7}, store.KeySize)
	made := func(t *testing.T) string {
		dir := t.TempDir()
		s := open(t, dir, store.Options{})
		if err := s.CreateMailbox(ctx, storetest.ID(1), storetest.Owner(1), nil); err != nil {
			t.Fatal(err)
		}
		s.Close()
		return dir
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) store.Options
		want  []string // substrings of the error; $KEY and $DATA are the file paths
	}{
		{"wrong key", func(t *testing.T, dir string) store.Options {
			return store.Options{IDKey: key}
		}, []string{"does not match", "$DATA"}},
		{"short IDKey", func(t *testing.T, dir string) store.Options {
			return store.Options{IDKey: key[:16]}
		}, []string{"Options.IDKey", "32 bytes"}},
		{"key file missing", func(t *testing.T, dir string) store.Options {
			os.Remove(filepath.Join(dir, boltstore.KeyFile))
			return store.Options{}
		}, []string{"$KEY", "missing"}},
		{"key file wrong size", func(t *testing.T, dir string) store.Options {
			os.WriteFile(filepath.Join(dir, boltstore.KeyFile), []byte("short"), 0o600)
			return store.Options{}
		}, []string{"$KEY", "5 bytes"}},
		{"key file readable by others", func(t *testing.T, dir string) store.Options {
			os.Chmod(filepath.Join(dir, boltstore.KeyFile), 0o644)
			return store.Options{}
		}, []string{"$KEY", "chmod 600"}},
		{"key file is a directory", func(t *testing.T, dir string) store.Options {
			os.Remove(filepath.Join(dir, boltstore.KeyFile))
			os.Mkdir(filepath.Join(dir, boltstore.KeyFile), 0o700)
			return store.Options{}
		}, []string{"read key file", "$KEY"}},
		{"log segment garbage", func(t *testing.T, dir string) store.Options {
			os.WriteFile(filepath.Join(dir, boltstore.LogDir, "0000000000000001.seg"), bytes.Repeat([]byte("not a log"), 1000), 0o600)
			return store.Options{}
		}, []string{"$DATA", "corrupt"}},
		{"log directory missing", func(t *testing.T, dir string) store.Options {
			os.RemoveAll(filepath.Join(dir, boltstore.LogDir))
			return store.Options{}
		}, []string{"$DATA", "$KEY", "missing"}},
		{"old data file garbage", func(t *testing.T, dir string) store.Options {
			os.RemoveAll(filepath.Join(dir, boltstore.LogDir))
			os.WriteFile(filepath.Join(dir, boltstore.LegacyFile), bytes.Repeat([]byte("not a bolt file"), 1000), 0o600)
			return store.Options{}
		}, []string{"$LEGACY", "corrupt"}},
		{"data file in use", func(t *testing.T, dir string) store.Options {
			s := open(t, dir, store.Options{})
			t.Cleanup(func() { s.Close() })
			return store.Options{}
		}, []string{"$DIR", "locked"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := made(t)
			opts := tc.setup(t, dir)
			s, err := boltstore.Open(dir, opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			for _, w := range tc.want {
				w = strings.NewReplacer("$KEY", filepath.Join(dir, boltstore.KeyFile), "$DATA", filepath.Join(dir, boltstore.LogDir),
					"$LEGACY", filepath.Join(dir, boltstore.LegacyFile), "$DIR", dir).Replace(w)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestCreateErrors: a new store that cannot be created says where and why.
func TestCreateErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) (dir string, opts store.Options, want []string)
	}{
		{"directory is a file", func(t *testing.T) (string, store.Options, []string) {
			dir := filepath.Join(t.TempDir(), "relay")
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return dir, store.Options{}, []string{"create directory", dir}
		}},
		{"key file directory missing", func(t *testing.T) (string, store.Options, []string) {
			key := filepath.Join(t.TempDir(), "missing", "relay.key")
			return t.TempDir(), store.Options{KeyFile: key}, []string{"create key file", key}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, opts, want := tc.setup(t)
			s, err := boltstore.Open(dir, opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestKeyElsewhere(t *testing.T) {
	ctx := context.Background()
	dir, keyDir := t.TempDir(), t.TempDir()
	keyFile := filepath.Join(keyDir, "relay.key")
	s := open(t, dir, store.Options{KeyFile: keyFile})
	id := storetest.ID(1)
	if err := s.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, boltstore.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a key file was written beside the data file although KeyFile points elsewhere")
	}
	// Without the key, the data file is useless (and the store says so);
	// with it, everything is there.
	if _, err := boltstore.Open(dir, store.Options{}); err == nil {
		t.Fatal("opened without the key file")
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, store.Options{IDKey: key})
	defer s.Close()
	if _, err := s.Mailbox(ctx, id); err != nil {
		t.Fatalf("mailbox lost: %v", err)
	}
}

// TestNoRawIDs runs a workload and then searches the raw bytes of the
// data file for every mailbox id used, in raw, hex, base64 and base32 form,
// and for the envelopes' plaintext.
func TestNoRawIDs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := bytes.Repeat([]byte{0x42}, store.KeySize)
	s := open(t, dir, store.Options{IDKey: key})
	var ids [][32]byte
	var envs [][]byte
	for i := range 6 {
		ids = append(ids, storetest.ID(100+i))
	}
	for i, id := range ids[:4] {
		if err := s.CreateMailbox(ctx, id, storetest.Owner(i), nil); err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			e := storetest.Envelope(id, 4096, i*10+j)
			envs = append(envs, e)
			if _, err := s.Put(ctx, id, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	items, _ := s.Fetch(ctx, ids[0], 2)
	s.Ack(ctx, ids[0], items[0].Ref, items[1].Ref)
	if _, err := s.RotateMailbox(ctx, ids[1], ids[4], storetest.Owner(4), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMailbox(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, ids[5], storetest.Owner(5), nil); err != nil {
		t.Fatal(err)
	}
	s.Sweep(ctx, time.Now())
	s.Close()

	data := storeData(t, dir)
	for i, id := range ids {
		forms := map[string][]byte{
			"raw":          id[:],
			"hex":          []byte(hex.EncodeToString(id[:])),
			"HEX":          []byte(strings.ToUpper(hex.EncodeToString(id[:]))),
			"base64":       []byte(base64.StdEncoding.EncodeToString(id[:])),
			"base64url":    []byte(base64.RawURLEncoding.EncodeToString(id[:])),
			"base32":       []byte(base32.StdEncoding.EncodeToString(id[:])),
			"base32hex":    []byte(base32.HexEncoding.EncodeToString(id[:])),
			"base32 nopad": []byte(strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(id[:]))),
			"first 16 raw": id[:16],
			"last 16 raw":  id[16:],
		}
		for name, f := range forms {
			if bytes.Contains(data, f) {
				t.Errorf("data file contains mailbox id %d in %s form", i, name)
			}
		}
	}
	for i, e := range envs {
		if bytes.Contains(data, e[2+32:2+32+64]) {
			t.Errorf("data file contains plaintext of envelope %d", i)
		}
	}
	// Positive control: the search does see what the store writes. The
	// store keeps HMAC-SHA256(k_id, id); recompute it from the key.
	k, err := store.NewKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	h := k.MailboxHash(ids[0])
	if !bytes.Contains(data, h[:]) {
		t.Fatal("the keyed hash of a live mailbox is not in the data file: the search proves nothing")
	}
}

const crashEnv = "POSTERN_STORE_CRASH_CHILD"

// TestCrashChild is the child of TestCrash: it puts envelopes as
// fast as it can from several goroutines and prints each acknowledged ref.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashEnv)
	if spec == "" {
		t.Skip("run by TestCrash")
	}
	dir, idHex, _ := strings.Cut(spec, ",")
	var id [32]byte
	if _, err := hex.Decode(id[:], []byte(idHex)); err != nil {
		t.Fatal(err)
	}
	s, err := boltstore.Open(dir, unlimited)
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
				ref, err := s.Put(context.Background(), id, storetest.Envelope(id, 4096, 1+w*each+i))
				if err != nil {
					fmt.Fprintln(os.Stderr, "put:", err)
					os.Exit(2)
				}
				// One write per line: a pipe write under PIPE_BUF is atomic.
				mu.Lock()
				fmt.Fprintf(out, "%x\n", ref)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s.Close()
}

// TestCrash kills a process that is putting envelopes with SIGKILL and
// checks that every Put that had returned is in the store, exactly once.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	id := storetest.ID(1)
	s := open(t, dir, store.Options{})
	if err := s.CreateMailbox(context.Background(), id, storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir+","+hex.EncodeToString(id[:]))
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
	acked := make(map[string]bool)
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		line := sc.Text()
		if len(line) != 2*store.RefSize {
			continue // "PASS" etc. if the child ever finished
		}
		acked[line] = true
		if len(acked) == killAfter && !killed {
			cmd.Process.Kill() // SIGKILL: no deferred Close, no flush
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before %d puts: %v\n%s", killAfter, err, stderr.String())
	}
	t.Logf("child acknowledged %d puts before SIGKILL", len(acked))

	s = open(t, dir, store.Options{})
	defer s.Close()
	items, err := s.Fetch(context.Background(), id, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int)
	for _, it := range items {
		seen[hex.EncodeToString(it.Ref[:])]++
	}
	for _, n := range seen {
		if n != 1 {
			t.Fatalf("an envelope is stored %d times", n)
		}
	}
	missing := 0
	for ref := range acked {
		if seen[ref] != 1 {
			missing++
		}
	}
	t.Logf("store holds %d envelopes after the crash", len(items))
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged envelopes lost after SIGKILL", missing, len(acked))
	}
	if st := s.Stats(); st.Envelopes != len(items) {
		t.Fatalf("Stats says %d envelopes, fetch found %d", st.Envelopes, len(items))
	}
}

// TestGroupCommit checks that concurrent Puts share commits. With
// MaxBatch = N and a long CommitDelay, the committer waits until N puts
// are waiting, so the property holds regardless of scheduling.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	const n = 64
	var mu sync.Mutex
	var batches []int
	dir := t.TempDir()
	id := storetest.ID(1)
	s := open(t, dir, store.Options{})
	if err := s.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The delay is a bound for a broken test, not a timing assumption:
	// the batch fills up as soon as all n puts are waiting.
	s = open(t, dir, store.Options{
		MaxBatch: n, CommitDelay: time.Minute,
		OnCommit: func(writes int, _ time.Duration) { mu.Lock(); batches = append(batches, writes); mu.Unlock() },
	})
	defer s.Close()
	before := s.Stats().Commits
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := s.Put(ctx, id, storetest.Envelope(id, 4096, i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	commits := s.Stats().Commits - before
	t.Logf("%d concurrent puts took %d commits (batches %v)", n, commits, batches)
	if commits >= n {
		t.Fatalf("%d puts took %d commits: no group commit", n, commits)
	}
	if got := s.Stats().Envelopes; got != n {
		t.Fatalf("%d envelopes stored, want %d", got, n)
	}

	// With default options (no delay), concurrent puts still share
	// commits whenever they queue behind a running one; at worst one
	// commit each.
	s2 := open(t, t.TempDir(), store.Options{})
	defer s2.Close()
	if err := s2.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
		t.Fatal(err)
	}
	before = s2.Stats().Commits
	for i := range n {
		wg.Go(func() {
			if _, err := s2.Put(ctx, id, storetest.Envelope(id, 4096, i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	commits = s2.Stats().Commits - before
	t.Logf("default options: %d concurrent puts took %d commits", n, commits)
	if commits > n {
		t.Fatalf("%d puts took %d commits", n, commits)
	}
}
