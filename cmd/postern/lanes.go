package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// Lanes. A censor that throttles each flow (Russia's TSPU held every
// connection to Twitter at 130–150 kbit/s in 2021) lets n connections
// carry n times what one does; one that shapes the subscriber's whole line
// lets them carry no more. A send whose connection, once it has been
// acked for throttleWindow, carried less than throttleFloor a second
// opens up to maxLanes connections in all to the same relay, each sending
// the envelopes none of the others has taken. The envelopes are
// independent and all go to one relay, so nothing changes for the
// recipient. A connection that is not acked for throttleWindow (frozen)
// opens none: the stall window deals with it. The round then compares
// what the connections carried together (each one's rate between its
// acks, past each one's first, which its handshake delays) with what the
// first carried alone; under lineGain times it, the network throttles
// the line: the send's later connections (after a cut or a budget
// cycle) go one at a time, and so do the network's other sends that day
// (netFacts.LineThrottled; a later day tries again; POSTERN_LANES set
// tries anyway). Until 2026-12-06 a send used one connection at a time
// whatever the throttle.

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

	mu      sync.Mutex // the fields below, s.acked, s.issued, st and the lanes' states
	claimed []bool     // per envelope: a lane has taken it
	lanes   []*laneState
	// c is the first lane's connection; window, the stall window every
	// connection takes once the first added lane joins.
	c      firstConn
	window time.Duration
	first  error // the first send that failed: the round ends
	cycle  bool  // a lane stopped at the connection budget
	// dialing is how many of widen's dials have not ended; settled is
	// closed (once, by settle) when one succeeded or none is left.
	dialing int
	dialOK  bool // one of them succeeded
	settle  sync.Once
	settled chan struct{}
	// dialLane dials a lane (dialRelay; tests replace it).
	dialLane func(ctx context.Context, e *env, line string) (*client.Client, error)
}

// firstConn is what a round needs of its first connection.
type firstConn interface {
	Relay() string
	Transport() string
	DialTime() time.Duration
	StallWindow() time.Duration
	SetStallWindow(time.Duration)
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
	return r.leftLocked()
}

// leftLocked is left with r.mu held.
func (r *round) leftLocked() int {
	n := 0
	for i := range r.s.envs {
		if !r.s.acked[i] && !r.claimed[i] {
			n++
		}
	}
	return n
}

// laneState is what one lane has had acked (under round.mu).
type laneState struct {
	carried int       // bytes
	first   ackMark   // its first ack
	last    time.Time // its last ack
	added   bool      // widen added it
	// bytes and span: acked between two of its acks once the lanes
	// share the way (see sent).
	bytes int
	span  time.Duration
}

// lane sends the envelopes it claims on c, as many at a time as its
// pipeline lets, until none is left to claim, c's budget is spent or the
// round ends, and waits for their answers. added: widen added it.
func (r *round) lane(ctx context.Context, c *client.Client, depth int, added bool) {
	s := r.s
	pl := newPipeline(time.Now(), depth)
	defer func() {
		r.mu.Lock()
		r.st.peak = max(r.st.peak, pl.peak)
		r.mu.Unlock()
	}()
	var sends sync.WaitGroup
	defer sends.Wait()
	issued, ls := 0, &laneState{added: added}
	r.mu.Lock()
	r.lanes = append(r.lanes, ls)
	r.mu.Unlock()
	// The envelopes of one sealing are all of one size: room in the
	// pipeline comes before an envelope is claimed, which leaves those
	// it has no room for to the other lanes.
	size := len(s.envs[0])
	if s.known.Throttled && s.laneCount() > 1 {
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
			r.sent(i, err, ls)
		}()
	}
}

// sent records the answer to envelope i's send on lane ls: a failure
// ends the round.
func (r *round) sent(i int, err error, ls *laneState) {
	s, st := r.s, r.st
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
	now := time.Now()
	ls.carried += size
	st.acked = max(st.acked, ls.carried)
	st.total += size
	st.last = now
	if st.first.at.IsZero() {
		st.first = ackMark{now, st.total}
	}
	// Between two acks of one lane once the lanes share the way (from
	// the first ack on an added lane): past an added lane's first ack
	// (its handshake), and on the first lane past that moment.
	if ls.added && st.shared.IsZero() {
		st.shared = now
	}
	if !ls.last.IsZero() && !st.shared.IsZero() && (ls.added || !ls.last.Before(st.shared)) {
		ls.bytes += size
		ls.span += now.Sub(ls.last)
	}
	ls.last = now
	if ls.first.at.IsZero() {
		ls.first = ackMark{now, size}
	}
	if s.progress != nil {
		s.progress(s.ackedCount(), len(s.envs))
	}
}

