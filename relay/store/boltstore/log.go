package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/postern/postern/relay/store"
)

// Loading the log at Open (and again after a failed write).

var errWrongKey = errors.New("segment made with another store key")

// corruptLog is the error for a log that fails a check at Open.
func corruptLog(path, detail string) error {
	return fmt.Errorf("store: log segment %s is corrupt (%s); refusing to start on it: "+
		"restore the store directory %s from a backup, or move it and its key file aside to start a new, empty store "+
		"(every mailbox and retired id in it is then lost)", path, detail, filepath.Dir(filepath.Dir(path)))
}

// loadIndex replays the segments in the log directory dir into a new
// index. files holds segment files that are already open; the others are
// opened. Every segment header must carry k's check. A torn last batch (see
// scanSegment) is cut off the newest segment.
func loadIndex(dir string, files map[uint64]*os.File, k *store.Keys) (*index, error) {
	nums, err := listSegments(dir)
	if err != nil {
		return nil, fmt.Errorf("store: read log directory %s: %w", dir, err)
	}
	if len(nums) == 0 {
		return nil, fmt.Errorf("store: log directory %s holds no segment, so its store was lost; "+
			"restore it from a backup, or move it and its key file aside to start a new, empty store on purpose", dir)
	}
	ix := newIndex()
	var buf []byte // one frame buffer for every segment: the index keeps no slice of it
	for i, num := range nums {
		seg, err := openSegment(dir, num, files[num])
		if err == nil {
			ix.segs[num], ix.order = seg, append(ix.order, num)
			err = replaySegment(ix, seg, i == len(nums)-1, k, &buf)
		}
		if err != nil {
			closeSegments(ix, files)
			return nil, err
		}
	}
	ix.finish()
	return ix, nil
}

func openSegment(dir string, num uint64, f *os.File) (*segment, error) {
	path := filepath.Join(dir, segName(num))
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			return nil, fmt.Errorf("store: open %s: %w", path, err)
		}
	}
	return &segment{num: num, path: path, f: f}, nil
}

// replaySegment applies every record of seg to ix, reading it one batch
// at a time into *buf (grown as needed).
func replaySegment(ix *index, seg *segment, last bool, k *store.Keys, buf *[]byte) error {
	fi, err := seg.f.Stat()
	if err != nil {
		return fmt.Errorf("store: %s: %w", seg.path, err)
	}
	h, end, torn, err := scanSegment(seg.f, fi.Size(), last, k, buf, func(r record, off int64, _ []byte) error {
		ix.apply(r, loc{seg.num, off})
		return nil
	})
	var rerr *readError
	switch {
	case errors.As(err, &rerr):
		return fmt.Errorf("store: read %s: %w", seg.path, rerr.err)
	case errors.Is(err, errWrongKey):
		return err
	case err != nil:
		return corruptLog(seg.path, err.Error())
	case h.num != seg.num:
		return corruptLog(seg.path, fmt.Sprintf("its header says it is segment %d", h.num))
	}
	ix.outNext = max(ix.outNext, h.outNext)
	seg.size, seg.seed = end, h.seed(k)
	if torn {
		// The batch a crash interrupted: never acknowledged, cut it off.
		if err := seg.f.Truncate(end); err != nil {
			return fmt.Errorf("store: cut the unfinished batch off %s: %w", seg.path, err)
		}
		if err := fdatasync(seg.f); err != nil {
			return fmt.Errorf("store: sync %s: %w", seg.path, err)
		}
	}
	return nil
}

// closeSegments closes the files of ix that are not in keep.
func closeSegments(ix *index, keep map[uint64]*os.File) {
	for num, s := range ix.segs {
		if keep[num] == nil {
			s.f.Close()
		}
	}
}
