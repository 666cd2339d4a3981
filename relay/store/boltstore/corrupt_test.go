package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// A damaged data file must make the operations that touch the damage fail
// with an error that says so, names the data file and no mailbox id, and
// leave everything else working. These tests damage store.db with bbolt
// directly.

var testKey = bytes.Repeat([]byte{0x5a}, store.KeySize)

// fixture is a closed store holding mailbox a with three envelopes and an
// empty mailbox b.
type fixture struct {
	dir   string
	a, b  [store.IDSize]byte
	ha    [32]byte // a's hash
	refs  []store.Ref
	envs  [][]byte
	stats store.Stats
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{dir: t.TempDir(), a: storetest.ID(1), b: storetest.ID(2)}
	k, err := store.NewKeys(testKey)
	if err != nil {
		t.Fatal(err)
	}
	f.ha = k.MailboxHash(f.a)
	s := f.open(t, store.Options{})
	for i, id := range [][store.IDSize]byte{f.a, f.b} {
		if err := s.CreateMailbox(ctx, id, storetest.Owner(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		e := storetest.Envelope(f.a, 1024, i)
		r, err := s.Put(ctx, f.a, e)
		if err != nil {
			t.Fatal(err)
		}
		f.refs, f.envs = append(f.refs, r), append(f.envs, e)
	}
	f.stats = s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) open(t *testing.T, opts store.Options) *Store {
	t.Helper()
	opts.IDKey = testKey
	s, err := Open(f.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// damage runs fn in a write transaction on the (closed) data file.
func (f *fixture) damage(t *testing.T, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(f.dir, DataFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// wantCorrupt checks that err reports damage to the data file in dir
// without naming the ids.
func wantCorrupt(t *testing.T, what string, err error, dir string, ids ...[store.IDSize]byte) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded on a damaged data file", what)
	}
	msg := err.Error()
	if !strings.Contains(msg, "corrupt") || !strings.Contains(msg, filepath.Join(dir, DataFile)) {
		t.Errorf("%s: error %q does not say the data file %s is corrupt", what, msg, DataFile)
	}
	if isLogical(err) {
		t.Errorf("%s: damage reported as a request error: %v", what, err)
	}
	for _, id := range ids {
		if strings.Contains(msg, hex.EncodeToString(id[:])) || strings.Contains(msg, string(id[:])) {
			t.Errorf("%s: error names a mailbox id: %q", what, msg)
		}
	}
}

func TestDamagedEnvelope(t *testing.T) {
	ctx := context.Background()
	far := time.Now().Add(365 * 24 * time.Hour)
	tests := []struct {
		name   string
		record func(f *fixture, old []byte) []byte // new value of a's first envelope record
	}{
		{"garbage", func(*fixture, []byte) []byte { return []byte{9, 9, 9} }},
		{"ciphertext altered", func(_ *fixture, old []byte) []byte {
			b := bytes.Clone(old)
			b[len(b)-1] ^= 1
			return b
		}},
	}
	ops := []struct {
		name string
		run  func(s *Store, f *fixture) error
	}{
		{"Fetch", func(s *Store, f *fixture) error { _, err := s.Fetch(ctx, f.a, 0); return err }},
		{"RotateMailbox", func(s *Store, f *fixture) error {
			_, err := s.RotateMailbox(ctx, f.a, storetest.ID(3), storetest.Owner(3), nil)
			return err
		}},
	}
	for _, tc := range tests {
		for _, op := range ops {
			t.Run(tc.name+"/"+op.name, func(t *testing.T) {
				f := newFixture(t)
				f.damage(t, func(tx *bolt.Tx) error {
					eb := tx.Bucket(bucketEnvelopes).Bucket(f.ha[:])
					return eb.Put(seqKey(1), tc.record(f, eb.Get(seqKey(1))))
				})
				s := f.open(t, store.Options{})
				wantCorrupt(t, op.name, op.run(s, f), f.dir, f.a, f.b)
				// The failed write changed nothing; the rest of the store works.
				if st := s.Stats(); st != (store.Stats{Mailboxes: 2, Envelopes: 3, Bytes: f.stats.Bytes}) {
					t.Errorf("Stats after the failure = %+v", st)
				}
				if mb, err := s.Mailbox(ctx, f.a); err != nil || mb.Pending != 3 {
					t.Errorf("mailbox a after the failure: %+v, %v", mb, err)
				}
				if _, err := s.Mailbox(ctx, storetest.ID(3)); !errors.Is(err, store.ErrNoMailbox) {
					t.Errorf("a failed rotation left its new mailbox behind: %v", err)
				}
				if _, err := s.Put(ctx, f.b, storetest.Envelope(f.b, 100, 1)); err != nil {
					t.Errorf("Put to an undamaged mailbox: %v", err)
				}
			})
		}
	}
	t.Run("garbage/DeleteMailbox", func(t *testing.T) {
		f := newFixture(t)
		f.damage(t, func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEnvelopes).Bucket(f.ha[:]).Put(seqKey(2), []byte{1})
		})
		s := f.open(t, store.Options{})
		wantCorrupt(t, "DeleteMailbox", s.DeleteMailbox(ctx, f.a), f.dir, f.a)
		wantCorrupt(t, "Ack", ackErr(s, f.a, f.refs[1]), f.dir, f.a)
		_, err := s.Sweep(ctx, far)
		wantCorrupt(t, "Sweep", err, f.dir, f.a)
		if got, err := s.FetchAfter(ctx, f.a, 2, 0); err != nil || len(got) != 1 || !bytes.Equal(got[0].Envelope, f.envs[2]) {
			t.Errorf("FetchAfter past the damage = %d items, %v", len(got), err)
		}
	})
}

func ackErr(s *Store, id [store.IDSize]byte, refs ...store.Ref) error {
	_, err := s.Ack(context.Background(), id, refs...)
	return err
}

// TestDamagedIndexes damages the ref, expiry and retired buckets.
func TestDamagedIndexes(t *testing.T) {
	ctx := context.Background()
	far := time.Now().Add(365 * 24 * time.Hour)
	sweep := func(s *Store, _ *fixture) error { _, err := s.Sweep(ctx, far); return err }
	tests := []struct {
		name   string
		damage func(f *fixture, tx *bolt.Tx) error
		run    func(s *Store, f *fixture) error
	}{
		{"ref to a missing envelope", func(f *fixture, tx *bolt.Tx) error {
			return tx.Bucket(bucketRefs).Bucket(f.ha[:]).Put(f.refs[0][:], seqKey(99))
		}, func(s *Store, f *fixture) error { return ackErr(s, f.a, f.refs[0]) }},
		{"short expiry entry", func(f *fixture, tx *bolt.Tx) error {
			return firstDay(tx).Put([]byte("short"), nil)
		}, sweep},
		{"expiry entry of a missing mailbox", func(f *fixture, tx *bolt.Tx) error {
			return tx.Bucket(bucketMailboxes).Delete(f.ha[:])
		}, sweep},
		{"short retirement day", func(f *fixture, tx *bolt.Tx) error {
			return tx.Bucket(bucketRetired).Put(f.ha[:], []byte{1})
		}, sweep},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.damage(t, func(tx *bolt.Tx) error { return tc.damage(f, tx) })
			s := f.open(t, store.Options{})
			wantCorrupt(t, tc.name, tc.run(s, f), f.dir, f.a, f.b)
			if _, err := s.Put(ctx, f.b, storetest.Envelope(f.b, 100, 1)); err != nil {
				t.Errorf("Put to an undamaged mailbox: %v", err)
			}
		})
	}
}

