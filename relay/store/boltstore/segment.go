package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Segment files: LogDir/<16 hex digits>.seg, numbered from 1, each a
// header and then batch frames (see "The log" in the package comment).

const segExt = ".seg"

// segmentBytes is the size past which the committer starts a new segment.
// Tests lower it.
var segmentBytes int64 = 64 << 20

func segName(num uint64) string { return fmt.Sprintf("%016x%s", num, segExt) }

// listSegments returns the numbers of the segment files in dir, in order,
// and removes the temporary files of a segment creation that a crash
// interrupted.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var nums []uint64
	for _, e := range ents {
		name := e.Name()
		if name == spareName {
			continue
		}
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, err
			}
			continue
		}
		hex, ok := strings.CutSuffix(name, segExt)
		num, err := strconv.ParseUint(hex, 16, 64)
		if !ok || err != nil || len(hex) != 16 || num == 0 {
			return nil, fmt.Errorf("unexpected file %s in the log directory", name)
		}
		nums = append(nums, num)
	}
	slices.Sort(nums)
	return nums, nil
}

// scanSegment reads the segment in ra, size bytes long, whose frame
// checksums are seeded from k, one batch frame at
// a time into *buf (grown to the largest frame; the index must keep no
// slice of it), and calls fn with every record of every good batch, the
// record's offset in the file and its bytes (valid only during the call).
// It returns the segment's header and the offset just past the last good
// batch. In the newest segment (last), a damaged batch that no good batch
// follows is the batch a crash interrupted, which was never acknowledged
// (but for acks held before it, which are undone, see commit.go):
// scanSegment stops there and reports torn. Anywhere else damage is an
// error. A failed read is a *readError, not damage.
//
// Memory: one frame at a time, so replaying or compacting a 64 MiB segment
// holds its largest batch (a few MiB at most in practice), not the file.
func scanSegment(ra io.ReaderAt, size int64, last bool, k seeder, buf *[]byte, fn func(r record, off int64, raw []byte) error) (h segHead, end int64, torn bool, err error) {
	sr := segReader{ra: ra, size: size, buf: buf}
	head, err := sr.read(0, int(min(size, segHeader)))
	if err != nil {
		return h, 0, false, err
	}
	if h, err = parseSegHead(head); err != nil {
		return h, 0, false, err
	}
	if h.check != k.Check() {
		// Under another key every frame's checksum fails: say which.
		return h, 0, false, errWrongKey
	}
	sr.seed = h.seed(k)
	off := int64(segHeader)
	for off < size {
		payload, ok, err := sr.frame(off)
		if err != nil {
			return h, off, false, err
		}
		if !ok {
			if last {
				find := sr.goodFrameAfter
				if h.v1 {
					// Checksummed from seed 0: a client can plant a good
					// frame in bytes the log keeps in the clear. These
					// segments were never recycled; only the frame right
					// after counts.
					find = sr.followedByGood
				}
				good, err := find(off)
				if err != nil {
					return h, off, false, err
				}
				if !good {
					return h, off, true, nil
				}
			}
			return h, off, false, fmt.Errorf("the batch at offset %d is damaged (checksum or length)", off)
		}
		for p := payload; len(p) > 0; {
			at := off + frameHeader + int64(len(payload)-len(p))
			r, rest, err := parseRecord(p)
			if err != nil {
				return h, off, false, fmt.Errorf("the record at offset %d is damaged: %w", at, err)
			}
			if err := fn(r, at, p[:r.size]); err != nil {
				return h, off, false, fmt.Errorf("the record at offset %d: %w", at, err)
			}
			p = rest
		}
		off += frameHeader + int64(len(payload))
	}
	return h, off, false, nil
}

// readError is a segment read that failed, as opposed to damage found in
// what was read.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// segReader reads parts of one segment file of a known size.
type segReader struct {
	ra   io.ReaderAt
	size int64
	buf  *[]byte
	seed uint32 // where each frame's checksum starts (segHead.seed)
}

// read returns the n bytes at off in *buf, valid until the next read.
func (sr segReader) read(off int64, n int) ([]byte, error) {
	if cap(*sr.buf) < n {
		*sr.buf = make([]byte, n, max(n, 2*cap(*sr.buf)))
	}
	b := (*sr.buf)[:n]
	if _, err := sr.ra.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file is shorter than it was: not damage we can judge
		}
		return nil, &readError{err}
	}
	return b, nil
}

// frame reads the batch frame at off: its payload, and whether the frame is
// whole (its length fits the file) with a matching checksum.
func (sr segReader) frame(off int64) ([]byte, bool, error) {
	n, sum, ok, err := sr.frameHead(off)
	if !ok || err != nil {
		return nil, false, err
	}
	payload, err := sr.read(off+frameHeader, n)
	if err != nil {
		return nil, false, err
	}
	return payload, crc32.Update(sr.seed, castagnoli, payload) == sum, nil
}

// frameHead parses the frame header at off, if it is whole and its length
// fits in the file.
func (sr segReader) frameHead(off int64) (n int, sum uint32, ok bool, err error) {
	if sr.size-off < frameHeader {
		return 0, 0, false, nil
	}
	hb, err := sr.read(off, frameHeader)
	if err != nil {
		return 0, 0, false, err
	}
	n, sum, perr := parseFrameHeader(hb)
	if perr != nil || int64(n) > sr.size-off-frameHeader {
		return 0, 0, false, nil
	}
	return n, sum, true, nil
}

