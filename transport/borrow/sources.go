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

// sources counts the connections (inspected or spliced) of each source.
type sources struct {
	key [32]byte
	max int

	mu sync.Mutex
	n  map[sourceKey]int
}

func newSources(max int) *sources {
	s := &sources{max: max, n: make(map[sourceKey]int)}
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
	if s.n[src] >= s.max {
		return false
	}
	s.n[src]++
	return true
}

func (s *sources) release(src sourceKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.n[src] - 1; n > 0 {
		s.n[src] = n
	} else {
		delete(s.n, src)
	}
}
