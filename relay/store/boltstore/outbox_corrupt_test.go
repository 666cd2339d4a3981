package boltstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// outboxFixture adds two items for destination 1 and one for destination 2
// to a closed fixture and returns them.
func outboxFixture(t *testing.T) (*fixture, []store.OutboxItem) {
	t.Helper()
	f := newFixture(t)
	s := f.open(t, store.Options{})
	var items []store.OutboxItem
	for i, d := range []int{1, 1, 2} {
		it, err := s.Enqueue(context.Background(), storetest.Dest(d), storetest.Forward(500, i))
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f, items
}

// TestOutboxOldFile: a data file made before the outbox existed opens,
// keeps its mailboxes and gets an empty outbox.
func TestOutboxOldFile(t *testing.T) {
	ctx := context.Background()
	f, _ := outboxFixture(t)
	f.damage(t, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketOutbox) })
	s := f.open(t, store.Options{})
	if st := s.Stats(); st.Mailboxes != f.stats.Mailboxes || st.Envelopes != f.stats.Envelopes || st.Bytes != f.stats.Bytes {
		t.Fatalf("Stats = %+v, want %+v", st, f.stats)
	}
	if st := s.OutboxStats(); st.Items != 0 || st.Bytes != 0 {
		t.Fatalf("OutboxStats = %+v, want empty", st)
	}
	d := storetest.Dest(1)
	it, err := s.Enqueue(ctx, d, []byte("layer"))
	if err != nil || it.Seq != 1 {
		t.Fatalf("Enqueue in an old file = %d, %v", it.Seq, err)
	}
	if got, err := s.Pending(ctx, d, 0, 0); err != nil || len(got) != 1 {
		t.Fatalf("Pending = %d, %v", len(got), err)
	}
}

func TestOutboxDamagedOpen(t *testing.T) {
	d := storetest.Dest(1)
	tests := []struct {
		name   string
		damage func(ob *bolt.Bucket) error
	}{
		{"value in outbox", func(ob *bolt.Bucket) error { return ob.Put([]byte("x"), []byte("y")) }},
		{"short dest name", func(ob *bolt.Bucket) error { _, err := ob.CreateBucket([]byte("short")); return err }},
		{"record", func(ob *bolt.Bucket) error {
			return ob.Bucket(d[:]).Put(seqKey(1), []byte{recordVersion, 0, 0, 0, 1})
		}},
		{"record version", func(ob *bolt.Bucket) error {
			k, v := ob.Bucket(d[:]).Cursor().First()
			v = bytes.Clone(v)
			v[0] = recordVersion + 1
			return ob.Bucket(d[:]).Put(k, v)
		}},
		{"key length", func(ob *bolt.Bucket) error {
			_, v := ob.Bucket(d[:]).Cursor().First()
			return ob.Bucket(d[:]).Put([]byte{1}, bytes.Clone(v))
		}},
		{"nested bucket", func(ob *bolt.Bucket) error { _, err := ob.Bucket(d[:]).CreateBucket(seqKey(99)); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := outboxFixture(t)
			f.damage(t, func(tx *bolt.Tx) error { return tc.damage(tx.Bucket(bucketOutbox)) })
			s, err := Open(f.dir, store.Options{IDKey: testKey})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			wantCorrupt(t, "Open", err, f.dir)
			if msg := err.Error(); !strings.Contains(msg, "outbox") || strings.Contains(msg, hex.EncodeToString(d[:4])) {
				t.Fatalf("error %q should name the outbox and no destination", msg)
			}
		})
	}
}

// TestOutboxDamagedItem: an item whose ciphertext was altered fails
// Pending for its destination with a corruption error, and nothing else:
// other destinations read, and Done and Expire still delete it.
func TestOutboxDamagedItem(t *testing.T) {
	ctx := context.Background()
	f, items := outboxFixture(t)
	d1, d2 := storetest.Dest(1), storetest.Dest(2)
	f.damage(t, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox).Bucket(d1[:])
		v := bytes.Clone(b.Get(seqKey(items[1].Seq)))
		v[len(v)-1] ^= 1
		return b.Put(seqKey(items[1].Seq), v)
	})
	s := f.open(t, store.Options{})
	_, err := s.Pending(ctx, d1, 0, 0)
	wantCorrupt(t, "Pending", err, f.dir)
	if strings.Contains(err.Error(), hex.EncodeToString(d1[:4])) {
		t.Fatalf("error names the destination: %v", err)
	}
	if got, err := s.Pending(ctx, d1, 0, 1); err != nil || len(got) != 1 || got[0].Seq != items[0].Seq {
		t.Fatalf("Pending before the damage = %d, %v", len(got), err)
	}
	if got, err := s.Pending(ctx, d2, 0, 0); err != nil || len(got) != 1 {
		t.Fatalf("Pending of another destination = %d, %v", len(got), err)
	}
	n, err := s.Expire(ctx, time.Now().Add(store.DefaultTTL+48*time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("Expire = %d, %v; want all 3, the damaged one too", n, err)
	}
	if st := s.OutboxStats(); st.Items != 0 || st.Bytes != 0 {
		t.Fatalf("OutboxStats after Expire = %+v", st)
	}
}

// TestOutboxFailedBatch: an outbox deletion in a batch that fails with a
// storage error changes neither the file nor the totals.
func TestOutboxFailedBatch(t *testing.T) {
	f, _ := outboxFixture(t)
	s := f.open(t, store.Options{})
	before := s.OutboxStats()
	err := s.do(context.Background(), func(w *writer) error {
		ob := w.tx.Bucket(bucketOutbox)
		d := storetest.Dest(1)
		if err := w.deleteOut(ob.Bucket(d[:]), seqKey(1)); err != nil {
			return err
		}
		return bolt.ErrTxNotWritable
	})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(f.dir, DataFile)) {
		t.Fatalf("failed batch: %v", err)
	}
	if st := s.OutboxStats(); st != before {
		t.Fatalf("OutboxStats after a failed batch = %+v, want %+v", st, before)
	}
	d := storetest.Dest(1)
	if got, err := s.Pending(context.Background(), d, 0, 0); err != nil || len(got) != 2 {
		t.Fatalf("Pending after a failed batch = %d, %v; want both items", len(got), err)
	}
}
