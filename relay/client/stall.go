package client

import (
	"io"
	"sync/atomic"
	"time"

	"github.com/postern/postern/transport"
)

// DefaultStallWindow is how long a session may receive nothing at all
// while a request is waiting for its answer before it counts as stalled.
const DefaultStallWindow = 10 * time.Second

// Option tunes New.
type Option func(*Client)

// WithStallWindow sets the stall window (default DefaultStallWindow).
func WithStallWindow(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.SetStallWindow(d)
		}
	}
}

// SetStallWindow changes the stall window of a running session (at least
// MinStallWindow): a sender that opens more connections beside this one,
// on a line throttled as a whole, slows each of them down.
func (c *Client) SetStallWindow(d time.Duration) {
	c.stallWindow.Store(int64(max(d, MinStallWindow)))
}

// StallWindow is the session's stall window.
func (c *Client) StallWindow() time.Duration { return time.Duration(c.stallWindow.Load()) }

// MinStallWindow is the shortest stall window WithStallWindow sets: a
// shorter one would end sessions over a round trip.
const MinStallWindow = 100 * time.Millisecond

// progressReader records when bytes last arrived, and how many did.
type progressReader struct {
	r     io.Reader
	last  *atomic.Int64 // unix nanoseconds
	total *atomic.Int64
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.last.Store(time.Now().UnixNano())
		p.total.Add(int64(n))
	}
	return n, err
}

// errStalled ends a session whose flow froze: a censor's per-flow byte
// budget (Russia's TSPU freezes flows to foreign hosting after about 15–20
// KB) keeps the connection open and silently stops it. The caller resumes
// on another connection or transport; every envelope acked so far is safe.
var errStalled = &transport.Error{Class: transport.ClassStalled, Op: "session",
	Err: transport.ErrStalled}

// watchStall ends the session when a request has waited a whole window,
// or a frame began to arrive and did not end, and nothing at all has
// arrived for as long. An idle session, with no request waiting and no
// frame begun, never stalls. (Until 2026-12-06 only a waiting request
// counted: a subscription whose push of a 64 KiB envelope a censor froze
// at 16 KiB waited for the next minute's ping to stall.)
func (c *Client) watchStall() {
	t := time.NewTicker(c.StallWindow() / 4) // a longer window later is checked as often
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			if c.stalledAt(now) {
				// Into the route memory before anyone waiting hears of
				// the stall and dials again.
				c.Report(transport.ClassStalled)
				c.stalled.Store(true)
				c.conn.Close()
				return
			}
		}
	}
}

func (c *Client) stalledAt(now time.Time) bool {
	// Beneath the session (https): a TLS record or HTTP/2 frame begun,
	// whose bytes the session does not see until it is whole.
	var below time.Time
	var midway bool
	if a, ok := c.conn.(transport.Arrivals); ok {
		below, midway = a.Arrivals()
	}
	// A frame begun: the counts before the time of the last read, which
	// progressReader sets before it counts (a whole frame read meanwhile
	// would otherwise look begun and stopped).
	begun := c.reading.Load() && c.received.Load() > c.framed.Load()
	// Bytes arriving beneath the session count as arriving: a slow flow
	// is not a frozen one (a reviewer's find: a 64 KiB push at 1 KB/s
	// delivered a whole HTTP/2 frame only every 16 s).
	last := time.Unix(0, c.lastRead.Load())
	if below.After(last) {
		last = below
	}
	window := c.StallWindow()
	if now.Sub(last) < window {
		return false
	}
	if midway {
		return true
	}
	if begun {
		return true // a frame began and stopped
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cl := range c.pending {
		if now.Sub(cl.start) >= window {
			return true
		}
	}
	return false
}
