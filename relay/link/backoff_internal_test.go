package link

import (
	"testing"
	"time"
)

// TestBackoffUnreached: a destination no link has come up to rests up to
// unreachedBackoff times MaxBackoff between tries, one reached up to
// MaxBackoff; success starts over from MinBackoff.
func TestBackoffUnreached(t *testing.T) {
	f := NewForwarder(ForwarderConfig{MinBackoff: time.Second, MaxBackoff: time.Minute})
	fresh, known := [32]byte{1}, [32]byte{2}
	f.reachedDest(known)
	longest := func(dest [32]byte) time.Duration {
		var most time.Duration
		for range 40 {
			most = max(most, f.backoff(dest, true))
		}
		return most
	}
	if got := longest(known); got > time.Minute || got < time.Minute/2 {
		t.Errorf("a reached destination rests up to %v, want at most MaxBackoff", got)
	}
	if got := longest(fresh); got > unreachedBackoff*time.Minute || got <= time.Minute {
		t.Errorf("a destination never reached rests up to %v, want past MaxBackoff, at most %v", got, unreachedBackoff*time.Minute)
	}
	f.backoff(fresh, false)
	if got := f.backoff(fresh, true); got > time.Second {
		t.Errorf("after a success: %v, want at most MinBackoff", got)
	}
}
