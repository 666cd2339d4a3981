package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

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

// TestTrialEnded: what a trial found of a page that ended before it was
// left is said, and a per-flow finding remembered; a line is said only
// of a drain that did not fail; nothing of a trial that timed nothing.
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
		if f.Throttled != tc.perFlow || kept.Throttled != tc.perFlow || tc.perFlow && (f.Rate != 8000 || kept.Rate != 8000) {
			t.Errorf("%s: facts %+v, kept %+v", tc.name, f, kept)
		}
	}
}

// TestScanBacklog: the backlog past an envelope is summed once per
// envelope across a gap (an envelope acked meanwhile, which two of the
// questions find the same envelope past), and the first envelope with a
// full part is named, not a short one before it.
func TestScanBacklog(t *testing.T) {
	w := newDrainWorld(t)
	for _, size := range []int{100, 100, 40 << 10, 100, 40 << 10, 100} {
		w.stored(t, size)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 6 {
		t.Fatalf("fetched %d envelopes: %v", len(ds), err)
	}
	if _, err := w.owner.Ack(ctx, w.box.Owner, w.box.ID, ds[3].Ref); err != nil { // the gap
		t.Fatal(err)
	}
	want, big := 0, uint64(0)
	for i, d := range ds[1:] {
		if i+1 == 3 {
			continue
		}
		want += len(d.Envelope)
		if big == 0 && len(d.Envelope) >= trialPart {
			big = d.Seq
		}
	}
	tg := w.target(nil)
	lane, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lane.Close()
	sum, gotBig, err := scanBacklog(ctx, lane, tg, ds[0].Seq, 1<<30, false)
	if err != nil || sum != want || gotBig != big || big != ds[2].Seq {
		t.Fatalf("scanBacklog: %d bytes, the first full part at %d (%v); want %d bytes, %d (the third envelope %d)", sum, gotBig, err, want, big, ds[2].Seq)
	}
	// Numbers past the last there is are not asked for (they would wrap
	// to the mailbox's first).
	if sum, big, err := scanBacklog(ctx, lane, tg, math.MaxUint64-2, 1<<30, false); sum != 0 || big != 0 || err != nil {
		t.Fatalf("scanBacklog past 2^64-3: %d bytes, %d, %v", sum, big, err)
	}
}

// TestScanBacklogFindsFullPart: with enough bytes found in short
// envelopes, the scan goes on until one with a full part, to time (a
// reviewer's find: it stopped, and the trial timed nothing), unless the
// caller has one.
func TestScanBacklogFindsFullPart(t *testing.T) {
	w := newDrainWorld(t)
	for range 11 {
		w.stored(t, 100)
	}
	w.stored(t, 40<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	ds, err := w.owner.Fetch(ctx, w.box.Owner, w.box.ID, 0)
	if err != nil || len(ds) != 12 {
		t.Fatalf("fetched %d envelopes: %v", len(ds), err)
	}
	tg := w.target(nil)
	lane, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lane.Close()
	if _, big, err := scanBacklog(ctx, lane, tg, ds[0].Seq, 1, false); big != ds[11].Seq || err != nil {
		t.Fatalf("scanBacklog: the first full part at %d (%v), want %d", big, err, ds[11].Seq)
	}
	if sum, big, err := scanBacklog(ctx, lane, tg, ds[0].Seq, 1, true); big != 0 || sum != scanWidth*len(ds[1].Envelope) || err != nil {
		t.Fatalf("scanBacklog with a full part known: %d bytes, %d (%v), want one round's", sum, big, err)
	}
}
