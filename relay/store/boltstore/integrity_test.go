package boltstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// A damaged or missing store.db must make Open fail with an error that
// names the file and says what to do, never a panic or a memory fault,
// and never an empty store in place of a lost one. Open is called without
// recover: a panic fails the test binary.

// bigFixture builds a closed store in a new directory, with its key in
// store.key, holding 40 mailboxes with 10 envelopes each (a file of many
// pages, several levels deep). It returns the directory.
func bigFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, store.KeySize)
	key[0] = 1
	must(t, os.WriteFile(filepath.Join(dir, KeyFile), key, 0o600))
	writeLegacy(t, dir, key, 40, 10, func(j int) int { return 500 + 100*j }, 0)
	return dir
}

// currentMeta reads the meta page bbolt would use.
func currentMeta(t *testing.T, path string) boltMeta {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	m, err := readMetas(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// overwrite writes b at page id of the data file.
func overwrite(t *testing.T, path string, id uint64, b []byte) {
	t.Helper()
	m := currentMeta(t, path)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(id)*int64(m.pageSize)); err != nil {
		t.Fatal(err)
	}
}

// bucketRoot returns the root page of a top-level bucket of the data file.
func bucketRoot(t *testing.T, path string, name []byte) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	must(t, err)
	defer db.Close()
	var id uint64
	must(t, db.View(func(tx *bolt.Tx) error {
		id = uint64(tx.Bucket(name).RootPage())
		return nil
	}))
	if id == 0 {
		t.Fatalf("bucket %s is inline", name)
	}
	return id
}