// laneCount is how many connections at once this send may use.
func (s *sender) laneCount() int {
	if s.oneLane || s.e == nil || s.e.getenv == nil { // no env: no dials (tests)
		return 1
	}
	return laneLimit(s.e, s.known)
}

// laneLimit is how many connections at once a send or a recv may use on
// a network whose facts are f: POSTERN_LANES, if set (whatever the
// network); one on a line known throttled as a whole today; else
// maxLanes.
func laneLimit(e *env, f netFacts) int {
	if n, err := strconv.Atoi(e.getenv("POSTERN_LANES")); err == nil && n >= 1 {
		return min(n, maxLanesEnv)
	}
	if f.LineThrottled && !stale(f.LineDay) {
		return 1
	}
	return maxLanes
}

// widen adds lanes to the round beside c, up to laneCount in all and one
// per envelope left, once c has been acked for throttleWindow at under
// throttleFloor a second (see waitAlone). When the first added one joins,
// every connection's stall window is made as many times longer as there
// are connections planned, since a line throttled as a whole slows each
// down. dialCtx ends the dials (when the first lane has nothing left to
// take); ctx, the round. Dials none of which succeeded within
// dialPatience are stopped (waitDials).
func (r *round) widen(dialCtx, ctx context.Context, c firstConn) {
	defer r.wg.Done()
	s := r.s
	alone, ok := r.waitAlone(dialCtx)
	if !ok || alone >= throttleFloor {
		return
	}
	extra := min(s.laneCount()-1, r.left())
	line := s.lineOf(c.Relay(), r.via)
	if extra < 1 || line == "" {
		return
	}
	r.mu.Lock()
	r.st.alone, r.dialing = alone, extra
	r.c, r.window = c, c.StallWindow()*time.Duration(1+extra)
	r.mu.Unlock()
	fmt.Fprintf(s.e.stderr, "the connection carries %.1f KB/s; opening up to %d more to the relay\n", alone/1000, extra)
	e := s.laneEnv(c.Transport())
	laneCtx, stopLanes := context.WithCancel(dialCtx)
	for range extra {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			lc, err := r.dialLane(laneCtx, e, line)
			r.dialEnded(err == nil)
			if err != nil {
				return
			}
			defer lc.Close()
			if r.join(lc) {
				r.lane(ctx, lc, s.startDepth(), true)
			}
		}()
	}
	r.waitDials(dialCtx, stopLanes, dialPatience(c.DialTime()))
}

// dialPatience is how long lanes' dials may take, none joining, before
// the round takes the line for one that queues new connections behind
// the first's bytes: patienceFactor times the first connection's dial,
// throttleWindow at least, and less than a dial attempt's own timeout
// (else the dials would all fail first, and a failed dial is no verdict:
// a reviewer's find).
func dialPatience(first time.Duration) time.Duration {
	return min(max(throttleWindow, patienceFactor*first), route.DefaultPerAttempt*2/3)
}

// patienceFactor: a flow throttled on its own leaves a new connection's
// handshake alone, which takes about what the first's did (over an idle
// line); a line shaped as a whole with a deep queue holds it behind the
// first connection's bytes (tc htb at 64 kbit/s in the netns censor
// test: 11.5 s for three https lanes, a TLS handshake that timed out
// after 15 s for one; the first connection's dial took milliseconds).
const patienceFactor = 4

// dialEnded counts a lane's dial that ended: the lanes' dials are settled
// once one succeeds or none is left.
func (r *round) dialEnded(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dialing--
	r.dialOK = r.dialOK || ok
	if ok || r.dialing == 0 {
		r.settle.Do(func() { close(r.settled) })
	}
}

