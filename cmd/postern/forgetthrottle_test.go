package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/censortest"
)

// TestFlowsFast: lanes show flows not throttled one by one when two or
// more each carried 3*throttleFloor a second and as many bytes, on
// average; not on fewer bytes (a throttle's bursts could do that), nor at
// a lower rate, nor with one session, nor with no span measured.
func TestFlowsFast(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   client.LanesStats
		fast bool
	}{
		{"four fast lanes", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, true},
		{"two, just enough", client.LanesStats{Sessions: 2, Bytes: 2 * fastFlowBytes, Span: time.Second}, true},
		{"two, a byte short", client.LanesStats{Sessions: 2, Bytes: 2*fastFlowBytes - 1, Span: 10 * time.Millisecond}, false},
		{"two of 40 KiB each, fast", client.LanesStats{Sessions: 2, Bytes: 2 * 40 << 10, Span: 10 * time.Millisecond}, false},
		{"four, too few bytes each", client.LanesStats{Sessions: 4, Bytes: 3 * fastFlowBytes, Span: 10 * time.Millisecond}, false},
		{"four at 40 KiB/s each", client.LanesStats{Sessions: 4, Bytes: 4 * 80 << 10, Span: 2 * time.Second}, false},
		{"four, a little slow each", client.LanesStats{Sessions: 4, Bytes: 4 * fastFlow, Span: 1010 * time.Millisecond}, false},
		// Four flows throttled at 15 KiB/s, each with a second's burst:
		// 3 s carry 60 KiB each, 20 KiB/s each.
		{"throttled flows, bursts and all", client.LanesStats{Sessions: 4, Bytes: 4 * 60 << 10, Span: 3 * time.Second}, false},
		// At 128 kbit/s a flow, a second carries 32 KB and its burst,
		// and the first session's part in flight counts too: 36 KB/s
		// each (a reviewer's find: over twice throttleFloor).
		{"128 kbit/s flows over a second", client.LanesStats{Sessions: 4, Bytes: 4*32_000 + 16<<10, Span: time.Second}, false},
		{"one session", client.LanesStats{Sessions: 1, Bytes: 400 << 10, Span: 10 * time.Millisecond}, false},
		{"no span", client.LanesStats{Sessions: 3, Bytes: 400 << 10}, false},
	} {
		each, fast := flowsFast(tc.st)
		if fast != tc.fast {
			t.Errorf("%s: fast %v (%.0f B/s each), want %v", tc.name, fast, each, tc.fast)
		}
	}
}

// TestJudgeRecvLanesForgets: recv's lanes that were fast forget the
// network's throttle of each flow (and say so); slow ones, or too few
// bytes to judge by, keep it.
func TestJudgeRecvLanesForgets(t *testing.T) {
	fast := client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}
	slow := client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}
	few := client.LanesStats{Sessions: 4, Bytes: 64 << 10, Span: 10 * time.Millisecond}
	for _, tc := range []struct {
		name string
		st   client.LanesStats
		kept bool
		says string
	}{
		{"fast", fast, false, "this network does not throttle each flow (a stall was taken for a throttle, or it was lifted); forgotten\n"},
		{"slow", slow, true, "this network throttles each flow\n"},
		{"too few bytes", few, true, "this network throttles each flow\n"},
	} {
		home := t.TempDir()
		var stderr bytes.Buffer
		e := &env{stderr: &stderr, network: "cafe", getenv: func(k string) string {
			if k == "POSTERN_HOME" {
				return home
			}
			return ""
		}}
		fs := openFacts(e, "relay")
		known := netFacts{Throttled: true, Rate: 8000}
		fs.update(e, func(f *netFacts) { *f = known })
		judgeRecvLanes(e, recvTarget{facts: fs}, known, tc.st)
		if got := fs.get(); got.Throttled != tc.kept || (got.Rate == 8000) != tc.kept {
			t.Errorf("%s: facts %+v, want throttled kept %v", tc.name, got, tc.kept)
		}
		if !strings.HasSuffix(stderr.String(), tc.says) {
			t.Errorf("%s: said %q, want it to end %q", tc.name, stderr.String(), tc.says)
		}
	}
}