func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestOpenDamagedFile(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, data, key string) store.Options
		want   []string // "$DATA", "$KEY": the file paths
	}{
		{"truncated to half", func(t *testing.T, data, _ string) store.Options {
			fi, _ := os.Stat(data)
			must(t, os.Truncate(data, fi.Size()/2))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "truncated", "restore it from a backup", "move it and its key file aside"}},
		{"truncated to one page", func(t *testing.T, data, _ string) store.Options {
			must(t, os.Truncate(data, int64(currentMeta(t, data).pageSize)))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "restore it from a backup"}},
		{"freelist page zeroed", func(t *testing.T, data, _ string) store.Options {
			m := currentMeta(t, data)
			overwrite(t, data, m.freelist, make([]byte, m.pageSize))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "freelist", "restore it from a backup"}},
		{"meta pages zeroed", func(t *testing.T, data, _ string) store.Options {
			overwrite(t, data, 0, make([]byte, 2*currentMeta(t, data).pageSize))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "meta", "restore it from a backup"}},
		{"random bytes over the root page", func(t *testing.T, data, _ string) store.Options {
			m := currentMeta(t, data)
			overwrite(t, data, m.root, randomBytes(m.pageSize))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "restore it from a backup"}},
		{"random bytes over the data region", func(t *testing.T, data, _ string) store.Options {
			m := currentMeta(t, data)
			overwrite(t, data, 2, randomBytes(int(m.pages-2)*m.pageSize))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "restore it from a backup"}},
		{"random bytes over the mailboxes page", func(t *testing.T, data, _ string) store.Options {
			overwrite(t, data, bucketRoot(t, data, bucketMailboxes), randomBytes(currentMeta(t, data).pageSize))
			return store.Options{}
		}, []string{"$DATA", "corrupt", "restore it from a backup"}},
		{"zero-length data file with key file", func(t *testing.T, data, _ string) store.Options {
			must(t, os.Truncate(data, 0))
			return store.Options{}
		}, []string{"$DATA", "empty", "$KEY", "restore the data file from a backup", "move the key file aside"}},
		{"zero-length data file with IDKey", func(t *testing.T, data, key string) store.Options {
			must(t, os.Truncate(data, 0))
			return store.Options{IDKey: readKey(t, key)}
		}, []string{"$DATA", "empty", "restore it from a backup", "delete it"}},
		{"missing data file with key file", func(t *testing.T, data, _ string) store.Options {
			must(t, os.Remove(data))
			return store.Options{}
		}, []string{"log", "missing", "$KEY", "restore the log directory from a backup", "move the key file aside"}},
		{"missing key file with data file", func(t *testing.T, _, key string) store.Options {
			must(t, os.Remove(key))
			return store.Options{}
		}, []string{"$KEY", "missing", "$DATA", "restore the key file from a backup", "move the data file aside"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := bigFixture(t)
			data, key := filepath.Join(dir, LegacyFile), filepath.Join(dir, KeyFile)
			opts := tc.damage(t, data, key)
			before, _ := os.ReadFile(data)
			s, err := Open(dir, opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a damaged store")
			}
			for _, w := range tc.want {
				w = strings.NewReplacer("$DATA", data, "$KEY", key).Replace(w)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			// Refused without touching the file (an empty one stays empty).
			if after, _ := os.ReadFile(data); !bytes.Equal(after, before) {
				t.Error("a refused Open changed the data file")
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readKey(t *testing.T, path string) []byte {
	t.Helper()
	k, err := os.ReadFile(path)
	must(t, err)
	return k
}

// TestOpenAfterRestore: a refused Open (here one where bbolt itself would
// panic on the zeroed freelist page) leaves nothing behind: the file is
// not changed or locked, and once it is restored from a copy the store
// opens in the same process with every mailbox in it.
func TestOpenAfterRestore(t *testing.T) {
	dir := bigFixture(t)
	data := filepath.Join(dir, LegacyFile)
	backup, err := os.ReadFile(data)
	must(t, err)
	m := currentMeta(t, data)
	overwrite(t, data, m.freelist, make([]byte, m.pageSize))
	damaged, err := os.ReadFile(data)
	must(t, err)
	for range 2 {
		if s, err := Open(dir, store.Options{}); err == nil {
			s.Close()
			t.Fatal("Open succeeded on a zeroed freelist page")
		}
	}
	if now, _ := os.ReadFile(data); !bytes.Equal(now, damaged) {
		t.Fatal("a refused Open changed the data file")
	}
	must(t, os.WriteFile(data, backup, 0o600))
	s, err := Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("Open of the restored file: %v", err)
	}
	defer s.Close()
	if st := s.Stats(); st.Mailboxes != 40 || st.Envelopes != 400 {
		t.Fatalf("restored store has %+v", st)
	}
	if items, err := s.Fetch(context.Background(), storetest.ID(7), 0); err != nil || len(items) != 10 {
		t.Fatalf("Fetch after restore = %d items, %v", len(items), err)
	}
}

// TestCheckersNeverPanic runs the page walk and bbolt open path on many
// randomly damaged copies of a healthy file: each either opens or fails
// with a corrupt-file error, and none faults.
func TestCheckersNeverPanic(t *testing.T) {
	dir := bigFixture(t)
	data := filepath.Join(dir, LegacyFile)
	healthy, err := os.ReadFile(data)
	must(t, err)
	r := rand.New(rand.NewPCG(3, 4))
	refused := 0
	for i := range 40 {
		b := bytes.Clone(healthy)
		for range 1 + r.IntN(8) {
			off := r.IntN(len(b) - 16)
			for j := range 1 + r.IntN(16) {
				b[off+j] = byte(r.Uint32())
			}
		}
		must(t, os.WriteFile(data, b, 0o600))
		s, err := Open(dir, store.Options{})
		if err == nil {
			s.Close()
			must(t, os.RemoveAll(filepath.Join(dir, LogDir))) // migrated: start over
			continue
		}
		if !strings.Contains(err.Error(), data) {
			t.Fatalf("damage %d: error %q does not name the data file", i, err)
		}
		refused++
	}
	t.Logf("%d of 40 damaged copies refused", refused)
}

// TestDiskFull: a commit that fails with ENOSPC or EDQUOT fails every write
// in it with store.ErrDiskFull (code CodeStoreFull) and sets
// Stats.DiskFull until a commit succeeds; another storage error does not.
func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), store.Options{IDKey: testKey})
	must(t, err)
	defer s.Close()
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	fail := func(errno syscall.Errno) error {
		return s.do(ctx, func(w *writer) error {
			w.fail = &os.PathError{Op: "write", Path: s.dir, Err: errno}
			return nil
		})
	}
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		err := fail(errno)
		var se *store.Error
		if !errors.Is(err, store.ErrDiskFull) || !errors.As(err, &se) || se.Code != store.CodeStoreFull || !errors.Is(err, errno) {
			t.Fatalf("%v: commit error %v is not ErrDiskFull wrapping it", errno, err)
		}
		if !s.Stats().DiskFull {
			t.Fatalf("%v: Stats().DiskFull is false after a failed commit", errno)
		}
		if _, err := s.Put(ctx, id, storetest.Envelope(id, 100, int(errno))); err != nil {
			t.Fatal(err)
		}
		if s.Stats().DiskFull {
			t.Fatalf("%v: Stats().DiskFull is still true after a successful commit", errno)
		}
	}
	err = fail(syscall.EIO)
	if errors.Is(err, store.ErrDiskFull) || isLogical(err) || s.Stats().DiskFull {
		t.Fatalf("EIO reported as disk full: %v, DiskFull %v", err, s.Stats().DiskFull)
	}
}
