package boltstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestCompaction: with small segments, acked envelopes' segments are
// compacted away (live records carried forward), the log stays small, and
// a reopened store holds exactly what the running one did.
func TestCompaction(t *testing.T) {
	defer func(n int64) { segmentBytes = n }(segmentBytes)
	segmentBytes = 64 << 10
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, store.Options{IDKey: testKey})
	must(t, err)
	a, b := storetest.ID(1), storetest.ID(2)
	must(t, s.CreateMailbox(ctx, a, storetest.Owner(1), nil))
	must(t, s.CreateMailbox(ctx, b, storetest.Owner(2), nil))
	keep, err := s.Put(ctx, b, storetest.Envelope(b, 4096, 0)) // lives through every compaction
	must(t, err)
	mbA, err := s.Mailbox(ctx, a)
	must(t, err)
	firstA := mbA.NextSeq // store.FirstSeq: the 401st envelope's is firstA+400
	for i := range 400 {
		r, err := s.Put(ctx, a, storetest.Envelope(a, 4096, i))
		must(t, err)
		if _, err := s.Ack(ctx, a, r); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Enqueue(ctx, storetest.Dest(1), storetest.Forward(300, i)); err != nil && i%2 == 0 {
			t.Fatal(err)
		}
	}
	// A no-op through the committer: the last Put's batch has then been
	// followed by its maybeCompact. Then let the compaction finish (it
	// goes through the committer too, segment after segment).
	must(t, s.do(ctx, func(*writer) error { return nil }))
	for s.compacting.Load() {
		time.Sleep(time.Millisecond)
	}
	segs, err := listSegments(filepath.Join(dir, LogDir))
	must(t, err)
	// About 130 KiB stay live (the outbox items and one envelope) of the
	// ~1.9 MiB written: two or three 64 KiB segments and the active one.
	if len(segs) > 5 {
		t.Fatalf("after 400 put+ack the log has %d segments %v: compaction did not keep up", len(segs), segs)
	}
	before, out := s.Stats(), s.OutboxStats()
	items, err := s.Fetch(ctx, b, 0)
	if err != nil || len(items) != 1 || items[0].Ref != keep {
		t.Fatalf("the live envelope after compaction: %d items, %v", len(items), err)
	}
	must(t, s.Close())
	s, err = Open(dir, store.Options{IDKey: testKey})
	must(t, err)
	defer s.Close()
	if st := s.Stats(); st.Mailboxes != before.Mailboxes || st.Envelopes != before.Envelopes || st.Bytes != before.Bytes || s.OutboxStats() != out {
		t.Fatalf("after reopen %+v %+v, before %+v %+v", st, s.OutboxStats(), before, out)
	}
	if items, err := s.Fetch(ctx, b, 0); err != nil || len(items) != 1 || items[0].Ref != keep {
		t.Fatalf("the live envelope after reopen: %d items, %v", len(items), err)
	}
	if it, err := s.Enqueue(ctx, storetest.Dest(1), []byte("x")); err != nil || it.Seq != 401 {
		t.Fatalf("outbox seq after compaction and reopen = %d, %v; want 401", it.Seq, err)
	}
	if mb, err := s.Mailbox(ctx, a); err != nil || mb.Pending != 0 {
		t.Fatalf("mailbox a after reopen: %+v, %v", mb, err)
	}
	r, err := s.Put(ctx, a, storetest.Envelope(a, 100, 1000))
	must(t, err)
	if got, _ := s.Fetch(ctx, a, 0); len(got) != 1 || got[0].Seq != firstA+400 || got[0].Ref != r {
		t.Fatalf("seq after compaction and reopen = %v; want the 401st (never reused)", got)
	}
	var total int64
	for _, n := range segs {
		if fi, err := os.Stat(filepath.Join(dir, LogDir, segName(n))); err == nil {
			total += fi.Size()
		}
	}
	t.Logf("segments %v, %d bytes", segs, total)
}

// FuzzRecords: parseRecord never panics, and what it accepts re-encodes
// to a record of the same size.
func FuzzRecords(f *testing.F) {
	var hid [32]byte
	f.Add(appendMailbox(nil, hid, make([]byte, 32), 7, []byte("cap")))
	f.Add(appendDelete(nil, hid, true, 9))
	f.Add(appendRecord(nil, recEnvelope, envelopeHead(hid, 3, 4, store.Ref{}), make([]byte, 40)))
	f.Add(appendSeqs(nil, recAck, hid, []uint64{1, 2}))
	f.Add(appendDay(nil, recSweep, 5))
	f.Add(appendRetired(nil, hid, 6))
	f.Add(appendOutbox(nil, hid, 1, 2, make([]byte, 30)))
	f.Add(appendRecord(nil, recClose))
	f.Add(appendForward(nil, hid, 8, 3, make([]byte, store.SealOverhead+store.IDSize+32)))
	f.Add(appendBox(nil, hid, 9, make([]byte, store.SealOverhead+32+32)))
	f.Fuzz(func(t *testing.T, b []byte) {
		for p := b; len(p) > 0; {
			r, rest, err := parseRecord(p)
			if err != nil {
				return
			}
			if r.size != len(p)-len(rest) || r.size < recHeader {
				t.Fatalf("record size %d, consumed %d", r.size, len(p)-len(rest))
			}
			if r.typ == recForward && !bytes.Equal(appendForward(nil, r.key, r.day, r.until, r.sealed), p[:r.size]) {
				t.Fatal("a forward record re-encodes to other bytes")
			}
			if r.typ == recBox && !bytes.Equal(appendBox(nil, r.key, r.seq, r.sealed), p[:r.size]) {
				t.Fatal("a mailbox record re-encodes to other bytes")
			}
			p = rest
		}
	})
}

