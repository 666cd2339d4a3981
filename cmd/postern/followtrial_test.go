package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/censortest"
)

// trialFollow is a follower of w's mailbox on a network ("cafe", with
// network; else none) not known to throttle, with lanes to dial, whose
// subscription runs on a session of its own (f.cur); its stderr is out.
func (w *drainWorld) trialFollow(t *testing.T, network string, out *bytes.Buffer) *partsFollow {
	t.Helper()
	home := t.TempDir()
	e := &env{stderr: out, network: network, getenv: func(k string) string {
		return map[string]string{"POSTERN_HOME": home}[k]
	}}
	tgt := w.target(openFacts(e, "relay"))
	tgt.laneDial = func(string) dialFunc { return tgt.dial }
	in, err := client.NewInbox(client.InboxConfig{Identity: w.box.Ident, Take: func(client.Message) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	t.Cleanup(cancel)
	f := &partsFollow{e: e, t: tgt, in: in, cancel: cancel, ctx: ctx, look: make(chan struct{}, 1)}
	f.cur = f.dialOK(t, ctx)
	t.Cleanup(f.endTrial)
	return f
}

// conn is a new session of f's target, closed at t's end.
func (f *partsFollow) conn(t *testing.T) *client.Client {
	t.Helper()
	c, err := f.t.dial(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// doneTrial is a trial that ended with what it found.
func doneTrial(tr pageTrial) *pageTrial {
	tr.done = make(chan struct{})
	close(tr.done)
	return &tr
}

// TestFollowTrialLeave: a follower on a network not known to throttle
// each flow tries a second connection beside a push only once it came
// slowly (a record past the first look at under 16 KiB/s, over 2 s or
// more, just read), and only where lanes could be used (not on a
// network known throttled, nor with POSTERN_LANES=1, nor without lanes
// to dial, nor with a per-connection budget known, nor within the wait
// after a trial that found the line throttled as a whole). A trial that found the line throttled keeps it
// on its subscription and makes the next wait, doubling; one that found
// each flow throttled remembers it (in the network's facts, or for the
// follower's life without --network) and leaves: the lanes begin on the
// trial's connection (no dial of their own) and are given what it timed
// and what came of the push. A trial's connection not used is closed
// when the session ends, or when a dial takes another way.
func TestFollowTrialLeave(t *testing.T) {
	w := newDrainWorld(t)
	var out bytes.Buffer
	f := w.trialFollow(t, "cafe", &out)
	slow := client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 40 << 10, Since: 3 * time.Second}
	// The next envelope, its first record come: 48 KiB still to come.
	next := client.Pushing{Seq: 2, Total: 64 << 10, Got: 16 << 10}
	for _, c := range []struct {
		what string
		p    client.Pushing
	}{
		{"nothing pushed", client.Pushing{}},
		{"too little read", client.Pushing{Seq: 1, Total: 64 << 10, Got: 24 << 10, Bytes: pageBytes - 1, Since: 3 * time.Second}},
		{"too short a time", client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 30 << 10, Since: time.Second}},
		{"fast", client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 60 << 10, Since: 3 * time.Second}},
		{"not just read", client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 40 << 10, Since: 3 * time.Second, Idle: time.Second}},
	} {
		if f.leave(c.p) || f.ft.run != nil {
			t.Fatalf("%s: left, or tried (%v)", c.what, f.ft.run != nil)
		}
	}
	notDue := func(what string, change func(), undo func()) {
		t.Helper()
		change()
		if f.trialDue() || f.leave(slow) || f.ft.run != nil {
			t.Fatalf("%s: a trial due", what)
		}
		undo()
	}
	notDue("a network known throttled", func() { f.t.facts.update(f.e, func(nf *netFacts) { nf.Throttled = true }) },
		func() { // (the subscription is watched then: TestFollowTrialWatchedRules)
			f.t.facts.update(f.e, func(nf *netFacts) { nf.Throttled = false })
			f.watching = false
		})
	notDue("POSTERN_LANES=1", func() { f.e.getenv = withEnv(f.e.getenv, "POSTERN_LANES", "1") },
		func() { f.e.getenv = withEnv(f.e.getenv, "POSTERN_LANES", "") })
	laneDial := f.t.laneDial
	notDue("no lanes to dial", func() { f.t.laneDial = nil }, func() { f.t.laneDial = laneDial })
	notDue("a per-connection budget known", func() {
		f.t.facts.update(f.e, func(nf *netFacts) { nf.RecvBudget, nf.RecvBudgetDay = 12<<10, today() })
	},
		func() { f.t.facts.update(f.e, func(nf *netFacts) { nf.RecvBudget, nf.RecvBudgetDay = 0, 0 }) })
	if f.leave(slow) || f.ft.run == nil {
		t.Fatalf("a slow push on a network not known throttled: no trial")
	}
	f.endTrial() // the world's mailbox is empty: it would find nothing to time
	f.ft.at, f.ft.wait = time.Time{}, 0

	f.ft.run, f.ft.stop, f.ft.alone = doneTrial(pageTrial{judged: true, rate: 5000}), func() {}, 10000
	if f.leave(slow) || f.ft.wait != minPartsWait || !strings.Contains(out.String(), "seems to throttle the whole line") ||
		f.t.facts.get().LineThrottled || f.trialWorth() {
		t.Fatalf("a line throttled as a whole: wait %v, facts %+v, trials still worth it %v; stderr:\n%s", f.ft.wait, f.t.facts.get(), f.trialWorth(), out.String())
	}
	f.t.facts.update(f.e, func(nf *netFacts) { nf.TrialLineDay = 0 }) // (TestFollowTrialLineDay)
	f.ft.lineDay = today() - 1                                        // a later day
	notDue("within the wait after a trial", func() {}, func() { f.ft.at = time.Time{} })
	f.ft.run, f.ft.stop = doneTrial(pageTrial{}), func() {} // nothing judged
	if f.leave(slow) || f.ft.wait != 2*minPartsWait {
		t.Fatalf("a trial that judged nothing: wait %v, want it doubled", f.ft.wait)
	}
	f.ft.at = time.Time{}

	lane := f.conn(t)
	part := client.Begun{Seq: 2, Total: 64 << 10, Data: []byte("timed")}
	f.ft.run, f.ft.stop = doneTrial(pageTrial{judged: true, perFlow: true, rate: 12000, lane: lane, parts: []client.Begun{part}}), func() {}
	if !f.leave(next) || f.t.facts.get() != (netFacts{Throttled: true, Down: true, Rate: 10000, Day: today()}) || !f.lanesDue() || f.trialDue() {
		t.Fatalf("each flow throttled: no leave, or facts %+v, lanes due %v", f.t.facts.get(), f.lanesDue())
	}
	came := client.Begun{Seq: 1, Total: 64 << 10, Data: []byte("came")}
	f.left(&client.PageLeft{Came: []client.Begun{came}})
	if len(f.have) != 2 || f.have[0].Seq != 2 || f.have[1].Seq != 1 {
		t.Fatalf("the lanes are given %+v, want the trial's part and what came of the push", f.have)
	}
	dials := w.dials.Load()
	if c := f.dialOK(t, f.ctx); c != lane || w.dials.Load() != dials || !f.watching {
		t.Fatalf("the lanes did not begin on the trial's connection (%d dials of their own), or the next subscription is not watched", w.dials.Load()-dials)
	}

}

