package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
)

// drainWatched is drainWhole's pass on c alone over a network not known
// to be throttled, where lanes may be used. The page coming over c is
// watched: once it shows the flow throttled (throttledPage), a second
// connection looks at the backlog and, if it is three times what came or
// more, fetches one part of it (startTrial). A part that comes at
// trialShare or more of what c alone carries means flows throttled one
// by one: the page is left, the network remembered throttled, and the
// rest taken over lanes beginning on the second connection, asking for
// none of what came again (switchToLanes). Less means the line is
// throttled as a whole (its share went to the second connection): the
// page goes on over c, and the next recv's lanes judge the line
// (judgeRecvLanes); the trial's part was fetched for nothing (going on
// over the second connection alone instead, with what came, measured
// slower: 29.6 s for 48 short messages behind 64 kbit/s, against 25.6
// staying, 24.7 on one connection from the start). A smaller backlog
// stays on c: most of it came already. Until 2026-12-06 a recv learnt a
// throttle only from a whole pass, and its first on a network carried
// the whole backlog over one flow: 200 KB behind 64 kbit/s per flow took
// 32.5 s.
func drainWatched(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f *netFacts) (lanes bool, err error) {
	tctx, stop := context.WithCancel(ctx)
	var trial *pageTrial
	alone := 0.0
	watch := func(p client.PageProgress) bool {
		if trial == nil {
			var slow bool
			if alone, slow = throttledPage(p, c.DialTime()); slow {
				trial = startTrial(tctx, t, c, alone, p)
			}
			return false
		}
		select {
		case <-trial.done:
			return trial.lane != nil
		default:
			return false
		}
	}
	err = in.DrainWatched(ctx, c, t.m.owner(), t.m.id(), watch)
	stop()
	if trial != nil {
		<-trial.done
	}
	if errors.Is(err, client.ErrPageLeft) {
		return true, switchToLanes(ctx, e, t, in, c, f, alone, trial, err)
	}
	if trial != nil {
		trial.ended(e, t, f, alone, err)
	}
	noteRecvRate(e, t, *f, in)
	return false, err
}

// throttledPage says whether a page coming over one connection (p), on a
// session whose dial took dial, shows the flow throttled, and at what
// rate: pageBytes or more read since its first byte, at under
// throttleFloor, over throttleWindow and 2*dial (four round trips or
// more: a fresh connection's slow start over a long path is no throttle)
// at least, as noteRecvRate asks of a whole pass. It is judged only
// as a read has just come (under freshRead ago): between a throttled
// flow's TLS records the count stands still for seconds, and a flow
// frozen after a budget does not read again (the stall watcher's to
// find).
func throttledPage(p client.PageProgress, dial time.Duration) (float64, bool) {
	if p.Bytes < pageBytes || p.Since < max(throttleWindow, 2*dial) || p.Idle >= freshRead {
		return 0, false
	}
	rate := float64(p.Bytes) / p.Since.Seconds()
	return rate, rate < throttleFloor
}

// pageBytes is one TLS record past the first (a record carries a little
// under 16 KiB, 16,375 bytes of a session's stream as measured here),
// with room for a count that grows in smaller steps (h3's packets): over
// throttleWindow, under throttleFloor already. Until 2026-12-07 it was
// two records (24 KiB), and behind 64 kbit/s a flow was found throttled
// about 2 s later, of 8 or so before lanes began.
const pageBytes = throttleFloor / 2

// pageRecords is what a page found slow over TLS has read at least: its
// first record and one past it. A trial reckons the backlog it asks for
// from that at least (startTrial): over h3 the count grows a packet at a
// time, and a page found slow with less read would ask for less (a
// reviewer's find: a lone 64 KiB envelope, 19 KB of it come over h3, was
// tried, and a part of it timed, that the first connection was bringing).
const pageRecords = 2 * 16375

// freshRead: two of DrainWatched's samples.
const freshRead = 500 * time.Millisecond

// trialShare is the least share of what the first connection carries
// alone that a second's part must come at for the flows to be taken for
// throttled one by one: behind a throttle of each flow it comes at about
// the same rate or faster (a fresh flow's burst); behind a line shaped as
// a whole at half or less (a fair share, or a place behind the first's
// queue).
const trialShare = 0.75

// pageTrial is what a second connection found beside a page found
// throttled (drainWatched).
type pageTrial struct {
	done chan struct{}
	// judged says a part was timed: rate is what it came at (bytes a
	// second, less a round trip), perFlow whether that is trialShare of
	// what the first connection carried alone or more.
	judged, perFlow bool
	rate            float64
	// old says the relay does not know parts.
	old bool
	// lane is the second connection, kept if perFlow (and closed by the
	// trial otherwise): the lanes begin on it.
	lane *client.Client
	// parts are what was timed: the lanes do not ask for it again.
	parts []client.Begun
}

// trialPart is the least a trial times: half a full part.
const trialPart = relay.MaxPart / 2

