package borrow

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"net/netip"
	"sync"
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
	var b []byte
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		ip := ap.Addr().Unmap()
		if ip.Is4() {
			a := ip.As4()
			b = append([]byte{4}, a[:]...)
		} else {
			a := ip.As16()
			b = append([]byte{6}, a[:8]...)
		}
	}
	m := hmac.New(sha256.New, s.key[:])
	m.Write(b)
	var k sourceKey
	copy(k[:], m.Sum(nil))
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
