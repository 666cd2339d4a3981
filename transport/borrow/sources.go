package borrow

import (
	"crypto/rand"
	"net"
	"sync"

	"github.com/postern/postern/transport"
)

// sourceKey stands for a client's IPv4 address or IPv6 /64: an 8-byte
// HMAC-SHA256 under a key drawn when the listener starts, as in
// transport/httpsession. It lives in memory while the source has
// connections and is never logged or reported.
type sourceKey [8]byte

// sources counts the connections (inspected or spliced) of each source,
// and of those the ones under inspection.
type sources struct {
	key        [32]byte
	max        int
	maxPending int

	mu      sync.Mutex
	n       map[sourceKey]int
	pending map[sourceKey]int
}

func newSources(max, maxPending int) *sources {
	s := &sources{max: max, maxPending: maxPending,
		n: make(map[sourceKey]int), pending: make(map[sourceKey]int)}
	rand.Read(s.key[:])
	return s
}

// keyOf hashes the source of addr; an address that is not IP:port counts
// as one shared source.
func (s *sources) keyOf(addr net.Addr) sourceKey {
	var k sourceKey
	h := transport.SourceHash(s.key[:], addr.String())
	copy(k[:], h[:])
	return k
}

// acquire takes a slot for src, false at the per-source cap.
func (s *sources) acquire(src sourceKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return take(s.n, src, s.max)
}

func (s *sources) release(src sourceKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	give(s.n, src)
}

// acquirePending takes one of src's inspection slots, false at the cap.
func (s *sources) acquirePending(src sourceKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return take(s.pending, src, s.maxPending)
}

func (s *sources) releasePending(src sourceKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	give(s.pending, src)
}

func take(m map[sourceKey]int, src sourceKey, max int) bool {
	if m[src] >= max {
		return false
	}
	m[src]++
	return true
}

func give(m map[sourceKey]int, src sourceKey) {
	if n := m[src] - 1; n > 0 {
		m[src] = n
	} else {
		delete(m, src)
	}
}
