package h3

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// connLimiter keeps the account of the listener's established QUIC
// connections: it caps them per source and for the listener, and closes
// those left idle.
//
// A QUIC connection holds memory without a session: besides its own state
// (about 80 KB idle), whatever its client sends on a stream the server
// never reads waits in memory up to the stream's flow-control window.
// http3 accepts a client's QPACK encoder and decoder streams and never
// reads them (quic-go's QPACK uses no dynamic table), so until 2026-12-06
// any client that completed a handshake could make the relay hold up to
// the connection's initial window (768 KiB; BenchmarkQPACKStuffing
// measured about 0.9 MiB of heap per connection for 512 KiB sent on one
// such stream, and 1-byte frames make 114 MiB of it) for as long as it
// kept the connection alive, and, after it ended, for as long as anything
// still pointed to the connection: quic-go frees none of it at close. The
// listener now reads those streams and closes a connection at the first
// instruction a server with no dynamic table cannot take (accept.go);
// what a client can still make it hold unread is
// what it sends after a gap it leaves in a stream, which takes a QUIC
// stack of its own. The windows are what every client sees in the
// transport parameters, so the number of connections, and how long they
// live, is what is bounded.
//
// A connection counts from the end of its handshake (its client then
// provably receives at its address, so a spoofed source cannot use up
// another's share) until it closes. It is
//
//   - in a session while it carries at least one admitted session;
//   - busy while it carries none and the listener's handler serves a
//     request on it;
//   - idle otherwise (a request whose headers never finish counts as
//     none: http3 hands the handler only complete requests).
//
// The limits, as for sessions (transport/httpsession):
//
//   - per source: perSource connections (twice the per-source session
//     cap by default: a source at its session cap still gets the cover
//     site's answer to a further session request, on a connection of its
//     own);
//   - fair share: above PressurePercent of the listener's cap, a source
//     may hold at most the cap divided by the sources holding
//     connections (at least minConnShare);
//   - the listener's cap, max, above the session cap: at the cap a new
//     connection takes the place of one that is not in a session,
//     idle before busy, longest so first, of the source holding the most
//     connections if that holds more than the new connection's source,
//     else of the new connection's own source; as nginx reuses its idle
//     keep-alive connections when it runs out of connections. With
//     nothing to take, the new connection is refused. Connections in a
//     session are never taken, and they are at most the session cap, so
//     they alone never fill the listener's cap.
//
// A connection idle for idleTimeout is closed (H3_NO_ERROR, "idle
// timeout", as http3's own idle timer closes it; that timer is off,
// since its closure kept a closed connection, and all it held, until it
// fired, up to a minute later). Its first idle spell counts from when
// the HTTP/3 server took the connection, as http3's did, but the timer
// only runs once the handshake is done: with an idle timeout shorter
// than a handshake (never with the defaults) it fires then. Unlike
// http3's, this timer also runs while a request's headers never finish,
// as nginx's client_header_timeout, and it does not stop for a request
// stream that never reaches the handler (malformed, too large, reset
// early), which http3's did while the stream lived; a cover response
// still being sent after the handler returned counts as idle.
//
// A new connection that a limit refuses is refused at its first packet
// (CONNECTION_REFUSED, as at the cap on handshakes in flight); one that
// got past that check while others were finishing their handshakes is
// closed at the end of its own (H3_NO_ERROR). Refusals at the per-source
// cap and the fair share count as OutcomeConnLimited; refusals at the
// listener's cap, and connections closed to make room, as OutcomeConnBusy
// (a refusal once per Initial packet refused, and a ClientHello with a
// post-quantum key share takes two), apart from the sessions refused at
// their caps. A connection taken to make room is closed as at its idle
// timeout if idle, else with H3_NO_ERROR. What a client can see of it: a
// stock server would accept its 129th connection, would close its idle
// connections only at the idle timeout, and would keep one with
// unfinished headers open.
type connLimiter struct {
	key         [32]byte
	perSource   int
	max         int // the listener's cap
	idleTimeout time.Duration
	observe     func(transport.Outcome)

	mu       sync.Mutex
	total    int                       // connections counted
	spare    int                       // of which not in a session
	bySource map[[16]byte]*sourceConns // sources holding at least one connection
}

// minConnShare is the least number of connections a source may hold under
// pressure: twice the sessions' least fair share, as perSource is twice
// the sessions' per-source cap.
const minConnShare = 2 * httpsession.MinFairShare

// sourceConns is what one source holds.
type sourceConns struct {
	n          int      // connections counted
	idle, busy connList // those not in a session, longest so first
}

// connList is a list of connection accounts, linked through them.
type connList struct{ head, tail *connEntry }

func (q *connList) push(e *connEntry) {
	e.prev, e.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = e
	} else {
		q.head = e
	}
	q.tail = e
}

