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
)

// connLimiter caps the established QUIC connections of each source.
//
// Sessions are capped per source, but connections were not, and a QUIC
// connection holds memory without a session: besides its own state
// (about 80 KB idle), whatever its client sends on a stream the server
// never reads waits in memory up to the stream's flow-control window.
// http3 accepts a client's QPACK encoder and decoder streams and never
// reads them (quic-go's QPACK uses no dynamic table), so any client that
// completes a handshake can make the relay hold up to the connection's
// initial window (768 KiB; BenchmarkQPACKStuffing measured about 0.9 MiB
// of heap per connection for 512 KiB sent on one such stream) for as long
// as it keeps the connection alive. The
// windows are what every client sees in the transport parameters, and
// reading those streams would grant credit a stock server never grants,
// so the number of connections is what is bounded: per source here, and
// in all by the per-source caps times the sources.
//
// A connection counts from the end of its handshake (its client then
// provably receives at its address, so a spoofed source cannot use up
// another's share) until it closes. A new connection from a source that
// holds the cap is refused at its first packet (CONNECTION_REFUSED, as
// at the cap on handshakes in flight); one that got past that check
// while others of its source were finishing their handshakes is closed
// at the end of its own (H3_NO_ERROR, as http3 closes a connection it is
// done with). Both count as OutcomeConnLimited (the first once per
// Initial packet refused, and a ClientHello with a post-quantum key share
// takes two), apart from the sessions refused at their caps. The cap is
// twice the per-source session cap: a source at its session cap still
// gets the cover site's answer to a further session request, on a
// connection of its own, as before. What a client can see of it: a
// stock server would accept its 129th connection.
type connLimiter struct {
	key      [32]byte
	max      int
	observe  func(transport.Outcome)
	mu       sync.Mutex
	bySource map[[16]byte]int // sources holding at least one connection
}

var errSourceConns = errors.New("too many QUIC connections from one source")

func newConnLimiter(max int, observe func(transport.Outcome)) *connLimiter {
	l := &connLimiter{max: max, observe: observe, bySource: make(map[[16]byte]int)}
	rand.Read(l.key[:])
	return l
}

func (l *connLimiter) source(addr net.Addr) [16]byte { return sourceKey(l.key[:], addr) }

// sourceKey is what the h3 listener's per-source limits count addr as: a
// prefix of transport.SourceHash under key, kept in memory only.
func sourceKey(key []byte, addr net.Addr) (k [16]byte) {
	h := transport.SourceHash(key, addr.String())
	copy(k[:], h[:])
	return k
}

// connContext wraps next, the quic.Transport.ConnContext of the listener
// (nil: none): a connection from a source that holds the cap is refused
// before next sees it.
func (l *connLimiter) connContext(next func(context.Context, *quic.ClientInfo) (context.Context, error)) func(context.Context, *quic.ClientInfo) (context.Context, error) {
	return func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		k := l.source(info.RemoteAddr)
		l.mu.Lock()
		full := l.bySource[k] >= l.max
		l.mu.Unlock()
		if full {
			if l.observe != nil {
				l.observe(transport.OutcomeConnLimited)
			}
			return nil, errSourceConns
		}
		if next == nil {
			return ctx, nil
		}
		return next(ctx, info)
	}
}

// watch waits, on a goroutine of its own, for c's handshake to complete,
// then gives its handshake slot back (handshakes.go) and counts it, or
// closes it when its source holds the cap by then. It returns at once.
// Such goroutines are as many as the handshakes in flight, which are
// capped (DefaultMaxHandshakes).
func (l *connLimiter) watch(c *quic.Conn) {
	go func() {
		select {
		case <-c.HandshakeComplete():
		case <-c.Context().Done():
			return // the slot went back as the connection died
		}
		handshakeDone(c)
		if !l.admit(c) {
			// What http3 closes a connection with when it has done.
			c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			if l.observe != nil {
				l.observe(transport.OutcomeConnLimited)
			}
		}
	}()
}

// admit counts c against its source until c closes; false if the source
// holds the cap already.
func (l *connLimiter) admit(c *quic.Conn) bool {
	k := l.source(c.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySource[k] >= l.max {
		return false
	}
	l.bySource[k]++
	context.AfterFunc(c.Context(), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.bySource[k]--; l.bySource[k] <= 0 {
			delete(l.bySource, k)
		}
	})
	return true
}

// held returns how many connections are counted.
func (l *connLimiter) held() (conns int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.bySource {
		conns += n
	}
	return conns
}