// startTrial dials a second connection as c's lanes would, beside a page
// that came at alone bytes a second, as it came when found slow (page):
// it asks one byte of the page's first envelope (the one c brings first;
// the time it takes is the round trip), then one byte of each of the
// next ones (scanBacklog), and only if they come to three times what of
// the page was read (pageRecords at least) or more (else c ends the page sooner than lanes
// would begin it again: a reviewer measured four 16 KiB envelopes behind
// 10 KiB/s a flow at 8.6–10.4 s where one connection takes 5.9) it times
// a full part of one of them, or a full part's worth of short ones
// (timedParts). The page begins past page.After: the page before may
// still wait on the relay, its Ack behind this page (a reviewer's find:
// scanned from the mailbox's start, it was counted in the backlog).
func startTrial(ctx context.Context, t recvTarget, c *client.Client, alone float64, page client.PageProgress) *pageTrial {
	tr := &pageTrial{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		dctx, cancel := context.WithTimeout(ctx, dialPatience(c.DialTime()))
		lane, err := t.laneDial(c.Transport())(dctx)
		cancel()
		if err != nil {
			return
		}
		defer func() {
			if tr.lane == nil {
				lane.Close()
			}
		}()
		start := time.Now()
		first, ok, err := lane.FetchPart(ctx, t.m.owner(), t.m.id(), page.After, 0, 1)
		rtt := time.Since(start)
		if err != nil || !ok {
			tr.old = errors.Is(err, relay.ErrUnknownFrame)
			return
		}
		need := 3*max(page.Read, pageRecords) - int(first.Total)
		found, err := scanBacklog(ctx, lane, t, first.Seq, max(need, relay.MaxPart))
		if err != nil || sizeOf(found) < need {
			return
		}
		parts, n, took, err := fetchTimed(ctx, lane, t, timedParts(first, found))
		if err == nil && n >= trialPart {
			tr.judged, tr.rate, tr.parts = true, float64(n)/max(took-rtt, time.Millisecond).Seconds(), parts
			if tr.perFlow = tr.rate >= trialShare*alone; tr.perFlow {
				tr.lane = lane
			}
		}
	}()
	return tr
}

// scanned is an envelope a scan found: its number, and its size (or
// what of it a part brought).
type scanned = client.Begun

// sizeOf is what the envelopes of bs come to.
func sizeOf(bs []client.Begun) int {
	n := 0
	for _, b := range bs {
		n += b.Total
	}
	return n
}

// came is what came of the envelopes of bs, each counted once (the most
// that came of it: the trial's part and the page left may bring the
// same envelope's first bytes, a reviewer's find).
func came(bs []client.Begun) int {
	most := map[uint64]int{}
	for _, b := range bs {
		most[b.Seq] = max(most[b.Seq], len(b.Data))
	}
	n := 0
	for _, m := range most {
		n += m
	}
	return n
}

// timedParts is what a trial beside a page whose first envelope is first
// times, of the envelopes found past it (in order): a full part of the
// first of them that has one (trialPart or more); else the first short
// ones, whole, until they come to a full part (relay.MaxPart: an
// envelope of the smallest bucket is a quarter of one) or all do; else
// a full part of the page's first envelope, if it has one. The lanes
// take what was timed; the page's first envelope's first bytes come
// over c already. Until late on 2026-12-06 a backlog of short messages
// had nothing to time, and stayed on one connection.
func timedParts(first relay.Part, found []scanned) []scanned {
	for _, f := range found {
		if f.Total >= trialPart {
			return []scanned{f}
		}
	}
	var short []scanned
	for _, f := range found {
		if sizeOf(short) >= relay.MaxPart {
			break
		}
		short = append(short, f)
	}
	if sizeOf(short) < trialPart && first.Total >= trialPart {
		return []scanned{{Seq: first.Seq, Ref: client.Ref(first.Ref), Total: int(first.Total)}}
	}
	return short
}

// fetchTimed asks lane for the first full part (relay.MaxPart) of each
// of es at once, and returns what came (with each envelope's number, ref
// and size: another's, in the place of one gone meanwhile), how many
// bytes, and how long from the first request to the last answer (every
// byte that came is counted: a second reviewer's find, an envelope gone
// made the rate read low).
func fetchTimed(ctx context.Context, lane *client.Client, t recvTarget, es []scanned) ([]client.Begun, int, time.Duration, error) {
	parts := make([]relay.Part, len(es))
	errs := make([]error, len(es))
	start := time.Now()
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Go(func() {
			parts[i], _, errs[i] = lane.FetchPart(ctx, t.m.owner(), t.m.id(), e.Seq-1, 0, relay.MaxPart)
		})
	}
	wg.Wait()
	took := time.Since(start)
	var out []client.Begun
	n := 0
	for _, p := range parts {
		if len(p.Data) > 0 {
			out = append(out, client.Begun{Seq: p.Seq, Ref: client.Ref(p.Ref), Total: int(p.Total), Data: p.Data})
			n += len(p.Data)
		}
	}
	return out, n, took, errors.Join(errs...)
}

