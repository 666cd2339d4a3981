package envelope

import (
	"fmt"
	"sync"
)

// ReplayCache remembers the ids of the last Capacity envelopes a recipient
// opened, so a relay or an attacker replaying an envelope is noticed. It
// forgets the oldest id once full. Use NewReplayCache; it is safe for
// concurrent use.
type ReplayCache struct {
	mu   sync.Mutex
	seen map[[IDSize]byte]struct{}
	ring [][IDSize]byte
	next int
}

// DefaultReplayCapacity is a capacity that covers many days of traffic for
// one user at about 2.5 MiB of memory.
const DefaultReplayCapacity = 1 << 16

// NewReplayCache returns a cache holding up to capacity ids (at least 1).
func NewReplayCache(capacity int) *ReplayCache {
	if capacity < 1 {
		capacity = 1
	}
	return &ReplayCache{
		seen: make(map[[IDSize]byte]struct{}, capacity),
		ring: make([][IDSize]byte, 0, capacity),
	}
}

// Check records id and returns nil the first time, or an error matching
// ErrReplay if id was recorded before (and not yet forgotten).
func (c *ReplayCache) Check(id [IDSize]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[id]; ok {
		return fmt.Errorf("%w: this envelope was already received", ErrReplay)
	}
	if len(c.ring) < cap(c.ring) {
		c.ring = append(c.ring, id)
	} else {
		delete(c.seen, c.ring[c.next])
		c.ring[c.next] = id
		c.next = (c.next + 1) % len(c.ring)
	}
	c.seen[id] = struct{}{}
	return nil
}

// Contains reports whether id is remembered, without recording it.
func (c *ReplayCache) Contains(id [IDSize]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[id]
	return ok
}

// Len reports how many ids are remembered.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
