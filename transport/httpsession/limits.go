package httpsession

import (
	"context"
	"crypto/rand"
	"net/http"
	"sync"

	"github.com/postern/postern/transport"
)

// Session limits of a listener. See the package documentation, "Limits".
const (
	// DefaultMaxSessionsPerSource caps the sessions of one source (an IPv4
	// address or an IPv6 /64) when ListenConfig.MaxSessionsPerSource is
	// zero. A household or a small office behind one NAT fits; a single
	// host cannot take more than 1/64 of the default listener cap.
	DefaultMaxSessionsPerSource = 64
	// DefaultMaxSessionsPerConn caps the sessions one TLS or QUIC
	// connection carries when ListenConfig.MaxSessionsPerConn is zero. The
	// Postern client opens one connection per session; 16 leaves room for
	// a CDN or another front that multiplexes several clients.
	DefaultMaxSessionsPerConn = 16
	// MinFairShare is the least number of sessions a source may hold when
	// the listener is under pressure, however many sources there are.
	MinFairShare = 4
	// PressurePercent is the fill level of the listener's session cap
	// above which every source is held to its fair share: the cap divided
	// by the number of sources holding sessions (at least MinFairShare).
	PressurePercent = 75
)

// SourceKeySize is the length of the in-memory hash that stands for a
// source.
const SourceKeySize = 8

// sourceKey is a keyed, truncated hash of a client's IPv4 address or IPv6
// /64. The key is random per process, so the hash says nothing outside this
// process and nothing after a restart; it is never logged or exported.
type sourceKey [SourceKeySize]byte

// connCount counts the sessions of one TLS or QUIC connection. It lives in
// the connection's context (see [WithConn]) and is guarded by limiter.mu.
type connCount struct {
	n int // guarded by the limiter's mu

	mu     sync.Mutex
	preset map[string]transport.Outcome // see Gate.Admit
}

type connCountKey struct{}

// WithConn returns ctx with a session counter for one TLS or QUIC
// connection. Transports call it from their server's per-connection
// context hook, so that [Gate] can cap sessions per connection; requests
// whose context has no counter are only capped per source and listener.
func WithConn(ctx context.Context) context.Context {
	return context.WithValue(ctx, connCountKey{}, &connCount{})
}

// limiter admits sessions against the listener cap, the per-source cap,
// the per-connection cap and, under pressure, the fair share.
type limiter struct {
	hashKey   [32]byte
	max       int
	perSource int
	perConn   int

	mu       sync.Mutex
	total    int
	bySource map[sourceKey]int // sources holding at least one session
}

func newLimiter(max int, cfg transport.ListenConfig) *limiter {
	l := &limiter{
		max:       max,
		perSource: orDefault(cfg.MaxSessionsPerSource, DefaultMaxSessionsPerSource),
		perConn:   orDefault(cfg.MaxSessionsPerConn, DefaultMaxSessionsPerConn),
		bySource:  make(map[sourceKey]int),
	}
	if len(cfg.SourceKey) == len(l.hashKey) {
		copy(l.hashKey[:], cfg.SourceKey)
	} else {
		rand.Read(l.hashKey[:])
	}
	return l
}

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// source returns the hash of the source of r: its IPv4 address, or the
// /64 of its IPv6 address. An address that does not parse (never from a
// network listener) counts as one shared source.
func (l *limiter) source(r *http.Request) sourceKey {
	var k sourceKey
	h := transport.SourceHash(l.hashKey[:], r.RemoteAddr)
	copy(k[:], h[:])
	return k
}

// admit takes a slot for a session from src on the connection counted by
// cc (nil: none). It returns OutcomeOK and the function that gives the
// slot back (safe to call more than once), or the reason for refusal:
// OutcomeBusy at the listener cap, OutcomeLimited at a per-source or
// per-connection cap or above the fair share.
func (l *limiter) admit(src sourceKey, cc *connCount) (func(), transport.Outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max {
		return nil, transport.OutcomeBusy
	}
	held := l.bySource[src]
	if held >= l.perSource || (cc != nil && cc.n >= l.perConn) || held >= l.fairShareLocked(held) {
		return nil, transport.OutcomeLimited
	}
	l.total++
	l.bySource[src] = held + 1
	if cc != nil {
		cc.n++
	}
	var once sync.Once
	return func() { once.Do(func() { l.release(src, cc) }) }, transport.OutcomeOK
}

// fairShareLocked is how many sessions a source holding held may have:
// unlimited below the pressure mark, else the cap divided by the sources
// holding sessions (counting this one), at least MinFairShare.
func (l *limiter) fairShareLocked(held int) int {
	if l.total*100 < l.max*PressurePercent {
		return l.max
	}
	sources := len(l.bySource)
	if held == 0 {
		sources++
	}
	return max(l.max/sources, MinFairShare)
}

func (l *limiter) release(src sourceKey, cc *connCount) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
	if cc != nil {
		cc.n--
	}
}

// held returns the number of sessions holding a slot.
func (l *limiter) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