// TestFollowTrialLineDay: a line found throttled as a whole by a trial
// whose verdict is read while its session is live stops trials there for
// the day: this follower's, and with --network a restarted one's
// (trial_line_day; a recv's: TestPageWatched), not on a later day. One
// taken in as its session ends, cut perhaps, stops this follower's only
// (a reviewer's find; recv keeps a line only from a page that did not
// fail).
func TestFollowTrialLineDay(t *testing.T) {
	w := newDrainWorld(t)
	var out bytes.Buffer
	slow := client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 40 << 10, Since: 3 * time.Second}
	f := w.trialFollow(t, "cafe", &out)
	restarted := &partsFollow{e: f.e, t: f.t}
	line := pageTrial{judged: true, rate: 5000}
	f.ft.run, f.ft.stop, f.ft.alone = doneTrial(line), func() {}, 10000
	f.endTrial()
	if f.trialWorth() || f.t.facts.get().TrialLineDay != 0 || !restarted.trialWorth() {
		t.Fatalf("a line verdict taken in as its session ended: this follower's trials worth it %v, facts %+v", f.trialWorth(), f.t.facts.get())
	}
	f.ft.run, f.ft.stop = doneTrial(line), func() {}
	if f.leave(slow) || f.t.facts.get().TrialLineDay != today() || restarted.trialWorth() {
		t.Fatalf("a line verdict read live: facts %+v, a restarted follower's trials still worth it", f.t.facts.get())
	}
	f.t.facts.update(f.e, func(nf *netFacts) { nf.TrialLineDay = today() - 1 })
	if !restarted.trialWorth() {
		t.Fatal("a later day: a restarted follower's trials not worth it")
	}
}

