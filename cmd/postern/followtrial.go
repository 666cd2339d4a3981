package main

import (
	"context"
	"fmt"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
)

// followTrial is what a follower on a network not known to throttle each
// flow found, or is finding, of it (partsFollow.trialLeave).
type followTrial struct {
	// run is a second connection's look beside a push found slow
	// (startTrial), stop what ends it; alone is what the push came at,
	// in bytes a second.
	run   *pageTrial
	stop  context.CancelFunc
	alone float64
	// found is the rate of a flow found throttled one by one (with
	// --network it is remembered in the network's facts; without, it
	// holds for the follower's life), 0 if none was; lineDay the day a
	// trial found the line throttled as a whole (no trial runs again
	// that day), or, without --network, the lanes after a throttle of
	// each flow was found did (with --network, judgeRecvLanes writes
	// line_throttled in the facts; without, it could not, a reviewer's
	// find: a follower announced it and went on with four
	// connections), 0 if none did.
	found   int
	lineDay int64
	// wait is the least time from a trial that found no such throttle
	// (at) to the next: from minPartsWait, doubling to maxPartsWait.
	at   time.Time
	wait time.Duration
	// lane is the trial's connection, kept for the lanes after the
	// leave, and parts what it timed: the lanes do not ask for it again.
	lane  *client.Client
	parts []client.Begun
	// frags is the run of the message the inbox awaits (slowFragments).
	frags fragRun
}

// fragRun is what slowFragments times: the fragments of message id over
// session c, from the look that first saw it awaited (at), when c had read
// base bytes.
type fragRun struct {
	c    *client.Client
	id   [envelope.IDSize]byte
	at   time.Time
	base int64
}

// facts are the network's facts; without --network, what this follower
// found and could not remember: a throttle of each flow, and the line
// its lanes judged.
func (f *partsFollow) facts() netFacts {
	nf := f.t.facts.get()
	if f.t.facts != nil {
		return nf
	}
	if f.ft.found > 0 {
		nf.throttledBy(false, f.ft.found)
	}
	nf.LineThrottled, nf.LineDay = f.ft.lineDay != 0, f.ft.lineDay
	return nf
}

// judged forgets the throttle of each flow this follower found (found)
// if lanes that carried st were fast (flowsFast), as judgeRecvLanes
// forgets the network's (a reviewer's find: with --network, found was
// kept, and the follower neither tried again nor took lanes); and keeps,
// without --network, what they judged of the line, as judgeRecvLanes
// remembers it with: throttled as a whole that day, else not.
func (f *partsFollow) judged(facts netFacts, st client.LanesStats) {
	if _, fast := flowsFast(st); fast {
		f.ft.found = 0
		return
	}
	if f.t.facts != nil || f.ft.found == 0 || st.Sessions < 2 {
		return
	}
	if _, judged, line := lineVerdict(facts, st); judged && line {
		f.ft.lineDay = today()
	} else if judged {
		f.ft.lineDay = 0
	}
}

// trialDue says whether a push found slow is to be tried beside
// (trialLeave): where a trial may be (trialWorth), and the last trial
// that found no throttle of each flow was wait ago or more.
func (f *partsFollow) trialDue() bool {
	return time.Since(f.ft.at) >= f.ft.wait && f.trialWorth()
}

// trialWorth says whether a follower may try a push found slow: where
// recv would watch its page (pageWatched: lanes to dial and allowed, the
// network not known throttled, nor its line found throttled as a whole
// today, by lanes or, with --network, by any follower's or recv's trial;
// no per-connection budget known), and not found throttled, nor its line
// found so by this follower's trial today. A subscription is watched
// for it (client.FollowConfig.Watch) even within a trial's wait, which
// may end while it runs.
func (f *partsFollow) trialWorth() bool {
	if f.off || f.ft.found > 0 || f.ft.lineDay == today() {
		return false
	}
	facts := f.facts()
	return pageWatched(f.e, f.t, facts, facts.RecvBudget == 0) // where recv would watch its page
}