// scanBacklog asks lane, scanWidth at a time, for one byte of each
// envelope waiting past after, for scanRounds rounds at most, until their
// sizes come to need or the mailbox ends. It returns those envelopes
// (number, ref and size), in order. Gaps of scanWidth numbers or more
// (envelopes acked meanwhile, fragments held past them) leave a round
// with one envelope: it sees fewer.
func scanBacklog(ctx context.Context, lane *client.Client, t recvTarget, after uint64, need int) ([]scanned, error) {
	type answer struct {
		p   relay.Part
		ok  bool
		err error
	}
	seen := map[uint64]bool{}
	var found []scanned
	for range scanRounds {
		if sizeOf(found) >= need {
			break
		}
		answers := make([]answer, scanWidth)
		var wg sync.WaitGroup
		for i := range answers {
			wg.Go(func() {
				a := &answers[i]
				if q := after + uint64(i); q >= after { // else past the last number there is
					a.p, a.ok, a.err = lane.FetchPart(ctx, t.m.owner(), t.m.id(), q, 0, 1)
				}
			})
		}
		wg.Wait()
		last, end := after, false
		for _, a := range answers {
			if a.err != nil {
				return nil, a.err
			}
			if !a.ok {
				end = true
				continue
			}
			if !seen[a.p.Seq] {
				seen[a.p.Seq] = true
				found = append(found, scanned{Seq: a.p.Seq, Ref: client.Ref(a.p.Ref), Total: int(a.p.Total)})
			}
			last = max(last, a.p.Seq)
		}
		if end || last == after {
			break
		}
		after = last
	}
	// In order even if the mailbox changed under a round (envelopes
	// acked elsewhere): a second reviewer's find.
	slices.SortFunc(found, func(a, b scanned) int { return cmp.Compare(a.Seq, b.Seq) })
	return found, nil
}

// scanWidth and scanRounds bound scanBacklog: 64 envelopes, 16
// questions out at once (a round trip each round; a question and its
// answer are a few hundred bytes). 32, 8 at once, saw too few of a
// backlog of short messages: a page found slow had often brought 50 KB
// (33 KB or more since it is found a record sooner, 2026-12-07), and the
// backlog past it must come to three times that, 37 envelopes of the
// smallest bucket (24).
const (
	scanWidth  = 16
	scanRounds = 4
)

// ended says what the trial found of a page that was not left (it ended
// first, or the drain failed with err): a line throttled as a whole (no
// trial runs there again that day: trial_line_day), or flows throttled
// one by one, remembered (with --network) for the next recv, which takes
// lanes from the start.
func (tr *pageTrial) ended(e *env, t recvTarget, f *netFacts, alone float64, err error) {
	if tr.lane != nil {
		tr.lane.Close()
	}
	switch {
	case !tr.judged:
	case tr.perFlow:
		f.throttledBy(false, int(alone))
		later := "" // nothing is remembered without --network
		if t.facts != nil {
			later = fmt.Sprintf("; later receives here use up to %d connections at once", laneLimit(e, *f))
		}
		fmt.Fprintf(e.stderr, "the connection carried %.1f KB/s, and a second one beside it %.1f KB/s: this network throttles each flow%s\n",
			alone/1000, tr.rate/1000, later)
		t.facts.update(e, func(nf *netFacts) { nf.throttledBy(false, int(alone)) })
	case err == nil:
		fmt.Fprintf(e.stderr, "the connection carried %.1f KB/s, and a second one beside it %.1f KB/s: this network seems to throttle the whole line; stayed on one connection\n",
			alone/1000, tr.rate/1000)
		f.TrialLineDay = today()
		t.facts.update(e, func(nf *netFacts) { nf.TrialLineDay = today() })
	}
}

// switchToLanes goes on with t's pass over lanes beginning on trial's
// connection, once the page coming over c alone at alone bytes a second
// was left (left, a client.PageLeft): it remembers the network throttled
// (in f, and with --network for later recvs and sends), closes c, over
// which the page it left goes on coming, and acks on the new connection
// what c's last Ack may not have (else those envelopes would come again,
// as replays). What came of the page (the envelopes that came whole, the
// first bytes of the one coming) and the trial's parts are not asked for
// again: until late on 2026-12-06 they were, half of a 64 KiB envelope
// or more at each switch.
func switchToLanes(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f *netFacts, alone float64, trial *pageTrial, left error) error {
	c.Close()
	defer trial.lane.Close()
	f.throttledBy(false, int(alone))
	have := trial.parts
	pl, _ := errors.AsType[*client.PageLeft](left)
	if pl != nil {
		have = append(have, pl.Came...)
	}
	fmt.Fprintf(e.stderr, "the connection carries %.1f KB/s, and a second one beside it %.1f KB/s: this network throttles each flow; receiving over up to %d connections at once, %.1f KB of it here already\n",
		alone/1000, trial.rate/1000, laneLimit(e, *f), float64(came(have))/1000)
	t.facts.update(e, func(nf *netFacts) { nf.throttledBy(false, int(alone)) })
	if pl != nil && len(pl.Unacked) > 0 {
		// If this fails too, they come again and are acked as replays.
		trial.lane.Ack(ctx, t.m.owner(), t.m.id(), pl.Unacked...)
	}
	_, err := drainLanes(ctx, e, t, in, trial.lane, *f, have)
	return err
}
