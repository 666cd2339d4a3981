package client

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/postern/postern/envelope"
)

// ReplayStore keeps the ids of envelopes whose messages the application
// has taken, so that an envelope delivered again after a crash (taken, not
// yet acked) is not taken twice.
type ReplayStore interface {
	// Load returns the stored ids, oldest first; none on first use.
	Load() ([][envelope.IDSize]byte, error)
	// Save replaces the stored ids, durably.
	Save(ids [][envelope.IDSize]byte) error
}

// replayLog is the in-memory side of a ReplayStore.
type replayLog struct {
	store ReplayStore
	limit int
	ids   [][envelope.IDSize]byte
	cache *envelope.ReplayCache
	dirty bool
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
	r.dirty = false
	return r, nil
}

func (r *replayLog) contains(id [envelope.IDSize]byte) bool { return r.cache.Contains(id) }

func (r *replayLog) add(id [envelope.IDSize]byte) {
	if r.cache.Check(id) != nil {
		return
	}
	r.ids = append(r.ids, id)
	if len(r.ids) > r.limit {
		r.ids = r.ids[len(r.ids)-r.limit:]
	}
	r.dirty = true
}

func (r *replayLog) save() error {
	if !r.dirty || r.store == nil {
		return nil
	}
	if err := r.store.Save(r.ids); err != nil {
		return err
	}
	r.dirty = false
	return nil
}

// ReplayFile is a ReplayStore in one file (mode 0600): the ids back to
// back, replaced atomically on every save.
type ReplayFile string

// Load reads the file; a missing file holds no ids.
func (f ReplayFile) Load() ([][envelope.IDSize]byte, error) {
	data, err := os.ReadFile(string(f))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replay file: %w", err)
	}
	ids, err := ParseReplay(data)
	if err != nil {
		return nil, fmt.Errorf("replay file %s: %w; move it aside to start a new one (messages still on the relay may then be shown twice)", f, err)
	}
	return ids, nil
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

// Save writes the ids to a temporary file beside f, syncs it and renames
// it over f.
func (f ReplayFile) Save(ids [][envelope.IDSize]byte) error {
	buf := make([]byte, 0, len(ids)*envelope.IDSize)
	for _, id := range ids {
		buf = append(buf, id[:]...)
	}
	tmp, err := os.CreateTemp(filepath.Dir(string(f)), ".replay-*")
	if err != nil {
		return fmt.Errorf("save replay file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(buf)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), string(f))
	}
	if err != nil {
		return fmt.Errorf("save replay file: %w", err)
	}
	return nil
}
