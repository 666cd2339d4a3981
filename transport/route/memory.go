package route

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/transport"
)

// DefaultMemoryTTL is how long a remembered way in is preferred.
const DefaultMemoryTTL = 24 * time.Hour

// Memory remembers, per network, which way into each relay last worked,
// so that the next dial on that network gives it a head start (Psiphon
// replays the last working dial recipe per server and network in the same
// spirit). A network is an opaque name the caller chooses (the CLI's
// --network); a way in is a recipe: a hash of the endpoint's transport,
// address, SNI, path and fingerprint, so the memory holds no address and
// an entry stops matching by itself when the descriptor's endpoint
// changes. A success counts only once the caller has had a request
// acknowledged over the session (Success), never for a bare handshake.
// After a failure an entry is kept with probability one half, so one
// transient error does not make the client forget a good path.
type Memory struct {
	path string
	ttl  time.Duration
	now  func() time.Time
	keep func() bool // whether to keep an entry after one failure

	mu      sync.Mutex
	entries map[memoryKey]time.Time // when the recipe last worked
}

type memoryKey struct {
	Network, Relay, Recipe string
}

// memoryFile is the on-disk form (JSON, mode 0600).
type memoryFile struct {
	Version int           `json:"version"`
	Entries []memoryEntry `json:"entries"`
}

type memoryEntry struct {
	Network string    `json:"network"`
	Relay   string    `json:"relay"`  // descriptor relay id
	Recipe  string    `json:"recipe"` // endpoint hash
	Worked  time.Time `json:"worked"`
}

// Recipe is the memory's name for a candidate's way in: a hash of what
// makes the endpoint, never the address itself.
func Recipe(ep transport.Endpoint) string {
	h := sha256.New()
	for _, f := range []string{ep.Transport, ep.Addr, ep.SNI, ep.Path, ep.Fingerprint} {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// OpenMemory loads the memory kept in path (created on the first save;
// "" keeps it in memory only). ttl 0 means DefaultMemoryTTL.
func OpenMemory(path string, ttl time.Duration) (*Memory, error) {
	if ttl <= 0 {
		ttl = DefaultMemoryTTL
	}
	m := &Memory{path: path, ttl: ttl, now: time.Now, keep: func() bool { return rand.N(2) == 0 },
		entries: map[memoryKey]time.Time{}}
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
	var f memoryFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("route memory %s is damaged; delete it (it only speeds up the next dials)", path)
	}
	for _, e := range f.Entries {
		m.entries[memoryKey{e.Network, e.Relay, e.Recipe}] = e.Worked
	}
	return m, nil
}

// Order returns cands with the ways in that worked on network within the
// TTL first, the most recent first; the rest keep their order.
func (m *Memory) Order(network string, cands []Candidate) []Candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	worked := func(c Candidate) time.Time {
		t, ok := m.entries[memoryKey{network, c.Relay, Recipe(c.Endpoint)}]
		if !ok || now.Sub(t) > m.ttl {
			return time.Time{}
		}
		return t
	}
	out := slices.Clone(cands)
	slices.SortStableFunc(out, func(a, b Candidate) int { return worked(b).Compare(worked(a)) })
	return out
}

// Success records that c worked on network: a request over its session
// was acknowledged.
func (m *Memory) Success(network string, c Candidate) error {
	m.mu.Lock()
	m.entries[memoryKey{network, c.Relay, Recipe(c.Endpoint)}] = m.now()
	m.mu.Unlock()
	return m.save()
}

// Failure records that c failed on network: its entry is dropped with
// probability one half.
func (m *Memory) Failure(network string, c Candidate) error {
	m.mu.Lock()
	k := memoryKey{network, c.Relay, Recipe(c.Endpoint)}
	_, had := m.entries[k]
	drop := had && !m.keep()
	if drop {
		delete(m.entries, k)
	}
	m.mu.Unlock()
	if !drop {
		return nil
	}
	return m.save()
}

// save writes the live entries to the file, atomically.
func (m *Memory) save() error {
	if m.path == "" {
		return nil
	}
	m.mu.Lock()
	f := memoryFile{Version: 1}
	now := m.now()
	for k, t := range m.entries {
		if now.Sub(t) <= m.ttl {
			f.Entries = append(f.Entries, memoryEntry{k.Network, k.Relay, k.Recipe, t.UTC()})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(f.Entries, func(a, b memoryEntry) int { return a.Worked.Compare(b.Worked) })
	data, _ := json.MarshalIndent(f, "", "  ")
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
