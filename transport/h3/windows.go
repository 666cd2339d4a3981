package h3

import (
	"context"
	"sync"

	"github.com/quic-go/quic-go"
)

// DefaultWindowBudget is how much receive window, past the initial one,
// the QUIC connections of one listener may hold together (see
// windowBudget).
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
// So every increase past the initial window is taken from this budget
// (quic.Config.AllowConnectionWindowIncrease), and a connection gives
// what it took back when it ends; while too little is left, a connection
// keeps the window it has. The bytes sent ahead of the relay's reads then
// stay within the initial window per connection plus the budget. The
// budget is not shared out by source: one source can hold all of it, and
// the others then upload within their initial windows, as a stock server
// whose auto-tuning is off would have them do.
type windowBudget struct {
	mu   sync.Mutex
	left int64
	held map[*quic.Conn]int64 // what each connection took, while it lives
}

func newWindowBudget(n int64) *windowBudget {
	return &windowBudget{left: max(n, 0), held: make(map[*quic.Conn]int64)}
}

// allow is the listener's quic.Config.AllowConnectionWindowIncrease. It
// runs on the connection's own goroutine and calls nothing on c but
// Context, which only returns a field.
func (b *windowBudget) allow(c *quic.Conn, delta uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if delta > uint64(b.left) {
		return false
	}
	if _, ok := b.held[c]; !ok {
		// The first increase: give everything back when c ends. Should c
		// have ended already, release runs at once, on its own goroutine,
		// and waits for mu.
		context.AfterFunc(c.Context(), func() { b.release(c) })
	}
	b.left -= int64(delta)
	b.held[c] += int64(delta)
	return true
}

// release gives back what c took.
func (b *windowBudget) release(c *quic.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.left += b.held[c]
	delete(b.held, c)
}

// inUse returns how much of the budget connections hold, and how many
// connections hold some.
func (b *windowBudget) inUse() (bytes int64, conns int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.held {
		bytes += n
	}
	return bytes, len(b.held)
}

// available returns what is left of the budget.
func (b *windowBudget) available() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.left
}
