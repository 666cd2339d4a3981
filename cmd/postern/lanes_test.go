package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport/censortest"
)

// laneRate is the throttles' rate in the lane tests: under throttleFloor,
// so that a send takes the flow for throttled.
const laneRate = 14 << 10

// sendLanes sends a fresh message of size bytes to bob on network "cafe"
// behind rule, with the default stall window and env added, checks that
// recv gets it (with the rule lifted, for speed), and returns send's
// stderr, how long it took, and the most connections the middlebox saw
// at once meanwhile.
func (w *censoredWorld) sendLanes(t *testing.T, rule censortest.Rule, size int, env ...string) (string, time.Duration, int) {
	t.Helper()
	msg := make([]byte, size)
	rand.Read(msg)
	cmd := exec.Command(w.bin, "send", "--anonymous", "--network", "cafe", "--to", w.card)
	cmd.Env = append(os.Environ(), append(w.base, env...)...)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	w.mb.SetRule(rule)
	w.mb.ResetPeak()
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("send: %v\n%s", err, stderr.String())
	}
	took, peak := time.Since(start), w.mb.Peak()
	if strings.Contains(stderr.String(), "stalled") || strings.Contains(stderr.String(), "was cut") {
		t.Fatalf("a connection stalled under a throttle alone:\n%s", stderr.String())
	}
	w.mb.SetRule(censortest.Pass)
	got := parseRecv(t, runOK(t, w.bin, w.base, nil, "recv", "--id", w.bob))
	if len(got) != 1 || !bytes.Equal(got[0].body, msg) {
		t.Fatalf("received %d messages, want the one sent", len(got))
	}
	return stderr.String(), took, peak
}

// TestLanesUnderFlowThrottle: behind a censor that throttles each flow
// under throttleFloor, a send opens more connections to the relay once
// its first has been slow for throttleWindow, and sends on all of them;
// the next send on the network (which knows the flow is throttled)
// measures what one connection carries alone before it widens, finds the
// lanes carry more, and keeps the rate for the network. With
// POSTERN_LANES=1 a send keeps to one connection: the baseline, timed in
// the same run.
func TestLanesUnderFlowThrottle(t *testing.T) {
	t.Parallel()
	w := newCensoredWorld(t)
	flow := censortest.Throttle(laneRate)
	for i := range 2 {
		stderr, took, peak := w.sendLanes(t, flow, 100<<10)
		if peak < 2 || !strings.Contains(stderr, "connections at once") {
			t.Fatalf("send %d: at most %d connection(s) at once under a per-flow throttle:\n%s", i+1, peak, stderr)
		}
		if strings.Contains(stderr, "throttles the whole line") {
			t.Fatalf("send %d: a per-flow throttle taken for the line's:\n%s", i+1, stderr)
		}
		t.Logf("send %d: %d connections at once, %v", i+1, peak, took)
	}
	if f := w.facts(t); !f.Throttled || f.Rate == 0 || f.LineThrottled {
		t.Fatalf("facts after two sends: %+v", f)
	}
	stderr, took, peak := w.sendLanes(t, flow, 100<<10, "POSTERN_LANES=1")
	if peak != 1 {
		t.Fatalf("POSTERN_LANES=1: %d connections at once:\n%s", peak, stderr)
	}
	t.Logf("POSTERN_LANES=1: %v", took)
}

// TestLanesUnderLineThrottle: behind a censor that throttles all the
// client's flows together, more connections carry no more than one. The
// first send (100 KB) finds the flow throttled; the second (200 KB: the
// added connections' handshakes take seconds on the throttled line, and
// then the lanes need a second to be judged) measures one connection
// alone before it widens, judges the lanes, and remembers the line
// throttled: the third keeps to one connection from the start.
func TestLanesUnderLineThrottle(t *testing.T) {
	t.Parallel()
	w := newCensoredWorld(t)
	line := censortest.ThrottleHost(laneRate)
	stderr, took, _ := w.sendLanes(t, line, 100<<10)
	t.Logf("send 1: %v", took)
	if f := w.facts(t); !f.Throttled {
		t.Fatalf("send 1 did not find the flow throttled (test setup): %+v\n%s", f, stderr)
	}
	stderr, took, peak := w.sendLanes(t, line, 200<<10)
	t.Logf("send 2: %d connections at once, %v", peak, took)
	if peak < 2 || !strings.Contains(stderr, "throttles the whole line") {
		t.Fatalf("send 2: %d connections at once, the line throttle not found:\n%s", peak, stderr)
	}
	if f := w.facts(t); !f.LineThrottled {
		t.Fatalf("facts after the second send: %+v", f)
	}
	stderr, took, peak = w.sendLanes(t, line, 40<<10)
	t.Logf("send 3: %d connections at once, %v", peak, took)
	if peak != 1 {
		t.Fatalf("send 3: %d connections at once on a line known throttled:\n%s", peak, stderr)
	}
}
