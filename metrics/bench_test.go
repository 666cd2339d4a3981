package metrics

import (
	"testing"
	"time"
)

// BenchmarkReport measures the cost the relay pays per event on its hot
// paths: a labelled counter with clamping, an unlabelled counter and a
// histogram observation.
func BenchmarkReport(b *testing.B) {
	r := NewRelay("dev")
	b.Run("Handshake", func(b *testing.B) {
		for b.Loop() {
			r.Handshake("h3", "ok")
		}
	})
	b.Run("EnvelopeAccepted", func(b *testing.B) {
		for b.Loop() {
			r.Envelope("accepted", "")
		}
	})
	b.Run("EnvelopeRejected", func(b *testing.B) {
		for b.Loop() {
			r.Envelope("rejected", "capability")
		}
	})
	b.Run("SendDuration", func(b *testing.B) {
		for b.Loop() {
			r.SendDuration(3 * time.Millisecond)
		}
	})
	b.Run("Gather", func(b *testing.B) {
		for b.Loop() {
			if _, err := r.Gatherer().Gather(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
