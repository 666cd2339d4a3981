package client

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/postern/postern/envelope"
)

// ReplayStore keeps the ids of envelopes whose messages the application
// has taken, so that an envelope delivered again after a crash (taken, not
// yet acked) is not taken twice.
type ReplayStore interface {
	// Load returns the stored ids, oldest first; none on first use.
	Load() ([][envelope.IDSize]byte, error)
	// Save replaces the stored ids, durably. It must not keep ids.
	Save(ids [][envelope.IDSize]byte) error
}

// ReplayAppender is a ReplayStore that can also add ids to those stored
// without rewriting them: an inbox then records each page or batch in
// what it adds, not what it holds, and replaces the stored ids (Save) only
// once they are twice what it keeps.
type ReplayAppender interface {
	ReplayStore
	// Append adds ids after those stored, durably. It must not keep ids.
	Append(ids [][envelope.IDSize]byte) error
}

// replayLog is the in-memory side of a ReplayStore.
type replayLog struct {
	store  ReplayStore
	limit  int
	ids    [][envelope.IDSize]byte
	cache  *envelope.ReplayCache
	fresh  int // ids added since the last save: the last fresh of ids
	stored int // ids the store holds (appended ones included)
}

func loadReplayLog(st ReplayStore, limit int) (*replayLog, error) {
	r := &replayLog{store: st, limit: limit, cache: envelope.NewReplayCache(limit)}
	if st == nil {
		return r, nil
	}
	ids, err := st.Load()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		r.add(id)
	}
	r.fresh, r.stored = 0, len(ids)
	return r, nil
}

func (r *replayLog) contains(id [envelope.IDSize]byte) bool { return r.cache.Contains(id) }

func (r *replayLog) add(id [envelope.IDSize]byte) {
	if r.cache.Check(id) != nil {
		return
	}
	r.ids = append(r.ids, id)
	r.fresh++
	if len(r.ids) > r.limit {
		r.ids = r.ids[len(r.ids)-r.limit:]
	}
}

// save records the ids added since the last save: appended, if the store
// can and it then holds at most twice the ids kept, or else by replacing
// what the store holds with the ids kept.
func (r *replayLog) save() error {
	if r.fresh == 0 || r.store == nil {
		return nil
	}
	if a, ok := r.store.(ReplayAppender); ok && r.fresh <= len(r.ids) && r.stored+r.fresh <= 2*r.limit {
		if err := a.Append(slices.Clip(r.ids[len(r.ids)-r.fresh:])); err != nil {
			return err
		}
		r.stored += r.fresh
	} else {
		if err := r.store.Save(slices.Clip(r.ids)); err != nil {
			return err
		}
		r.stored = len(r.ids)
	}
	r.fresh = 0
	return nil
}

// ReplayFile is a ReplayStore in one file (mode 0600): the ids back to
// back. Append adds to its end; Save replaces it atomically.
type ReplayFile string

// Load reads the file; a missing file holds no ids. A partial id at the
// end is the rest of an Append that a crash cut short: its messages were
// not acked, so they come again, and it is ignored (and overwritten by
// the next Append).
func (f ReplayFile) Load() ([][envelope.IDSize]byte, error) {
	data, err := os.ReadFile(string(f))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replay file: %w", err)
	}
	return ParseReplay(data[:len(data)-len(data)%envelope.IDSize])
}

// ParseReplay decodes a replay file's contents.
func ParseReplay(data []byte) ([][envelope.IDSize]byte, error) {
	if len(data)%envelope.IDSize != 0 {
		return nil, fmt.Errorf("%d bytes is not a whole number of %d-byte ids", len(data), envelope.IDSize)
	}
	ids := make([][envelope.IDSize]byte, len(data)/envelope.IDSize)
	for i := range ids {
		copy(ids[i][:], data[i*envelope.IDSize:])
	}
	return ids, nil
}

func appendIDs(buf []byte, ids [][envelope.IDSize]byte) []byte {
	for _, id := range ids {
		buf = append(buf, id[:]...)
	}
	return buf
}

// Append writes the ids after the whole ids in the file (over a partial
// one a crash left), creating it if need be, and syncs it.
func (f ReplayFile) Append(ids [][envelope.IDSize]byte) error {
	_, err := os.Lstat(string(f))
	created := errors.Is(err, fs.ErrNotExist)
	file, err := os.OpenFile(string(f), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("append to replay file: %w", err)
	}
	fi, err := file.Stat()
	if err == nil {
		end := fi.Size() - fi.Size()%envelope.IDSize
		_, err = file.WriteAt(appendIDs(nil, ids), end)
	}
	if err == nil {
		err = file.Sync()
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err == nil && (created || fi.Size() == 0) {
		err = syncDir(filepath.Dir(string(f))) // a new file's name, durably
	}
	if err != nil {
		return fmt.Errorf("append to replay file: %w", err)
	}
	return nil
}

// Save writes the ids to a temporary file beside f, syncs it, renames it
// over f and syncs the directory.
func (f ReplayFile) Save(ids [][envelope.IDSize]byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(string(f)), ".replay-*")
	if err != nil {
		return fmt.Errorf("save replay file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(appendIDs(make([]byte, 0, len(ids)*envelope.IDSize), ids))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), string(f))
	}
	if err == nil {
		err = syncDir(filepath.Dir(string(f)))
	}
	if err != nil {
		return fmt.Errorf("save replay file: %w", err)
	}
	return nil
}

// syncDir makes the names in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
