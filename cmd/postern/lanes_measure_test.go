package main

import (
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/transport/censortest"
)

// TestLanesMeasure times 200 KB sends behind a 64 kbit/s throttle of each
// flow and of the line as a whole, and 100 KB ones behind a 16 KiB freeze
// (with a 3 s stall window): three sends in a row on one network with
// lanes, and the same three with POSTERN_LANES=1 on a fresh world, for
// the README. Only with POSTERN_LANES_MEASURE=1 (it takes minutes);
// it asserts nothing the lane tests do not.
func TestLanesMeasure(t *testing.T) {
	if os.Getenv("POSTERN_LANES_MEASURE") == "" {
		t.Skip("set POSTERN_LANES_MEASURE=1 to time lanes")
	}
	const rate = 8000 // 64 kbit/s
	for _, tc := range []struct {
		name  string
		rule  censortest.Rule
		size  int
		sends int
		env   []string
	}{
		{"flow", censortest.Throttle(rate), 200 << 10, 3, nil},
		{"line", censortest.ThrottleHost(rate), 200 << 10, 3, nil},
		// A frozen flow is no throttled one: no lanes. One send: the
		// middlebox holds frozen connections open after the client
		// has gone, and the peak counts them.
		{"freeze", censortest.FreezeAfter(16 << 10), 100 << 10, 1, []string{"POSTERN_STALL=3s"}},
	} {
		// The default, and the baseline; not POSTERN_LANES=4, which
		// would try lanes again on a line found throttled.
		for _, lanes := range []string{"default", "POSTERN_LANES=1"} {
			t.Run(tc.name+"/"+lanes, func(t *testing.T) {
				t.Parallel()
				w := newCensoredWorld(t)
				w.stalls = tc.name == "freeze"
				env := tc.env
				if lanes != "default" {
					env = append(env, lanes)
				}
				for i := range tc.sends {
					stderr, took, peak := w.sendLanes(t, tc.rule, tc.size, env...)
					t.Logf("%s %s send %d: %.2f s, %d connection(s) at once, lanes opened: %v, line judged throttled: %v", tc.name, lanes, i+1,
						took.Seconds(), peak, strings.Contains(stderr, "opening up to"), strings.Contains(stderr, "throttles the whole line"))
				}
			})
		}
	}
}

// TestRecvLanesMeasure times three recvs in a row of a 200 KB message on
// one network behind a 64 kbit/s throttle of each flow and of the line as
// a whole: the first on one connection until it finds the flow throttled
// (then over lanes), the second over lanes (which judge the line), the
// third as that judgement says; a first recv of one 40 KB message (a
// 64 KiB envelope) on a fresh network; and a first recv of 48 messages
// of 2 KB (a 4 KiB envelope each); each beside POSTERN_LANES=1
// on a fresh world, for the README. Only with POSTERN_LANES_MEASURE=1
// (it takes minutes); it asserts nothing TestRecvLanes does not.
func TestRecvLanesMeasure(t *testing.T) {
	if os.Getenv("POSTERN_LANES_MEASURE") == "" {
		t.Skip("set POSTERN_LANES_MEASURE=1 to time lanes")
	}
	const rate = 8000 // 64 kbit/s
	for _, tc := range []struct {
		name  string
		rule  censortest.Rule
		size  int
		recvs int
		count int // messages each recv
	}{
		{"flow", censortest.Throttle(rate), 200 << 10, 3, 1},
		{"line", censortest.ThrottleHost(rate), 200 << 10, 3, 1},
		{"flow-40KB", censortest.Throttle(rate), 40 << 10, 1, 1},
		{"line-40KB", censortest.ThrottleHost(rate), 40 << 10, 1, 1},
		{"flow-48x2KB", censortest.Throttle(rate), 2000, 1, 48},
		{"line-48x2KB", censortest.ThrottleHost(rate), 2000, 1, 48},
	} {
		for _, lanes := range []string{"default", "POSTERN_LANES=1"} {
			t.Run(tc.name+"/"+lanes, func(t *testing.T) {
				t.Parallel()
				w := newCensoredWorld(t)
				var env []string
				if lanes != "default" {
					env = append(env, lanes)
				}
				for i := range tc.recvs {
					var msgs [][]byte
					for range tc.count {
						msgs = append(msgs, randomMsg(tc.size))
					}
					stderr, took, peak := w.recvLanes(t, tc.rule, env, msgs...)
					t.Logf("%s %s recv %d: %.2f s, %d connection(s) at once, learnt throttled: %v, switched: %v, stayed: %v; %s", tc.name, lanes, i+1,
						took.Seconds(), peak, strings.Contains(stderr, "this network throttles it"),
						strings.Contains(stderr, "receiving over up to"), strings.Contains(stderr, "seems to throttle the whole line"), verdictLine(stderr))
				}
			})
		}
	}
}
