package h3

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// connLimiter caps the established QUIC connections of each source and of
// the listener.
//
// A QUIC connection holds memory without a session: besides its own state
// (about 80 KB idle), whatever its client sends on a stream the server
// never reads waits in memory up to the stream's flow-control window.
// http3 accepts a client's QPACK encoder and decoder streams and never
// reads them (quic-go's QPACK uses no dynamic table), so any client that
// completes a handshake can make the relay hold up to the connection's
// initial window (768 KiB; BenchmarkQPACKStuffing measured about 0.9 MiB
// of heap per connection for 512 KiB sent on one such stream) for as long
// as it keeps the connection alive. The windows are what every client
// sees in the transport parameters, and reading those streams would grant
// credit a stock server never grants, so the number of connections is
// what is bounded.
//
// A connection counts from the end of its handshake (its client then
// provably receives at its address, so a spoofed source cannot use up
// another's share) until it closes. Three limits apply, as to sessions
// (transport/httpsession):
//
//   - per source: perSource connections (twice the per-source session
//     cap by default: a source at its session cap still gets the cover
//     site's answer to a further session request, on a connection of its
//     own);
//   - fair share: above PressurePercent of the listener's cap, a source
//     may hold at most the cap divided by the sources holding
//     connections (at least minConnShare);
//   - the listener's cap, max. At the cap a new connection takes the
//     place of an idle one: the one idle longest of the source holding
//     the most connections, if that source holds more than the new
//     connection's, else the one idle longest of the new connection's
//     own source; as nginx reuses its idle keep-alive connections when
//     it runs out of connections. Idle means
//     no session ever came on the connection and no request is open on
//     it (a request whose headers never finish counts as none: http3
//     hands the relay only complete requests). The idle one is closed
//     as http3 closes a connection it is done with (H3_NO_ERROR). With
//     no idle connection to take, the new one is refused.
//
// A new connection that a limit refuses is refused at its first packet
// (CONNECTION_REFUSED, as at the cap on handshakes in flight); one that
// got past that check while others were finishing their handshakes is
// closed at the end of its own (H3_NO_ERROR). Refusals at the per-source
// cap and the fair share count as OutcomeConnLimited, and refusals and
// closes at the listener's cap as OutcomeConnBusy (the first once per
// Initial packet refused, and a ClientHello with a post-quantum key share
// takes two), apart from the sessions refused at their caps. What a
// client can see of it: a stock server would accept its 129th
// connection, and would close its idle connections only after the idle
// timeout.
type connLimiter struct {
	key       [32]byte
	perSource int
	max       int // the listener's cap
	observe   func(transport.Outcome)

	mu       sync.Mutex
	total    int                       // connections counted
	idle     int                       // of which idle (see connEntry)
	bySource map[[16]byte]*sourceConns // sources holding at least one connection
}

// minConnShare is the least number of connections a source may hold under
// pressure: twice the sessions' least fair share, as perSource is twice
// the sessions' per-source cap.
const minConnShare = 2 * httpsession.MinFairShare

// sourceConns is what one source holds.
type sourceConns struct {
	n          int        // connections counted
	head, tail *connEntry // the idle ones, longest idle first
}

// connEntry is one connection's account. A connection is idle while it
// is counted, never carried a session and has no request open; idle
// connections are linked in their source's list.
type connEntry struct {
	c          *quic.Conn
	src        [16]byte
	counted    bool
	carried    bool // it carried an admitted session
	open       int  // requests being handled
	inList     bool
	prev, next *connEntry
}

var errSourceConns = errors.New("QUIC connection limit")

func newConnLimiter(perSource, max int, observe func(transport.Outcome)) *connLimiter {
	l := &connLimiter{perSource: perSource, max: max, observe: observe, bySource: make(map[[16]byte]*sourceConns)}
	rand.Read(l.key[:])
	return l
}

// defaultMaxConns is the listener's cap on connections for a session cap
// of sessions: one connection per session, as the Postern client dials,
// and room for connections without one (a quarter more, at least 64).
func defaultMaxConns(sessions int) int { return sessions + max(sessions/4, 64) }

func (l *connLimiter) source(addr net.Addr) [16]byte { return sourceKey(l.key[:], addr) }

// sourceKey is what the h3 listener's per-source limits count addr as: a
// prefix of transport.SourceHash under key, kept in memory only.
func sourceKey(key []byte, addr net.Addr) (k [16]byte) {
	h := transport.SourceHash(key, addr.String())
	copy(k[:], h[:])
	return k
}

// connContext wraps next, the quic.Transport.ConnContext of the listener
// (nil: none): a connection that a limit would refuse now is refused
// before next sees it.
func (l *connLimiter) connContext(next func(context.Context, *quic.ClientInfo) (context.Context, error)) func(context.Context, *quic.ClientInfo) (context.Context, error) {
	return func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		k := l.source(info.RemoteAddr)
		l.mu.Lock()
		out, _ := l.decideLocked(k)
		l.mu.Unlock()
		if out != "" {
			if l.observe != nil {
				l.observe(out)
			}
			return nil, errSourceConns
		}
		if next == nil {
			return ctx, nil
		}
		return next(ctx, info)
	}
}