// TestFollowTrialEnds: a trial's end asks Follow for a look
// (client.FollowConfig.Look), which reads its verdict whatever comes
// then. A trial still running as its session ends is stopped, and the
// next waits; what one found by then is taken in, and its connection
// closed, as is one kept for lanes that a dial then does not take. A
// relay from before parts is not tried again. Without --network, a
// throttle of each flow found holds for the follower's life; a line
// throttled as a whole stops its trials for the day, with or without.
func TestFollowTrialEnds(t *testing.T) {
	w := newDrainWorld(t)
	var out bytes.Buffer
	slow := client.Pushing{Seq: 1, Total: 64 << 10, Got: 48 << 10, Bytes: 40 << 10, Since: 3 * time.Second}
	// The next envelope, its first record come: 48 KiB still to come.
	next := client.Pushing{Seq: 2, Total: 64 << 10, Got: 16 << 10}
	g := w.trialFollow(t, "", &out)
	lookAsked := func(what string) {
		t.Helper()
		select {
		case <-g.look:
		case <-g.ctx.Done(): // a deadlock guard
			t.Fatalf("%s: the trial's end asked for no look", what)
		}
	}
	if g.leave(slow) || g.ft.run == nil {
		t.Fatal("no trial")
	}
	lookAsked("an empty mailbox")
	if g.leave(client.Pushing{}) || g.ft.run != nil || g.ft.wait != minPartsWait || g.off {
		t.Fatalf("a trial that found nothing to time: wait %v, off %v", g.ft.wait, g.off)
	}

	running := &pageTrial{done: make(chan struct{})}
	g.ft.run, g.ft.stop = running, func() { close(running.done) }
	g.endTrial()
	if g.ft.run != nil || g.ft.wait != 2*minPartsWait {
		t.Fatalf("a trial stopped as its session ended: wait %v, want it doubled", g.ft.wait)
	}
	unused := g.conn(t)
	g.ft.run, g.ft.stop, g.ft.alone = doneTrial(pageTrial{judged: true, perFlow: true, lane: unused}), func() {}, 9000
	g.endTrial()
	g.ft.at = time.Time{} // past the wait: what is found stops trials
	if unused.Err() == nil || !g.facts().Throttled || g.facts().Rate != 9000 || !g.lanesDue() || g.trialDue() {
		t.Fatalf("a trial that found each flow throttled as its session ended: connection open %v, facts %+v", unused.Err() == nil, g.facts())
	}
	idle := g.conn(t)
	g.ft.run, g.ft.stop = doneTrial(pageTrial{judged: true, perFlow: true, lane: idle}), func() {}
	if g.leave(client.Pushing{}) || idle.Err() == nil || g.ft.lane != nil {
		t.Fatal("each flow found throttled, read with nothing coming: left, or its connection kept open")
	}
	g.watching = false // as a new subscription on a network not known throttled
	kept := g.conn(t)  // f.dial would take lanes now
	g.ft.run, g.ft.stop = doneTrial(pageTrial{judged: true, perFlow: true, lane: kept}), func() {}
	if l := g.leave(next); !l || g.ft.lane != kept {
		t.Fatalf("each flow found throttled: leave %v, its connection kept %v", l, g.ft.lane == kept)
	}
	g.forgetLeave()
	if kept.Err() == nil || g.ft.lane != nil {
		t.Fatal("a trial's connection left open by a dial that took another way")
	}
	// Without --network, what the lanes judge of the line holds too:
	// 100 KB in 10 s over four connections, where one alone carried
	// 9 KB/s, is a line throttled as a whole; 400 KB is not.
	g.judged(g.facts(), client.LanesStats{Sessions: 4, Bytes: 100 << 10, Span: 10 * time.Second})
	if g.lanesDue() || laneLimit(g.e, g.facts()) != 1 {
		t.Fatalf("a line found throttled as a whole without --network: lanes still due (%d)", laneLimit(g.e, g.facts()))
	}
	g.judged(g.facts(), client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second})
	if !g.lanesDue() {
		t.Fatal("each flow found throttled again without --network: lanes not due")
	}

	k := w.trialFollow(t, "", &out) // a line found without --network
	k.ft.run, k.ft.stop, k.ft.alone = doneTrial(pageTrial{judged: true, rate: 4000}), func() {}, 9000
	if k.leave(slow) || k.trialWorth() {
		t.Fatalf("a line throttled as a whole, found without --network: facts %+v, trials still worth it %v", k.facts(), k.trialWorth())
	}

	w.old = true // a relay from before parts
	h := w.trialFollow(t, "cafe", &out)
	h.ft.found = 0
	if h.leave(slow) || h.ft.run == nil {
		t.Fatal("no trial beside an old relay")
	}
	select {
	case <-h.look:
	case <-h.ctx.Done(): // a deadlock guard
		t.Fatal("the trial's end asked for no look")
	}
	if h.leave(client.Pushing{}) || !h.off || h.trialWorth() {
		t.Fatalf("a relay from before parts: off %v", h.off)
	}
}

