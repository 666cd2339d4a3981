package main

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
)

// Lanes. A censor that throttles each flow (Russia's TSPU held every
// connection to Twitter at 130–150 kbit/s in 2021) lets n connections
// carry n times what one does; one that shapes the subscriber's whole line
// lets them carry no more. A send whose connection carries less than
// throttleFloor a second for throttleWindow (at once, on a network known
// to throttle) opens up to maxLanes connections in all to the same relay,
// each sending the envelopes none of the others has taken. The envelopes
// are independent and all go to one relay, so nothing changes for the
// recipient. The round then compares what the lanes carried together with
// what the first connection carried alone; when they carried less than
// half of what that many flows throttled one by one would, the network
// throttles the line: the send goes on with one connection, and later
// sends on the network too (netFacts.LineThrottled). Until 2026-12-06 a
// send used one connection at a time: 200 KB took 36 s at 64 kbit/s.

// maxLanes is how many connections at once a send uses, at most, on a
// throttled network (POSTERN_LANES changes it; 1 turns lanes off).
const maxLanes = 4

// maxLanesEnv is the most POSTERN_LANES may ask for.
const maxLanesEnv = 16

// round is one sendOn: the envelopes its connections (lanes) claim, each
// once, and what they carried.
type round struct {
	s      *sender
	via    bool
	st     *connStats
	cancel context.CancelFunc
	wg     sync.WaitGroup // widen and the lanes it adds

	mu      sync.Mutex // the fields below, s.acked, s.issued and st
	claimed []bool     // per envelope: a lane has taken it
	first   error      // the first send that failed: the round ends
	cycle   bool       // a lane stopped at the connection budget
}

// claim takes the first envelope not acked or taken by another lane.
func (r *round) claim() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.s.envs {
		if !r.s.acked[i] && !r.claimed[i] {
			r.claimed[i] = true
			return i, true
		}
	}
	return 0, false
}

// stopAtBudget records a lane that stopped at its connection's budget.
func (r *round) stopAtBudget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cycle = true
}

// left is how many envelopes no lane has taken.
func (r *round) left() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for i := range r.s.envs {
		if !r.s.acked[i] && !r.claimed[i] {
			n++
		}
	}
	return n
}

// lane sends the envelopes it claims on c, as many at a time as its
// pipeline lets, until none is left to claim, c's budget is spent or the
// round ends, and waits for their answers.
func (r *round) lane(ctx context.Context, c *client.Client, depth int) {
	s := r.s
	pl := newPipeline(time.Now(), depth)
	defer func() {
		r.mu.Lock()
		r.st.peak = max(r.st.peak, pl.peak)
		r.mu.Unlock()
	}()
	var sends sync.WaitGroup
	defer sends.Wait()
	issued, carried := 0, 0 // carried: bytes acked on c (under r.mu)
	// The envelopes of one sealing are all of one size: room in the
	// pipeline comes before an envelope is claimed, which leaves those
	// it has no room for to the other lanes.
	size := len(s.envs[0])
	if s.known.Throttled {
		// Two in flight keep a throttled flow busy; more would be
		// envelopes another lane could be sending.
		pl.floor = min(pl.floor, 2*size)
	}
	for r.left() > 0 {
		if b := s.known.Budget; b > 0 && issued > 0 && issued+size > b/2 {
			r.stopAtBudget()
			return
		}
		if !pl.acquire(ctx, size) {
			return
		}
		i, ok := r.claim()
		if !ok {
			pl.release(size, false)
			return
		}
		env := s.envs[i]
		issued += len(env)
		r.mu.Lock()
		s.issued = true
		r.mu.Unlock()
		sends.Add(1)
		go func() {
			defer sends.Done()
			err := s.sendOne(ctx, c, r.via, env)
			pl.release(len(env), err == nil)
			r.sent(i, err, &carried)
		}()
	}
}

// sent records the answer to envelope i's send on a lane that has had
// carried bytes acked: a failure ends the round.
func (r *round) sent(i int, err error, carried *int) {
	s := r.s
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if r.first == nil {
			r.first = err
			r.cancel()
		}
		return
	}
	size := len(s.envs[i])
	s.acked[i] = true
	*carried += size
	r.st.acked = max(r.st.acked, *carried)
	r.st.total += size
	r.st.last = time.Now()
	if r.st.first.at.IsZero() {
		r.st.first = ackMark{r.st.last, r.st.total}
	}
	if s.progress != nil {
		s.progress(s.ackedCount(), len(s.envs))
	}
}

// laneCount is how many connections at once this send may use.
func (s *sender) laneCount() int {
	if s.known.LineThrottled || s.oneLane {
		return 1
	}
	if n, err := strconv.Atoi(s.e.getenv("POSTERN_LANES")); err == nil && n >= 1 {
		return min(n, maxLanesEnv)
	}
	return maxLanes
}

