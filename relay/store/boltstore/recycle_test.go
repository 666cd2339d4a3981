package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// TestRecycledSegment: a compacted segment's file becomes the spare, the
// next segment is written over it, and the frames it still holds from its
// last use never replay: after a crash just after the spare got its new
// name (the old frames then start right after the header), after a crash
// with a few batches written over them, and after a clean close, the
// store holds exactly the envelopes not acked, none of the acked ones the
// old frames carry.
func TestRecycledSegment(t *testing.T) {
	defer func(n int64, c int, p func(string)) { segmentBytes, carryChunk, crashPoint = n, c, p }(segmentBytes, carryChunk, crashPoint)
	segmentBytes, carryChunk = 16<<10, 4<<10
	ctx := context.Background()
	dir := t.TempDir()
	logDir := filepath.Join(dir, LogDir)
	spare := filepath.Join(logDir, spareName)
	s, err := Open(dir, crashOpts)
	must(t, err)
	s.compacting.Store(true) // the test compacts
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	pending := map[store.Ref]bool{}
	i := 0
	put := func() store.Ref {
		ref, err := s.Put(ctx, id, storetest.Envelope(id, 1024, i))
		must(t, err)
		i++
		pending[ref] = true
		return ref
	}
	// Three segments of envelopes, every one acked.
	for range 3 * (16 << 10) / 1024 {
		ref := put()
		_, err := s.Ack(ctx, id, ref)
		must(t, err)
		delete(pending, ref)
	}
	s.mu.RLock()
	old := s.ix.segs[s.ix.order[0]]
	s.mu.RUnlock()
	must(t, s.compact(old.num, old.path))
	if _, err := os.Stat(spare); err != nil {
		t.Fatalf("no spare after a compaction: %v", err)
	}
	// Put until the next segment is written over the spare, then a few more.
	var renamed string
	var atRename map[store.Ref]bool
	var steps []string
	crashPoint = func(step string) {
		steps = append(steps, step)
		if step == stepSpareRenamed {
			renamed, atRename = copyStore(t, dir), maps.Clone(pending)
		}
	}
	for n := 0; ; n++ {
		put()
		if _, err := os.Stat(spare); err != nil {
			break
		}
		if n > 100 {
			t.Fatal("the spare was never used")
		}
	}
	put()
	put()
	crashPoint = nil
	if renamed == "" {
		t.Fatal("no copy at the rename of the spare")
	}
	// The spare's own rename (from its old segment's name) is synced
	// before its header changes: else a crash could bring the old segment
	// back under its name with the new header, and Open would refuse it.
	if want := []string{stepSpareSynced, stepSpareHeader, stepSpareRenamed}; !slices.Equal(steps, want) {
		t.Fatalf("steps of starting a segment over the spare: %q, want %q", steps, want)
	}
	s.mu.RLock()
	active := *s.ix.active()
	s.mu.RUnlock()
	fi, err := os.Stat(active.path)
	must(t, err)
	if fi.Size() < active.size+1024 {
		t.Fatalf("the newest segment is %d bytes with %d written: it was not written over an old file", fi.Size(), active.size)
	}
	data, err := os.ReadFile(filepath.Join(renamed, LogDir, segName(active.num)))
	must(t, err)
	if frameAt(data, segHeader) == nil {
		t.Fatalf("no frame of the file's last use after the header of segment %d: the test proves nothing", active.num)
	}

	check := func(name string, s *Store, pending map[store.Ref]bool) {
		t.Helper()
		if got := heldRefs(t, s, id); !maps.Equal(got, pending) {
			t.Fatalf("%s: %d envelopes, want the %d not acked", name, len(got), len(pending))
		}
	}
	crashed := copyStore(t, dir)
	must(t, s.Close())
	for _, c := range []struct {
		name, dir string
		pending   map[store.Ref]bool
	}{{"crash at the rename", renamed, atRename}, {"crash later", crashed, pending}, {"closed", dir, pending}} {
		name, d, pending := c.name, c.dir, maps.Clone(c.pending)
		s2, err := Open(d, crashOpts)
		must(t, err)
		check(name, s2, pending)
		put := func() {
			ref, err := s2.Put(ctx, id, storetest.Envelope(id, 1024, i))
			must(t, err)
			i++
			pending[ref] = true
		}
		put()
		must(t, s2.Close())
		s2, err = Open(d, crashOpts)
		must(t, err)
		check(name+", reopened", s2, pending)
		must(t, s2.Close())
	}
}

