package h3

import (
	"context"
	"sync"

	"github.com/quic-go/quic-go"
)

// DefaultWindowBudget is how much receive window, past the initial one,
// the QUIC connections of one listener that carried a session may hold
// together; connections that never did draw on a pool of the same size of
// their own (see windowBudget).
const DefaultWindowBudget = 48 << 20

// windowBudget bounds the receive windows of a listener's QUIC
// connections. quic-go grows a connection's window, from its initial
// 768 KiB (which every client sees in the transport parameters, so it
// stays quic-go's default) up to 15 MiB, while the application reads
// promptly; a window never shrinks. What it grants is what a client may
// send ahead of the relay's reads, and quic-go keeps all of it in memory
// until read: a session whose relay side stops reading for a while (its
// writes blocked by a client that stopped reading them, up to the write
// timeout) holds the whole window. Without a bound, one source's 64
// sessions, each on a QUIC connection of its own with its stream window
// grown to 6 MiB, could pin 384 MiB.
//
// So every increase past the initial window is taken from a budget
// (quic.Config.AllowConnectionWindowIncrease), and a connection gives
// what it took back when it ends; while too little is left, a connection
// keeps the window it has.
//
// There are two pools, and a connection draws on the sessions' pool once
// it has carried an admitted session (markSession), on the cover's before
// that. Any client can grow a connection's window without a session:
// quic-go counts the unread body of a request the cover site answered
// (its stream then cancelled) as read, and so as fast reading. Drawing
// on one pool, such clients took window a reviewer's probe measured at
// 2.25 MiB per connection from the sessions, and let a prober watch the
// sessions' uploads in how its own window grew. A connection's growth
// from the cover's pool stays counted there after a session comes on it:
// so the bytes sent ahead of the relay's reads stay within the initial
// window per connection plus both pools.
//
// A source (as the listener's per-source limits count it) may take from a
// pool while at least half of the pool would be left; past that, only
// while its connections hold nothing of the pool yet, or what they hold
// stays within a quarter of it. So one source holds at most half of a
// pool (or, had it nothing when the pool was past half, its first increase
// or a quarter, whichever is more): one source alone cannot keep the
// others from growing a window, where before it could hold all of the
// pool and the others then uploaded within the windows they had. Three
// sources together can still spend a pool (a half and two quarters), and
// every client behind one address (a carrier's NAT, an entry relay's
// links) shares one source's part. (The https engine's pool is shared
// out the same way.)
type windowBudget struct {
	mu      sync.Mutex
	size    int64 // of each pool
	session int64 // left in the sessions' pool
	cover   int64 // left in the cover's pool
	held    map[*quic.Conn]*connWindow
	// source is what a connection counts as for the share
	// (connLimiter.sourceOf).
	source  func(*quic.Conn) [16]byte
	sources map[[16]byte]*srcWindow
}

// connWindow is what one connection took, while it lives.
type connWindow struct {
	session, cover int64
	carried        bool // it carried an admitted session
	src            *srcWindow
}

// srcWindow is what the connections of one source hold of each pool.
type srcWindow struct {
	key            [16]byte
	session, cover int64
	conns          int // connections with an account
}

// newWindowBudget returns pools of n bytes each, shared out by what
// source says a connection counts as.
func newWindowBudget(n int64, source func(*quic.Conn) [16]byte) *windowBudget {
	n = max(n, 0)
	return &windowBudget{size: n, session: n, cover: n, source: source,
		held: make(map[*quic.Conn]*connWindow), sources: make(map[[16]byte]*srcWindow)}
}

// allow is the listener's quic.Config.AllowConnectionWindowIncrease. It
// runs on the connection's own goroutine and calls nothing on c but
// Context (and, through source, RemoteAddr, for a connection whose context
// carries no source), which only return fields.
func (b *windowBudget) allow(c *quic.Conn, delta uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cw := b.held[c]
	carried := cw != nil && cw.carried
	pool := &b.cover
	if carried {
		pool = &b.session
	}
	if delta > uint64(*pool) {
		return false
	}
	d := int64(delta)
	if *pool-d < b.size/2 {
		// Past half of the pool: within the source's share only.
		var src *srcWindow // nil: the source holds nothing
		if cw != nil {
			src = cw.src
		} else {
			src = b.sources[b.source(c)]
		}
		mine := int64(0)
		switch {
		case src != nil && carried:
			mine = src.session
		case src != nil:
			mine = src.cover
		}
		if mine > 0 && mine+d > b.size/4 {
			return false
		}
	}
	if cw == nil {
		cw = b.watchLocked(c)
	}
	*pool -= d
	if cw.carried {
		cw.session += d
		cw.src.session += d
	} else {
		cw.cover += d
		cw.src.cover += d
	}
	return true
}

// markSession records that c carries an admitted session: its growth
// from now on draws on the sessions' pool.
func (b *windowBudget) markSession(c *quic.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cw := b.held[c]
	if cw == nil {
		cw = b.watchLocked(c)
	}
	cw.carried = true
}

// watchLocked starts the account of c, given back when c ends. Should c
// have ended already, release runs at once, on its own goroutine, and
// waits for mu.
func (b *windowBudget) watchLocked(c *quic.Conn) *connWindow {
	k := b.source(c)
	src := b.sources[k]
	if src == nil {
		src = &srcWindow{key: k}
		b.sources[k] = src
	}
	src.conns++
	cw := &connWindow{src: src}
	b.held[c] = cw
	context.AfterFunc(c.Context(), func() { b.release(c) })
	return cw
}

// release gives back what c took.
func (b *windowBudget) release(c *quic.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cw := b.held[c]; cw != nil {
		b.session += cw.session
		b.cover += cw.cover
		src := cw.src
		src.session -= cw.session
		src.cover -= cw.cover
		if src.conns--; src.conns == 0 {
			delete(b.sources, src.key)
		}
		delete(b.held, c)
	}
}

// inUse returns how much of each pool connections hold, and how many
// connections have an account.
func (b *windowBudget) inUse() (session, cover int64, conns int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, cw := range b.held {
		session += cw.session
		cover += cw.cover
	}
	return session, cover, len(b.held)
}

// sessionLeft returns what is left in the sessions' pool.
func (b *windowBudget) sessionLeft() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.session
}
