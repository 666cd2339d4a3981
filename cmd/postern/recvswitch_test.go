package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
)

// TestThrottledPage: a page is found throttled only with pageBytes or
// more since its first byte, over throttleWindow and twice the dial at
// least, a read just come, at under throttleFloor.
func TestThrottledPage(t *testing.T) {
	slow := client.PageProgress{Bytes: pageBytes, Since: 3 * time.Second, Idle: 100 * time.Millisecond}
	for _, tc := range []struct {
		name string
		p    client.PageProgress
		dial time.Duration
		want bool
	}{
		{"throttled", slow, 50 * time.Millisecond, true},
		// Behind 64 kbit/s a record past the first comes in about 2 s,
		// and is enough (until 2026-12-07 two were needed, 2 s more).
		{"one TLS record past the first", client.PageProgress{Bytes: 16375, Since: 2250 * time.Millisecond, Idle: 200 * time.Millisecond}, 0, true},
		{"a few h3 packets", client.PageProgress{Bytes: 6 * 1200, Since: 3 * time.Second}, 0, false},
		{"just enough bytes", client.PageProgress{Bytes: pageBytes, Since: throttleWindow, Idle: 0}, 0, true},
		{"a byte short", client.PageProgress{Bytes: pageBytes - 1, Since: 3 * time.Second}, 0, false},
		{"too soon", client.PageProgress{Bytes: pageBytes, Since: throttleWindow - time.Millisecond}, 0, false},
		{"a long path's slow start", slow, 1600 * time.Millisecond, false},
		{"a long path, long enough", slow, 1500 * time.Millisecond, true},
		{"nothing read lately (a frozen flow)", client.PageProgress{Bytes: pageBytes, Since: 3 * time.Second, Idle: freshRead}, 0, false},
		{"read just now", client.PageProgress{Bytes: pageBytes, Since: 3 * time.Second, Idle: freshRead - time.Millisecond}, 0, true},
		{"fast enough", client.PageProgress{Bytes: 2 * throttleFloor * 3, Since: 3 * time.Second}, 0, false},
		{"just under the floor", client.PageProgress{Bytes: 2*throttleFloor*3 - 1, Since: 6 * time.Second}, 0, true},
	} {
		rate, got := throttledPage(tc.p, tc.dial)
		if got != tc.want {
			t.Errorf("%s: %+v (dial %v): %v, want %v", tc.name, tc.p, tc.dial, got, tc.want)
		}
		if got && (rate <= 0 || rate >= throttleFloor) {
			t.Errorf("%s: rate %.0f", tc.name, rate)
		}
	}
}