func firstDay(tx *bolt.Tx) *bolt.Bucket {
	k, _ := tx.Bucket(bucketExpiry).Cursor().First()
	return tx.Bucket(bucketExpiry).Bucket(k)
}

// TestSweepStaleExpiry: expiry entries whose envelope is gone are skipped,
// not counted, and their day bucket is deleted all the same.
func TestSweepStaleExpiry(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	var day []byte
	f.damage(t, func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketExpiry).Cursor().First()
		day = bytes.Clone(k)
		b := tx.Bucket(bucketExpiry).Bucket(k)
		if err := b.Put(expiryKey(f.ha, 77), nil); err != nil { // no such seq
			return err
		}
		var nobody [32]byte
		return b.Put(expiryKey(nobody, 1), nil) // no such mailbox
	})
	s := f.open(t, store.Options{})
	n, err := s.Sweep(ctx, time.Unix(int64(binary.BigEndian.Uint32(day))*24*3600, 0))
	if err != nil || n != 3 {
		t.Fatalf("Sweep = %d, %v; want the 3 real envelopes", n, err)
	}
	if st := s.Stats(); st.Envelopes != 0 || st.Bytes != 0 {
		t.Fatalf("Stats after sweeping everything = %+v", st)
	}
	s.Close()
	f.damage(t, func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketExpiry).Cursor().First(); k != nil {
			t.Error("an expiry-day bucket survived the sweep of its day")
		}
		return nil
	})
}

func TestDamagedOpen(t *testing.T) {
	tests := []struct {
		name   string
		damage func(f *fixture, tx *bolt.Tx) error
		want   string
	}{
		{"mailbox record", func(f *fixture, tx *bolt.Tx) error {
			return tx.Bucket(bucketMailboxes).Put(f.ha[:], []byte{recordVersion})
		}, "corrupt"},
		{"data format", func(f *fixture, tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(metaFormat, []byte{dataFormat + 1})
		}, "data format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.damage(t, func(tx *bolt.Tx) error { return tc.damage(f, tx) })
			s, err := Open(f.dir, store.Options{IDKey: testKey})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || !strings.Contains(msg, filepath.Join(f.dir, DataFile)) {
				t.Fatalf("error %q does not mention %q and the data file", msg, tc.want)
			}
		})
	}
}
