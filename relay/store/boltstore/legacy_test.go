package boltstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// writeLegacy writes dir/store.db in the bbolt layout of the releases
// before the log, under store key key: mailboxes storetest.ID(0..boxes-1),
// each holding envs envelopes (envelope j of size(j) bytes), and outbox
// items for storetest.Dest(1) and Dest(2) (n each, 500 bytes).
func writeLegacy(t *testing.T, dir string, key []byte, boxes, envs int, size func(j int) int, items int) {
	t.Helper()
	k, err := store.NewKeys(key)
	must(t, err)
	db, err := bolt.Open(filepath.Join(dir, LegacyFile), 0o600, nil)
	must(t, err)
	defer db.Close()
	day := store.ExpiryDay(time.Now(), store.DefaultTTL)
	must(t, db.Update(func(tx *bolt.Tx) error {
		bk := map[string]*bolt.Bucket{}
		for _, name := range [][]byte{bucketMeta, bucketMailboxes, bucketEnvelopes, bucketRefs, bucketExpiry, bucketRetired, bucketOutbox} {
			b, err := tx.CreateBucket(name)
			must(t, err)
			bk[string(name)] = b
		}
		check := k.Check()
		must(t, bk["meta"].Put(metaFormat, []byte{legacyFormat}))
		must(t, bk["meta"].Put(metaKeyCheck, check[:]))
		exp, err := bk["expiry"].CreateBucket(dayKey(day))
		must(t, err)
		for i := range boxes {
			id := storetest.ID(i)
			h := k.MailboxHash(id)
			box := mailboxRecord{owner: storetest.Owner(i), nextSeq: 1}
			eb, err := bk["envelopes"].CreateBucket(h[:])
			must(t, err)
			rb, err := bk["refs"].CreateBucket(h[:])
			must(t, err)
			for j := range envs {
				env := storetest.Envelope(id, size(j), j)
				ref := k.Ref(env)
				rec := envelopeRecord{day: day, ref: ref, sealed: k.Seal(id, ref, env)}
				must(t, eb.Put(seqKey(box.nextSeq), rec.encode()))
				must(t, rb.Put(ref[:], seqKey(box.nextSeq)))
				must(t, exp.Put(expiryKey(h, box.nextSeq), nil))
				box.nextSeq++
				box.count++
				box.bytes += uint64(len(env))
			}
			must(t, bk["mailboxes"].Put(h[:], box.encode()))
		}
		for n := range items {
			for _, d := range []int{1, 2} {
				dest := storetest.Dest(d)
				db, err := bk["outbox"].CreateBucketIfNotExists(dest[:])
				must(t, err)
				seq, err := bk["outbox"].NextSequence()
				must(t, err)
				rec := outboxRecord{day: day, sealed: k.SealOutbox(dest, storetest.Forward(500, n))}
				must(t, db.Put(seqKey(seq), rec.encode()))
			}
		}
		return nil
	}))
}

// TestMigrate: a store directory of the bbolt releases is migrated at
// Open: every mailbox, envelope, ref, expiry day and outbox item (with its
// sequence number) is in the log, the old file is gone, and the store
// works on.
func TestMigrate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeLegacy(t, dir, testKey, 5, 7, func(j int) int { return 100 + 1000*j }, 3)
	s, err := Open(dir, store.Options{IDKey: testKey})
	must(t, err)
	if _, err := os.Stat(filepath.Join(dir, LegacyFile)); !os.IsNotExist(err) {
		t.Fatalf("the old data file is still there after migration: %v", err)
	}
	for round := range 2 {
		want := store.Stats{Mailboxes: 5, Envelopes: 35, Bytes: 5 * (7*100 + 1000*21), Commits: s.Stats().Commits}
		if st := s.Stats(); st != want {
			t.Fatalf("round %d: Stats = %+v, want %+v", round, st, want)
		}
		id := storetest.ID(3)
		items, err := s.Fetch(ctx, id, 0)
		if err != nil || len(items) != 7 || items[6].Seq != 7 || string(items[2].Envelope) != string(storetest.Envelope(id, 2100, 2)) {
			t.Fatalf("round %d: Fetch = %d items, %v", round, len(items), err)
		}
		if r, err := s.Put(ctx, id, storetest.Envelope(id, 2100, 2)); err != nil || r != items[2].Ref {
			t.Fatalf("round %d: a migrated envelope is not recognised as a duplicate: %v", round, err)
		}
		if st := s.OutboxStats(); st.Items != 6 {
			t.Fatalf("round %d: OutboxStats = %+v", round, st)
		}
		if round == 1 {
			if n, err := s.Sweep(ctx, time.Now().Add(store.DefaultTTL+48*time.Hour)); err != nil || n != 35 {
				t.Fatalf("Sweep of migrated envelopes = %d, %v", n, err)
			}
		}
		if round == 0 {
			it, err := s.Enqueue(ctx, storetest.Dest(1), []byte("x"))
			if err != nil || it.Seq != 7 {
				t.Fatalf("Enqueue after migration: seq %d, %v; want 7", it.Seq, err)
			}
			s.Done(ctx, storetest.Dest(1), it.Seq)
			must(t, s.Close())
			s, err = Open(dir, store.Options{IDKey: testKey})
			must(t, err)
		}
	}
	s.Close()
}