// TestFollowJudgedForgets: a follower forgets the throttle of each flow
// its trial found once its lanes are fast, with --network (where the
// facts forget it: judgeRecvLanes) or without, and keeps it after slow
// ones.
func TestFollowJudgedForgets(t *testing.T) {
	for _, tc := range []struct {
		name    string
		st      client.LanesStats
		network bool
		kept    bool
	}{
		{"fast", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, false, false},
		{"slow", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}, false, true},
		{"fast, with --network", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}, true, false},
		{"slow, with --network", client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 10 * time.Second}, true, true},
	} {
		f := &partsFollow{e: &env{}, t: recvTarget{}}
		if tc.network {
			home := t.TempDir()
			f.e = &env{network: "cafe", getenv: func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }}
			f.t.facts = openFacts(f.e, "relay")
		}
		f.ft.found = 8000
		if up, down := f.facts().sides(); !tc.network && (up || !down) {
			t.Fatalf("%s: what a follower found counts as up %v, down %v; want a recv's", tc.name, up, down)
		}
		f.judged(f.facts(), tc.st)
		if (f.ft.found == 8000) != tc.kept || !tc.network && f.facts().Throttled != tc.kept {
			t.Errorf("%s: found %d, facts %+v; want kept %v", tc.name, f.ft.found, f.facts(), tc.kept)
		}
	}
}

// TestThrottleSides: a throttle is remembered with who found it, and
// each side forgets only its own find; facts from before (throttled
// alone) count as a recv's.
func TestThrottleSides(t *testing.T) {
	var f netFacts
	f.throttledBy(true, 9000)
	if up, down := f.sides(); !f.Throttled || f.Rate != 9000 || !up || down {
		t.Fatalf("a send's find: %+v, sides %v %v", f, up, down)
	}
	f.throttledBy(false, 7000)
	if up, down := f.sides(); !up || !down || f.Rate != 7000 {
		t.Fatalf("a send's and a recv's: %+v, sides %v %v", f, up, down)
	}
	if f.forgetThrottle(false); !f.Throttled || f.Rate != 7000 || !f.Up || f.Down {
		t.Fatalf("a recv forgot its find beside a send's: %+v", f)
	}
	if f.forgetThrottle(true); f.Throttled || f.Rate != 0 || f.Up || f.Down {
		t.Fatalf("then a send forgot its own: %+v", f)
	}
	old := netFacts{Throttled: true, Rate: 8000}
	if up, down := old.sides(); up || !down {
		t.Fatalf("facts from before count as up %v, down %v; want a recv's", up, down)
	}
	if old.forgetThrottle(true); !old.Throttled || old.Rate != 8000 {
		t.Fatalf("a send forgot facts from before: %+v", old)
	}
	if old.forgetThrottle(false); old.Throttled {
		t.Fatalf("a recv kept facts from before: %+v", old)
	}
	if up, down := (netFacts{Up: true, Down: true}).sides(); up || down {
		t.Fatalf("sides of a network not throttled: %v %v", up, down)
	}
}

// TestUpFast: a send's connection shows what goes up not throttled when,
// past its first ack, it carried fastFlowBytes at fastFlow a second or
// more; not with less, nor slower, nor with lanes, nor before an ack.
func TestUpFast(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name  string
		lanes int
		first ackMark
		last  time.Duration // after the first ack
		total int
		fast  bool
	}{
		{"fast", 1, ackMark{t0, 16 << 10}, 100 * time.Millisecond, 200 << 10, true},
		{"just enough", 1, ackMark{t0, 16 << 10}, time.Second, 16<<10 + fastFlowBytes, true},
		{"a byte short", 1, ackMark{t0, 16 << 10}, 10 * time.Millisecond, 16<<10 + fastFlowBytes - 1, false},
		{"the first ack's envelope left out", 1, ackMark{t0, 64 << 10}, 10 * time.Millisecond, 96 << 10, false},
		{"a little slow", 1, ackMark{t0, 16 << 10}, 1010 * time.Millisecond, 16<<10 + fastFlow, false},
		// 15 KiB/s with a second's burst: 4 s carry 75 KiB past the
		// first ack, 18.75 KiB/s.
		{"throttled, burst and all", 1, ackMark{t0, 16 << 10}, 4 * time.Second, 91 << 10, false},
		{"lanes", 3, ackMark{t0, 16 << 10}, 100 * time.Millisecond, 400 << 10, false},
		{"no ack", 1, ackMark{}, time.Second, 0, false},
		{"all at once", 1, ackMark{t0, 16 << 10}, 0, 200 << 10, false},
	} {
		st := &connStats{lanes: tc.lanes, first: tc.first, total: tc.total, last: t0.Add(tc.last)}
		if rate, fast := upFast(st); fast != tc.fast {
			t.Errorf("%s: fast %v (%.0f B/s), want %v", tc.name, fast, rate, tc.fast)
		}
	}
}