// trialLeave is leave on a subscription that did not begin after lanes
// (the network not known to throttle each flow), as drainWatched is a
// recv's pass there: once the envelope being pushed shows the flow
// throttled (throttledPage, from Pushing's timing: a TLS record past
// the first look at under throttleFloor: over TLS only an envelope of
// the largest bucket brings one; over h3, whose count grows a packet at
// a time, a 16 KiB envelope pushed over 2 s or more may), or the
// fragments of a message awaited do (slowFragments: since 2026-12-07,
// for messages in smaller envelopes; the look begins past the last
// envelope handed over, Pushing.Last), a second
// connection looks at what waits from it on and, if that comes to three
// times what came of it (it included; two records at least: what a run
// of fragments asks for) or more,
// times a full part of what waits past it (startTrial); the
// verdict is read on the look after the trial ends, which it asks for
// (client.FollowConfig.Look). A part that comes at trialShare or more of
// what the push came at means flows throttled one by one: the network is
// remembered so (found, and in its facts with --network), the
// subscription is watched from then on as one begun after lanes, and the
// follower leaves it for lanes if those rules say so (leave), beginning
// on the trial's connection and asking for none of what came or was
// timed again; else that connection is closed. Less means the line is
// throttled as a whole: the push goes on over the subscription, and the
// follower tries no more that day (lineDay), nor, with --network, does a
// restarted one or a recv (trial_line_day); nothing judged, too little
// to gain: the next trial waits (followTrial.wait). A slow push on a
// network found throttled meanwhile (by another target's trial, a send)
// is judged by the watched rules at once. Until 2026-12-07 a follower on
// a network not known throttled took everything over one connection,
// however large: the first follower on a network learnt nothing.
func (f *partsFollow) trialLeave(p client.Pushing) bool {
	if f.ft.run == nil {
		if f.cur == nil || f.ctx == nil {
			return false
		}
		alone, slow := throttledPage(client.PageProgress{Bytes: p.Bytes, Since: p.Since, Idle: p.Idle}, f.cur.DialTime())
		fragments := false
		if !slow {
			alone, slow = f.slowFragments(p)
			fragments = true
		}
		if !slow { // first: the rest read the network's facts
			return false
		}
		if f.lanesDue() { // a third reviewer's find
			f.watching = true
			return f.leave(p)
		}
		if !f.trialDue() {
			return false
		}
		ctx, stop := context.WithCancel(f.ctx)
		tr := startTrial(ctx, f.t, f.cur, alone, trialPage(p, fragments))
		f.ft.run, f.ft.stop, f.ft.alone = tr, stop, alone
		go func() { // the look that reads the verdict, whatever comes
			<-tr.done
			select {
			case f.look <- struct{}{}:
			default:
			}
		}()
		return false
	}
	tr := f.ft.run
	select {
	case <-tr.done:
	default:
		return false
	}
	f.ft.run = nil
	f.ft.stop()
	if !f.verdict(tr, true) {
		return false
	}
	// Left as a subscription begun after lanes would be, if it is
	// (a reviewer's find: it left whatever came, nothing perhaps);
	// else the trial's connection is not kept idle.
	f.ft.lane, f.ft.parts, f.watching = tr.lane, tr.parts, true
	if f.leave(p) {
		return true
	}
	f.dropLane()
	return false
}

// slowFragments says whether the message the inbox awaits (a fragment
// of it handed over, more to come: client.Inbox.Awaited) comes over the
// subscription slowly, and at what rate: what the session read from the
// look that first saw it awaited on, judged as throttledPage judges a
// push, while bytes keep coming (judge). A push is timed envelope by envelope, and over TLS one shows up
// in part only if it is of the largest bucket: until 2026-12-07 a
// message sealed in 16 KiB envelopes (by a sender on a network known
// throttled) never began a trial, and came over one connection however
// large. Only while three times two records or more are still to come
// (a trial asks for that much backlog, pageRecords). A sender slower
// than the line, its gaps under fragIdle, looks the same: the trial then
// finds too little waiting on the relay, and the next one waits
// (followTrial.wait).
func (f *partsFollow) slowFragments(p client.Pushing) (float64, bool) {
	id, awaited := f.in.Awaited()
	alone, slow, more := f.ft.frags.judge(f.cur, id, awaited, f.cur.Received(), f.cur.DialTime(), p, time.Now())
	if more {
		select { // the next look, a quarter second on (FollowConfig.Look)
		case f.look <- struct{}{}:
		default:
		}
	}
	return alone, slow
}

// judge is slowFragments on session c, which read received bytes in
// all (its dial took dial), at look p, at now, with message id awaited
// (awaited bytes still to come): a run begins at the first look at it,
// and is judged from then on, as long as bytes keep coming (p.Below,
// beneath the session too: a throttled flow's TLS record comes a packet
// at a time) within fragIdle of each look. more says a look is to come
// soon, to see that: only while a run goes on, so an idle follower does
// not wake. Until a reviewer's find, a pause in the middle of a message
// (a sender cut, then sending the rest at once) was judged with the
// rest: 3.3 KB/s, and a fast network was taken for one throttling each
// flow.
func (r *fragRun) judge(c *client.Client, id [envelope.IDSize]byte, awaited int, received int64, dial time.Duration, p client.Pushing, now time.Time) (alone float64, slow, more bool) {
	if awaited < 3*pageRecords || p.Below >= fragIdle {
		*r = fragRun{}
		return 0, false, false
	}
	if r.c != c || r.id != id {
		*r = fragRun{c: c, id: id, at: now, base: received}
		return 0, false, true
	}
	alone, slow = throttledPage(client.PageProgress{Bytes: int(received - r.base), Since: now.Sub(r.at), Idle: p.Idle}, dial)
	return alone, slow, true
}

