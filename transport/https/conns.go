package https

import (
	"net"
	"sync"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// connCap keeps the account of the TCP connections each source holds on
// a listener, from the accept to the close, and caps them
// (Transport.MaxConnsPerSource).
//
// A connection costs the relay without a session: net/http's goroutines
// and buffers, crypto/tls's, and a descriptor. The cap on handshakes in
// flight counts only connections still in their handshake, so one source
// could hold connections up to the process's limit on descriptors
// (65,536 under the systemd unit), each idle or stalled one until its
// timeout and then again at once.
//
// A source is what the session limits count a client as: its IPv4
// address or IPv6 /64, as a prefix of transport.SourceHash under the
// gate's key (httpsession.Gate.SourceKey), kept in memory only while it
// holds connections. The cap is twice the per-source session cap by
// default, as h3's on QUIC connections: a source at its session cap
// still gets the cover site's answer to a further session request, on a
// connection of its own.
//
// A connection over the cap is reset (RST) as soon as it is accepted,
// before anything is read from it, as the borrowed-site front
// (transport/borrow) resets a source over its cap, and as a busy nginx
// out of worker connections closes what it accepts (the kernel resets
// such a connection once its ClientHello has come). What a client sees
// then depends only on how many connections its source holds, never on
// what it sends: neither its ClientHello nor its request, path or token
// is read. (Behind the borrowed-site front, Transport.Borrow, only a
// tagged client reaches the listener, on a connection whose ClientHello
// the front has read: one over the cap there is closed, with a FIN.)
// The refusal is counted as OutcomeConnLimited. A stock server would
// accept the connection: a prober that opens more than the cap from one
// address tells a relay from a stock Go server by it (a reviewer's
// point), as it can over h3 (transport/h3/conns.go). A cap for the
// listener with fair shares, closing only under pressure, as h3 also
// keeps, would show less; not built.
//
// Behind a CDN (ListenConfig.AllowUnbound) the sources are the CDN's
// addresses, each carrying the connections of many clients, so there is
// no cap there unless the transport sets one.
type connCap struct {
	key     [32]byte
	max     int
	observe func(transport.Outcome) // nil: none

	mu       sync.Mutex
	bySource map[[16]byte]int // sources holding at least one connection
}

// connsPerSource is the listener's cap on the connections of one source
// for cfg; 0 means none.
func (t *Transport) connsPerSource(cfg transport.ListenConfig) int {
	switch {
	case t.MaxConnsPerSource != 0:
		return max(t.MaxConnsPerSource, 0)
	case cfg.AllowUnbound:
		return 0
	}
	return 2 * orDefault(cfg.MaxSessionsPerSource, httpsession.DefaultMaxSessionsPerSource)
}

func newConnCap(key [32]byte, max int, observe func(transport.Outcome)) *connCap {
	return &connCap{key: key, max: max, observe: observe, bySource: make(map[[16]byte]int)}
}

func (cc *connCap) source(addr net.Addr) [16]byte {
	h := transport.SourceHash(cc.key[:], addr.String())
	return [16]byte(h[:16])
}

// take counts a new connection from addr and returns its source, or
// reports its refusal and returns false at its source's cap.
func (cc *connCap) take(addr net.Addr) ([16]byte, bool) {
	src := cc.source(addr)
	cc.mu.Lock()
	n := cc.bySource[src]
	if n < cc.max {
		cc.bySource[src] = n + 1
	}
	cc.mu.Unlock()
	if n >= cc.max {
		if cc.observe != nil {
			cc.observe(transport.OutcomeConnLimited)
		}
		return src, false
	}
	return src, true
}

// release gives back a connection that take counted for src.
func (cc *connCap) release(src [16]byte) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if n := cc.bySource[src] - 1; n > 0 {
		cc.bySource[src] = n
	} else {
		delete(cc.bySource, src)
	}
}

// held returns how many connections addr's source holds, and how many
// are counted in all (tests).
func (cc *connCap) held(addr net.Addr) (source, total int) {
	src := cc.source(addr)
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for _, n := range cc.bySource {
		total += n
	}
	return cc.bySource[src], total
}

// resetConn closes c with a reset (RST), not a FIN, when it is a TCP
// connection, or the listener's account of one (countedConn).
func resetConn(c net.Conn) {
	inner := c
	if cc, ok := c.(*countedConn); ok {
		inner = cc.Conn
	}
	if tc, ok := inner.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
