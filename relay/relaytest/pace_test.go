package relaytest

import (
	"testing"
	"time"
)

// TestPacerNeverEarly: Until never returns before its time, returns at
// once for a time already past, and a Pacer can be closed twice.
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
	past := time.Now().Add(-time.Hour)
	p.Until(past)
	p.Close()
	p.Close()
}
