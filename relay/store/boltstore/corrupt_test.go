package boltstore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// A damaged log must make Open fail with an error that says so, names the
// segment and no mailbox id, unless the damage is the batch a crash cut
// short; damage that the batch checksum misses makes the operation that
// reads it fail alone.

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
	first uint64 // the seq of a's first envelope (store.FirstSeq)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{dir: t.TempDir(), a: storetest.ID(1), b: storetest.ID(2)}
	k, err := store.NewKeys(testKey)
	must(t, err)
	f.ha = k.MailboxHash(f.a)
	s := f.open(t, store.Options{})
	for i, id := range [][store.IDSize]byte{f.a, f.b} {
		must(t, s.CreateMailbox(ctx, id, storetest.Owner(i), nil))
	}
	mb, err := s.Mailbox(ctx, f.a)
	must(t, err)
	f.first = mb.NextSeq
	for i := range 3 {
		e := storetest.Envelope(f.a, 1024, i)
		r, err := s.Put(ctx, f.a, e)
		must(t, err)
		f.refs, f.envs = append(f.refs, r), append(f.envs, e)
	}
	f.stats = s.Stats()
	must(t, s.Close())
	return f
}

// newLegacyFixture is a closed store of the bbolt releases (store.db)
// holding two mailboxes of three 1 KiB envelopes.
func newLegacyFixture(t *testing.T) *fixture {
	f := &fixture{dir: t.TempDir(), a: storetest.ID(0), b: storetest.ID(1)}
	writeLegacy(t, f.dir, testKey, 2, 3, func(int) int { return 1024 }, 1)
	f.stats = store.Stats{Mailboxes: 2, Envelopes: 6, Bytes: 6 * 1024}
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

// damage runs fn in a write transaction on the (closed) bbolt file.
func (f *fixture) damage(t *testing.T, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(f.dir, LegacyFile), 0o600, nil)
	must(t, err)
	defer db.Close()
	must(t, db.Update(fn))
}

func (f *fixture) segment() string { return filepath.Join(f.dir, LogDir, segName(1)) }

// testKeys are the keys of testKey; seg1Seed starts the frame checksums
// of segment 1 under them.
var (
	testKeys, _ = store.NewKeys(testKey)
	seg1Seed    = segHead{num: 1}.seed(testKeys)
)

// envelopeAt returns the file offsets of the frame and of the last byte of
// the sealed envelope of the first envelope record in the segment data.
func envelopeAt(t *testing.T, data []byte) (frameOff, last int) {
	t.Helper()
	frameOff = segHeader
	var buf []byte
	sr := segReader{bytes.NewReader(data), int64(len(data)), &buf, seg1Seed}
	for frameOff < len(data) {
		payload, ok, err := sr.frame(int64(frameOff))
		must(t, err)
		if !ok {
			break
		}
		n := len(payload)
		for p := data[frameOff+frameHeader : frameOff+frameHeader+n]; len(p) > 0; {
			r, rest, err := parseRecord(p)
			must(t, err)
			if r.typ == recEnvelope {
				return frameOff, frameOff + frameHeader + n - len(rest) - 1
			}
			p = rest
		}
		frameOff += frameHeader + n
	}
	t.Fatal("no envelope record in the segment")
	return 0, 0
}

// wantCorrupt checks that err reports damage to the log segment path
// without naming the ids.
func wantCorrupt(t *testing.T, what string, err error, path string, ids ...[store.IDSize]byte) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded on a damaged log", what)
	}
	msg := err.Error()
	if !strings.Contains(msg, "corrupt") || !strings.Contains(msg, path) {
		t.Errorf("%s: error %q does not say that %s is corrupt", what, msg, path)
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

// TestDamagedBatch: a flipped byte in a synced batch makes Open refuse
// the log, naming the segment, whether it is in the middle of the log or
// in its last batch before a clean close.
func TestDamagedBatch(t *testing.T) {
	f := newFixture(t)
	path := f.segment()
	data, err := os.ReadFile(path)
	must(t, err)
	_, last := envelopeAt(t, data)
	data[last] ^= 1
	must(t, os.WriteFile(path, data, 0o600))
	_, err = Open(f.dir, store.Options{IDKey: testKey})
	wantCorrupt(t, "Open", err, path, f.a, f.b)
}

// TestDamagedBatchLength: damage to the length of a synced batch in the
// newest segment, which leaves no way to the frame after it, is not taken
// for a batch a crash tore: good frames follow it (here the second of
// the fixture's batches of envelopes and the rest), so Open refuses the
// log, and cuts nothing, whether the store was closed cleanly or not
// (its close record stripped).
func TestDamagedBatchLength(t *testing.T) {
	for _, closed := range []bool{true, false} {
		for _, tc := range []struct {
			name   string
			length func(n uint32) uint32
		}{
			{"past the file", func(n uint32) uint32 { return n | 1<<24 }},
			{"inside the frame", func(n uint32) uint32 { return n - 7 }},
			{"zero", func(uint32) uint32 { return 0 }},
		} {
			t.Run(fmt.Sprintf("closed=%v/%s", closed, tc.name), func(t *testing.T) {
				f := newFixture(t)
				path := f.segment()
				data, err := os.ReadFile(path)
				must(t, err)
				if !closed {
					closeFrame := frame(seg1Seed, appendRecord(nil, recClose))
					if !bytes.HasSuffix(data, closeFrame) {
						t.Fatal("no close record at the end of the fixture's segment")
					}
					data = data[:len(data)-len(closeFrame)]
				}
				off, _ := envelopeAt(t, data)
				n := binary.BigEndian.Uint32(data[off:])
				binary.BigEndian.PutUint32(data[off:], tc.length(n))
				must(t, os.WriteFile(path, data, 0o600))
				_, err = Open(f.dir, store.Options{IDKey: testKey})
				wantCorrupt(t, "Open", err, path, f.a, f.b)
				if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
					t.Fatalf("Open changed the damaged segment: %d bytes, were %d", len(got), len(data))
				}
			})
		}
	}
}