// TestSendForgetsUp: a send whose connection was fast (upFast) forgets
// what a send found, and says so; what a recv found (or facts from
// before, which count as a recv's) it keeps, beside a send's find or
// alone. A slow connection forgets nothing.
func TestSendForgetsUp(t *testing.T) {
	t0 := time.Now()
	fast := connStats{lanes: 1, start: t0, first: ackMark{t0, 16 << 10}, last: t0.Add(200 * time.Millisecond), total: 256 << 10}
	slow := connStats{lanes: 1, start: t0, first: ackMark{t0.Add(time.Second), 16 << 10}, last: t0.Add(10 * time.Second), total: 100 << 10}
	// 20 s to the first ack, then 240 KiB in 200 ms: 13.0 KB/s over the
	// whole run, under throttleFloor, but fast past the first ack.
	lateFast := connStats{lanes: 1, start: t0, first: ackMark{t0.Add(20 * time.Second), 16 << 10}, last: t0.Add(20200 * time.Millisecond), total: 256 << 10}
	for _, tc := range []struct {
		name      string
		known     netFacts
		st        connStats
		throttled bool // after
		up, down  bool
		rate      int
		says      string
	}{
		{"a send's find", netFacts{Throttled: true, Up: true, Rate: 9000}, fast, false, false, false, 0,
			"the connection carried 1228.8 KB/s: what goes up is not throttled (a stall was taken for a throttle, or it was lifted); forgotten\n"},
		{"a send's and a recv's", netFacts{Throttled: true, Up: true, Down: true, Rate: 9000}, fast, true, false, true, 9000,
			"; forgotten for what goes up (a recv found what comes down throttled: kept)\n"},
		{"a send's, a slow first ack", netFacts{Throttled: true, Up: true, Rate: 9000}, lateFast, false, false, false, 0, "; forgotten\n"},
		{"a recv's", netFacts{Throttled: true, Down: true, Rate: 9000}, fast, true, false, true, 9000, ""},
		{"from before", netFacts{Throttled: true, Rate: 9000}, fast, true, false, true, 9000, ""},
		// 100 KiB in 10 s: the send finds it throttled again, at its rate.
		{"a send's, slow", netFacts{Throttled: true, Up: true, Rate: 9000}, slow, true, true, false, 10240, ""},
	} {
		home := t.TempDir()
		var stderr bytes.Buffer
		e := &env{stderr: &stderr, network: "cafe", getenv: func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }}
		fs := openFacts(e, "relay")
		fs.update(e, func(f *netFacts) { *f = tc.known })
		s := &sender{e: e, facts: fs, known: fs.get(), bucket: 16 << 10}
		st := tc.st
		s.noteThroughput(&st)
		got := fs.get()
		up, down := got.sides()
		if got.Throttled != tc.throttled || up != tc.up || down != tc.down || s.known.Throttled != tc.throttled {
			t.Errorf("%s: facts %+v (sides %v %v), known %+v; want throttled %v, sides %v %v", tc.name, got, up, down, s.known, tc.throttled, tc.up, tc.down)
		}
		if got.Rate != tc.rate {
			t.Errorf("%s: rate %d, want %d", tc.name, got.Rate, tc.rate)
		}
		if !strings.HasSuffix(stderr.String(), tc.says) || tc.says == "" && strings.Contains(stderr.String(), "forgotten") {
			t.Errorf("%s: said %q, want it to end %q", tc.name, stderr.String(), tc.says)
		}
	}
}

// TestSendForgetsWhatItFound: without --network, what a send's slow
// round found, a later fast round of that send forgets (nothing is
// remembered, so nothing is said forgotten).
func TestSendForgetsWhatItFound(t *testing.T) {
	t0 := time.Now()
	var stderr bytes.Buffer
	s := &sender{e: &env{stderr: &stderr}, bucket: 16 << 10}
	s.noteThroughput(&connStats{lanes: 1, start: t0, first: ackMark{t0.Add(time.Second), 16 << 10}, last: t0.Add(10 * time.Second), total: 100 << 10})
	if up, down := s.known.sides(); !up || down {
		t.Fatalf("a slow round: known %+v", s.known)
	}
	s.noteThroughput(&connStats{lanes: 1, start: t0, first: ackMark{t0, 16 << 10}, last: t0.Add(200 * time.Millisecond), total: 256 << 10})
	if s.known.Throttled || !strings.HasSuffix(stderr.String(), "(a stall was taken for a throttle, or it was lifted)\n") {
		t.Fatalf("a fast round after: known %+v, said %q", s.known, stderr.String())
	}
}