// FuzzSegment: scanSegment never panics on a damaged segment, and never
// reports a good end past the data.
func FuzzSegment(f *testing.F) {
	var hid [32]byte
	good := segHead{num: 1}.encode()
	good = append(good, frame(seg1Seed, appendMailbox(nil, hid, make([]byte, 32), 1, nil))...)
	good = append(good, frame(seg1Seed, appendRecord(nil, recEnvelope, envelopeHead(hid, 1, 4, store.Ref{}), make([]byte, 40)))...)
	f.Add(good, true)
	f.Add(good[:len(good)-3], true)
	f.Add(good[:len(good)-3], false)
	f.Fuzz(func(t *testing.T, data []byte, last bool) {
		ix := newIndex()
		ix.segs[1] = &segment{num: 1}
		var buf []byte
		_, end, _, err := scanSegment(bytes.NewReader(data), int64(len(data)), last, testKeys, &buf, func(r record, off int64, raw []byte) error {
			if len(raw) != r.size || off+int64(r.size) > int64(len(data)) || !bytes.Equal(raw, data[off:off+int64(r.size)]) {
				t.Fatalf("record at %d: raw bytes are not the file's", off)
			}
			ix.apply(r, loc{1, off})
			return nil
		})
		if err == nil && end > int64(len(data)) {
			t.Fatalf("end %d past %d bytes", end, len(data))
		}
		ix.finish()
	})
}

// TestReplayReadsBatchAtATime: Open replays a segment one batch frame at a
// time, so what it allocates is about the index and its largest batch, not
// the segment file (it read the whole file into one buffer before).
func TestReplayReadsBatchAtATime(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, store.Options{IDKey: testKey, MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1})
	must(t, err)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	const n = 2048 // 4 KiB each: one segment of about 8.6 MiB, in batches of a few envelopes
	for i := range n {
		if _, err := s.Put(ctx, id, storetest.Envelope(id, 4096, i)); err != nil {
			t.Fatal(err)
		}
	}
	must(t, s.Close())
	segs, err := listSegments(filepath.Join(dir, LogDir))
	must(t, err)
	fi, err := os.Stat(filepath.Join(dir, LogDir, segName(segs[len(segs)-1])))
	must(t, err)
	if len(segs) != 1 || fi.Size() < n*4096 {
		t.Fatalf("want one segment of at least %d bytes, have %d segments, the last %d bytes", n*4096, len(segs), fi.Size())
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	s, err = Open(dir, store.Options{IDKey: testKey})
	must(t, err)
	runtime.ReadMemStats(&m1)
	defer s.Close()
	alloc := int64(m1.TotalAlloc - m0.TotalAlloc)
	t.Logf("Open of a %d-byte segment allocated %d bytes", fi.Size(), alloc)
	if alloc > fi.Size()/4 {
		t.Fatalf("Open of a %d-byte segment allocated %d bytes: it should read one batch at a time", fi.Size(), alloc)
	}
	items, err := s.FetchAfter(ctx, id, 0, n)
	if err != nil || len(items) != n {
		t.Fatalf("after reopening: %d envelopes, %v", len(items), err)
	}
}

// TestWrongKeySeveralSegments: a log of several segments opened with
// another key is refused as a key that does not match, not as a corrupt
// segment (whose advice is to start an empty store): under another key
// every frame's checksum fails, in segments before the newest too.
func TestWrongKeySeveralSegments(t *testing.T) {
	defer func(n int64) { segmentBytes = n }(segmentBytes)
	segmentBytes = 16 << 10
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, crashOpts)
	must(t, err)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	for i := range 20 {
		if _, err := s.Put(ctx, id, storetest.Envelope(id, 4096, i)); err != nil {
			t.Fatal(err)
		}
	}
	must(t, s.Close())
	if nums, err := listSegments(filepath.Join(dir, LogDir)); err != nil || len(nums) < 3 {
		t.Fatalf("%d segments (%v), want several", len(nums), err)
	}
	opts := crashOpts
	opts.IDKey = bytes.Repeat([]byte{0x11}, store.KeySize)
	if s, err := Open(dir, opts); err == nil {
		s.Close()
		t.Fatal("opened with another key")
	} else if !strings.Contains(err.Error(), "does not match") || strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("another key reported as: %v", err)
	}
	// The right key still opens it: nothing was cut.
	s, err = Open(dir, crashOpts)
	must(t, err)
	defer s.Close()
	if st := s.Stats(); st.Envelopes != 20 {
		t.Fatalf("%d envelopes after the wrong key, want 20", st.Envelopes)
	}
}
