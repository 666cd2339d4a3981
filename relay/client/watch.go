package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"sync/atomic"
	"time"
)

// PageProgress is how the page a Drain waits for is coming, as
// DrainWatched's watch sees it: sampled about every watchEvery from the
// session's byte count once its first byte after the request was read
// (more than smallAnswer bytes). The count grows as the connection's
// reads return: over TLS, a record (up to 16 KiB) at a time.
type PageProgress struct {
	// Bytes is what the session has read since the sample that saw the
	// page's first byte, Since ago.
	Bytes int
	Since time.Duration
	// Idle is how long since the session last read anything.
	Idle time.Duration
	// Read is what the session has read since the page was asked for:
	// the page's bytes so far (and perhaps a few other answers').
	Read int
	// After is the sequence number the page's envelopes are past: the
	// last of the page before (whose Ack may not yet be done).
	After uint64
}

// watchEvery is how often DrainWatched samples a page coming.
const watchEvery = 250 * time.Millisecond

// smallAnswer bounds what other answers bring while a page is coming
// (the last page's Ack's, a Ping's: a few dozen bytes each; a
// Descriptor's, which a dial asks for, under a kilobyte), which are not
// its first byte (a test's find: an Ack's answer was taken for it). A
// page's first read is a TLS record, most often a full one.
const smallAnswer = 2 << 10

// ErrPageLeft is DrainWatched's error when its watch ended it while a
// page was coming: nothing of that page was handed over or acked (it
// stays on the relay), and the pages before it were taken and acked
// (the last page's Ack perhaps not yet answered: see PageLeft). The page
// goes on coming over the session, which is of no more use: close it.
var ErrPageLeft = errors.New("relay/client: drain left a page coming")

// PageLeft is the error DrainWatched returns when it left a page: it is
// ErrPageLeft (errors.Is). Unacked are the refs of the last page's Ack,
// whose answer had not come: a relay answers a session's requests in
// turn, so that Ack may wait behind the page left, on the flow found
// slow, and never be read once the session is closed. They are durable
// and recorded as taken: ack them on another session (an Ack of refs
// already acked is harmless), else the relay delivers them again and
// they are acked then, as replays (a reviewer's find: a full page of
// 256 envelopes, a megabyte or more, came again).
type PageLeft struct {
	Unacked []Ref
	// Came is what of the page left came before it was left: the
	// envelopes that came whole and the first bytes of the one coming,
	// in mailbox order. None was handed over or acked: give them to
	// DrainLanes (LanesConfig.Have), which asks for the rest only.
	Came []Begun
}

func (e *PageLeft) Error() string        { return ErrPageLeft.Error() }
func (e *PageLeft) Is(target error) bool { return target == ErrPageLeft }

// page is one Fetch of a Drain: what came, or why not, and how long it
// took from request to answer.
type page struct {
	ds   []Delivery
	err  error
	took time.Duration
}

// pageFetch is a Fetch of a Drain under way.
type pageFetch struct {
	ch    chan page
	c     *Client
	start time.Time
	base  int64  // the session's byte count at the request
	after uint64 // the page is of the envelopes past it
	call  atomic.Pointer[pendingCall]
}

// startFetch asks for the page of mailbox past after, on c.
func startFetch(ctx context.Context, c *Client, owner ed25519.PrivateKey, mailbox [32]byte, after uint64) *pageFetch {
	f := &pageFetch{ch: make(chan page, 1), c: c, start: time.Now(), base: c.Received(), after: after}
	go func() {
		p, err := c.beginFetch(ctx, owner, mailbox, after, 0)
		var ds []Delivery
		if err == nil {
			f.call.Store(p)
			ds, err = p.fetched(ctx)
		}
		f.ch <- page{ds, err, time.Since(f.start)}
	}()
	return f
}

// came is what came of the page so far (pendingCall.came).
func (f *pageFetch) came() []Begun {
	if p := f.call.Load(); p != nil {
		return p.came()
	}
	return nil
}

// wait waits for the page, showing watch, if not nil, how it is coming
// about every watchEvery once its first byte was read; it reports true,
// at once, when watch says to leave the page.
func (f *pageFetch) wait(watch func(PageProgress) bool) (page, bool) {
	if watch == nil {
		return <-f.ch, false
	}
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	var first time.Time
	var firstBytes int64
	for {
		select {
		case p := <-f.ch:
			return p, false
		case <-tick.C:
		}
		got, now := f.c.Received(), time.Now()
		if first.IsZero() {
			if got > f.base+smallAnswer {
				first, firstBytes = now, got
			}
			continue
		}
		p := PageProgress{
			Bytes: int(got - firstBytes),
			Since: now.Sub(first),
			Idle:  now.Sub(time.Unix(0, f.c.lastRead.Load())),
			Read:  int(got - f.base),
			After: f.after,
		}
		if watch(p) {
			return page{}, true
		}
	}
}

// leftPage is DrainWatched's error on leaving a page, with *acked, the
// last page's Ack if it is out (refs), taken over: refs are Unacked
// unless it has been answered without error.
// came is what of the page left came (PageLeft.Came).
func leftPage(acked *chan error, refs []Ref, came []Begun) error {
	ch := *acked
	*acked = nil
	if ch == nil {
		return &PageLeft{Came: came}
	}
	select {
	case err := <-ch:
		if err == nil {
			return &PageLeft{Came: came}
		}
	default:
	}
	return &PageLeft{Unacked: refs, Came: came}
}