func (q *connList) remove(e *connEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		q.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		q.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// connEntry is one connection's account.
type connEntry struct {
	c          *quic.Conn // nil once it is no longer counted
	src        [16]byte
	counted    bool
	sessions   int       // admitted sessions it carries
	open       int       // requests the handler serves on it
	list       *connList // the list it is in, if any
	prev, next *connEntry
	timer      *time.Timer // its idle timeout, while idle
	accepted   time.Time   // when the HTTP/3 server took it
	admitted   time.Time   // when it was counted
	deadline   time.Time   // when its idle timeout ends, while idle
	listed     bool        // it has been in a list, served a request or carried a session
}

var errSourceConns = errors.New("QUIC connection limit")

// newConnLimiter returns the account of a listener's connections;
// idleTimeout <= 0 means none.
func newConnLimiter(perSource, max int, idleTimeout time.Duration, observe func(transport.Outcome)) *connLimiter {
	l := &connLimiter{perSource: perSource, max: max, idleTimeout: idleTimeout, observe: observe, bySource: make(map[[16]byte]*sourceConns)}
	rand.Read(l.key[:])
	return l
}

// defaultMaxConns is the listener's cap on connections for a session cap
// of sessions: one connection per session, as the Postern client dials,
// and room for connections without one (a quarter more, at least 64).
func defaultMaxConns(sessions int) int { return sessions + max(sessions/4, 64) }

func (l *connLimiter) source(addr net.Addr) [16]byte { return sourceKey(l.key[:], addr) }

// sourceCtxKey carries, in a connection's context, the source connContext
// counted its handshake as.
type sourceCtxKey struct{}

// sourceOf is what c counts as: the source of its handshake, which a
// client that migrates to another address keeps (quic-go follows
// migration), or its address's for a connection connContext did not see.
func (l *connLimiter) sourceOf(c *quic.Conn) [16]byte {
	if k, ok := c.Context().Value(sourceCtxKey{}).([16]byte); ok {
		return k
	}
	return l.source(c.RemoteAddr())
}

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
		ctx = context.WithValue(ctx, sourceCtxKey{}, k)
		if next == nil {
			return ctx, nil
		}
		return next(ctx, info)
	}
}

// decideLocked says whether a new connection from k may be counted: ""
// if so, with the connection that must make room for it, if any; else
// the outcome of its refusal.
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

// victimLocked returns the connection that a new one from k, whose source
// holds n, may take the place of: the first of the source holding the
// most connections among those with one not in a session, if that holds
// more than n; else the first of k's own; else nil (see first). It scans
// the sources only when some connection is not in a session.
func (l *connLimiter) victimLocked(k [16]byte, n int) *connEntry {
	if l.spare == 0 {
		return nil
	}
	var best *sourceConns
	for src, s := range l.bySource {
		if src != k && s.n > n && s.first() != nil && (best == nil || s.n > best.n) {
			best = s
		}
	}
	if best == nil {
		best = l.bySource[k]
	}
	if best == nil {
		return nil
	}
	return best.first()
}

// first is the source's connection to take first: the longest idle, else
// the longest busy, else nil.
func (s *sourceConns) first() *connEntry {
	if s.idle.head != nil {
		return s.idle.head
	}
	return s.busy.head
}