// TestPageWatched: recv watches its page for a trial only where lanes
// may be used, the network is not known throttled, and no trial found
// the line throttled as a whole today (a follower's, or an earlier
// recv's: trial_line_day); not while a budget is checked again (watch).
func TestPageWatched(t *testing.T) {
	lanes := recvTarget{laneDial: func(string) dialFunc { return nil }}
	for _, tc := range []struct {
		name  string
		t     recvTarget
		f     netFacts
		env   string
		watch bool
		want  bool
	}{
		{"nothing known", lanes, netFacts{}, "", true, true},
		{"a budget checked again", lanes, netFacts{}, "", false, false},
		{"known throttled", lanes, netFacts{Throttled: true}, "", true, false},
		{"no lanes to dial", recvTarget{}, netFacts{}, "", true, false},
		{"POSTERN_LANES=1", lanes, netFacts{}, "1", true, false},
		{"the line throttled today, by lanes", lanes, netFacts{LineThrottled: true, LineDay: today()}, "", true, false},
		{"the line throttled today, by a trial", lanes, netFacts{TrialLineDay: today()}, "", true, false},
		{"the line throttled yesterday, by a trial", lanes, netFacts{TrialLineDay: today() - 1}, "", true, true},
	} {
		e := &env{getenv: func(k string) string { return map[string]string{"POSTERN_LANES": tc.env}[k] }}
		if got := pageWatched(e, tc.t, tc.f, tc.watch); got != tc.want {
			t.Errorf("%s: watched %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestTrialEnded: what a trial found of a page that ended before it was
// left is said, and a per-flow finding remembered; a line is said only
// of a drain that did not fail, and stops trials there that day;
// nothing of a trial that timed nothing.
func TestTrialEnded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tr      pageTrial
		err     error
		says    string
		perFlow bool
	}{
		{"per-flow", pageTrial{judged: true, perFlow: true, rate: 9000}, nil, "this network throttles each flow; later receives", true},
		{"per-flow, the drain failed", pageTrial{judged: true, perFlow: true, rate: 9000}, errors.New("cut"), "this network throttles each flow; later receives", true},
		{"line", pageTrial{judged: true, rate: 3000}, nil, "seems to throttle the whole line", false},
		{"line, the drain failed", pageTrial{judged: true, rate: 3000}, errors.New("cut"), "", false},
		{"not judged", pageTrial{}, nil, "", false},
		{"per-flow, without --network", pageTrial{judged: true, perFlow: true, rate: 9000}, nil, "this network throttles each flow\n", true},
	} {
		home := t.TempDir()
		var stderr bytes.Buffer
		network := "cafe"
		if strings.HasSuffix(tc.name, "without --network") {
			network = ""
		}
		e := &env{stderr: &stderr, network: network, getenv: func(k string) string {
			if k == "POSTERN_HOME" {
				return home
			}
			return ""
		}}
		fs := openFacts(e, "relay")
		var f netFacts
		tc.tr.ended(e, recvTarget{facts: fs}, &f, 8000, tc.err)
		if tc.says == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tc.says) {
			t.Errorf("%s: said %q, want %q", tc.name, stderr.String(), tc.says)
		}
		kept := fs.get()
		if fs == nil {
			kept = f // nothing kept: the facts of this recv only
		}
		if f.Throttled != tc.perFlow || kept.Throttled != tc.perFlow || tc.perFlow && (f.Rate != 8000 || kept.Rate != 8000) ||
			f.Down != tc.perFlow || kept.Down != tc.perFlow || f.Up || kept.Up { // a recv's find
			t.Errorf("%s: facts %+v, kept %+v", tc.name, f, kept)
		}
		// A line said stops trials there that day (trial_line_day),
		// and keeps nothing else.
		line := strings.Contains(tc.says, "whole line")
		if line != (f.TrialLineDay == today()) || line != (kept.TrialLineDay == today()) || f.LineThrottled || kept.LineThrottled {
			t.Errorf("%s: a trial's line day %d, kept %d (line throttled %v)", tc.name, f.TrialLineDay, kept.TrialLineDay, kept.LineThrottled)
		}
	}
}

// TestTrialLoneEnvelope: a trial beside a page found slow with less
// read than two TLS records (h3's count grows a packet at a time: 19 KB
// behind 64 kbit/s) reckons the backlog from two records at least, so a
// lone 64 KiB envelope is not tried, nor a part of it timed (a
// reviewer's find); one with another 64 KiB envelope past it is.
func TestTrialLoneEnvelope(t *testing.T) {
	w := newDrainWorld(t)
	w.stored(t, 40<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	tg := w.target(nil)
	tg.laneDial = func(string) dialFunc { return tg.dial }
	c, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	try := func() *pageTrial {
		tr := startTrial(ctx, tg, c, 8000, client.PageProgress{Read: 19 << 10})
		<-tr.done
		if tr.lane != nil {
			tr.lane.Close()
		}
		return tr
	}
	if tr := try(); tr.judged || len(tr.parts) > 0 {
		t.Fatalf("a lone envelope tried: %+v", tr)
	}
	w.stored(t, 40<<10)
	if tr := try(); !tr.judged || len(tr.parts) != 1 || tr.parts[0].Seq == 1 {
		t.Fatalf("two envelopes not tried, or the first one's part timed: %+v", tr)
	}
}

// TestScanBacklog: the scan finds each envelope past the one given
// once, across a gap, with its number, ref and size, in order; numbers
// past the last there is are not asked for (they would wrap to the
// mailbox's first). It stops once what it found comes to what was
// needed, at a round's end.
func TestScanBacklog(t *testing.T) {
	w := newDrainWorld(t)
	for _, size := range append([]int{100, 100, 40 << 10, 100, 40 << 10}, slices.Repeat([]int{100}, 20)...) {
		w.stored(t, size)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 25 {
		t.Fatalf("fetched %d envelopes: %v", len(ds), err)
	}
	if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, ds[3].Ref); err != nil { // the gap
		t.Fatal(err)
	}
	var want []scanned
	for i, d := range ds[1:] {
		if i+1 != 3 {
			want = append(want, scanned{Seq: d.Seq, Ref: d.Ref, Total: len(d.Envelope)})
		}
	}
	tg := w.target(nil)
	lane, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lane.Close()
	if found, err := scanBacklog(ctx, lane, tg, ds[0].Seq, 1<<30); err != nil || !sameScanned(found, want) {
		t.Fatalf("scanBacklog: %v (%v), want %v", found, err, want)
	}
	// One round (of 16 numbers, 15 envelopes across the gap) is enough
	// for a byte; two for more than it found.
	if found, err := scanBacklog(ctx, lane, tg, ds[0].Seq, 1); err != nil || !sameScanned(found, want[:scanWidth-1]) {
		t.Fatalf("scanBacklog for a byte: %v (%v), want one round's %v", found, err, want[:scanWidth-1])
	}
	if found, err := scanBacklog(ctx, lane, tg, ds[0].Seq, sizeOf(want[:scanWidth-1])+1); err != nil || !sameScanned(found, want) {
		t.Fatalf("scanBacklog for more than a round's: %v (%v), want %v", found, err, want)
	}
	if found, err := scanBacklog(ctx, lane, tg, math.MaxUint64-2, 1<<30); len(found) != 0 || err != nil {
		t.Fatalf("scanBacklog past 2^64-3: %v, %v", found, err)
	}
}

// sameScanned reports whether a and b are the same envelopes (number,
// ref, size), in the same order.
func sameScanned(a, b []scanned) bool {
	return slices.EqualFunc(a, b, func(x, y scanned) bool { return x.Seq == y.Seq && x.Ref == y.Ref && x.Total == y.Total })
}

// TestTimedParts: a trial times a full part of the first envelope past
// the page's first that has one; else short ones, in order, until they
// come to a full part (a reviewer's find: a backlog of short messages
// had nothing to time, and stayed on one connection); else the page's
// first envelope's part if it has one.
func TestTimedParts(t *testing.T) {
	env := func(seq uint64, total int) scanned {
		return scanned{Seq: seq, Ref: client.Ref{byte(seq)}, Total: total}
	}
	short, full := 4<<10, 16<<10
	for _, tc := range []struct {
		name  string
		first int
		found []scanned
		want  []uint64
	}{
		{"a full part past short ones", full, []scanned{env(2, short), env(3, full), env(4, full)}, []uint64{3}},
		{"a half part", full, []scanned{env(2, short), env(3, trialPart)}, []uint64{3}},
		{"short ones to a full part", full, []scanned{env(2, short), env(3, short), env(4, short), env(5, short), env(6, short)}, []uint64{2, 3, 4, 5}},
		{"short ones over a full part", full, []scanned{env(2, 100), env(3, short), env(4, short), env(5, short), env(6, short), env(7, short)}, []uint64{2, 3, 4, 5, 6}},
		{"short ones to half a part", 100, []scanned{env(2, short), env(3, short)}, []uint64{2, 3}},
		{"too few short ones, the first full", full, []scanned{env(2, short)}, []uint64{1}},
		{"too few short ones", 100, []scanned{env(2, short)}, []uint64{2}},
		{"none past the first", full, nil, []uint64{1}},
		{"nothing", 100, nil, nil},
	} {
		first := relay.Part{Seq: 1, Ref: [relay.RefSize]byte{1}, Total: uint32(tc.first)}
		got := timedParts(first, tc.found)
		var seqs []uint64
		for _, g := range got {
			seqs = append(seqs, g.Seq)
			if g.Ref != (client.Ref{byte(g.Seq)}) || (g.Seq == 1 && g.Total != tc.first) {
				t.Fatalf("%s: %+v", tc.name, g)
			}
		}
		if !slices.Equal(seqs, tc.want) {
			t.Fatalf("%s: timed %v, want %v", tc.name, seqs, tc.want)
		}
	}
}

// TestSwitchToLanesKeeps: a switch to lanes asks neither for what came of
// the page left nor for the trial's part again: the lanes say they had
// what came of both, past what their probes asked for, and
// every message is taken whole, in order (a reviewer's find: a test
// passed with the page's bytes dropped, the trial's part kept).
func TestSwitchToLanesKeeps(t *testing.T) {
	w := newDrainWorld(t)
	msgs := [][]byte{w.stored(t, 40<<10), w.stored(t, 40<<10)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetched %d envelopes: %v", len(ds), err)
	}
	tg := w.target(nil)
	tg.laneDial = func(string) dialFunc { return tg.dial }
	c, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lane, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, ok, err := lane.FetchPart(ctx, w.box.Owner, w.box.ID, ds[0].Seq, 0, relay.MaxPart)
	if err != nil || !ok || p.Seq != ds[1].Seq {
		t.Fatalf("the second envelope's first part: %v, %v", ok, err)
	}
	trial := &pageTrial{judged: true, perFlow: true, rate: 9000, lane: lane,
		parts: []client.Begun{{Seq: p.Seq, Ref: client.Ref(p.Ref), Total: int(p.Total), Data: p.Data}}}
	left := &client.PageLeft{Came: []client.Begun{{Seq: ds[0].Seq, Ref: ds[0].Ref, Total: len(ds[0].Envelope), Data: ds[0].Envelope[:20<<10]}}}
	var stderr bytes.Buffer
	e := &env{stderr: &stderr, getenv: func(string) string { return "" }}
	var got [][]byte
	var f netFacts
	if err := switchToLanes(ctx, e, tg, w.box.Inbox(t, &got), c, &f, 8000, trial, left); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !bytes.Equal(got[0], msgs[0]) || !bytes.Equal(got[1], msgs[1]) {
		t.Fatalf("took %d messages, want the 2 sent, in order", len(got))
	}
	// Of the first, past the first probe's 4 KiB; of the second, past
	// the 128 bytes its probe checks it by.
	want := float64(20<<10-4<<10+relay.MaxPart-128) / 1000
	if kept := keptKB(stderr.String()); math.Abs(kept-want) > 0.05 || !f.Throttled {
		t.Fatalf("kept %.1f KB, want %.1f; facts %+v:\n%s", kept, want, f, stderr.String())
	}
}

// TestCame: what came of envelopes is counted once for each, the most
// that came of it (a reviewer's find: the trial's part and the page left
// may bring the same envelope's first bytes).
func TestCame(t *testing.T) {
	bs := []client.Begun{{Seq: 1, Data: make([]byte, 100)}, {Seq: 2, Data: make([]byte, 50)}, {Seq: 1, Data: make([]byte, 300)}, {Seq: 1, Data: make([]byte, 10)}}
	if n := came(bs); n != 350 {
		t.Fatalf("came %d bytes, want 350", n)
	}
	if n := came(nil); n != 0 {
		t.Fatalf("came %d bytes of nothing", n)
	}
}