// TestFollowTrialWatchedRules: once a follower's trial found each flow
// throttled, its subscription is judged by the rules of one begun after
// lanes, against what the inbox awaited as it began (taken at every
// dial, not only by lanes): a first fragment held from before, of a
// message that claimed more and never got it, makes no leave (a third
// reviewer's find: with nothing taken, any message awaited counted as
// coming). A slow push on a network found throttled meanwhile (by a
// send, another target) is judged by those rules at once.
func TestFollowTrialWatchedRules(t *testing.T) {
	w := newDrainWorld(t)
	var out bytes.Buffer
	f := w.trialFollow(t, "cafe", &out)
	first := w.sealedFragments(t, 200<<10, envelope.Bucket16K)[0]
	if _, err := f.in.Handle(client.Delivery{Ref: client.Ref{9}, Seq: 9, Envelope: first}); err != nil {
		t.Fatal(err)
	}
	if _, awaited := f.in.Awaited(); awaited < leaveBytes {
		t.Fatalf("the inbox awaits %d bytes", awaited)
	}
	c, err := f.followConfig().Dial(f.ctx) // a new session, no lanes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	lane := f.conn(t)
	f.ft.run, f.ft.stop, f.ft.alone = doneTrial(pageTrial{judged: true, perFlow: true, lane: lane}), func() {}, 9000
	if f.leave(client.Pushing{}) || lane.Err() == nil || !f.watching {
		t.Fatalf("each flow found throttled, nothing coming but a message awaited since before: left, or its connection kept open; stderr:\n%s", out.String())
	}

	g := w.trialFollow(t, "cafe", &out)
	g.t.facts.update(g.e, func(nf *netFacts) { nf.Throttled, nf.Rate = true, 9000 })
	early := client.Pushing{Seq: 20, Total: 64 << 10, Got: 16 << 10, Bytes: 40 << 10, Since: 3 * time.Second}
	if !g.leave(early) || !g.watching || g.ft.run != nil {
		t.Fatal("a slow push with 48 KiB to come, on a network found throttled meanwhile: no leave, or a trial")
	}
}