// fragIdle is how long no byte may come, beneath the session too, for a
// run of fragments to go on (judge): a second, a packet at 12 kbit/s. A
// slower throttle, or one whose drops cost retransmission timeouts of a
// second or more, ends every run: its fragments start no trial (a
// reviewer's point; counting at most fragIdle of each gap would judge
// it, and was not tried).
const fragIdle = time.Second

// trialPage is what a trial beside a push found slow (p) is told of the
// page it looks past: the envelope being pushed, or, for a message's
// fragments found slow (fragments), what waits past the last envelope
// handed over (Pushing.Last: a fragment held, not acked, is still on the
// relay and would count in the backlog).
func trialPage(p client.Pushing, fragments bool) client.PageProgress {
	if fragments {
		return client.PageProgress{Read: p.Got, After: p.Last}
	}
	return client.PageProgress{Read: p.Got, After: p.Seq - 1}
}

// verdict takes in what trial tr found (done), and says whether it found
// each flow throttled: that is remembered (found, and in the network's
// facts with --network). Else the next trial waits longer, or, for a
// line found throttled, none of this follower's runs again that day
// (lineDay), nor, if live (read while its session was, not as it
// ended: cut perhaps, as recv keeps a line only from a page that did
// not fail; a reviewer's find), any there (trial_line_day in the facts
// with --network); a relay that does not know parts is not asked for
// them again (off).
func (f *partsFollow) verdict(tr *pageTrial, live bool) bool {
	if !tr.perFlow {
		if tr.judged {
			fmt.Fprintf(f.e.stderr, "the subscription carried %.1f KB/s, and a second connection beside it %.1f KB/s: this network seems to throttle the whole line; staying on one connection\n",
				f.ft.alone/1000, tr.rate/1000)
			// No trial runs there again that day, this follower's, a
			// restarted one's or a recv's (trial_line_day; until
			// 2026-12-07 a restarted follower tried again): one behind
			// a line costs a part fetched for nothing (2.7 s of 35.8
			// for 200 KB at 64 kbit/s). Not line_throttled, which
			// would keep every send and recv there to one connection
			// that day on one part's evidence (a reviewer's point;
			// lanes judge the line on 64 KiB or more).
			f.ft.lineDay = today()
			if live {
				f.t.facts.update(f.e, func(nf *netFacts) { nf.TrialLineDay = today() })
			}
		}
		f.off = f.off || tr.old
		f.ft.at, f.ft.wait = time.Now(), min(max(2*f.ft.wait, minPartsWait), maxPartsWait)
		return false
	}
	rate := int(f.ft.alone)
	f.ft.found = rate
	later := "" // nothing is remembered without --network
	if f.t.facts != nil {
		later = "; later sends and receives here know it"
	}
	fmt.Fprintf(f.e.stderr, "the subscription carried %.1f KB/s, and a second connection beside it %.1f KB/s: this network throttles each flow%s\n",
		f.ft.alone/1000, tr.rate/1000, later)
	f.t.facts.update(f.e, func(nf *netFacts) { nf.throttledBy(false, rate) })
	return true
}

// endTrial ends a trial under way as its session ends (or Follow does),
// and closes its connection; what it found by then is taken in (a line
// for this follower only), and one stopped before it found anything
// makes the next wait, as one that judged nothing does (a reviewer's
// find: each session cut during a trial began another on the same
// message).
func (f *partsFollow) endTrial() {
	tr := f.ft.run
	if tr == nil {
		return
	}
	f.ft.run = nil
	f.ft.stop()
	<-tr.done
	f.verdict(tr, false)
	if tr.lane != nil {
		tr.lane.Close()
	}
}

// takeLane returns the trial's connection kept for the lanes, if any.
func (f *partsFollow) takeLane() *client.Client {
	c := f.ft.lane
	f.ft.lane = nil
	return c
}

// dropLane closes the trial's connection kept for lanes that are not to
// be, and forgets what it timed.
func (f *partsFollow) dropLane() {
	if c := f.takeLane(); c != nil {
		c.Close()
	}
	f.ft.parts = nil
}
