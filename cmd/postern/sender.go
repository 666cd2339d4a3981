package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// maxResumes bounds how often one send reconnects after a connection
// that stalled or was reset having carried no envelope; those that
// carried some are bounded by the envelopes (maxProgressResumes).
const maxResumes = 64

// maxProgressResumes bounds the reconnects after connections that each
// carried at least one envelope: one per envelope of the largest message,
// four times over for the reseals and relay changes that start a message
// again.
const maxProgressResumes = 4 * envelope.MaxFragments

// maxCycles bounds the planned reconnects of one send on a network with a
// per-connection budget.
const maxCycles = 4 * envelope.MaxFragments

// throttleWindow is how long a connection must have been sending before
// its throughput is judged against throttleFloor.
const throttleWindow = 2 * time.Second

// What one connection has in flight (at least one envelope) starts at
// pipelineDepth envelopes and pipelineBytes, and grows by what the relay
// acks (each acked envelope adds one envelope and its bytes, so it
// doubles each round trip) up to maxPipelineDepth and maxPipelineBytes,
// but to no more bytes than pipelineQueue's worth at the rate the relay
// has acked on this connection. So a distant relay costs bandwidth, not
// a round trip per envelope (a 7 MiB message of 64 KiB envelopes took 122
// round trips over a 100 ms path when the pipeline stayed at 64 KiB, 22
// with a 1 MiB cap, 11 now, with a relay whose windows grow too: see
// transport/https's resizeWindowLocked); a throttled flow keeps little
// queued (a stall resends little and each ack comes within the stall
// window); and a connection that freezes early has had little put into
// it.
const (
	pipelineDepth    = 4
	pipelineBytes    = 64 << 10
	maxPipelineDepth = 60 // of the relay's 64 Sends per session
	maxPipelineBytes = 4 << 20
	pipelineQueue    = 2 * time.Second
)

// pipeline meters what one connection has in flight.
type pipeline struct {
	mu       sync.Mutex
	start    time.Time
	depth    int // envelopes in flight at the start
	n, bytes int // in flight
	ackedN   int // envelopes acked on this connection
	acked    int // and their bytes
	peak     int // the most envelopes in flight at once
	// floor is the fewest bytes allowed in flight, whatever the rate
	// acked: pipelineBytes, or less on a throttled network (see lane).
	floor int
	kick  chan struct{}
}

func newPipeline(start time.Time, depth int) *pipeline {
	return &pipeline{start: start, depth: depth, floor: pipelineBytes, kick: make(chan struct{}, 1)}
}

// limits returns how many envelopes and bytes may be in flight now; p.mu
// is held.
func (p *pipeline) limits(now time.Time) (n, bytes int) {
	bytes = p.floor + p.acked
	if e := now.Sub(p.start); p.acked > 0 && e > 0 {
		bytes = min(bytes, int(float64(p.acked)/e.Seconds()*pipelineQueue.Seconds()))
	}
	bytes = max(p.floor, min(bytes, maxPipelineBytes))
	return min(maxPipelineDepth, p.depth+p.ackedN), bytes
}

