package main

import (
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/transport/censortest"
)

// TestLanesMeasure times 200 KB sends behind a 64 kbit/s throttle of each
// flow and of the line as a whole: three sends in a row on one network
// with lanes, and the same three with POSTERN_LANES=1 on a fresh world,
// for the README. Only with POSTERN_LANES_MEASURE=1 (it takes minutes);
// it asserts nothing the lane tests do not.
func TestLanesMeasure(t *testing.T) {
	if os.Getenv("POSTERN_LANES_MEASURE") == "" {
		t.Skip("set POSTERN_LANES_MEASURE=1 to time lanes")
	}
	const rate, size = 8000, 200 << 10 // 64 kbit/s
	for _, tc := range []struct {
		name string
		rule censortest.Rule
	}{{"flow", censortest.Throttle(rate)}, {"line", censortest.ThrottleHost(rate)}} {
		// The default, and the baseline; not POSTERN_LANES=4, which
		// would try lanes again on a line found throttled.
		for _, lanes := range []string{"default", "POSTERN_LANES=1"} {
			t.Run(tc.name+"/"+lanes, func(t *testing.T) {
				t.Parallel()
				w := newCensoredWorld(t)
				var env []string
				if lanes != "default" {
					env = append(env, lanes)
				}
				for i := range 3 {
					stderr, took, peak := w.sendLanes(t, tc.rule, size, env...)
					t.Logf("%s %s send %d: %.2f s, %d connection(s) at once, line judged throttled: %v", tc.name, lanes, i+1, took.Seconds(), peak,
						strings.Contains(stderr, "throttles the whole line"))
				}
			})
		}
	}
}
