package main

import (
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
