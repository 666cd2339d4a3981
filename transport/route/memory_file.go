package route

import (
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/postern/postern/transport"
)

// The memory file is JSON, mode 0600, written atomically (a temporary file
// renamed over it). It holds hashes of network names, relay ids and recipe
// hashes, never an address or a network's name:
//
//	{"version": 3, "entries": [
//	  {"network": "<24 hex digits>", "relay": "<relay id>", "recipe": "<24 hex digits>",
//	   "worked": "<RFC 3339 time>",      last acknowledged success (absent: none)
//	   "rtt_us": 41000,                   smoothed handshake time in µs (absent: unknown)
//	   "class": "timeout", "fails": 2,    last failure class, consecutive failures
//	   "until": "<RFC 3339 time>",        tried last until then
//	   "config": "<24 hex digits>"}]}     class invalid: the endpoint that was invalid
//
// Version 1 files (network, relay, recipe, worked) and version 2 files
// (all of the above) named networks in clear: they are read with each name
// hashed, and written again at once as version 3. (A process of a version
// from before, still running, reads a version 3 file as damaged and writes
// its own entries over it, names in clear, at its next save.)
const memoryVersion = 3

// memoryFile is the on-disk form.
type memoryFile struct {
	Version int           `json:"version"`
	Entries []memoryEntry `json:"entries"`
}

type memoryEntry struct {
	Network string     `json:"network"`
	Relay   string     `json:"relay"`  // descriptor relay id
	Recipe  string     `json:"recipe"` // endpoint hash
	Worked  *time.Time `json:"worked,omitempty"`
	RTTus   int64      `json:"rtt_us,omitempty"`
	Class   string     `json:"class,omitempty"`
	Fails   int        `json:"fails,omitempty"`
	Until   *time.Time `json:"until,omitempty"`
	Config  string     `json:"config,omitempty"`
}

// maxMemoryEntries bounds what a file may hold: a client knows a few relays
// on a few networks, each with a few endpoints.
const maxMemoryEntries = 1 << 16

// OpenMemory loads the memory kept in path (created on the first save;
// "" keeps it in memory only). ttl 0 means DefaultMemoryTTL.
func OpenMemory(path string, ttl time.Duration) (*Memory, error) {
	m := newMemory(path, ttl)
	if path == "" {
		return m, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("route memory: %w", err)
	}
	if m.entries, err = parseMemory(data); err != nil {
		return nil, fmt.Errorf("route memory %s is damaged (%v); delete it (it only speeds up the next dials)", path, err)
	}
	now := m.now()
	for _, s := range m.entries {
		sane(s, now)
	}
	var v struct{ Version int }
	if json.Unmarshal(data, &v) == nil && v.Version < memoryVersion {
		// Names in clear: write them hashed now, not at the next change,
		// which may never come. Best effort: the memory only speeds up
		// dials, and a directory that cannot be written fails every save.
		m.save()
	}
	return m, nil
}

// parseMemory decodes a memory file.
func parseMemory(data []byte) (map[memoryKey]*memoryState, error) {
	var f memoryFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, errors.New("not JSON")
	}
	if f.Version < 1 || f.Version > memoryVersion {
		return nil, fmt.Errorf("version %d", f.Version)
	}
	if len(f.Entries) > maxMemoryEntries {
		return nil, fmt.Errorf("%d entries", len(f.Entries))
	}
	out := make(map[memoryKey]*memoryState, len(f.Entries))
	for _, e := range f.Entries {
		class, ok := classNamed(e.Class)
		if !ok || e.Fails < 0 || e.RTTus < 0 || e.RTTus > int64(time.Hour/time.Microsecond) {
			return nil, fmt.Errorf("entry with class %q, %d failures, rtt %d µs", e.Class, e.Fails, e.RTTus)
		}
		s := &memoryState{rtt: time.Duration(e.RTTus) * time.Microsecond, class: class, fails: e.Fails, config: e.Config}
		if s.worked, ok = utcTime(e.Worked); !ok {
			return nil, errors.New("entry with a time out of range")
		}
		if s.until, ok = utcTime(e.Until); !ok {
			return nil, errors.New("entry with a time out of range")
		}
		if s.fails == 0 {
			s.until = time.Time{} // no failure holds nothing (a file written by hand)
		}
		network := e.Network
		if f.Version < 3 {
			network = networkID(network) // a name in clear
		} else if !isNetworkID(network) {
			return nil, errors.New("entry whose network is not a hash")
		}
		out[memoryKey{network, e.Relay, e.Recipe}] = s
	}
	return out, nil
}

