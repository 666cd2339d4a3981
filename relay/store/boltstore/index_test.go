package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// checkIndexes checks that the buckets of the closed data file in dir agree:
// every envelope has one ref entry and one expiry entry under its expiry
// day, there are no other ref or expiry entries and no empty day buckets,
// and every mailbox record counts its envelopes and bytes right.
func checkIndexes(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, DataFile), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		wantExpiry := make(map[string]bool) // day || h || seq
		wantRefs := 0
		err := tx.Bucket(bucketMailboxes).ForEach(func(h, v []byte) error {
			box, err := decodeMailbox(v)
			if err != nil {
				return err
			}
			var count, size uint64
			if eb := tx.Bucket(bucketEnvelopes).Bucket(h); eb != nil {
				rb := tx.Bucket(bucketRefs).Bucket(h)
				err = eb.ForEach(func(k, v []byte) error {
					r, err := decodeEnvelope(v)
					if err != nil {
						return err
					}
					if rb == nil || !bytes.Equal(rb.Get(r.ref[:]), k) {
						return fmt.Errorf("envelope at seq %x has no ref entry", k)
					}
					if binary.BigEndian.Uint64(k) >= box.nextSeq {
						return fmt.Errorf("envelope at seq %x not below the next seq %d", k, box.nextSeq)
					}
					wantExpiry[string(dayKey(r.day))+string(h)+string(k)] = true
					count++
					size += uint64(r.plainLen())
					return nil
				})
				if err != nil {
					return err
				}
				wantRefs += int(count)
			}
			if count != uint64(box.count) || size != box.bytes {
				return fmt.Errorf("mailbox record counts %d envelopes of %d bytes, found %d of %d", box.count, box.bytes, count, size)
			}
			return nil
		})
		if err != nil {
			return err
		}
		refs := 0
		err = tx.Bucket(bucketRefs).ForEachBucket(func(h []byte) error {
			if tx.Bucket(bucketMailboxes).Get(h) == nil {
				return fmt.Errorf("ref bucket of a missing mailbox")
			}
			return tx.Bucket(bucketRefs).Bucket(h).ForEach(func(_, _ []byte) error { refs++; return nil })
		})
		if err != nil {
			return err
		}
		if refs != wantRefs {
			return fmt.Errorf("%d ref entries for %d envelopes", refs, wantRefs)
		}
		exp := tx.Bucket(bucketExpiry)
		err = exp.ForEachBucket(func(day []byte) error {
			n := 0
			err := exp.Bucket(day).ForEach(func(k, _ []byte) error {
				n++
				if !wantExpiry[string(day)+string(k)] {
					return fmt.Errorf("expiry entry of day %x lists no envelope", day)
				}
				delete(wantExpiry, string(day)+string(k))
				return nil
			})
			if err == nil && n == 0 {
				err = fmt.Errorf("empty expiry bucket for day %x", day)
			}
			return err
		})
		if err == nil && len(wantExpiry) > 0 {
			err = fmt.Errorf("%d envelopes have no expiry entry", len(wantExpiry))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIndexes runs every kind of write and checks the indexes after each.
func TestIndexes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	opts := store.Options{IDKey: testKey, Now: func() time.Time { return now }}
	a, b, c := storetest.ID(1), storetest.ID(2), storetest.ID(3)
	var refs []store.Ref
	steps := []struct {
		name string
		run  func(s *Store) error
	}{
		{"create", func(s *Store) error {
			for i, id := range [][store.IDSize]byte{a, b} {
				if err := s.CreateMailbox(ctx, id, storetest.Owner(i), nil); err != nil {
					return err
				}
			}
			return nil
		}},
		{"put over three days", func(s *Store) error {
			for i := range 9 {
				now = now.Add(8 * time.Hour)
				for _, id := range [][store.IDSize]byte{a, b} {
					r, err := s.Put(ctx, id, storetest.Envelope(id, 100+i, i))
					if err != nil {
						return err
					}
					if id == a {
						refs = append(refs, r)
					}
				}
			}
			return nil
		}},
		{"ack", func(s *Store) error { _, err := s.Ack(ctx, a, refs[0], refs[4], refs[8]); return err }},
		{"rotate", func(s *Store) error {
			_, err := s.RotateMailbox(ctx, a, c, storetest.Owner(3), nil)
			return err
		}},
		{"sweep the first days", func(s *Store) error {
			n, err := s.Sweep(ctx, now.Add(store.DefaultTTL-24*time.Hour))
			if err == nil && n == 0 {
				err = fmt.Errorf("swept nothing")
			}
			return err
		}},
		{"delete", func(s *Store) error { return s.DeleteMailbox(ctx, b) }},
		{"sweep the rest", func(s *Store) error { _, err := s.Sweep(ctx, now.Add(store.DefaultTTL+24*time.Hour)); return err }},
	}
	for _, step := range steps {
		s, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		err = step.run(s)
		s.Close()
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		t.Run(step.name, func(t *testing.T) { checkIndexes(t, dir) })
	}
}
