package boltstore

import (
	"errors"
	"fmt"
	"hash/crc32"
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

// scanSegment parses the segment data (a whole file) and calls fn with
// every record of every good batch and the record's offset in the file. It
// returns the segment's header and the offset just past the last good
// batch. In the newest segment (last), a damaged batch that no good batch
// follows is the batch a crash interrupted, which was never acknowledged:
// scanSegment stops there and reports torn. Anywhere else damage is an
// error.
func scanSegment(data []byte, last bool, fn func(r record, off int64) error) (h segHead, end int64, torn bool, err error) {
	if h, err = parseSegHead(data); err != nil {
		return h, 0, false, err
	}
	off := segHeader
	for off < len(data) {
		n, ok := goodFrame(data, off)
		if !ok {
			if last && !followedByGood(data, off) {
				return h, int64(off), true, nil
			}
			return h, int64(off), false, fmt.Errorf("the batch at offset %d is damaged (checksum or length)", off)
		}
		payload := data[off+frameHeader : off+frameHeader+n]
		for p := payload; len(p) > 0; {
			at := off + frameHeader + len(payload) - len(p)
			r, rest, err := parseRecord(p)
			if err != nil {
				return h, int64(off), false, fmt.Errorf("the record at offset %d is damaged: %w", at, err)
			}
			if err := fn(r, int64(at)); err != nil {
				return h, int64(off), false, fmt.Errorf("the record at offset %d: %w", at, err)
			}
			p = rest
		}
		off += frameHeader + n
	}
	return h, int64(off), false, nil
}

// goodFrame reports whether a whole frame with a matching checksum starts
// at off, and its payload length.
func goodFrame(data []byte, off int) (int, bool) {
	if len(data)-off < frameHeader {
		return 0, false
	}
	n, sum, err := parseFrameHeader(data[off:])
	if err != nil || n > len(data)-off-frameHeader {
		return 0, false
	}
	return n, crc32.Checksum(data[off+frameHeader:off+frameHeader+n], castagnoli) == sum
}

// followedByGood reports whether the damaged frame at off has a plausible
// length and a good frame right after it: then it was written, synced and
// damaged later, not torn by a crash.
func followedByGood(data []byte, off int) bool {
	if len(data)-off < frameHeader {
		return false
	}
	n, _, err := parseFrameHeader(data[off:])
	if err != nil || n > len(data)-off-frameHeader {
		return false
	}
	_, ok := goodFrame(data, off+frameHeader+n)
	return ok
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

var errNoSegment = errors.New("no such segment")