// acquire waits until an envelope of size bytes may go out (at once when
// nothing is in flight) and counts it in flight; false if ctx ended.
func (p *pipeline) acquire(ctx context.Context, size int) bool {
	for ctx.Err() == nil {
		p.mu.Lock()
		n, bytes := p.limits(time.Now())
		if p.n == 0 || (p.n < n && p.bytes+size <= bytes) {
			p.n++
			p.bytes += size
			p.peak = max(p.peak, p.n)
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		select {
		case <-p.kick:
		case <-ctx.Done():
		}
	}
	return false
}

// release counts an envelope of size bytes out of flight, acked or not.
func (p *pipeline) release(size int, acked bool) {
	p.mu.Lock()
	p.n--
	p.bytes -= size
	if acked {
		p.ackedN++
		p.acked += size
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// maxRedials bounds the dial attempts after a stall, when the queue the
// frozen connection left behind can still delay a new handshake.
const maxRedials = 3

// errCycle ends a connection on purpose, before the censor's budget.
var errCycle = errors.New("connection budget reached")

// sender carries one message's envelopes to the recipient's home relay,
// directly or through an entry relay, over as many connections as the
// censor makes necessary. The envelopes are independent: after a stall it
// resumes with the first one not yet acked, and never resends one acked.
type sender struct {
	e    *env
	card *envelope.Card
	from *envelope.Identity
	msg  []byte
	// message is the message's id, the same in every sealing of it
	// (envelope.Options.MessageID): after a stall before any ack the
	// message is sealed again into smaller envelopes, and the relay may
	// have stored the first sealing; the recipient takes one.
	message [envelope.IDSize]byte
	envs    [][]byte
	bucket  int
	// depth is how many envelopes a connection starts with in flight
	// (0: pipelineDepth), halved for this send after a connection that
	// carried none of them (see afterStall).
	depth int
	// fruitless is how many connections in a row stalled or were reset
	// with nothing acked (see afterStall).
	fruitless int
	// oneLane: this send uses one connection at a time from now on (see
	// lanes.go): lanes carried less than lineGain times one, or one of
	// them stalled or was reset.
	oneLane bool
	issued  bool // an envelope was handed to a relay: it may have it
	// recorded: the message's id is in POSTERN_HOME/unsent, for
	// `send --again` (see unsent.go).
	recorded bool
	acked    []bool   // per envelope: the relay has it
	entries  []string // entry relay descriptors
	forced   bool     // --via: entry relays only
	// refused holds the ids of relays that refused this send for now
	// (busy, full): later connections go to the others (see refusedBy).
	refused map[string]bool
	refusal error // the last of their answers
	facts   *factsStore
	known   netFacts
	// recheck is a budget from an earlier day that this send checks
	// again (see budgetGone and afterStall); 0: none.
	recheck int
	window  time.Duration // stall window; 0: the default
	// holder is the id of the relay that holds every envelope acked so
	// far ("" before the first ack). A message's fragments must all reach
	// one relay for the recipient to put it together there, so later
	// connections go to it while it is reachable (see holderFirst).
	holder string
	// progress, if set, is told after each ack how many envelopes the
	// relay has of how many.
	progress func(done, total int)
}

// connStats is what one connection carried, or one round of connections
// at once (lanes: see lanes.go).
type connStats struct {
	acked int // envelope bytes acked on one connection, the most of the round's
	total int // and on all of them
	// lanes is how many connections the round used; first is the first
	// ack; alone, what the first connection carried a second alone
	// before the round widened (aloneAt); shared, the first ack on an
	// added connection; steady, what the lanes carried between two of
	// their acks from then (round.sent, round.summarize).
	lanes  int
	first  ackMark
	alone  float64
	shared time.Time
	steady struct {
		together float64 // the sum of the lanes' rates, bytes a second
		lanes    int     // lanes with a span
		span     time.Duration
	}
	// queued: no added lane's dial succeeded within patience
	// (round.waitDials).
	queued   bool
	patience time.Duration
	// firstOwn is what the first connection carried a second over its
	// whole run, from its first ack to its last (summarize).
	firstOwn float64
	start    time.Time
	last     time.Time // when the last ack came
	slow     bool      // throughput under throttleFloor
	peak     int       // the most envelopes in flight at once
}

// ackMark is an ack that a rate is measured from: when it came, and the
// bytes acked by then, its own included.
type ackMark struct {
	at    time.Time
	bytes int
}

// startDepth is how many envelopes a connection starts with in flight.
func (s *sender) startDepth() int {
	if s.depth == 0 {
		return pipelineDepth
	}
	return s.depth
}

// seal splits the message: when the network is known to freeze flows,
// into envelopes no larger than half what a connection carries
// (sealUnder); into 16 KiB envelopes when it throttles them (each ack
// comes within seconds, and a 4 KiB envelope's fixed overhead would cost
// 15 % more bytes); and else as SealMessage chooses.
func (s *sender) seal(f netFacts) error {
	switch {
	case f.Budget > 0:
		return s.sealUnder(f.Budget)
	case f.Throttled:
		return s.sealFrom([]int{envelope.Bucket16K, envelope.Bucket64K})
	}
	return s.sealFrom([]int{0})
}

// sealUnder seals for a network that carries about budget bytes on a
// connection: whole into the smallest bucket the message fits in, if that
// is at most half the budget (a connection then carries at least one
// envelope before sendOn moves on), and else in fragments of the largest
// bucket that is (at least 4 KiB), or of a larger one if the message needs
// more than MaxFragments of those. Until 2026-12-06 every message went in
// the smallest bucket that held it, in fragments if need be, so a 300 KB
// message went in 4 KiB envelopes on a network that carries 128 KiB, each
// with its 1.2 KB of X-Wing key and headers: a third more bytes, and five
// times the envelopes to seal and acknowledge, than 16 or 64 KiB ones.
func (s *sender) sealUnder(budget int) error {
	top := envelope.Bucket4K
	for _, b := range envelope.Buckets {
		if b <= budget/2 {
			top = max(top, b)
		}
	}
	if s.message == ([envelope.IDSize]byte{}) {
		rand.Read(s.message[:])
	}
	for _, b := range envelope.Buckets {
		if b >= top {
			break
		}
		// Whole, as SealMessage seals a message that fits its bucket.
		env, err := envelope.Seal(s.card, s.from, s.msg, &envelope.Options{Bucket: b, MessageID: s.message})
		if err == nil {
			s.envs, s.bucket, s.acked = [][]byte{env}, b, make([]bool, 1)
			return nil
		}
		if !errors.Is(err, envelope.ErrPayloadTooLarge) {
			return err
		}
	}
	var from []int
	for _, b := range envelope.Buckets {
		if b >= top {
			from = append(from, b)
		}
	}
	return s.sealFrom(from)
}

// sealFrom seals with the first bucket of buckets the message fits in
// (0: SealMessage's choice). When none does, the sender keeps the
// envelopes it had: until 2026-12-06 a failed attempt left it with none,
// and a send whose message no smaller bucket held, after a stall, ended
// "sent" having sent nothing (a reviewer's find).
func (s *sender) sealFrom(buckets []int) error {
	if s.message == ([envelope.IDSize]byte{}) {
		rand.Read(s.message[:])
	}
	var err error
	for _, b := range buckets {
		o := &envelope.Options{Bucket: b, MessageID: s.message}
		envs, e := envelope.SealMessage(s.card, s.from, s.msg, o)
		if e == nil {
			s.envs, s.bucket, s.acked = envs, len(envs[0]), make([]bool, len(envs))
			return nil
		}
		if err = e; !errors.Is(e, envelope.ErrPayloadTooLarge) {
			return err
		}
	}
	return err
}

// run sends every envelope, reconnecting after stalls and, on a network
// with a known budget, before it.
func (s *sender) run(ctx context.Context) error {
	resumes, idle, cycles := 0, 0, 0
	for {
		c, via, err := s.dial(ctx)
		for i := 0; err != nil && resumes > 0 && i < maxRedials && ctx.Err() == nil; i++ {
			c, via, err = s.dial(ctx)
		}
		if err != nil && s.refusal != nil {
			// What the user needs to know first is why the relay that
			// was reached did not take the message.
			return scrubAddrs(fmt.Errorf("%w\n(and no other relay could be reached: %w)", s.refusal, err))
		}
		if err != nil {
			return scrubAddrs(err)
		}
		target := s.targetOf(c, via)
		s.keepTogether(target)
		st := &connStats{}
		err = s.sendOn(ctx, c, via, st)
		c.Close()
		if st.acked > 0 {
			s.holder, s.fruitless = target, 0
			// A refusal before no longer says why a later send fails.
			s.refusal = nil
		}
		s.noteThroughput(st)
		s.budgetGone(st, err)
		s.report(c, st, err)
		switch {
		case err == nil:
			return nil
		case s.refusedBy(c, err):
			continue
		case errors.Is(err, errCycle) && cycles < maxCycles:
			cycles++
			continue
		case !resumable(err) || idle == maxResumes || resumes == maxResumes+maxProgressResumes:
			return scrubAddrs(err)
		}
		resumes++
		if st.acked == 0 {
			idle++
		}
		if err := s.afterStall(st, err); err != nil {
			return err
		}
	}
}

// sendOn sends the envelopes not yet acked on c (as forward layers through
// an entry relay if via), as many at a time as its pipeline lets, until
// all are acked, the connection's budget is spent (errCycle) or a send
// fails.
func (s *sender) sendOn(ctx context.Context, c *client.Client, via bool, st *connStats) error {
	st.start, st.lanes = time.Now(), 1
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &round{s: s, via: via, st: st, cancel: cancel, claimed: make([]bool, len(s.envs)), settled: make(chan struct{}),
		dialLane: func(ctx context.Context, e *env, line string) (*client.Client, error) { return dialRelay(ctx, e, line) }}
	dialCtx, stopDials := context.WithCancel(ctx)
	defer stopDials()
	if s.laneCount() > 1 {
		r.wg.Add(1)
		go r.widen(dialCtx, ctx, c)
	}
	r.lane(ctx, c, s.startDepth(), false)
	stopDials() // nothing left for another lane to take
	r.wg.Wait()
	r.summarize()
	if s.ackedCount() == len(s.envs) {
		// Every envelope is on the relay, whatever ended meanwhile: a
		// --timeout or an interrupt right after the last ack was taken
		// for a failure, and the user told to send the message again.
		return nil
	}
	first := r.first
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	if first == nil && r.cycle {
		return errCycle
	}
	return first
}

// ackedCount is how many envelopes the relay has acked.
func (s *sender) ackedCount() int {
	n := 0
	for _, a := range s.acked {
		if a {
			n++
		}
	}
	return n
}

// sendOne hands one envelope to the home relay, or wrapped in a forward
// layer to an entry relay.
func (s *sender) sendOne(ctx context.Context, c *client.Client, via bool, env []byte) error {
	if !via {
		_, err := c.Send(ctx, env, s.card.SendCap)
		return err
	}
	line := s.viaHome()
	home, _, err := descriptor.ParseStale(line, time.Now())
	if err != nil {
		return err
	}
	layer, err := forward.Seal(home, forwardEpoch, s.card.SendCap, env)
	if err != nil {
		return err
	}
	return c.Forward(ctx, line, layer)
}

// viaHome is the home relay that forward layers go to through an entry
// relay: the one holding the envelopes acked so far, else the card's
// first that has not refused this send, else the card's first (a relay
// that answered "mailbox full" to the sender is for the entry relay to
// retry). It changes only between connections.
func (s *sender) viaHome() string {
	homes := s.usable(s.card.Relays)
	for _, l := range homes {
		if d, _, err := descriptor.ParseStale(l, time.Now()); err == nil && s.holder != "" && d.RelayID() == s.holder {
			return l
		}
	}
	if len(homes) > 0 {
		return homes[0]
	}
	return s.card.Relays[0]
}

// noteThroughput marks the network throttled when a connection that ran
// at least throttleWindow and carried minThrottledBytes or more moved
// less than throttleFloor per second (the first connection, of a round
// that lanes joined), and lengthens the stall window so one envelope
// fits in it at that rate. Until 2026-12-07 any bytes did: a message of
// one 4 KiB envelope acked 2.1 s after the dial (a handover, a slow
// fsync) marked the network for a week (a reviewer's find).
//
// A connection that carried enough fast (upFast) forgets instead what a
// send found (netFacts.Up): a stall taken for a throttle, or a throttle
// lifted. What a recv or a follower found of what comes down is kept.
// Until 2026-12-07 sends forgot nothing, and only lanes of a recv with
// 96 KiB or more waiting could (they still forget both sides).
func (s *sender) noteThroughput(st *connStats) {
	s.judgeLanes(st)
	if rate, fast := upFast(st); fast {
		s.forgetUp(rate)
		return
	}
	d := st.last.Sub(st.start)
	if d < throttleWindow || st.total < minThrottledBytes {
		return
	}
	rate := float64(st.total) / d.Seconds()
	if st.lanes > 1 {
		// Lanes each carry less on a line shaped as a whole: what the
		// first connection carried alone before they joined, or past
		// its first ack over its whole run, whichever is more. The
		// first alone is no judge: its estimate from a first ack
		// (aloneAt) may be a slow start over a long path, which a whole
		// run outgrows (a reviewer's find: a fresh network with 7 s of
		// latency in its first ack, 1 MiB sent in 8 s, was marked
		// throttled for a week). Not yet told apart: lanes opened on
		// such a first ack that then share a line of 30 KB/s carry 10
		// each, and the network is marked throttled.
		rate = max(st.alone, st.firstOwn)
	}
	if rate >= throttleFloor {
		return
	}
	st.slow = true
	s.window = max(s.window, time.Duration(3*float64(s.bucket)/rate*float64(time.Second)))
	if !s.known.Throttled {
		fmt.Fprintf(s.e.stderr, "the flow is throttled (%.1f KB/s); using a longer stall window\n", rate/1000)
	}
	s.known.throttledBy(true, int(rate))
	s.facts.update(s.e, func(f *netFacts) { f.throttledBy(true, int(rate)) })
}

// minThrottledBytes is the least a send's connection must carry to mark
// the network throttled (as recv's pages, noteRecvRate): less, a stall
// of a second or two is most of its time.
const minThrottledBytes = 2 * throttleFloor

// upFast says whether the connection of a round that carried st showed
// what goes up not throttled each flow, and what it carried a second
// past its first ack: fastFlowBytes or more acked after that ack, at
// fastFlow a second or more. A throttle under throttleFloor cannot carry
// so much so fast (see flowsFast; here what the first ack's envelope
// carried is left out, not a session's parts in flight), unless the
// relay held the first ack back a second or more after its envelope came
// and then answered the rest as they came. One connection only: lanes
// open only beside one found slow.
func upFast(st *connStats) (float64, bool) {
	d := st.last.Sub(st.first.at)
	past := st.total - st.first.bytes
	if st.lanes != 1 || st.first.at.IsZero() || d <= 0 || past < fastFlowBytes {
		return 0, false
	}
	rate := float64(past) / d.Seconds()
	return rate, rate >= fastFlow
}

// forgetUp forgets what a send found of what goes up on a network known
// throttled, after a connection carried rate bytes a second (upFast).
func (s *sender) forgetUp(rate float64) {
	up, down := s.known.sides()
	if !up {
		return
	}
	said := fmt.Sprintf("the connection carried %.1f KB/s: what goes up is not throttled (a stall was taken for a throttle, or it was lifted)", rate/1000)
	switch {
	case s.facts == nil: // nothing is remembered without --network
	case down:
		said += "; forgotten for what goes up (a recv found what comes down throttled: kept)"
	default:
		said += "; forgotten"
	}
	fmt.Fprintln(s.e.stderr, said)
	s.known.forgetThrottle(true)
	s.facts.update(s.e, func(f *netFacts) { f.forgetThrottle(true) })
}

// budgetGone forgets the budget being checked again once a connection
// has carried more than it and did not stall (err): whatever froze flows
// there before does not now (a reset teaches no budget). One that stalled
// after carrying more teaches the new, larger budget instead (afterStall).
func (s *sender) budgetGone(st *connStats, err error) {
	if s.recheck == 0 || st.acked <= s.recheck || errors.Is(err, transport.ErrStalled) {
		return
	}
	fmt.Fprintf(s.e.stderr, "a connection carried %d KB here without being cut; this network no longer limits connections to %d KB\n", st.acked>>10, s.recheck>>10)
	s.recheck = 0
	s.facts.update(s.e, func(f *netFacts) { f.Budget, f.BudgetDay = 0, 0 })
}

// targetOf is the id of the relay that keeps what is sent on c: the
// relay c reached, or through an entry relay (via) the home relay the
// layers are sealed to. "" if unknown.
func (s *sender) targetOf(c *client.Client, via bool) string {
	if !via {
		return c.Relay()
	}
	home, _, err := descriptor.ParseStale(s.viaHome(), time.Now())
	if err != nil {
		return ""
	}
	return home.RelayID()
}

// keepTogether makes sure every envelope of the message ends up on one
// relay: when this connection reaches another relay than the one that
// holds the envelopes acked so far (it was out of reach, or refused the
// rest for now), the whole message goes to this one. The envelopes are
// independent and the recipient drops a message it has seen, so the copy
// on the first relay does no harm. (A card of one relay keeps the
// message there: the rest goes through an entry relay, viaHome.)
func (s *sender) keepTogether(target string) {
	if s.holder == "" || target == s.holder {
		return
	}
	if done := s.ackedCount(); done > 0 && done < len(s.envs) {
		why := "is out of reach"
		if s.refused[s.holder] { // until 2026-12-07 called out of reach too
			why = "refused the rest for now"
		}
		fmt.Fprintf(s.e.stderr, "the relay that has %d of %d envelopes %s; sending the whole message to another relay of the card\n",
			done, len(s.envs), why)
	}
	s.acked = make([]bool, len(s.envs))
	s.holder = ""
}

// holderFirst orders the card's relays for a dial: with envelopes acked,
// the relay holding them alone, then the others; else all of them in one
// race.
func (s *sender) holderFirst(homes []string) [][]string {
	if s.holder == "" || len(homes) < 2 {
		return [][]string{homes}
	}
	var held, others []string
	for _, line := range homes {
		if d, _, err := descriptor.ParseStale(line, time.Now()); err == nil && d.RelayID() == s.holder {
			held = append(held, line)
		} else {
			others = append(others, line)
		}
	}
	if len(held) == 0 || len(others) == 0 {
		return [][]string{homes}
	}
	return [][]string{held, others}
}

// dialHome dials the card's relays homes in holderFirst's order: the next
// group only when the one before cannot be reached.
func (s *sender) dialHome(ctx context.Context, e *env, homes []string) (*client.Client, error) {
	var errs []error
	for _, lines := range s.holderFirst(homes) {
		c, err := dialRelay(ctx, e, lines...)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

// report tells the route memory and the metrics how a connection failed
// in ways only the sender can see: its flow was throttled, or the relay
// answered busy. (A stall the session reports itself; of several
// failures of one connection only the first counts.)
func (s *sender) report(c *client.Client, st *connStats, err error) {
	switch {
	case st.slow:
		c.Report(transport.ClassThrottled)
	case err != nil && transport.ClassOf(err) == transport.ClassBusy:
		c.Report(transport.ClassBusy)
	}
}

// resumable reports whether a send that failed with err goes on over a
// new connection: the connection stalled (a censor froze it), or it was
// reset (a censor that injects resets once it has judged a flow: until
// 2026-12-06 that ended the send, with part of the message on the relay;
// a reviewer's find).
func resumable(err error) bool {
	return errors.Is(err, transport.ErrStalled) || transport.ClassOf(err) == transport.ClassReset
}

// afterStall learns from a connection that froze (err is a stall): the
// bytes it carried are the network's per-connection budget; a connection
// that carried nothing before any envelope was acked means the envelopes
// are too large for the censor, and the message is sealed again into a
// smaller bucket. A reset sets no budget: a relay that restarts, or
// closes with bytes unread, resets too, and one reset would have set a
// budget that slowed every send on the network for a week (a reviewer's
// find); but a reset before any ack seals the message again as a stall
// does, this send only (a censor resetting flows at 16 KiB otherwise
// defeats 64 KiB envelopes for good: the next reviewer's find).
func (s *sender) afterStall(st *connStats, err error) error {
	done := s.ackedCount()
	if st.lanes > 1 && !s.oneLane {
		// Lanes slow each other down on a line throttled as a whole, and
		// a freeze may come sooner than their longer stall window saw:
		// one connection at a time from here, for this send.
		s.oneLane = true
		fmt.Fprintf(s.e.stderr, "one of %d connections at once was cut; one at a time from now on\n", st.lanes)
	}
	reset := !errors.Is(err, transport.ErrStalled)
	if reset {
		fmt.Fprintf(s.e.stderr, "the connection was reset after %d of %d envelopes; reconnecting\n", done, len(s.envs))
	} else {
		fmt.Fprintf(s.e.stderr, "the connection stalled after %d of %d envelopes (a censor's per-flow limit?); reconnecting\n", done, len(s.envs))
	}
	if s.recheck > 0 && !reset && !st.slow {
		// The budget checked again still holds: back under it at once
		// (smaller, below, if this connection carried less; the larger
		// one it carried if it stalled past the old budget). A slow
		// connection's stall says nothing about a budget.
		s.known.Budget, s.recheck = max(s.recheck, st.acked), 0
		s.facts.update(s.e, func(f *netFacts) { f.Budget, f.BudgetDay = s.known.Budget, today() })
	}
	if st.acked > 0 && (st.slow || reset) {
		return nil
	}
	if st.acked > 0 {
		if s.known.Budget == 0 || st.acked < s.known.Budget {
			s.known.Budget = st.acked
			s.facts.update(s.e, func(f *netFacts) { f.Budget, f.BudgetDay = st.acked, today() })
		}
		return nil
	}
	// Here this connection had nothing acked. Before any envelope was,
	// that says they are too large for the censor; after some were, two
	// such connections in a row say so (the censor's limit fell below
	// them: a budget of 128 KiB seals in 64 KiB envelopes, and a later
	// freeze at 40 KiB kept every connection from finishing one, until
	// the send gave up; a reviewer's find). The whole message is sealed
	// again, as sealings cannot be mixed: what was acked of the first
	// is taken for a copy once the recipient has the message.
	s.fruitless++
	if s.bucket > envelope.Bucket4K && (done == 0 || s.fruitless >= 2) {
		smaller := []int{envelope.Bucket4K, envelope.Bucket16K}
		if s.bucket == envelope.Bucket16K {
			smaller = smaller[:1]
		}
		if err := s.sealFrom(smaller); err == nil {
			fmt.Fprintf(s.e.stderr, "sealed the message again into %d envelopes of %d KiB\n", len(s.envs), s.bucket>>10)
			return nil
		}
		// No smaller bucket holds the message: fewer at a time, below.
	}
	s.narrow(st)
	return nil
}

// narrow halves, for the rest of this send, how many envelopes a
// connection starts with in flight, after one that carried none of those
// it had in flight (st.peak of them): the smallest envelopes went out
// together past a censor's per-flow limit, and a reset (which also drops
// the acks on their way back) took every one. Until 2026-12-06 a censor
// resetting flows at 16 KiB defeated send: each connection started with
// four 4 KiB envelopes, and the reset came before any ack.
func (s *sender) narrow(st *connStats) {
	d := max(1, min(s.startDepth(), st.peak)/2)
	if st.peak < 2 || d >= s.startDepth() {
		return
	}
	s.depth = d
	fmt.Fprintf(s.e.stderr, "sending %d envelope(s) at a time on each new connection\n", d)
}

// refusedBy reports whether the relay c reached refused the send with
// err for now, in a way another relay may not (elsewhere), and one is
// left to try: then later connections go to the others. Until 2026-12-06
// a busy entry relay, or one whose forward queue was full, ended the send
// with other entry relays known (a reviewer's find).
func (s *sender) refusedBy(c *client.Client, err error) bool {
	if !elsewhere(err) || c.Relay() == "" || s.refused[c.Relay()] {
		return false
	}
	if s.refused == nil {
		s.refused = map[string]bool{}
	}
	s.refused[c.Relay()] = true
	s.refusal = err
	left := len(s.usable(s.entries))
	if !s.forced {
		left += len(s.usable(s.card.Relays))
	}
	if left == 0 {
		return false
	}
	fmt.Fprintf(s.e.stderr, "relay %s refused the message for now (%v); trying another relay\n", c.Relay(), err)
	return true
}

// elsewhere reports whether err is a relay's answer that it cannot take
// an envelope now where another relay may: busy, its forward queue or its
// storage full, an error of its own, or the recipient's mailbox full on
// it (another home relay of the card, or an entry relay that queues the
// envelope until the mailbox has room, may take it).
func elsewhere(err error) bool {
	var re *relay.Error
	if !errors.As(err, &re) {
		return false
	}
	switch re.Code {
	case relay.CodeBusy, relay.CodeOutboxFull, relay.CodeRelayFull, relay.CodeInternal, relay.CodeMailboxFull:
		return true
	}
	return false
}

// usable is lines without the relays that refused this send.
func (s *sender) usable(lines []string) []string {
	if len(s.refused) == 0 {
		return lines
	}
	var out []string
	for _, l := range lines {
		if d, _, err := descriptor.ParseStale(l, time.Now()); err != nil || !s.refused[d.RelayID()] {
			out = append(out, l)
		}
	}
	return out
}

// dial opens a session to the home relay, or to an entry relay when the
// home relay cannot be reached (at once when this network is known to
// need one, after fallbackDelay otherwise) or refused the send.
func (s *sender) dial(ctx context.Context) (*client.Client, bool, error) {
	e := s.withWindow()
	homes, entries := s.usable(s.card.Relays), s.usable(s.entries)
	home := func(ctx context.Context) (*client.Client, error) { return s.dialHome(ctx, e, homes) }
	entry := func(ctx context.Context) (*client.Client, error) { return dialRelay(ctx, e, entries...) }
	if s.forced || len(homes) == 0 {
		c, err := entry(ctx)
		return c, true, err
	}
	if len(entries) == 0 {
		c, err := home(ctx)
		return c, false, err
	}
	first, other := dialFunc(home), dialFunc(entry)
	if s.known.ViaEntry {
		first, other = other, first
	}
	c, swapped, err := raceDial(ctx, first, other)
	via := swapped != s.known.ViaEntry
	if len(homes) < len(s.card.Relays) {
		// A home relay that refused this send is not out of reach: what
		// this dial shows is no fact about the network (a reviewer's
		// find: the entry relay beating a home relay that was merely
		// offline set via_entry for a week).
		return c, via, err
	}
	if err == nil && via != s.known.ViaEntry {
		s.known.ViaEntry = via
		s.facts.update(s.e, func(f *netFacts) { f.ViaEntry = via })
	}
	if err == nil && via {
		fmt.Fprintf(s.e.stderr, "the home relay is out of reach; sending through an entry relay\n")
	}
	return c, via, err
}

// withWindow is e with POSTERN_STALL set to the sender's stall window,
// when it has lengthened one.
func (s *sender) withWindow() *env {
	if s.window == 0 {
		return s.e
	}
	e := *s.e
	w := s.window
	if d, err := time.ParseDuration(s.e.getenv("POSTERN_STALL")); err == nil && d > w {
		w = d
	}
	e.getenv = func(k string) string {
		if k == "POSTERN_STALL" {
			return w.String()
		}
		return s.e.getenv(k)
	}
	return &e
}

// addrRE matches an IPv4 or bracketed IPv6 address with a port, as
// net.OpError texts carry them ("write udp 127.0.0.2:5->127.0.0.1:7").
var addrRE = regexp.MustCompile(`(\d{1,3}\.){3}\d{1,3}:\d+|\[[0-9a-fA-F:.%]+\]:\d+`)

// scrubAddrs replaces addresses in err's text, which a user may paste
// into a bug report, with "[address]", keeping errors.Is working.
func scrubAddrs(err error) error {
	if err == nil || !addrRE.MatchString(err.Error()) {
		return err
	}
	return &scrubbed{err: err, text: addrRE.ReplaceAllString(err.Error(), "[address]")}
}

type scrubbed struct {
	err  error
	text string
}

func (s *scrubbed) Error() string { return s.text }
func (s *scrubbed) Unwrap() error { return s.err }