// frameAt returns the payload of the frame at off in data if it is whole
// with a good checksum in the layout before recycling (no seed): what
// the file's last use wrote there.
func frameAt(data []byte, off int64) []byte {
	if int64(len(data)) < off+frameHeader {
		return nil
	}
	n, sum := int64(binary.BigEndian.Uint32(data[off:])), binary.BigEndian.Uint32(data[off+4:])
	if n == 0 || int64(len(data)) < off+frameHeader+n {
		return nil
	}
	p := data[off+frameHeader : off+frameHeader+n]
	for num := range uint64(64) { // the file's earlier number, whichever it was
		if crc32.Update(segHead{num: num}.seed(testKeys), castagnoli, p) == sum {
			return p
		}
	}
	return nil
}

// TestFirstLayoutSegments: a log written before recycling (PSTRLOG1
// segments, frame checksums without the segment number) opens with every
// envelope, takes new batches in its newest segment in that layout, and
// its next segment is in the new one; both reopen.
func TestFirstLayoutSegments(t *testing.T) {
	defer func(n int64) { segmentBytes = n }(segmentBytes)
	segmentBytes = 16 << 10
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, crashOpts)
	must(t, err)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	want := map[store.Ref]bool{}
	put := func(s *Store, n int) {
		for range n {
			ref, err := s.Put(ctx, id, storetest.Envelope(id, 1024, len(want)))
			must(t, err)
			want[ref] = true
		}
	}
	put(s, 20) // two segments
	must(t, s.Close())
	logDir := filepath.Join(dir, LogDir)
	nums, err := listSegments(logDir)
	must(t, err)
	if len(nums) < 2 {
		t.Fatalf("%d segments, want at least 2", len(nums))
	}
	for _, num := range nums {
		toFirstLayout(t, filepath.Join(logDir, segName(num)))
	}
	check := func(s *Store) {
		t.Helper()
		if got := heldRefs(t, s, id); !maps.Equal(got, want) {
			t.Fatalf("%d envelopes, want %d", len(got), len(want))
		}
	}
	s, err = Open(dir, crashOpts)
	must(t, err)
	check(s)
	put(s, 1) // into the newest segment, in its layout
	must(t, s.Close())
	s, err = Open(dir, crashOpts)
	must(t, err)
	check(s)
	put(s, 20) // on into new segments
	must(t, s.Close())
	s, err = Open(dir, crashOpts)
	must(t, err)
	check(s)
	must(t, s.Close())
	after, err := listSegments(logDir)
	must(t, err)
	magic := func(num uint64) string {
		b, err := os.ReadFile(filepath.Join(logDir, segName(num)))
		must(t, err)
		return string(b[:8])
	}
	if m := magic(nums[len(nums)-1]); m != segMagicV1 {
		t.Errorf("the old newest segment is %q now, want %q", m, segMagicV1)
	}
	if m := magic(after[len(after)-1]); m != segMagic {
		t.Errorf("the new newest segment is %q, want %q", m, segMagic)
	}

	// The oldest, first-layout segment, compacted, becomes the spare, and
	// a new segment is written over it.
	s, err = Open(dir, crashOpts)
	must(t, err)
	s.compacting.Store(true) // the test compacts
	for ref := range want {
		_, err := s.Ack(ctx, id, ref)
		must(t, err)
		delete(want, ref)
	}
	must(t, s.compact(nums[0], filepath.Join(logDir, segName(nums[0]))))
	spare := filepath.Join(logDir, spareName)
	b, err := os.ReadFile(spare)
	must(t, err)
	if string(b[:8]) != segMagicV1 {
		t.Fatalf("the spare is %q, want a first-layout segment", b[:8])
	}
	defer func(p func(string)) { crashPoint = p }(crashPoint)
	var renamed string
	var atRename map[store.Ref]bool
	crashPoint = func(step string) {
		if step == stepSpareRenamed {
			renamed, atRename = copyStore(t, dir), maps.Clone(want)
		}
	}
	for n := 0; ; n++ {
		put(s, 1)
		if _, err := os.Stat(spare); err != nil {
			break
		}
		if n > 100 {
			t.Fatal("the spare was never used")
		}
	}
	crashPoint = nil
	put(s, 2)
	crashed := copyStore(t, dir)
	must(t, s.Close())
	if renamed == "" {
		t.Fatal("no copy at the rename of the spare")
	}
	all := want
	for _, c := range []struct {
		dir  string
		want map[store.Ref]bool
	}{{renamed, atRename}, {crashed, all}, {dir, all}} {
		want = c.want
		s, err = Open(c.dir, crashOpts)
		must(t, err)
		check(s)
		must(t, s.Close())
	}
}

