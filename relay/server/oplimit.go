package server

import (
	"sync"
	"time"
)

// Mailbox operations per source. A mailbox that is deleted or rotated
// away leaves its id retired for 90 days (store.Options.Retire), and
// every mailbox counts against the store's cap (store.Options.MaxMailboxes,
// retired ids included). Without a per-source bound one client could
// take that cap, or retire ids as fast as the store commits (an audit
// measured 20,000 rotations in 3.9 s from one client, each leaving 147
// bytes of heap and 124 of log for 90 days). So each source may create
// or rotate DefaultMailboxOps mailboxes a day, refilled evenly over the
// day, all at once if it has them; beyond that the relay answers
// relay.ErrBusy ("relay busy; retry later"). A delete is not counted: it
// turns a mailbox into a retired id, and the count stays (a reviewer's
// point: a client at its allowance could not clean up).
//
// A source is what the session's transport counts the client as: its
// IPv4 address or IPv6 /64 (transport.SourceHash). The sessions an entry
// relay tunnels to this one all count as that relay's, as they do for
// the transports' session caps. A network behind one address (a
// carrier's NAT) shares one allowance: 256 a day is a new mailbox for
// each of 256 people, or a weekly rotation for 1,792.
const (
	DefaultMailboxOps = 256
	mailboxOpsPeriod  = 24 * time.Hour
	// maxOpSources bounds the sources the limiter keeps an account of.
	// With that many, a new source's account takes the place of those
	// grown back whole (they say nothing), or else of the one with the
	// most left: a client with more addresses than that, spending an
	// operation on each as fast as they grow back, keeps a newcomer out
	// of nothing (a reviewer's find: refused, a /48 of IPv6 locked every
	// new address out at 194 operations a second), and the source put
	// out gets its whole allowance back early, at most what it had
	// spent, which was the least of anyone's.
	maxOpSources = 1 << 16
)

// opLimiter is the per-source allowance of mailbox operations.
type opLimiter struct {
	per   int           // operations a period; 0: no limit
	every time.Duration // the time one operation takes to grow back
	now   func() time.Time

	mu   sync.Mutex
	left map[[16]byte]opAccount
}

// opAccount is what a source had left, at.
type opAccount struct {
	left float64
	at   time.Time
}

// newOpLimiter allows per operations a period a source (0 or less: no
// limit).
func newOpLimiter(per int, period time.Duration, now func() time.Time) *opLimiter {
	if per <= 0 {
		return &opLimiter{}
	}
	return &opLimiter{per: per, every: period / time.Duration(per), now: now, left: map[[16]byte]opAccount{}}
}

// take spends one of src's operations, reporting false if it has none.
func (l *opLimiter) take(src [16]byte) bool {
	if l.per == 0 {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.left[src]
	if ok {
		a.left = l.grown(a, now)
	} else {
		if len(l.left) >= maxOpSources {
			l.makeRoom(now)
		}
		a.left = float64(l.per)
	}
	if a.left < 1 {
		return false
	}
	l.left[src] = opAccount{a.left - 1, now}
	return true
}

// grown is what account a has left at now.
func (l *opLimiter) grown(a opAccount, now time.Time) float64 {
	return min(float64(l.per), a.left+float64(now.Sub(a.at))/float64(l.every))
}

// makeRoom drops the accounts that have grown back whole, or if none
// has, the one with the most left.
func (l *opLimiter) makeRoom(now time.Time) {
	var most [16]byte
	mostLeft := -1.0
	for src, a := range l.left {
		switch g := l.grown(a, now); {
		case g >= float64(l.per):
			delete(l.left, src)
		case g > mostLeft:
			most, mostLeft = src, g
		}
	}
	if len(l.left) >= maxOpSources {
		delete(l.left, most)
	}
}