// goodFrameAfter reports whether a frame with a good checksum starts
// anywhere after the damaged frame at off. A crash can tear only the
// last batch written (the committer writes the next only once that one
// is synced, and a failed write is cut back before the next goes at the
// same place), so a good frame after a damaged one under this segment's
// seed means the damaged one was written, synced and damaged later:
// corruption, not a torn tail, even when the damage is in the length that
// would lead to it. What may follow a torn batch is bytes of another seed
// (a recycled file's earlier life) or nothing.
//
// It tries every offset, reading the rest of the file a chunk at a time:
// a frame header whose length fits, then record headers that fill the
// frame exactly (random bytes fail within a record or two), and only
// then the checksum. A torn tail in a recycled 64 MiB segment costs a
// read of the rest of the file, once, when the store opens after a
// crash. Bytes a client chose (a capability verifier) can pass the
// first checks and cost a checksum of up to the rest of the file each, so
// the checksums read at most twice the file (at least 64 MiB); past that
// the search gives up and the frame counts as torn, as it did before
// this search.
func (sr segReader) goodFrameAfter(off int64) (bool, error) {
	const chunk = 1 << 20
	const need = frameHeader + recHeader // bytes a candidate's first checks read
	budget := max(2*sr.size, 64<<20)
	b := make([]byte, chunk+need)
	for base := off + 1; base+need <= sr.size; base += chunk {
		n := int(min(int64(len(b)), sr.size-base))
		if _, err := sr.ra.ReadAt(b[:n], base); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return false, &readError{err}
		}
		for i := 0; i+need <= n && i < chunk; i++ {
			fl := binary.BigEndian.Uint32(b[i:])
			at := base + int64(i)
			if fl < recHeader || int64(fl) > sr.size-at-frameHeader || !plausibleRecord(b[i+frameHeader:], fl) {
				continue
			}
			if budget -= int64(fl); budget < 0 {
				return false, nil
			}
			good, err := sr.checkCandidate(at, int64(fl))
			if good || err != nil {
				return good, err
			}
		}
	}
	return false, nil
}

// followedByGood reports whether the damaged frame at off has a plausible
// length and a good frame right after it (the rule for PSTRLOG1
// segments).
func (sr segReader) followedByGood(off int64) (bool, error) {
	n, _, ok, err := sr.frameHead(off)
	if !ok || err != nil {
		return false, err
	}
	_, good, err := sr.frame(off + frameHeader + int64(n))
	return good, err
}

// plausibleRecord reports whether h (at least recHeader bytes) starts a
// record that fits in room bytes.
func plausibleRecord(h []byte, room uint32) bool {
	typ, n := h[0], binary.BigEndian.Uint32(h[1:])
	if int(typ) >= len(fixedBody) || (fixedBody[typ] == 0 && typ != recClose) {
		return false
	}
	return n >= uint32(fixedBody[typ]) && uint64(n)+recHeader <= uint64(room)
}

// checkCandidate reports whether the frame of payload length n at off is
// whole and good: record headers that fill it exactly, then its checksum.
func (sr segReader) checkCandidate(off, n int64) (bool, error) {
	var h [recHeader]byte
	for p, end := off+frameHeader, off+frameHeader+n; p != end; {
		if end-p < recHeader {
			return false, nil
		}
		if _, err := sr.ra.ReadAt(h[:], p); err != nil {
			return false, &readError{err}
		}
		if !plausibleRecord(h[:], uint32(end-p)) {
			return false, nil
		}
		p += recHeader + int64(binary.BigEndian.Uint32(h[1:]))
	}
	_, good, err := sr.frame(off)
	return good, err
}

// createSegment writes a new segment file with header h in dir durably:
// a temporary file, synced, renamed, and the directory synced.
func createSegment(dir string, h segHead) (*os.File, error) {
	path := filepath.Join(dir, segName(h.num))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = f.Write(h.encode())
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		atStep(stepSegmentTemp)
		err = os.Rename(tmp, path)
	}
	if err == nil {
		atStep(stepSegmentRenamed)
		err = syncDir(dir)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	return f, nil
}

// Recycled segments (see the package comment). A compacted segment's
// file is kept as the spare instead of being deleted, and the next
// segment is written over it: overwriting blocks a file already has
// needs no block allocation or size change, so its fdatasync commits no
// filesystem journal (on this project's ext4 machines: p50 0.15 against
// 0.23 ms per 8 KiB sync, p99.9 0.58–0.84 against 0.70–1.75 ms).

// spareName is the spare segment file in the log directory.
const spareName = "spare"

// recycleSegments keeps compacted segments as the spare. Benchmarks turn
// it off to compare.
var recycleSegments = true

// reuseSegment turns the spare file in dir into the segment with header
// h: the directory synced (the spare's own rename), the header written
// over the old one and synced, then the file
// renamed and the directory synced. The frames the file still holds
// from its last use fail their checksums under h's number (segHead.seed),
// so replay stops at the first of them, as at a batch a crash cut short.
func reuseSegment(dir string, h segHead) (*os.File, error) {
	spare, path := filepath.Join(dir, spareName), filepath.Join(dir, segName(h.num))
	// The spare's rename from its old segment name must be durable before
	// its header changes: else a crash could bring back that segment with
	// the new header.
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	atStep(stepSpareSynced)
	f, err := os.OpenFile(spare, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteAt(h.encode(), 0)
	if err == nil {
		err = fdatasync(f)
	}
	if err == nil {
		atStep(stepSpareHeader)
		err = os.Rename(spare, path)
	}
	if err == nil {
		atStep(stepSpareRenamed)
		err = syncDir(dir)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

var errNoSegment = errors.New("no such segment")
