package relaytest

import (
	"runtime"
	"testing"
	"time"
)

// TestPacer: on Linux each sleep waits on the timerfd (none falls back to
// time.Sleep) and lasts at least its duration (a read that returned at
// once would not); Until never returns before its time; after Close the
// sleeps fall back to time.Sleep and still last; Close may be repeated.
func TestPacer(t *testing.T) {
	p := NewPacer()
	defer p.Close()
	f0 := fallbacks.Load()
	for i := range 50 {
		d := time.Duration(100+i*10) * time.Microsecond
		t0 := time.Now()
		p.t.sleep(d)
		if got := time.Since(t0); got < d {
			t.Fatalf("sleep %d of %v returned after %v", i, d, got)
		}
	}
	start := time.Now()
	for i := range 100 {
		due := start.Add(time.Duration(i) * 250 * time.Microsecond)
		p.Until(due)
		if now := time.Now(); now.Before(due) {
			t.Fatalf("Until %d returned %v early", i, due.Sub(now))
		}
	}
	p.Until(time.Now().Add(-time.Hour))
	if fb := fallbacks.Load() - f0; runtime.GOOS == "linux" && fb != 0 {
		t.Fatalf("%d sleeps fell back to time.Sleep on Linux", fb)
	}
	p.Close()
	f1 := fallbacks.Load()
	t0 := time.Now()
	p.t.sleep(2 * time.Millisecond)
	if got := time.Since(t0); got < 2*time.Millisecond {
		t.Fatalf("sleep after Close returned after %v", got)
	}
	if fallbacks.Load() == f1 {
		t.Fatal("sleep after Close did not fall back to time.Sleep")
	}
	p.Close()
}