// TestTornBatch: a batch cut short by a crash (a partial frame at the end
// of the newest segment) was never acknowledged: Open cuts it off and
// everything before it is there.
func TestTornBatch(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	path := f.segment()
	data, err := os.ReadFile(path)
	must(t, err)
	torn := frame(seg1Seed, appendRecord(nil, recSweep, []byte{0, 0, 0, 1}))
	must(t, os.WriteFile(path, append(data, torn[:len(torn)-2]...), 0o600))
	s := f.open(t, store.Options{})
	if st := s.Stats(); st.Envelopes != 3 || st.Mailboxes != 2 {
		t.Fatalf("Stats after a torn batch = %+v", st)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatalf("the torn batch was not cut off: %d bytes, want %d", len(got), len(data))
	}
	if _, err := s.Put(ctx, f.b, storetest.Envelope(f.b, 100, 1)); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedEnvelope: damage the batch checksum does not see (here: the
// checksum recomputed) makes the operations that read the envelope fail
// with an error naming the segment, and leaves the rest working.
func TestDamagedEnvelope(t *testing.T) {
	ctx := context.Background()
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
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			f := newFixture(t)
			path := f.segment()
			data, err := os.ReadFile(path)
			must(t, err)
			off, last := envelopeAt(t, data)
			data[last] ^= 1
			n := int(binary.BigEndian.Uint32(data[off:]))
			binary.BigEndian.PutUint32(data[off+4:], crc32.Update(seg1Seed, castagnoli, data[off+frameHeader:off+frameHeader+n]))
			must(t, os.WriteFile(path, data, 0o600))
			s := f.open(t, store.Options{})
			wantCorrupt(t, op.name, op.run(s, f), path, f.a, f.b)
			if st := s.Stats(); st.Mailboxes != 2 || st.Envelopes != 3 || st.Bytes != f.stats.Bytes {
				t.Errorf("Stats after the failure = %+v", st)
			}
			if _, err := s.Mailbox(ctx, storetest.ID(3)); err == nil {
				t.Error("a failed rotation left its new mailbox behind")
			}
			if _, err := s.Put(ctx, f.b, storetest.Envelope(f.b, 100, 1)); err != nil {
				t.Errorf("Put to an undamaged mailbox: %v", err)
			}
			if got, err := s.FetchAfter(ctx, f.a, f.first, 0); err != nil || len(got) != 2 || !bytes.Equal(got[1].Envelope, f.envs[2]) {
				t.Errorf("FetchAfter past the damage = %d items, %v", len(got), err)
			}
		})
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r *bytes.Reader
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// TestGoodFrameAfterBudget: bytes a client chose (a capability verifier
// holds 13 of them easily) can look like a frame and a record that fills
// it to the end of the file; each costs a checksum of the rest of the
// file. The search for a good frame after a damaged one reads at most its
// budget in checksums, then gives up (the frame counts as torn), instead
// of candidates times the file.
func TestGoodFrameAfterBudget(t *testing.T) {
	const size = 8 << 20
	data := make([]byte, size)
	for i := range 40 { // 40 crafted candidates, each reaching the end
		at := 1024 + i*111
		fl := uint32(size - at - frameHeader)
		binary.BigEndian.PutUint32(data[at:], fl)
		data[at+frameHeader] = recMailbox
		binary.BigEndian.PutUint32(data[at+frameHeader+1:], fl-recHeader)
	}
	cr := &countingReader{r: bytes.NewReader(data)}
	var buf []byte
	sr := segReader{ra: cr, size: size, buf: &buf, seed: 12345}
	good, err := sr.goodFrameAfter(0)
	if good || err != nil {
		t.Fatalf("good %v, err %v", good, err)
	}
	if most := int64(size + 64<<20 + 1<<20); cr.n > most {
		t.Fatalf("read %d MiB for a %d MiB file: over the budget (%d MiB)", cr.n>>20, size>>20, most>>20)
	}
}

// TestTornFirstLayoutSegment: in a segment of the first layout, whose
// checksums have no secret seed, a client can plant a whole good frame in
// its capability verifier; a crash that tears the batch holding it still
// leaves a torn tail, cut off, not a refusal (only the frame right after a
// damaged one counts there).
func TestTornFirstLayoutSegment(t *testing.T) {
	h := segHead{num: 1, check: testKeys.Check(), v1: true}
	sweep := appendRecord(nil, recSweep, []byte{0, 0, 0, 1})
	data := append(h.encode(), frame(0, sweep)...) // a good batch
	planted := frame(0, sweep)
	capv := append(planted, make([]byte, 32-len(planted))...)
	rec := appendMailbox(nil, [32]byte{7}, make(ed25519.PublicKey, 32), 1, capv)
	torn := frame(0, append(bytes.Repeat(sweep, 100), rec...))
	data = append(data, torn[:len(torn)-2]...) // the crash cut the batch's last bytes
	var buf []byte
	_, end, isTorn, err := scanSegment(bytes.NewReader(data), int64(len(data)), true, testKeys, &buf, func(record, int64, []byte) error { return nil })
	if err != nil || !isTorn {
		t.Fatalf("a batch torn by a crash: end %d, torn %v, err %v; want it cut as a torn tail", end, isTorn, err)
	}
}