// withEnv is getenv with k set to v ("": unset).
func withEnv(getenv func(string) string, k, v string) func(string) string {
	return func(key string) string {
		if key == k {
			return v
		}
		return getenv(key)
	}
}

// TestFragRunJudge: the fragments of a message awaited are judged slow
// as a push is (throttledPage), over what the session read from the
// first look that saw it awaited: not at that look, nor with less than
// three times two records still to come, nor when another message is
// awaited or another session carries it (each begins a run again), nor
// fast, nor idle, nor within twice the dial; and a run ends where no
// byte came for fragIdle, beneath the session too (a reviewer's find: a
// pause in the middle of a message, then the rest at once, read 3.3 KB/s
// and made a fast network throttled). A look is asked for while a run
// goes on, not after it ended.
func TestFragRunJudge(t *testing.T) {
	c1, c2 := &client.Client{}, &client.Client{}
	msg, other := [envelope.IDSize]byte{1}, [envelope.IDSize]byte{2}
	t0 := time.Now()
	const big = 150 << 10
	type look struct {
		c          *client.Client
		id         [envelope.IDSize]byte
		awaited    int
		received   int64
		dial       time.Duration
		idle       time.Duration // Pushing.Idle
		below      time.Duration // Pushing.Below
		after      time.Duration
		slow, more bool
	}
	start := look{c1, msg, big, 100_000, 0, 0, 0, 0, false, true}
	at := func(received int64, after time.Duration) look {
		return look{c1, msg, big, received, 0, 0, 0, after, false, true}
	}
	with := func(l look, change func(*look)) look { change(&l); return l }
	slow := with(at(120_000, 2500*time.Millisecond), func(l *look) { l.slow = true })
	for _, tc := range []struct {
		name  string
		looks []look
	}{
		{"slow", []look{start, slow}},
		{"fast", []look{start, at(160_000, 2500*time.Millisecond)}},
		{"just enough to come", []look{with(start, func(l *look) { l.awaited = 3 * pageRecords }), with(slow, func(l *look) { l.awaited = 3 * pageRecords })}},
		{"too little to come", []look{start, with(slow, func(l *look) { l.awaited, l.slow, l.more = 3*pageRecords-1, false, false })}},
		{"too little to come, then enough", []look{with(start, func(l *look) { l.awaited, l.more = 3*pageRecords-1, false }), with(slow, func(l *look) { l.slow = false })}},
		{"another message", []look{start, with(slow, func(l *look) { l.id, l.slow = other, false })}},
		{"another session", []look{start, with(slow, func(l *look) { l.c, l.slow = c2, false })}},
		{"read a while ago", []look{start, with(slow, func(l *look) { l.idle, l.below, l.slow = freshRead, 10*time.Millisecond, false })}},
		{"within twice the dial", []look{start, with(slow, func(l *look) { l.dial, l.slow = 1500*time.Millisecond, false })}},
		{"a run over three looks", []look{start, at(110_000, time.Second), slow}},
		{"nothing came for fragIdle", []look{start, with(at(100_000, 1100*time.Millisecond), func(l *look) { l.idle, l.below, l.more = 1100*time.Millisecond, fragIdle, false }), with(slow, func(l *look) { l.slow = false })}},
		{"bytes beneath kept coming", []look{start, with(at(100_000, 1100*time.Millisecond), func(l *look) { l.idle, l.below = 1100*time.Millisecond, fragIdle-time.Millisecond }), slow}},
		{"a pause, then the rest at once", []look{start, with(at(100_000, 1250*time.Millisecond), func(l *look) { l.idle, l.below, l.more = 1250*time.Millisecond, 1250*time.Millisecond, false }),
			at(116_000, 10*time.Second), at(116_000+64<<10, 10*time.Second+100*time.Millisecond), at(116_000+600<<10, 13*time.Second)}},
	} {
		var r fragRun
		for i, l := range tc.looks {
			_, slow, more := r.judge(l.c, l.id, l.awaited, l.received, l.dial, client.Pushing{Idle: l.idle, Below: l.below}, t0.Add(l.after))
			if slow != l.slow || more != l.more {
				t.Errorf("%s, look %d: slow %v, more %v; want %v, %v", tc.name, i, slow, more, l.slow, l.more)
			}
		}
	}
}