// TestRecvForgetsBothSides: recv's lanes that were fast forget the
// throttle whoever found it: a send's find of what goes up too (a
// reviewer's find: kept, a send's false find stayed for good where sends
// were short, which upFast never judges).
func TestRecvForgetsBothSides(t *testing.T) {
	fast := client.LanesStats{Sessions: 4, Bytes: 400 << 10, Span: 100 * time.Millisecond}
	for _, known := range []netFacts{
		{Throttled: true, Up: true, Rate: 9000},
		{Throttled: true, Up: true, Down: true, Rate: 9000},
		{Throttled: true, Down: true, Rate: 9000},
	} {
		home := t.TempDir()
		var stderr bytes.Buffer
		e := &env{stderr: &stderr, network: "cafe", getenv: func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }}
		fs := openFacts(e, "relay")
		fs.update(e, func(f *netFacts) { *f = known })
		judgeRecvLanes(e, recvTarget{facts: fs}, known, fast)
		if got := fs.get(); got.Throttled || got.Up || got.Down || got.Rate != 0 {
			t.Errorf("%+v: facts after fast lanes %+v", known, got)
		}
		if !strings.HasSuffix(stderr.String(), "(a stall was taken for a throttle, or it was lifted); forgotten\n") {
			t.Errorf("%+v: said %q", known, stderr.String())
		}
	}
}

// TestSendMarksOnlyOnEnough: a send's connection marks the network
// throttled only once it carried minThrottledBytes: one short message
// acked late (a handover, a slow fsync) marks nothing (a reviewer's
// find: it marked the network for a week).
func TestSendMarksOnlyOnEnough(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		total int
		marks bool
	}{{4 << 10, false}, {minThrottledBytes - 1, false}, {minThrottledBytes, true}} {
		s := &sender{e: &env{stderr: io.Discard}, bucket: 16 << 10}
		s.noteThroughput(&connStats{lanes: 1, start: t0, first: ackMark{t0.Add(4 * time.Second), tc.total}, last: t0.Add(4 * time.Second), total: tc.total})
		if s.known.Throttled != tc.marks {
			t.Errorf("%d bytes in 4 s: throttled %v, want %v", tc.total, s.known.Throttled, tc.marks)
		}
	}
}

// TestSendThrottleLifted: on a network a send found throttled, a send
// behind a real throttle of each flow keeps the find; one over a fast
// path (50 ms of round trip, no throttle) forgets it, and says so; a
// find of what comes down (facts from before count as one) it keeps.
func TestSendThrottleLifted(t *testing.T) {
	t.Parallel()
	w := newCensoredWorld(t)
	send := func(msg []byte) string {
		t.Helper()
		cmd := exec.Command(w.bin, "send", "--anonymous", "--network", "cafe", "--to", w.card)
		cmd.Env = append(os.Environ(), w.base...)
		cmd.Stdin = bytes.NewReader(msg)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("send: %v\n%s", err, stderr.String())
		}
		return stderr.String()
	}
	var stderrs strings.Builder
	home := func(k string) string { return map[string]string{"POSTERN_HOME": w.home}[k] }
	openFacts(&env{network: "cafe", stderr: io.Discard, getenv: home}, parsedOrZero(w.rp.line).RelayID()).
		update(&env{stderr: io.Discard, getenv: home}, func(f *netFacts) { f.throttledBy(true, 8000) })

	w.mb.SetRule(censortest.Throttle(12 << 10))
	stderr := send(randomMsg(100 << 10))
	stderrs.WriteString(stderr)
	if f := w.facts(t); !f.Throttled || !f.Up || strings.Contains(stderr, "not throttled") {
		t.Fatalf("behind a throttle of each flow: facts %+v:\n%s", f, stderr)
	}

	w.mb.SetRule(censortest.Latency(50 * time.Millisecond))
	stderr = send(randomMsg(400 << 10))
	stderrs.WriteString(stderr)
	t.Logf("over a fast path: %s", strings.TrimSpace(stderr))
	if f := w.facts(t); f.Throttled || f.Up || f.Rate != 0 ||
		!strings.Contains(stderr, ": what goes up is not throttled (a stall was taken for a throttle, or it was lifted); forgotten\n") {
		t.Fatalf("over a fast path: facts %+v:\n%s", f, stderr)
	}

	w.knownThrottled(t, 8000)
	stderr = send(randomMsg(400 << 10))
	stderrs.WriteString(stderr)
	if f := w.facts(t); !f.Throttled || f.Rate != 8000 || strings.Contains(stderr, "not throttled") {
		t.Fatalf("a recv's find, over a fast path: facts %+v:\n%s", f, stderr)
	}
	w.checkNoLeaks(t, "send's stderr", stderrs.String())
}