// waitDials waits until the lanes' dials settle (see dialEnded), dialCtx
// ends or patience passes: then the dials are stopped, and if none has
// succeeded while some were still dialing and the first connection had
// work left, the round is marked queued (see laneVerdict).
func (r *round) waitDials(dialCtx context.Context, stop context.CancelFunc, patience time.Duration) {
	t := time.NewTimer(patience)
	defer t.Stop()
	select {
	case <-r.settled:
	case <-dialCtx.Done():
	case <-t.C:
		r.mu.Lock()
		// A dial that succeeded, even as the timer fired, is no queue.
		// Nor is a round whose dials have all ended or whose first
		// connection had nothing left, as the timer fired.
		r.st.queued, r.st.patience = !r.dialOK && r.dialing > 0 && dialCtx.Err() == nil, patience
		r.mu.Unlock()
		stop()
	}
}

// laneEnv is the env of the dials of lanes beside a connection that came
// by transport t: the sender's stall window; t, unless POSTERN_TRANSPORT
// names one (the way that carries: over a blocked other way each lane's
// dial would first spend that one's timeout); and no route memory
// (env.lane). Until 2026-12-06 lanes dialed as a new send does: on a line
// shaped with a deep queue (tc htb in the netns censor test) every lane
// dial timed out, and route.Dial counted each against the https way that
// was carrying the message (the first failure of a way that worked is
// forgiven half the time, the next is not): backoff for the network's
// later sends.
func (s *sender) laneEnv(t string) *env { return laneEnvOf(s.withWindow(), t) }

// laneEnvOf is base for a lane's dials: t pinned (unless
// POSTERN_TRANSPORT names a transport) and no route memory.
func laneEnvOf(base *env, t string) *env {
	e := *base
	e.lane = true
	if t != "" && e.getenv("POSTERN_TRANSPORT") == "" {
		get := e.getenv
		e.getenv = func(k string) string {
			if k == "POSTERN_TRANSPORT" {
				return t
			}
			return get(k)
		}
	}
	return &e
}

// waitAlone waits until the first connection's rate alone is known (see
// aloneAt) and returns it; false if dialCtx ends first.
func (r *round) waitAlone(dialCtx context.Context) (float64, bool) {
	tick := time.NewTicker(throttleWindow / 8)
	defer tick.Stop()
	for {
		select {
		case <-dialCtx.Done():
			return 0, false
		case <-tick.C:
			r.mu.Lock()
			rate, ok := aloneAt(r.st)
			r.mu.Unlock()
			if ok {
				return rate, true
			}
		}
	}
}

// aloneAt is the rate of the first connection alone: the bytes acked
// after its first ack (which a throttle's first burst speeds up) over the
// time from that ack to the last, once that is throttleWindow. A flow
// that froze is acked nothing more, however long it has been: no lanes
// for it (until 2026-12-06 a reviewer's find: measured to the present, a
// flow acked a few times at once and then frozen looked throttled).
// Before that, a first ack that took throttleWindow from the round's
// start at under throttleFloor a second gives the rate: burst and all,
// the flow is slow (a first send on a network goes in 64 KiB envelopes:
// at 64 kbit/s the second ack comes 8 s after the first, and until
// 2026-12-06 lanes waited for it).
func aloneAt(st *connStats) (float64, bool) {
	if st.first.at.IsZero() {
		return 0, false
	}
	if d := st.last.Sub(st.first.at); d >= throttleWindow {
		return float64(st.total-st.first.bytes) / d.Seconds(), true
	}
	d := st.first.at.Sub(st.start)
	if rate := float64(st.first.bytes) / d.Seconds(); !st.start.IsZero() && d >= throttleWindow && rate < throttleFloor {
		return rate, true
	}
	return 0, false
}

// join counts lc's lane, which is about to send, and reports whether the
// round goes on. Every connection's stall window grows when the first
// added one joins (not before: no dial may succeed).
func (r *round) join(lc *client.Client) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first != nil || r.leftLocked() == 0 || r.st.queued {
		return false // failed, or nothing left to take: a dial that won a race with stopDials or waitDials
	}
	if r.st.lanes == 1 {
		r.c.SetStallWindow(r.window)
	}
	lc.SetStallWindow(r.window)
	r.st.lanes++
	return true
}

// minLaneSpan is the least a lane's spans between its acks must come to
// for its rate to count: one span of a few milliseconds (two acks that
// came together) would swamp the sum (a reviewer's find).
const minLaneSpan = throttleWindow / 2

