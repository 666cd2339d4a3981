package client

import (
	"sync"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// routedConn is the stream of a session that Dial opened: the transport's
// stream, carrying the route it came by, so that a failure that only the
// session or its user can see (a frozen flow, a throttled one, a relay
// that answers "busy") reaches the route memory and the caller's metrics.
type routedConn struct {
	transport.Conn
	route *sessionRoute
}

// Arrivals passes on the transport's transport.Arrivals.
func (c *routedConn) Arrivals() (time.Time, bool) {
	if a, ok := c.Conn.(transport.Arrivals); ok {
		return a.Arrivals()
	}
	return time.Time{}, false
}

// SentEarly passes on the transport's transport.EarlySender.
func (c *routedConn) SentEarly() []byte {
	if e, ok := c.Conn.(transport.EarlySender); ok {
		return e.SentEarly()
	}
	return nil
}

// sessionRoute is how a session was dialed and where its failures go.
type sessionRoute struct {
	memory  *route.Memory
	network string
	failed  func(transport.Class) // DialOptions.SessionFailed

	mu       sync.Mutex
	won      route.Candidate
	dialed   bool // won is set: this attempt won the race
	reported bool // one failure per session
}

// route returns the session's route, or nil for a session Dial did not
// open (New on a stream of the caller's, a tunnel).
func (c *Client) route() *sessionRoute {
	if rc, ok := c.conn.(*routedConn); ok {
		return rc.route
	}
	return nil
}

// won is the candidate this session was dialed through; the zero
// Candidate for a session Dial did not open.
func (c *Client) won() route.Candidate {
	r := c.route()
	if r == nil {
		return route.Candidate{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.won
}

// Relay returns the id of the relay this session reached (the
// descriptor's RelayID), or "" for a session Dial did not open.
func (c *Client) Relay() string { return c.won().Relay }

// Transport returns the name of the transport this session came by
// ("https", "h3"), or "" for a session Dial did not open.
func (c *Client) Transport() string { return c.won().Endpoint.Transport }

// DialTime returns how long the dial of this session took, from its
// winning attempt's start to the end of the protocol hello (route's
// Candidate.RTT); 0 for a session Dial did not open.
func (c *Client) DialTime() time.Duration { return c.won().RTT }

// Report records that this session failed after the dial in a way only
// its user could measure, such as transport.ClassThrottled (a flow under a
// usable floor) or transport.ClassBusy (a relay's "busy" answer): the way
// in that Dial chose goes into backoff for that class on the dial's
// network (route.Memory.SessionFailure), so the next dial prefers
// another, and DialOptions.SessionFailed hears of it. A stalled flow is
// reported by the session itself. Only the first failure of a session
// counts; Report may be called after Close. Sessions that Dial did not
// open ignore it.
func (c *Client) Report(class transport.Class) {
	if r := c.route(); r != nil {
		r.report(class)
	}
}

// win marks the session as the winner of the race, dialed through cand.
func (r *sessionRoute) win(cand route.Candidate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.won, r.dialed = cand, true
}

func (r *sessionRoute) report(class transport.Class) {
	r.mu.Lock()
	if !r.dialed || r.reported {
		r.mu.Unlock()
		return
	}
	r.reported = true
	won := r.won
	r.mu.Unlock()
	if r.memory != nil {
		r.memory.SessionFailure(r.network, won, class) // best effort: it only orders later dials
	}
	if r.failed != nil {
		r.failed(class)
	}
}