// watch waits, on a goroutine of its own, for c's handshake to complete,
// then gives its handshake slot back (handshakes.go) and counts it, or
// closes it when a limit refuses it by then. It returns at once, with the
// account that the listener's handler updates (begin, end, carry,
// uncarry). Such
// goroutines are as many as the handshakes in flight, which are capped
// (DefaultMaxHandshakes).
func (l *connLimiter) watch(c *quic.Conn) *connEntry {
	e := &connEntry{c: c, accepted: time.Now()}
	go func() {
		select {
		case <-c.HandshakeComplete():
		case <-c.Context().Done():
			return // the slot went back as the connection died
		}
		handshakeDone(c)
		out, victim := l.admit(e)
		if victim != nil {
			victim.close()
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

// taken is a connection taken out of the count to make room, and whether
// it was idle then.
type taken struct {
	e    *connEntry // its account, no longer counted (the tests' model reads it)
	c    *quic.Conn
	idle bool
}

// close closes a connection taken to make room: as at its idle timeout
// if it was idle, else as http3 closes a connection it has done with.
func (t taken) close() {
	msg := ""
	if t.idle {
		msg = "idle timeout"
	}
	t.c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), msg)
}

// admit counts e until its connection closes, taking the place of
// another (returned, no longer counted, for the caller to close) at the
// listener's cap; or it returns the outcome of its refusal.
func (l *connLimiter) admit(e *connEntry) (transport.Outcome, *taken) {
	e.src = l.sourceOf(e.c)
	l.mu.Lock()
	defer l.mu.Unlock()
	out, t := l.admitLocked(e)
	if out == "" {
		context.AfterFunc(e.c.Context(), func() { // the connection ended
			l.mu.Lock()
			defer l.mu.Unlock()
			l.dropLocked(e)
		})
	}
	return out, t
}

// admitLocked is admit once e.src is known. A connection that carries a
// session already (its request, in 0-RTT or racing this count, reached
// the gate first) is counted whatever the limits say: the session caps
// admitted it, and refusing its connection would end a session the
// relay has accepted. It still takes another's place at the cap if
// there is one to take.
func (l *connLimiter) admitLocked(e *connEntry) (transport.Outcome, *taken) {
	out, victim := l.decideLocked(e.src)
	if out != "" && e.sessions == 0 {
		return out, nil
	}
	var t *taken
	if victim != nil {
		t = &taken{e: victim, c: victim.c, idle: victim.list == &l.bySource[victim.src].idle}
		l.dropLocked(victim)
	}
	l.addLocked(e)
	return "", t
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
	e.admitted = time.Now()
	l.updateLocked(e)
}

// dropLocked stops counting e (nothing if it is not counted).
func (l *connLimiter) dropLocked(e *connEntry) {
	if !e.counted {
		return
	}
	e.counted = false
	l.updateLocked(e)
	// A stopped timer can stay in the runtime's heap for a while, its
	// closure pointing to e: e must not keep the connection. (A reviewer
	// saw one kept up to 10 s with thousands of other timers live;
	// TestClosedConnFreed, with few, does not see it.)
	e.c = nil
	s := l.bySource[e.src]
	l.total--
	if s.n--; s.n <= 0 {
		delete(l.bySource, e.src)
	}
}

// updateLocked puts e in the list its state calls for, and runs its idle
// timer while it is idle.
func (l *connLimiter) updateLocked(e *connEntry) {
	var want *connList
	if e.counted && e.sessions == 0 {
		s := l.bySource[e.src]
		want = &s.idle
		if e.open > 0 {
			want = &s.busy
		}
	}
	if want == e.list {
		return
	}
	if e.list != nil {
		e.list.remove(e)
		l.spare--
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	e.list = want
	if want == nil {
		return
	}
	want.push(e)
	l.spare++
	now := time.Now()
	first := !e.listed
	e.listed = true
	if want != &l.bySource[e.src].idle || l.idleTimeout <= 0 {
		return
	}
	// Idle from the start, it has been so since the HTTP/3 server took
	// it, as http3's own idle timer counted.
	from := now
	if first {
		from = e.accepted
	}
	e.deadline = from.Add(l.idleTimeout)
	d := max(e.deadline.Sub(now), 0)
	if e.timer == nil {
		e.timer = time.AfterFunc(d, func() { l.expire(e) })
	} else {
		e.timer.Reset(d)
	}
}

// expire closes e's connection if it is still idle and its idle timeout
// has ended: its idle timer fired. (A timer that fired while e left and
// went back into idle finds its new deadline still ahead; the timer
// reset for it fires again then.)
func (l *connLimiter) expire(e *connEntry) {
	l.mu.Lock()
	var c *quic.Conn
	if e.counted && e.list == &l.bySource[e.src].idle && !time.Now().Before(e.deadline) {
		c = e.c
	}
	l.mu.Unlock()
	if c != nil {
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "idle timeout")
	}
}

// begin and end bracket a request the listener's handler serves on e's
// connection; carry and uncarry bracket an admitted session on it.
func (l *connLimiter) begin(e *connEntry)   { l.change(e, &e.open, 1) }
func (l *connLimiter) end(e *connEntry)     { l.change(e, &e.open, -1) }
func (l *connLimiter) carry(e *connEntry)   { l.change(e, &e.sessions, 1) }
func (l *connLimiter) uncarry(e *connEntry) { l.change(e, &e.sessions, -1) }

func (l *connLimiter) change(e *connEntry, n *int, d int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*n += d
	// Idle spells after a request or a session count from their start,
	// even one that came before the connection was counted (0-RTT).
	e.listed = true
	l.updateLocked(e)
}

// reap takes up to n connections that are not in a session out of the
// count and returns them, for the caller to close: idle ones counted
// before notBefore, then busy ones counted before busyBefore (a cover
// page takes milliseconds to serve; a client that reads its responses
// slowly, or never, keeps requests open, one after the other, and so
// how long the present one has been open says little); of each kind
// those of the sources holding the most connections first, longest so
// first.
func (l *connLimiter) reap(n int, notBefore, busyBefore time.Time) []taken {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spare == 0 || n <= 0 {
		return nil
	}
	var srcs []*sourceConns
	for _, s := range l.bySource {
		if s.first() != nil {
			srcs = append(srcs, s)
		}
	}
	slices.SortFunc(srcs, func(a, b *sourceConns) int { return cmp.Compare(b.n, a.n) })
	var out []taken
	for _, idle := range []bool{true, false} {
		for _, s := range srcs {
			q := &s.busy
			if idle {
				q = &s.idle
			}
			for e := q.head; e != nil && len(out) < n; {
				next := e.next
				if e.admitted.Before(notBefore) && (idle || e.admitted.Before(busyBefore)) {
					out = append(out, taken{e: e, c: e.c, idle: idle})
					l.dropLocked(e) // takes it off q
				}
				e = next
			}
		}
	}
	return out
}

// spareConns returns how many counted connections are not in a session.
func (l *connLimiter) spareConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spare
}

// held returns how many connections are counted.
func (l *connLimiter) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
