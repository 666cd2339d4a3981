package boltstore

import (
	"context"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestRefIndex: refs whose first 8 bytes collide (never seen by chance,
// since refs are keyed hashes) are still found, deduplicated and acked
// one by one, whichever is removed first.
func TestRefIndex(t *testing.T) {
	ref := func(prefix, tail byte) store.Ref {
		var r store.Ref
		r[0], r[31] = prefix, tail
		return r
	}
	for _, first := range []bool{true, false} {
		ix := newIndex()
		var hid [32]byte
		a, b, c := ref(1, 1), ref(1, 2), ref(1, 3) // one prefix
		d := ref(2, 1)
		for i, r := range []store.Ref{a, b, c, d} {
			ix.addEnvelope(hid, entry{seq: uint64(i + 1), ref: r, size: 200})
		}
		box := ix.boxes[hid]
		for i, r := range []store.Ref{a, b, c, d} {
			if seq, ok := box.refs.seq(box, r); !ok || seq != uint64(i+1) {
				t.Fatalf("ref %d: seq %d, %v; want %d", i, seq, ok, i+1)
			}
		}
		if _, ok := box.refs.seq(box, ref(1, 4)); ok {
			t.Fatal("a ref never added is found through its prefix")
		}
		gone, kept := a, b // the one in short first, or one in long first
		if !first {
			gone, kept = b, a
		}
		seq, _ := box.refs.seq(box, gone)
		ix.removeEnvelope(box, seq)
		if _, ok := box.refs.seq(box, gone); ok {
			t.Fatal("a removed ref is still found")
		}
		for _, r := range []store.Ref{kept, c, d} {
			if _, ok := box.refs.seq(box, r); !ok {
				t.Fatal("removing one ref of a shared prefix lost another")
			}
		}
		ix.addEnvelope(hid, entry{seq: 5, ref: gone, size: 200})
		if seq, ok := box.refs.seq(box, gone); !ok || seq != 5 {
			t.Fatalf("ref added again: seq %d, %v; want 5", seq, ok)
		}
		ix.sweep(^uint32(0))
		if len(box.refs.short)+len(box.refs.long) != 0 {
			t.Fatalf("after a sweep of everything the ref index holds %d + %d", len(box.refs.short), len(box.refs.long))
		}
	}
}

// TestNotDurableUnseen: an envelope added by a commit that is not yet
// durable is not fetched; once the commit is durable it is.
func TestNotDurableUnseen(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), crashOpts)
	must(t, err)
	defer s.Close()
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	old, err := s.Put(ctx, id, storetest.Envelope(id, 100, 0))
	must(t, err)

	// What the committer does between applying a batch and its fdatasync
	// (the committer is idle: no op is in flight).
	w, err := s.begin(false)
	must(t, err)
	hid := s.keys.MailboxHash(id)
	env := storetest.Envelope(id, 100, 1)
	ref := s.keys.Ref(env)
	rec := appendRecord(nil, recEnvelope, envelopeHead(hid, 0, 1<<20, ref), s.keys.Seal(id, ref, env))
	s.mu.Lock()
	b := s.ix.mailbox(hid)
	w.addEnvelope(hid, b, b.nextSeq, rec)
	s.mu.Unlock()
	must(t, s.flush(w))

	items, err := s.Fetch(ctx, id, 0)
	if err != nil || len(items) != 1 || items[0].Ref != old {
		t.Fatalf("before the commit is durable: %d items, %v; want only the envelope before it", len(items), err)
	}
	s.mu.Lock()
	s.ix.active().size += int64(len(w.buf))
	s.durable.Store(w.batch)
	s.mu.Unlock()
	items, err = s.Fetch(ctx, id, 0)
	if err != nil || len(items) != 2 || items[1].Ref != ref {
		t.Fatalf("once durable: %d items, %v; want both", len(items), err)
	}
}

// TestEnvelopeRecordHead: the head Put builds, followed by the sealed
// bytes, is the record appendRecord builds, and parses back.
func TestEnvelopeRecordHead(t *testing.T) {
	hid, ref := [32]byte{1, 2, 3}, store.Ref{4, 5, 6}
	sealed := make([]byte, store.SealOverhead+100)
	want := appendRecord(nil, recEnvelope, envelopeHead(hid, 0, 77, ref), sealed)
	got := append(envelopeRecordHead(hid, 77, ref, len(sealed)), sealed...)
	if string(got) != string(want) {
		t.Fatalf("head+sealed = %x\nwant %x", got, want)
	}
	r, rest, err := parseRecord(got)
	if err != nil || len(rest) != 0 || r.key != hid || r.ref != ref || r.day != 77 || len(r.sealed) != len(sealed) {
		t.Fatalf("parse: %+v, %d left, %v", r, len(rest), err)
	}
}
