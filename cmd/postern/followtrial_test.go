package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
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
	f := &partsFollow{e: e, t: tgt, in: in, cancel: cancel, ctx: ctx}
	f.cur = f.dialOK(t, ctx)
	t.Cleanup(f.endTrial)
	return f
}

// doneTrial is a trial that ended with what it found.
func doneTrial(tr pageTrial) *pageTrial {
	tr.done = make(chan struct{})
	close(tr.done)
	return &tr
}

// TestFollowTrialLeave: a follower on a network not known to throttle
// each flow tries a second connection beside a push only once it came
// slowly (two records past the first look at under 16 KiB/s, over 2 s or
// more, just read), and only where lanes could be used (not on a
// network known throttled, nor with POSTERN_LANES=1, nor without lanes
// to dial, nor within the wait after a trial that found the line
// throttled as a whole). A trial that found the line throttled keeps it
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
	for _, c := range []struct {
		what string
		p    client.Pushing
	}{
		{"nothing pushed", client.Pushing{}},
		{"too little read", client.Pushing{Seq: 1, Total: 64 << 10, Got: 30 << 10, Bytes: 20 << 10, Since: 3 * time.Second}},
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
		func() { f.t.facts.update(f.e, func(nf *netFacts) { nf.Throttled = false }) })
	notDue("POSTERN_LANES=1", func() { f.e.getenv = withEnv(f.e.getenv, "POSTERN_LANES", "1") },
		func() { f.e.getenv = withEnv(f.e.getenv, "POSTERN_LANES", "") })
	laneDial := f.t.laneDial
	notDue("no lanes to dial", func() { f.t.laneDial = nil }, func() { f.t.laneDial = laneDial })
	if f.leave(slow) || f.ft.run == nil {
		t.Fatalf("a slow push on a network not known throttled: no trial")
	}
	f.endTrial() // the world's mailbox is empty: it would find nothing to time

	f.ft.run, f.ft.stop, f.ft.alone = doneTrial(pageTrial{judged: true, rate: 5000}), func() {}, 10000
	if f.leave(slow) || f.ft.wait != minPartsWait || !strings.Contains(out.String(), "seems to throttle the whole line") || f.facts().Throttled || !f.trialWorth() {
		t.Fatalf("a line throttled as a whole: wait %v, facts %+v; stderr:\n%s", f.ft.wait, f.facts(), out.String())
	}
	notDue("within the wait after a trial", func() {}, func() { f.ft.at = time.Time{} })
	f.ft.run, f.ft.stop = doneTrial(pageTrial{}), func() {} // nothing judged
	if f.leave(slow) || f.ft.wait != 2*minPartsWait {
		t.Fatalf("a trial that judged nothing: wait %v, want it doubled", f.ft.wait)
	}
	f.ft.at = time.Time{}

	lane := f.dialOK(t, f.ctx)
	part := client.Begun{Seq: 2, Total: 64 << 10, Data: []byte("timed")}
	f.ft.run, f.ft.stop = doneTrial(pageTrial{judged: true, perFlow: true, rate: 12000, lane: lane, parts: []client.Begun{part}}), func() {}
	if !f.leave(slow) || f.t.facts.get() != (netFacts{Throttled: true, Rate: 10000, Day: today()}) || !f.lanesDue() || f.trialDue() {
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

	// Not used: closed at the session's end, or by a dial that takes
	// another way.
	g := w.trialFollow(t, "", &out)
	unused := g.dialOK(t, g.ctx)
	g.ft.run, g.ft.stop = doneTrial(pageTrial{judged: true, perFlow: true, lane: unused}), func() {}
	g.endTrial()
	if unused.Err() == nil {
		t.Fatal("a trial's connection left open at the session's end")
	}
	kept := g.dialOK(t, g.ctx)
	g.ft.run, g.ft.stop, g.ft.alone = doneTrial(pageTrial{judged: true, perFlow: true, lane: kept}), func() {}, 9000
	if !g.leave(slow) || !g.facts().Throttled || g.facts().Rate != 9000 || !g.lanesDue() || g.trialDue() {
		t.Fatalf("without --network: facts %+v, want each flow found throttled for the follower's life", g.facts())
	}
	g.forgetLeave()
	if kept.Err() == nil || g.ft.lane != nil {
		t.Fatal("a trial's connection left open by a dial that took another way")
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
