package route

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/transport"
)

// DefaultMemoryTTL is how long a remembered way in is preferred.
const DefaultMemoryTTL = 24 * time.Hour

// Memory remembers, per network, which ways into each relay worked, which
// failed and how, and how long their handshakes take, so that the next
// dial on that network orders its candidates and sizes its timeouts by
// what it saw (Psiphon replays the last working dial recipe per server and
// network in the same spirit). A network is an opaque name the caller
// chooses (the CLI's --network); a way in is a recipe: a hash of the
// endpoint's transport, address, SNI, path and fingerprint, so the memory
// holds no address and an entry stops matching by itself when the
// descriptor's endpoint changes.
//
// A success counts only once the caller has had a request acknowledged
// over the session (Success), never for a bare handshake; it clears the
// recipe's failures. A failure (Failure, called by Dial for every attempt
// that fails) puts the recipe in backoff for the time its class calls for
// (see the package documentation); a recipe in backoff is tried last, never
// dropped. After the first failure of a recipe that worked, the entry is
// kept as it was with probability one half, so one transient error does
// not make the client forget a good path. A session that fails after the
// dial (SessionFailure: stalled, throttled, busy) gets no such grace.
type Memory struct {
	path   string
	ttl    time.Duration
	now    func() time.Time
	keep   func() bool                       // whether to keep a good entry after one failure
	jitter func(time.Duration) time.Duration // a value in [0, d]

	mu      sync.Mutex
	entries map[memoryKey]*memoryState
	touched map[memoryKey]bool // changed by this process since its last save
}

type memoryKey struct {
	Network, Relay, Recipe string // Network is networkID's hash of the name
}

// keyOf is c's key on network.
func keyOf(network string, c Candidate) memoryKey {
	return memoryKey{networkID(network), c.Relay, Recipe(c.Endpoint)}
}

// networkID is what the memory keeps of a network's name: a hash, so that
// the file does not say where the device has been (a name such as
// "office-wifi" or a town's). The name is a low-entropy secret: whoever
// holds the file can still test a guess, as with the networks and
// tls-sessions files beside it.
func networkID(name string) string { return hashFields("network", name) }

// memoryState is what the memory knows of one recipe on one network.
type memoryState struct {
	worked time.Time       // last acknowledged success; zero if none since the last failure
	rtt    time.Duration   // smoothed handshake time of the successes; 0 unknown
	class  transport.Class // class of the last failure since the last success
	fails  int             // consecutive failures since the last success
	until  time.Time       // tried last until then
	config string          // ClassInvalid only: the whole endpoint's hash when it failed
}

// Recipe is the memory's name for a candidate's way in: a hash of what
// makes the endpoint, never the address itself.
func Recipe(ep transport.Endpoint) string {
	return hashFields(ep.Transport, ep.Addr, ep.SNI, ep.Path, ep.Fingerprint)
}

// configHash names everything of ep that can make it invalid, so that an
// invalid recipe is retried as soon as the configuration changes.
func configHash(ep transport.Endpoint) string {
	return hashFields(ep.Transport, ep.Addr, ep.SNI, ep.Path, ep.Fingerprint, ep.LocalAddr,
		string(ep.Key), string(ep.CertSHA256), fmt.Sprint(ep.Unbound))
}

func hashFields(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

func newMemory(path string, ttl time.Duration) *Memory {
	if ttl <= 0 {
		ttl = DefaultMemoryTTL
	}
	return &Memory{path: path, ttl: ttl, now: time.Now, keep: func() bool { return rand.N(2) == 0 },
		jitter: randJitter, entries: map[memoryKey]*memoryState{}, touched: map[memoryKey]bool{}}
}

// state returns c's entry on network, or nil.
func (m *Memory) state(network string, c Candidate) *memoryState {
	return m.entries[keyOf(network, c)]
}

// held reports until when c is tried last on network (zero if it is not).
func (m *Memory) held(network string, c Candidate, now time.Time) time.Time {
	s := m.state(network, c)
	if s == nil || !s.until.After(now) {
		return time.Time{}
	}
	if s.class == transport.ClassInvalid && s.config != configHash(c.Endpoint) {
		return time.Time{} // the configuration changed: worth a try
	}
	return s.until
}

// Order returns cands in the order to try them on network: first those
// that worked within the TTL, the most recent first; then the others in
// their given order; last those in backoff, the one whose backoff ends
// first leading.
func (m *Memory) Order(network string, cands []Candidate) []Candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	type ranked struct {
		c            Candidate
		worked, held time.Time
	}
	rs := make([]ranked, len(cands))
	for i, c := range cands {
		rs[i] = ranked{c: c, held: m.held(network, c, now)}
		if s := m.state(network, c); s != nil && !s.worked.IsZero() && now.Sub(s.worked) <= m.ttl {
			rs[i].worked = s.worked
		}
	}
	slices.SortStableFunc(rs, func(a, b ranked) int {
		if ah, bh := !a.held.IsZero(), !b.held.IsZero(); ah != bh || ah {
			return cmp.Or(boolCmp(ah, bh), a.held.Compare(b.held))
		}
		return b.worked.Compare(a.worked)
	})
	out := make([]Candidate, len(rs))
	for i, r := range rs {
		out[i] = r.c
	}
	return out
}