// isNetworkID reports whether s has the form networkID gives.
func isNetworkID(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && len(s) == 24 && s == strings.ToLower(s)
}

// classNamed returns the class whose String is name; "" is ClassUnknown.
func classNamed(name string) (transport.Class, bool) {
	if name == "" {
		return transport.ClassUnknown, true
	}
	for c := transport.ClassUnknown; c < 64; c++ { // past the last class, String is "unknown"
		if c.String() == name {
			return c, true
		}
	}
	return 0, false
}

// encode returns the live entries as the file's bytes, oldest success first.
func (m *Memory) encode() []byte {
	m.mu.Lock()
	f := memoryFile{Version: memoryVersion, Entries: []memoryEntry{}}
	now := m.now()
	for k, s := range m.entries {
		if !m.live(s, now) {
			continue
		}
		e := memoryEntry{Network: k.Network, Relay: k.Relay, Recipe: k.Recipe, RTTus: micros(s.rtt), Fails: s.fails, Config: s.config}
		if s.fails > 0 {
			e.Class = s.class.String()
		}
		if !s.worked.IsZero() {
			w := s.worked.UTC()
			e.Worked = &w
		}
		if !s.until.IsZero() && (s.until.After(now) || s.fails > 0) {
			u := s.until.UTC()
			e.Until = &u
		}
		f.Entries = append(f.Entries, e)
	}
	m.mu.Unlock()
	slices.SortFunc(f.Entries, func(a, b memoryEntry) int {
		return cmp.Or(timeOf(a.Worked).Compare(timeOf(b.Worked)), cmp.Compare(a.Network, b.Network),
			cmp.Compare(a.Relay, b.Relay), cmp.Compare(a.Recipe, b.Recipe))
	})
	// No more than a file may hold: one past it was refused as damaged
	// at the next start, and never written again. The newest successes
	// stay.
	f.Entries = f.Entries[max(0, len(f.Entries)-maxMemoryEntries):]
	data, _ := json.MarshalIndent(f, "", "  ")
	return data
}

// micros is d in whole microseconds, at least 1 if d is positive (a
// loopback handshake may take less).
func micros(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(1, d.Microseconds())
}

// utcTime returns *t in UTC (zero for nil), and false if its year is one
// the file could not hold again.
func utcTime(t *time.Time) (time.Time, bool) {
	if t == nil {
		return time.Time{}, true
	}
	u := t.UTC()
	return u, u.Year() >= 1 && u.Year() <= 9999
}

func timeOf(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// save writes the live entries to the file, atomically. Under a lock on
// the file, it first takes from the file as it is now what other
// processes recorded of the recipes this one did not touch since its last
// save: each CLI run (and a long `recv --follow`) wrote back the whole
// memory it had loaded, and the last writer's copy won.
func (m *Memory) save() error {
	if m.path == "" {
		return nil
	}
	defer LockFile(m.path + ".lock")()
	m.merge()
	data := m.encode()
	tmp, err := os.CreateTemp(filepath.Dir(m.path), ".route-memory-*")
	if err != nil {
		return fmt.Errorf("route memory: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), m.path)
	}
	if err != nil {
		return fmt.Errorf("route memory: %w", err)
	}
	return nil
}

// merge takes the entries of the file as it is now, bounded by sane, for
// the recipes this process did not touch since its last save (a file that
// cannot be read or parsed is written over).
func (m *Memory) merge() {
	data, err := os.ReadFile(m.path)
	var disk map[memoryKey]*memoryState
	if err == nil {
		disk, _ = parseMemory(data)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for k, s := range disk {
		if !m.touched[k] {
			sane(s, now)
			m.entries[k] = s
		}
	}
	for k := range m.entries {
		if _, ok := disk[k]; !ok && !m.touched[k] && disk != nil {
			delete(m.entries, k) // another process let it go
		}
	}
	clear(m.touched)
}
