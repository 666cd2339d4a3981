package boltstore

import (
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
)

// setMeta rewrites both meta pages of the data file at path with fn
// applied to their 64 meta bytes, with a valid checksum, so only the page
// walk's own checks can catch the change.
func setMeta(t *testing.T, path string, fn func(m []byte)) {
	t.Helper()
	ps := int64(currentMeta(t, path).pageSize)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	for _, off := range []int64{0, ps} {
		m := make([]byte, metaSize)
		_, err := f.ReadAt(m, off+pageHeader)
		must(t, err)
		fn(m)
		h := fnv.New64a()
		h.Write(m[:56])
		ne.PutUint64(m[56:], h.Sum64())
		_, err = f.WriteAt(m, off+pageHeader)
		must(t, err)
	}
}

// TestPageWalk damages single fields the page walk and the bucket walk
// check; each must refuse Open with a corrupt-file error.
func TestPageWalk(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, f *fixture, path string)
		want   string
	}{
		{"page size", func(t *testing.T, _ *fixture, p string) {
			setMeta(t, p, func(m []byte) { ne.PutUint32(m[8:], 3000) })
		}, "page size"},
		{"page count", func(t *testing.T, _ *fixture, p string) {
			setMeta(t, p, func(m []byte) { ne.PutUint64(m[40:], 1) })
		}, "pages"},
		{"root outside", func(t *testing.T, _ *fixture, p string) {
			setMeta(t, p, func(m []byte) { ne.PutUint64(m[16:], ne.Uint64(m[40:])+3) })
		}, "outside"},
		{"freelist is a meta page", func(t *testing.T, _ *fixture, p string) {
			setMeta(t, p, func(m []byte) { ne.PutUint64(m[32:], 1) })
		}, "freelist page 1"},
		{"root is the freelist", func(t *testing.T, _ *fixture, p string) {
			setMeta(t, p, func(m []byte) { ne.PutUint64(m[16:], ne.Uint64(m[32:])) })
		}, "referenced twice"},
		{"freelist entry outside", func(t *testing.T, _ *fixture, p string) {
			m := currentMeta(t, p)
			b := make([]byte, pageHeader+8)
			ne.PutUint64(b, m.freelist)
			ne.PutUint16(b[8:], flagFreelist)
			ne.PutUint16(b[10:], 1)
			ne.PutUint64(b[16:], m.pages+1)
			overwrite(t, p, m.freelist, b)
		}, "outside the file"},
		{"freelist count", func(t *testing.T, _ *fixture, p string) {
			m := currentMeta(t, p)
			b := make([]byte, pageHeader+8)
			ne.PutUint64(b, m.freelist)
			ne.PutUint16(b[8:], flagFreelist)
			ne.PutUint16(b[10:], 0xFFFF)
			ne.PutUint64(b[16:], 1<<40)
			overwrite(t, p, m.freelist, b)
		}, "entries"},
		{"bucket missing", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketRetired) })
		}, "retired bucket is missing"},
		{"meta bucket missing", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketMeta) })
		}, "meta bucket is missing"},
		{"value among envelope buckets", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error { return tx.Bucket(bucketEnvelopes).Put(make([]byte, 32), []byte{1}) })
		}, "not a bucket"},
		// These three made the migration panic (a short key converted to
		// an id) before the walk checked retired ids.
		{"short retired id", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error { return tx.Bucket(bucketRetired).Put([]byte("short"), []byte{0, 0, 0, 1}) })
		}, "retired id record is damaged"},
		{"retired id of a wrong length", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error { return tx.Bucket(bucketRetired).Put(make([]byte, 32), []byte{1}) })
		}, "retired id record is damaged"},
		{"bucket among retired ids", func(t *testing.T, f *fixture, _ string) {
			f.damage(t, func(tx *bolt.Tx) error {
				_, err := tx.Bucket(bucketRetired).CreateBucket(make([]byte, 32))
				return err
			})
		}, "retired id record is damaged"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newLegacyFixture(t)
			path := filepath.Join(f.dir, LegacyFile)
			tc.damage(t, f, path)
			s, err := Open(f.dir, store.Options{IDKey: testKey})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || !strings.Contains(msg, path) || !strings.Contains(msg, "corrupt") {
				t.Fatalf("error %q does not say %q about %s", msg, tc.want, path)
			}
		})
	}
}

// TestOpenBoltPanic: where bbolt itself panics (a zeroed freelist page,
// with the page walk skipped), openBolt returns a corrupt-file error. (The
// file stays mapped, and so locked, until the process exits: bbolt gives
// no way to unmap it.)
func TestOpenBoltPanic(t *testing.T) {
	f := newLegacyFixture(t)
	path := filepath.Join(f.dir, LegacyFile)
	m := currentMeta(t, path)
	overwrite(t, path, m.freelist, make([]byte, m.pageSize))
	db, err := openBolt(path)
	if err == nil {
		db.Close()
		t.Fatal("openBolt succeeded on a zeroed freelist page")
	}
	if !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q", err)
	}
	if (redacted{}).ValueToString([]byte("x")) == "x" {
		t.Fatal("value not redacted")
	}
}