// toFirstLayout rewrites the segment at path as it was written before
// recycling: magic PSTRLOG1 and frame checksums of the payload alone.
func toFirstLayout(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	must(t, err)
	h, err := parseSegHead(data)
	must(t, err)
	var buf []byte
	_, end, _, err := scanSegment(bytes.NewReader(data), int64(len(data)), true, testKeys, &buf, func(record, int64, []byte) error { return nil })
	must(t, err)
	h.v1 = true
	copy(data, h.encode())
	for off := int64(segHeader); off < end; {
		n := int64(binary.BigEndian.Uint32(data[off:]))
		binary.BigEndian.PutUint32(data[off+4:], crc32.Checksum(data[off+frameHeader:off+frameHeader+n], castagnoli))
		off += frameHeader + n
	}
	must(t, os.WriteFile(path, data[:end], 0o600))
}

// TestPlantedFrameNeverReplays: a client chooses bytes the log keeps in
// the clear (here a mailbox's capability verifier, which a record of a
// release before 2026-12-07, or one migrated from bbolt, keeps so; new
// records seal it), and plants in them
// frames of a sweep of every day, checksummed with the seeds anyone could
// guess (none, and the CRC32C of the segment number). The file is
// recycled as segment 3 and a put is sized so that the close record ends
// exactly where the planted frames begin. The seed comes from the store
// key, so they fail their checksums and the victim's envelopes stay.
func TestPlantedFrameNeverReplays(t *testing.T) {
	defer func(n int64, c int) { segmentBytes, carryChunk = n, c }(segmentBytes, carryChunk)
	segmentBytes, carryChunk = 16<<10, 4<<10
	ctx := context.Background()
	dir := t.TempDir()
	opts := crashOpts
	opts.AckSync = -1 // each Ack its own frame: the test places frames to the byte
	s, err := Open(dir, opts)
	must(t, err)
	s.compacting.Store(true) // the test compacts
	victim, attacker := storetest.ID(1), storetest.ID(2)
	must(t, s.CreateMailbox(ctx, victim, storetest.Owner(1), nil))
	for i := range 3 {
		_, err := s.Put(ctx, victim, storetest.Envelope(victim, 1000, i))
		must(t, err)
	}
	sweep := appendDay(nil, recSweep, 0xFFFFFFFF)
	guess := crc32.Checksum(binary.BigEndian.AppendUint64(nil, 3), castagnoli)
	plant := append(frame(0, sweep), frame(guess, sweep)...)
	createLegacy(t, s, attacker, storetest.Owner(2), plant)
	active := func() segment {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return *s.ix.active()
	}
	churn := func(until func() bool) {
		for i := 0; !until(); i++ {
			if i > 1000 {
				t.Fatal("the log never got there")
			}
			ref, err := s.Put(ctx, attacker, storetest.Envelope(attacker, 1000, 100+i))
			must(t, err)
			_, err = s.Ack(ctx, attacker, ref)
			must(t, err)
		}
	}
	churn(func() bool { return active().num == 2 })
	s.mu.RLock()
	first := s.ix.segs[1].path
	s.mu.RUnlock()
	must(t, s.compact(1, first)) // segment 1 becomes the spare
	churn(func() bool { return active().num == 3 })
	a := active()
	data, err := os.ReadFile(a.path)
	must(t, err)
	p := int64(bytes.Index(data, plant))
	if p < a.size {
		t.Fatalf("the planted frames (at %d) are not past the end of segment 3 (%d): the test proves nothing", p, a.size)
	}
	// One frame of one envelope record, then the close frame, end at p.
	sealed := p - a.size - 2*frameHeader - recHeader - recHeader - envelopeBody
	_, err = s.Put(ctx, attacker, storetest.Envelope(attacker, int(sealed)-store.SealOverhead, 999))
	must(t, err)
	if end := active().size + frameHeader + recHeader; end != p {
		t.Fatalf("the close record ends at %d, the planted frames begin at %d: the test proves nothing", end, p)
	}
	must(t, s.Close())
	s, err = Open(dir, crashOpts)
	must(t, err)
	defer s.Close()
	items, err := s.Fetch(ctx, victim, 100)
	must(t, err)
	if len(items) != 3 {
		t.Fatalf("the victim holds %d envelopes after a restart, want 3: a planted frame replayed", len(items))
	}
}

// heldRefs returns the refs of the envelopes mailbox id holds.
func heldRefs(t *testing.T, s *Store, id [store.IDSize]byte) map[store.Ref]bool {
	t.Helper()
	items, err := s.Fetch(context.Background(), id, 1<<20)
	must(t, err)
	got := map[store.Ref]bool{}
	for _, it := range items {
		got[it.Ref] = true
	}
	return got
}