// TestTrialPage: a trial beside a push found slow looks past the
// envelope being pushed; beside a message's fragments found slow, past
// the last envelope handed over (a reviewer's find: a mutant that looked
// from the mailbox's start passed every other test).
func TestTrialPage(t *testing.T) {
	p := client.Pushing{Seq: 9, Got: 5000, Last: 7}
	if got := trialPage(p, false); got.After != 8 || got.Read != 5000 {
		t.Errorf("a push: %+v", got)
	}
	if got := trialPage(p, true); got.After != 7 || got.Read != 5000 {
		t.Errorf("fragments: %+v", got)
	}
}

// TestFollowFragmentsPause: the first 16 KiB fragment of a 250 KB
// message comes, then the flow stalls for 5 s (a handover, say) while
// the rest waits on the relay, then goes on at 64 KiB/s (four times
// throttleFloor; its bucket, full after the stall, brings 64 KiB at
// once: 13 KB/s over the stall, which must be over 4 s for 64 KiB over
// it to read under throttleFloor, as the first version read it): no
// trial takes the network for one that throttles each flow, and the
// follower does not leave. Until a reviewer's find a run
// of fragments was judged from the first fragment's look, the stall
// counted (3.3 KB/s after a pause of 10 s), and a trial's part came
// faster than that.
func TestFollowFragmentsPause(t *testing.T) {
	w := newDrainWorld(t)
	var out bytes.Buffer
	f := w.trialFollow(t, "cafe", &out)
	taken := make(chan struct{}, 1)
	in, err := client.NewInbox(client.InboxConfig{Identity: w.box.Ident, Take: func(client.Message) error { taken <- struct{}{}; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	f.in = in
	flow := censortest.ThrottleDown(64 << 10)
	w.mb.SetRule(flow)
	ctx := f.ctx // Follow's dials set f.ctx
	fc := followCounting(ctx, f)
	frags := w.sealedFragments(t, 250<<10, envelope.Bucket16K)
	if _, err := w.owner.Send(ctx, frags[0], nil); err != nil {
		t.Fatal(err)
	}
	for fc.handled.Load() == 0 {
		if ctx.Err() != nil { // the deadlock guard
			t.Fatal("the first fragment never came")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.mb.SetRule(censortest.Stall)
	for _, env := range frags[1:] {
		if _, err := w.owner.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Second) // the stall
	w.mb.SetRule(flow)
	select {
	case <-taken:
	case <-ctx.Done(): // the deadlock guard
		t.Fatal("the message never came")
	}
	fc.stop(t, 0, "a message with a stall")
	if strings.Contains(out.String(), "throttles each flow") || f.t.facts.get().Throttled {
		t.Fatalf("a stall taken for a throttle: facts %+v\n%s", f.t.facts.get(), out.String())
	}
}
