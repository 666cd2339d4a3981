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
	// Accounts grown back whole say nothing and are dropped, in a scan of
	// them all at most once in the time an operation takes to grow back
	// (for envelope bytes, sendlimit.go: every 5.6 minutes).
	// While maxOpSources have spent some, a new source spends from one
	// account that all such sources share, itself allowed per a period.
	// Refused instead (the first version), 65,536 addresses of one IPv6
	// /48 spending an operation each as they grew back, 194 a second,
	// kept every newcomer out; putting out the account with the most left
	// instead (the second), a source put out came back with its whole
	// allowance, and three addresses beside a full table took 604
	// operations where 12 were theirs, with a scan of the whole table for
	// each newcomer (1.25 ms). Both reviewers' finds. A client with more
	// addresses than that still shares out the newcomers' account, and
	// the store's cap on mailboxes and retired ids bounds what they all
	// make together.
	maxOpSources = 1 << 16
)

// opLimiter is a per-source allowance: of mailbox operations (one unit
// each), or of envelope bytes (newSendLimiter).
type opLimiter struct {
	per    float64       // units a period; 0: no limit
	every  float64       // nanoseconds one unit takes to grow back
	prunes time.Duration // at most one scan of the accounts in this time
	now    func() time.Time

	mu       sync.Mutex
	left     map[[16]byte]opAccount
	overflow opAccount // shared by the sources with no room for an account
	pruned   time.Time // when the accounts were last scanned (prune)
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
	return newLimiter(float64(per), period, period/time.Duration(per), now)
}

// newLimiter allows per units a period a source, scanning its accounts at
// most once per prunes.
func newLimiter(per float64, period, prunes time.Duration, now func() time.Time) *opLimiter {
	return &opLimiter{per: per, every: float64(period) / per, prunes: prunes, now: now,
		left: map[[16]byte]opAccount{}, overflow: opAccount{left: per}}
}

// take spends one of src's operations, reporting false if it has none.
func (l *opLimiter) take(src [16]byte) bool {
	_, ok := l.takeN(src, 1, true)
	return ok
}

// takeN spends n units of src's, reporting false if it has fewer and
// refuse is set; without refuse it spends what src has, down to none, and
// reports true: a source's spending then still counts against it the
// next time refusals count. It returns what it spent, for giveBack.
func (l *opLimiter) takeN(src [16]byte, n float64, refuse bool) (float64, bool) {
	if l.per == 0 {
		return 0, true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.left[src]
	switch {
	case ok:
	case len(l.left) < maxOpSources || l.prune(now):
		a = opAccount{left: l.per}
	default:
		return l.spend(&l.overflow, n, refuse, now)
	}
	spent, ok := l.spend(&a, n, refuse, now)
	if ok {
		l.left[src] = a
	}
	return spent, ok
}

// giveBack returns n units that takeN spent of src's (what it returned),
// to its account or, with none, to the shared one; never past per.
func (l *opLimiter) giveBack(src [16]byte, n float64) {
	if l.per == 0 || n <= 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.left[src]
	if !ok {
		l.overflow = opAccount{min(l.per, l.grown(l.overflow, now)+n), now}
		return
	}
	l.left[src] = opAccount{min(l.per, l.grown(a, now)+n), now}
}

// spend spends n units of account a at now, if it has them or refuse is
// not set (then what it has, down to none), and returns what it spent
// (an account never spent from, at zero, has what it was given).
func (l *opLimiter) spend(a *opAccount, n float64, refuse bool, now time.Time) (float64, bool) {
	left := l.grown(*a, now)
	if left < n && refuse {
		return 0, false
	}
	spent := min(left, n)
	*a = opAccount{left - spent, now}
	return spent, true
}

// grown is what account a has left at now.
func (l *opLimiter) grown(a opAccount, now time.Time) float64 {
	if a.at.IsZero() {
		return a.left
	}
	return min(l.per, a.left+float64(now.Sub(a.at))/l.every)
}

// prune drops the accounts that have grown back whole, at most once per
// l.prunes, and reports whether that made room.
func (l *opLimiter) prune(now time.Time) bool {
	if now.Sub(l.pruned) < l.prunes {
		return false
	}
	l.pruned = now
	for src, a := range l.left {
		if l.grown(a, now) >= l.per {
			delete(l.left, src)
		}
	}
	return len(l.left) < maxOpSources
}