// boolCmp orders false before true.
func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// Backoff returns until when c is tried last on network and the class of
// the failure that put it there; a zero time if c is not in backoff.
func (m *Memory) Backoff(network string, c Candidate) (time.Time, transport.Class) {
	m.mu.Lock()
	defer m.mu.Unlock()
	until := m.held(network, c, m.now())
	if until.IsZero() {
		return until, transport.ClassUnknown
	}
	return until, m.state(network, c).class
}

// RTT returns the smoothed handshake time of c on network: its recipe's if
// known, else the longest known of another recipe of the same relay, else 0.
func (m *Memory) RTT(network string, c Candidate) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.state(network, c); s != nil && s.rtt > 0 {
		return s.rtt
	}
	var rtt time.Duration
	id := networkID(network)
	for k, s := range m.entries {
		if k.Network == id && k.Relay == c.Relay {
			rtt = max(rtt, s.rtt)
		}
	}
	return rtt
}

// Success records that c worked on network: a request over its session
// was acknowledged. It clears c's failures and folds c.RTT, if set, into
// the recipe's smoothed handshake time (RFC 6298's 7/8 weighting).
func (m *Memory) Success(network string, c Candidate) error {
	m.mu.Lock()
	k := keyOf(network, c)
	s := m.entries[k]
	if s == nil {
		s = &memoryState{}
		m.entries[k] = s
	}
	m.touched[k] = true
	rtt := s.rtt
	*s = memoryState{worked: m.now(), rtt: rtt}
	if c.RTT > 0 {
		s.rtt = c.RTT
		if rtt > 0 {
			s.rtt = (7*rtt + c.RTT) / 8
		}
	}
	m.mu.Unlock()
	return m.save()
}

// Failure records that c failed on network with class and saves the
// memory. Classes that are not the recipe's fault (network_down,
// canceled) change nothing.
func (m *Memory) Failure(network string, c Candidate, class transport.Class) error {
	if !m.fail(network, c, class, true) {
		return nil
	}
	return m.save()
}

// SessionFailure records that a session dialed through c failed after the
// dial (its flow stalled or was throttled, the relay answered busy) and
// saves the memory. It is Failure without the forgiveness of a first
// failure: the success it would forgive was most likely counted on this
// same session, at its first acknowledged request, so it is no evidence
// that the path is good.
func (m *Memory) SessionFailure(network string, c Candidate, class transport.Class) error {
	if !m.fail(network, c, class, false) {
		return nil
	}
	return m.save()
}

// fail is Failure without the save; it reports whether anything changed.
// forgive allows the first failure of a path that worked to be forgiven.
func (m *Memory) fail(network string, c Candidate, class transport.Class, forgive bool) bool {
	if !counts(class) {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := keyOf(network, c)
	s := m.entries[k]
	if s == nil {
		s = &memoryState{}
		m.entries[k] = s
	}
	m.touched[k] = true
	s.fails++
	if forgive && !s.worked.IsZero() && s.fails == 1 && m.keep() {
		return true // the first failure of a good path: it keeps its place
	}
	now := m.now()
	s.worked, s.class, s.config = time.Time{}, class, ""
	s.until = now.Add(backoff(class, s.fails, m.jitter))
	if class == transport.ClassInvalid {
		s.config = configHash(c.Endpoint)
	}
	return true
}

// live reports whether s is worth keeping at now: it worked within the
// TTL, is in backoff, or failed and its backoff ended less than its
// class's longest backoff ago, so that a further failure doubles it (a
// CLI run is a process of its own: when the file dropped a recipe as its
// backoff ended, every run started it over at the first backoff, a
// reviewer found).
func (m *Memory) live(s *memoryState, now time.Time) bool {
	if !s.worked.IsZero() && now.Sub(s.worked) <= m.ttl || s.until.After(now) {
		return true
	}
	return s.fails > 0 && !s.until.IsZero() && now.Sub(s.until) <= backoffs[s.class].Max
}

// sane bounds what a file says against the clock at now: a backoff ends
// no later than its class's longest from now, and a success in the future
// (a clock that was ahead, or a file written by hand) is no success.
// Trusted as written, a failure recorded while the clock was years ahead
// kept its recipe last until then, and was written back each time.
func sane(s *memoryState, now time.Time) {
	if most := now.Add(backoffs[s.class].Max); s.until.After(most) {
		s.until = most
	}
	if s.worked.After(now) {
		s.worked = time.Time{}
	}
}
