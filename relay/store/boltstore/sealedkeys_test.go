package boltstore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"os"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// createLegacy creates mailbox id as a release before 2026-12-07 (or a
// migration from bbolt) did: a mailbox record with the owner key and the
// send capability verifier in the clear.
func createLegacy(t testing.TB, s *Store, id [store.IDSize]byte, owner ed25519.PublicKey, sendCap []byte) {
	t.Helper()
	hid := s.keys.MailboxHash(id)
	must(t, s.do(context.Background(), func(w *writer) error {
		at := w.at()
		first := store.FirstSeq()
		w.buf = appendMailbox(w.buf, hid, owner, first, sendCap)
		w.ix.setMailbox(hid, nil, owner, sendCap, first, at, uint32(w.at().off-at.off))
		w.dMailboxes++
		return nil
	}))
}

// logBytes returns the bytes of the log's segments. Not the spare's: a
// compacted segment kept as the spare holds its old bytes until the log
// writes over them (see the package comment, "Recycled segments").
func logBytes(t *testing.T, s *Store) []byte {
	t.Helper()
	var all []byte
	for _, seg := range s.segs() {
		b, err := os.ReadFile(seg.path)
		must(t, err)
		all = append(all, b...)
	}
	return all
}

// TestOwnerKeysSealed: a mailbox's owner key and capability verifier are
// never in the log in the clear, made or rotated; one left in the clear by
// an older release is written anew sealed by its next Put, reads the same
// before and after (and after a restart), and once the segment of the old
// record is compacted no segment holds it.
func TestOwnerKeysSealed(t *testing.T) {
	ctx := context.Background()
	old := segmentBytes
	defer func() { segmentBytes = old }()
	segmentBytes = 16 << 10
	dir := t.TempDir()
	s, err := Open(dir, crashOpts)
	must(t, err)
	defer func() { s.Close() }()
	s.compacting.Store(true) // the test compacts
	capv := sha256.Sum256([]byte("a capability"))
	made, rotated, legacy := storetest.ID(1), storetest.ID(2), storetest.ID(3)
	must(t, s.CreateMailbox(ctx, made, storetest.Owner(1), capv[:]))
	must(t, s.CreateMailbox(ctx, storetest.ID(4), storetest.Owner(4), nil))
	_, err = s.RotateMailbox(ctx, storetest.ID(4), rotated, storetest.Owner(2), capv[:])
	must(t, err)
	createLegacy(t, s, legacy, storetest.Owner(3), capv[:])
	check := func(when string, id [store.IDSize]byte, owner int) {
		t.Helper()
		mb, err := s.Mailbox(ctx, id)
		if err != nil || !mb.Owner.Equal(storetest.Owner(owner)) || !bytes.Equal(mb.SendCap, capv[:]) {
			t.Fatalf("%s: mailbox %d reads %v, %v", when, owner, mb.Owner, err)
		}
	}
	check("made", made, 1)
	check("rotated", rotated, 2)
	check("legacy", legacy, 3)
	log := logBytes(t, s)
	for i := 1; i <= 2; i++ {
		if o := storetest.Owner(i); bytes.Contains(log, o) {
			t.Errorf("the log holds owner key %d in the clear", i)
		}
	}
	if !bytes.Contains(log, storetest.Owner(3)) {
		t.Fatal("the legacy record's owner key is not in the log: the test proves nothing")
	}
	if c := bytes.Count(log, capv[:]); c != 1 {
		t.Errorf("the capability verifier is in the log %d times, want 1 (the legacy record's)", c)
	}

	// A Put seals the legacy mailbox's keys; compaction then drops the
	// old record.
	for i := 0; len(s.segs()) < 3; i++ {
		ref, err := s.Put(ctx, legacy, storetest.Envelope(legacy, 1024, i))
		must(t, err)
		_, err = s.Ack(ctx, legacy, ref)
		must(t, err)
	}
	check("legacy after a Put", legacy, 3)
	first := s.segs()[0]
	must(t, s.compact(first.num, first.path))
	must(t, s.Close())
	s, err = Open(dir, crashOpts)
	must(t, err)
	check("made, reopened", made, 1)
	check("rotated, reopened", rotated, 2)
	check("legacy, reopened", legacy, 3)
	log = logBytes(t, s)
	if bytes.Contains(log, storetest.Owner(3)) || bytes.Contains(log, capv[:]) {
		t.Fatal("the log holds the legacy mailbox's keys in the clear after a Put and a compaction")
	}
}

// BenchmarkMailboxLookup: Store.Mailbox, which every Send and owner
// request calls, on a mailbox whose keys are sealed (opened with the id
// at each call) beside one whose older record has them in the clear, in
// the same run; "mailboxes" of each, looked up in turn, so that the
// cipher cache (128 slots) is hit or missed as a busy relay's would be.
func BenchmarkMailboxLookup(b *testing.B) {
	for _, mailboxes := range []int{1, 4096} {
		for _, sealed := range []bool{false, true} {
			name := map[bool]string{false: "clear", true: "sealed"}[sealed]
			b.Run(fmt.Sprintf("%s/mailboxes=%d", name, mailboxes), func(b *testing.B) {
				s, err := Open(b.TempDir(), crashOpts)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				ids := make([][store.IDSize]byte, mailboxes)
				for i := range ids {
					ids[i] = storetest.ID(i)
					if sealed {
						err = s.CreateMailbox(context.Background(), ids[i], storetest.Owner(i), []byte("verifier"))
					} else {
						createLegacy(b, s, ids[i], storetest.Owner(i), []byte("verifier"))
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if _, err := s.Mailbox(context.Background(), ids[i%mailboxes]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