// decideLocked says whether a new connection from k may be counted: ""
// if so, with the idle connection that must make room for it, if any;
// else the outcome of its refusal.
func (l *connLimiter) decideLocked(k [16]byte) (transport.Outcome, *connEntry) {
	n := 0
	if s := l.bySource[k]; s != nil {
		n = s.n
	}
	if n >= l.perSource || n >= l.fairShareLocked(n) {
		return transport.OutcomeConnLimited, nil
	}
	if l.total < l.max {
		return "", nil
	}
	if v := l.victimLocked(k, n); v != nil {
		return "", v
	}
	return transport.OutcomeConnBusy, nil
}

// fairShareLocked is how many connections a source holding held may
// have: unlimited below the pressure mark, else the cap divided by the
// sources holding connections (counting this one), at least minConnShare.
func (l *connLimiter) fairShareLocked(held int) int {
	if l.total*100 < l.max*httpsession.PressurePercent {
		return l.max
	}
	sources := len(l.bySource)
	if held == 0 {
		sources++
	}
	return max(l.max/sources, minConnShare)
}

// victimLocked returns the idle connection that a new one from k, whose
// source holds n, may take the place of: the one idle longest of the
// source holding the most connections among those with one idle, if that
// holds more than n; else the one idle longest of k's own, if any; else
// nil. It scans the sources only when some connection is idle.
func (l *connLimiter) victimLocked(k [16]byte, n int) *connEntry {
	if l.idle == 0 {
		return nil
	}
	var best *sourceConns
	for src, s := range l.bySource {
		if src != k && s.head != nil && s.n > n && (best == nil || s.n > best.n) {
			best = s
		}
	}
	if best == nil {
		best = l.bySource[k]
	}
	if best == nil {
		return nil
	}
	return best.head
}

// watch waits, on a goroutine of its own, for c's handshake to complete,
// then gives its handshake slot back (handshakes.go) and counts it, or
// closes it when a limit refuses it by then. It returns at once, with the
// account that the listener's handler updates (begin, end, carry). Such
// goroutines are as many as the handshakes in flight, which are capped
// (DefaultMaxHandshakes).
func (l *connLimiter) watch(c *quic.Conn) *connEntry {
	e := &connEntry{c: c}
	go func() {
		select {
		case <-c.HandshakeComplete():
		case <-c.Context().Done():
			return // the slot went back as the connection died
		}
		handshakeDone(c)
		out, victim := l.admit(e)
		if victim != nil {
			// As http3 closes a connection idle for its IdleTimeout.
			victim.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle timeout")
		}
		if out != "" {
			// What http3 closes a connection with when it has done.
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		}
		if l.observe != nil {
			if victim != nil {
				l.observe(transport.OutcomeConnBusy)
			}
			if out != "" {
				l.observe(out)
			}
		}
	}()
	return e
}

// admit counts e until its connection closes, taking the place of an
// idle connection (returned, no longer counted, for the caller to close)
// at the listener's cap; or it returns the outcome of its refusal.
func (l *connLimiter) admit(e *connEntry) (transport.Outcome, *connEntry) {
	e.src = l.source(e.c.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	out, victim := l.decideLocked(e.src)
	if out != "" {
		return out, nil
	}
	if victim != nil {
		l.dropLocked(victim)
	}
	l.addLocked(e)
	context.AfterFunc(e.c.Context(), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.dropLocked(e)
	})
	return "", victim
}

// addLocked starts counting e.
func (l *connLimiter) addLocked(e *connEntry) {
	s := l.bySource[e.src]
	if s == nil {
		s = &sourceConns{}
		l.bySource[e.src] = s
	}
	s.n++
	l.total++
	e.counted = true
	l.updateLocked(e)
}

// dropLocked stops counting e (nothing if it is not counted).
func (l *connLimiter) dropLocked(e *connEntry) {
	if !e.counted {
		return
	}
	e.counted = false
	l.updateLocked(e)
	s := l.bySource[e.src]
	l.total--
	if s.n--; s.n <= 0 {
		delete(l.bySource, e.src)
	}
}

// updateLocked puts e in its source's idle list or takes it out, as its
// state says.
func (l *connLimiter) updateLocked(e *connEntry) {
	idle := e.counted && !e.carried && e.open == 0
	if idle == e.inList {
		return
	}
	s := l.bySource[e.src]
	if idle {
		e.prev, e.next = s.tail, nil
		if s.tail != nil {
			s.tail.next = e
		} else {
			s.head = e
		}
		s.tail = e
		l.idle++
	} else {
		if e.prev != nil {
			e.prev.next = e.next
		} else {
			s.head = e.next
		}
		if e.next != nil {
			e.next.prev = e.prev
		} else {
			s.tail = e.prev
		}
		e.prev, e.next = nil, nil
		l.idle--
	}
	e.inList = idle
}

// begin and end bracket a request the listener handles on e's
// connection; carry records that an admitted session came on it, which
// keeps it from ever being taken as idle.
func (l *connLimiter) begin(e *connEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.open++
	l.updateLocked(e)
}

func (l *connLimiter) end(e *connEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.open--
	l.updateLocked(e)
}

func (l *connLimiter) carry(e *connEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.carried = true
	l.updateLocked(e)
}

// held returns how many connections are counted.
func (l *connLimiter) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
