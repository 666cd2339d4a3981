package borrow

import "sync"

// DefaultMaxReplay is the number of tags remembered per window when
// Options.MaxReplay is zero: 65,536 authenticated connections in two
// minutes (546 a second), about 2 MiB per window.
const DefaultMaxReplay = 1 << 16

// replayCache remembers the tags accepted in the windows that can still
// verify. Entries of a window are dropped once that window is more than
// one window in the past (it cannot verify any more).
type replayCache struct {
	max int

	mu      sync.Mutex
	windows map[uint64]map[[replayKeyN]byte]struct{}
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, windows: make(map[uint64]map[[replayKeyN]byte]struct{})}
}

// admit records the tag accepted in window w at current window cur. It
// returns false for a tag seen before, or when w already holds max tags.
func (c *replayCache) admit(w, cur uint64, tag []byte) bool {
	var k [replayKeyN]byte
	copy(k[:], tag)
	c.mu.Lock()
	defer c.mu.Unlock()
	for old := range c.windows {
		if old+1 < cur {
			delete(c.windows, old)
		}
	}
	m := c.windows[w]
	if m == nil {
		m = make(map[[replayKeyN]byte]struct{})
		c.windows[w] = m
	}
	if _, seen := m[k]; seen || len(m) >= c.max {
		return false
	}
	m[k] = struct{}{}
	return true
}
