package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
)

// drainWatched is drainWhole's pass on c alone over a network not known
// to be throttled, where lanes may be used. The page coming over c is
// watched: once it shows the flow throttled (throttledPage), a second
// connection fetches one part beside it, of an envelope past the first
// (startTrial: a backlog of one envelope stays on c). A part that comes
// at trialShare or more of what c alone carries means flows throttled one
// by one: the page is left, the network remembered throttled, and the
// rest taken over lanes beginning on the second connection
// (switchToLanes). Less means the line is throttled as a whole (its
// share went to the second connection): the page goes on over c, where
// nothing of it is lost, and the next recv's lanes judge the line
// (judgeRecvLanes). Until 2026-12-06 a recv learnt a throttle only from
// a whole pass, and its first on a network carried the whole backlog
// over one flow: 200 KB behind 64 kbit/s per flow took 32.5 s.
func drainWatched(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f *netFacts) (lanes bool, err error) {
	tctx, stop := context.WithCancel(ctx)
	var trial *pageTrial
	alone := 0.0
	watch := func(p client.PageProgress) bool {
		if trial == nil {
			var slow bool
			if alone, slow = throttledPage(p, c.DialTime()); slow {
				trial = startTrial(tctx, t, c)
			}
			return false
		}
		select {
		case <-trial.done:
			return trial.lane != nil && trial.rate >= trialShare*alone
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
		return true, switchToLanes(ctx, e, t, in, c, f, alone, trial)
	}
	if trial != nil && trial.lane != nil {
		trial.lane.Close()
		fmt.Fprintf(e.stderr, "the connection carried %.1f KB/s, and a second one beside it %.1f KB/s: this network seems to throttle the whole line; staying on one connection\n",
			alone/1000, trial.rate/1000)
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

// pageBytes is two TLS records past the first: a record carries a little
// under 16 KiB (16,375 bytes of a session's stream, as measured here),
// so two came to 32,750 bytes and missed a bound of 2*throttleFloor.
const pageBytes = 3 * throttleFloor / 2

// freshRead: two of DrainWatched's samples.
const freshRead = 500 * time.Millisecond

// trialShare is the least share of what the first connection carries
// alone that a second's part must come at for the flows to be taken for
// throttled one by one: behind a throttle of each flow it comes at about
// the same rate or faster (a fresh flow's burst); behind a line shaped as
// a whole at half or less (a fair share, or a place behind the first's
// queue).
const trialShare = 0.75

// pageTrial is a second connection's part, fetched beside a page found
// throttled (drainWatched).
type pageTrial struct {
	done chan struct{}
	// lane is the second connection, and rate what its part came at
	// (bytes a second, less about a round trip): nil, 0 if it could not
	// be dialed within dialPatience or fetch a part of trialPart bytes
	// or more past the first envelope.
	lane *client.Client
	rate float64
}

// trialPart is the least part a trial times: half a full one.
const trialPart = relay.MaxPart / 2

// startTrial dials a second connection as c's lanes would, and times
// over it a full part (relay.MaxPart) of one of the first few envelopes
// past the first waiting (the one c is bringing first) that has one; a
// backlog of one envelope gets no more than a question of one byte, as
// c finishes it sooner than lanes would begin it again (a 40 KB message
// behind 10 KiB/s per flow took 8.9 s where one connection takes 5.9).
func startTrial(ctx context.Context, t recvTarget, c *client.Client) *pageTrial {
	tr := &pageTrial{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		dctx, cancel := context.WithTimeout(ctx, dialPatience(c.DialTime()))
		lane, err := t.laneDial(c.Transport())(dctx)
		cancel()
		if err != nil {
			return
		}
		p, ok, err := lane.FetchPart(ctx, t.m.owner(), t.m.id(), 0, 0, 1)
		for range 4 {
			if err != nil || !ok {
				break
			}
			start := time.Now()
			p, ok, err = lane.FetchPart(ctx, t.m.owner(), t.m.id(), p.Seq, 0, relay.MaxPart)
			if err == nil && ok && len(p.Data) >= trialPart {
				took := max(time.Since(start)-lane.DialTime()/3, time.Millisecond)
				tr.lane, tr.rate = lane, float64(len(p.Data))/took.Seconds()
				return
			}
		}
		lane.Close()
	}()
	return tr
}

// switchToLanes goes on with t's pass over lanes beginning on trial's
// connection, once the page coming over c alone at alone bytes a second
// was left: it remembers the network throttled (in f, and with --network
// for later recvs and sends) and closes c, over which the page it left
// goes on coming. What of the page came is lost: a page comes whole in
// one answer, and nothing of it is handed over before it ends.
func switchToLanes(ctx context.Context, e *env, t recvTarget, in *client.Inbox, c *client.Client, f *netFacts, alone float64, trial *pageTrial) error {
	c.Close()
	defer trial.lane.Close()
	f.Throttled, f.Rate = true, int(alone)
	fmt.Fprintf(e.stderr, "the connection carries %.1f KB/s, and a second one beside it %.1f KB/s: this network throttles each flow; receiving over up to %d connections at once\n",
		alone/1000, trial.rate/1000, laneLimit(e, *f))
	t.facts.update(e, func(nf *netFacts) { nf.Throttled, nf.Rate = true, int(alone) })
	return drainLanes(ctx, e, t, in, trial.lane, *f)
}