// widen adds lanes to the round beside c, up to laneCount in all and one
// per envelope left: at once on a network known to throttle flows, else
// once c has sent for throttleWindow at under throttleFloor a second.
// Every connection's stall window is made as many times longer, since a
// line throttled as a whole slows each down. dialCtx ends the dials (when
// the first lane has nothing left to take); ctx, the round.
func (r *round) widen(dialCtx, ctx context.Context, c *client.Client) {
	defer r.wg.Done()
	s := r.s
	if !r.slowEnough(dialCtx) {
		return
	}
	r.mu.Lock()
	// Before the dials: their handshakes slow the first connection
	// down on a line throttled as a whole. The lanes' own time starts
	// here too: the handshakes are part of their cost.
	r.st.alone = r.st.first.since(r.st.last, r.st.total)
	r.st.wide = ackMark{time.Now(), r.st.total}
	r.mu.Unlock()
	extra := min(s.laneCount()-1, r.left())
	line := s.lineOf(c.Relay(), r.via)
	if extra < 1 || line == "" {
		return
	}
	window := c.StallWindow() * time.Duration(1+extra)
	c.SetStallWindow(window)
	fmt.Fprintf(s.e.stderr, "the flow is throttled; sending on %d connections at once\n", 1+extra)
	e := s.withWindow()
	for range extra {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			lc, err := dialRelay(dialCtx, e, line)
			if err != nil {
				return
			}
			defer lc.Close()
			lc.SetStallWindow(window)
			if r.join() {
				r.lane(ctx, lc, s.startDepth())
			}
		}()
	}
}

// slowEnough waits until the round should widen, and reports whether it
// should: at once on a network known to throttle flows whose Rate is
// known; on one known to throttle, once the first connection's rate
// alone is measured (two acks; the lanes are judged against it); else
// once it has sent for throttleWindow at under throttleFloor a second.
// False if dialCtx ends first.
func (r *round) slowEnough(dialCtx context.Context) bool {
	k := r.s.known
	if k.Throttled && k.Rate > 0 {
		return true
	}
	tick := time.NewTicker(throttleWindow / 8)
	defer tick.Stop()
	for {
		select {
		case <-dialCtx.Done():
			return false
		case <-tick.C:
		}
		r.mu.Lock()
		alone := r.st.first.since(r.st.last, r.st.total)
		sofar := float64(r.st.total) / time.Since(r.st.start).Seconds()
		r.mu.Unlock()
		switch {
		case k.Throttled && alone > 0:
			return true
		case !k.Throttled && time.Since(r.st.start) >= throttleWindow:
			return sofar < throttleFloor
		}
	}
}

// join counts a lane that is about to send, and reports whether the round
// goes on.
func (r *round) join() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first != nil {
		return false
	}
	r.st.lanes++
	return true
}

// lineOf is the descriptor line of relay id, among the entry relays (via)
// or the card's relays; "" if none.
func (s *sender) lineOf(id string, via bool) string {
	lines := s.card.Relays
	if via {
		lines = s.entries
	}
	for _, l := range lines {
		if d, _, err := descriptor.ParseStale(l, time.Now()); err == nil && d.RelayID() == id {
			return l
		}
	}
	return ""
}

// Judging lanes: from the moment a round widens to its last ack must be
// judgeAfter at least, and the lanes together must carry laneGain times
// what one connection carried alone, or more. As many flows throttled
// one by one carry as many times more (less for the handshakes, and at
// the end of a message, when some lanes have nothing left to send); a
// line throttled as a whole, no more (a little more for what was in
// flight on the first connection when the round widened).
const (
	judgeAfter = throttleWindow
	laneGain   = 1.25
)

// judgeLanes learns from a round that used lanes whether they carried
// more than one connection does here: what they carried together a
// second against what one carried alone (before they began, else the
// network's known Rate). Less than laneGain times that means a
// throttled line: one connection from now on, on this network.
func (s *sender) judgeLanes(st *connStats) {
	alone := cmp.Or(st.alone, float64(s.known.Rate))
	together := st.wide.since(st.last, st.total)
	if st.lanes < 2 || alone == 0 || together == 0 || st.last.Sub(st.wide.at) < judgeAfter {
		return
	}
	if together >= alone*laneGain {
		return
	}
	fmt.Fprintf(s.e.stderr, "%d connections at once carried %.1f KB/s, one alone %.1f KB/s: this network throttles the whole line; one connection from now on\n",
		st.lanes, together/1000, alone/1000)
	s.oneLane, s.known.LineThrottled = true, true
	s.facts.update(s.e, func(f *netFacts) { f.LineThrottled = true })
}