// summarize puts what the lanes carried once they shared the way into
// st.steady: the sum of the rates of the lanes whose spans between their
// acks came to minLaneSpan, how many, and their spans in all; and the
// first lane's rate from its first ack to its last, if throttleWindow
// apart, into st.firstOwn. After the round.
func (r *round) summarize() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ls := range r.lanes {
		// Past its first ack, as aloneAt: a throttle's first burst
		// would lift it over throttleFloor (a reviewer's find: 15 KiB/s
		// with a second's burst read 16.3 KB/s).
		if d := ls.last.Sub(ls.first.at); !ls.added && d >= throttleWindow {
			r.st.firstOwn = float64(ls.carried-ls.first.bytes) / d.Seconds()
		}
		if ls.span >= minLaneSpan {
			r.st.steady.together += float64(ls.bytes) / ls.span.Seconds()
			r.st.steady.lanes++
			r.st.steady.span += ls.span
		}
	}
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

// lineGain: lanes whose rates together came to less than this many
// times what the first connection carried alone throttle one another: the
// line is throttled as a whole. As many flows throttled one by one carry
// as many times what one does (less when the line itself is not much
// faster: 4 flows at 14 KB/s on a line of 32 carry 2.3 times one);
// lanes on a line shaped as a whole carry about what one does (more at
// the end of a message, when one lane has the line to itself: 2 lanes on
// a 64 kbit/s line measured 1.2). Until 2026-12-06 each lane's own rate
// was judged, against 0.6 of one alone: the 4 flows on a line of 32 KB/s
// were taken for a line throttle (a reviewer's find).
const lineGain = 1.5

// Lane verdicts.
const (
	lanesUnjudged = iota // too little measured
	lanesHelp
	lineThrottled
	lineQueued // no lane could be dialed beside the first: see laneVerdict
)

// laneVerdict judges a round that widened. When no added lane could be
// dialed within dialPatience while the first connection carried
// (st.queued), the line holds a new connection's handshake behind the
// first's bytes (a shaper's queue) or drops it: lanes cannot help there
// (lineQueued). Else it judges from the sum of each lane's rate between
// two of its acks (st.steady), against the first connection alone: at
// least two lanes with minLaneSpan of such spans, throttleWindow in all.
func laneVerdict(st *connStats) int {
	if st.queued && st.lanes == 1 && st.alone > 0 {
		return lineQueued
	}
	if st.alone == 0 || st.steady.lanes < 2 || st.steady.span < throttleWindow {
		return lanesUnjudged
	}
	if st.steady.together < st.alone*lineGain {
		return lineThrottled
	}
	return lanesHelp
}

// judgeLanes learns from a round that used lanes, once it is over,
// whether they carried more than one connection alone does here (flows
// throttled one by one: a line throttle remembered from an earlier day
// is forgotten) or not (the line is throttled as a whole: the send's
// later connections go one at a time, and the network's other sends
// that day, unless POSTERN_LANES is set).
func (s *sender) judgeLanes(st *connStats) {
	v := laneVerdict(st)
	if v == lanesUnjudged {
		return
	}
	if v == lineQueued {
		fmt.Fprintf(s.e.stderr, "no connection beside the first could be opened in %s while it carried %.1f KB/s", st.patience.Round(100*time.Millisecond), st.alone/1000)
	} else {
		fmt.Fprintf(s.e.stderr, "%d connections at once carried %.1f KB/s together, one alone %.1f KB/s", st.lanes, st.steady.together/1000, st.alone/1000)
	}
	if v == lanesHelp {
		fmt.Fprintf(s.e.stderr, ": this network throttles each flow\n")
		if s.known.LineThrottled {
			s.known.LineThrottled = false
			s.facts.update(s.e, func(f *netFacts) { f.LineThrottled, f.LineDay = false, 0 })
		}
		return
	}
	if s.e.getenv("POSTERN_LANES") == "" {
		fmt.Fprintf(s.e.stderr, ": this network throttles the whole line; one connection at a time for the rest of today\n")
	} else {
		fmt.Fprintf(s.e.stderr, ": this network throttles the whole line; one connection at a time for the rest of this send\n")
	}
	s.oneLane, s.known.LineThrottled, s.known.LineDay = true, true, today()
	s.facts.update(s.e, func(f *netFacts) { f.LineThrottled, f.LineDay = true, today() })
}
