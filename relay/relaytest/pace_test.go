package relaytest

import (
	"testing"
	"time"
)

// TestPacerNeverEarly: Until never returns before its time, whether the
// time is near or past, nor after Close (time.Sleep then), and a Pacer can
// be closed twice.
func TestPacerNeverEarly(t *testing.T) {
	p := NewPacer()
	defer p.Close()
	start := time.Now()
	for i := range 200 {
		due := start.Add(time.Duration(i) * 250 * time.Microsecond)
		p.Until(due)
		if now := time.Now(); now.Before(due) {
			t.Fatalf("sleep %d returned %v early", i, due.Sub(now))
		}
	}
	p.Until(time.Now().Add(-time.Hour))
	p.Close()
	due := time.Now().Add(2 * time.Millisecond)
	p.Until(due)
	if now := time.Now(); now.Before(due) {
		t.Fatalf("sleep after Close returned %v early", due.Sub(now))
	}
	p.Close()
}
