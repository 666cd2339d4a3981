package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
)

// BenchmarkDrainOverRTT drains a backlog of 1,000 waiting envelopes (four
// pages) over a session whose writes reach the relay 20 ms late, and
// reports the time per drain in round trips: the floor is one round trip
// per page plus the Fetch that finds the mailbox empty (5), the relay's
// and the inbox's work on top.
func BenchmarkDrainOverRTT(b *testing.B) {
	const n, rtt = 1000, 20 * time.Millisecond
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		r, mb, _ := backlog(b, n, nil)
		in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Take: func(client.Message) error { return nil }})
		if err != nil {
			b.Fatal(err)
		}
		c, err := lateDial(b, r, rtt)(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := in.Drain(context.Background(), c, mb.Owner, mb.ID); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		if left := pending(b, r, mb); left != 0 {
			b.Fatalf("%d envelopes left", left)
		}
		c.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total)/float64(b.N)/float64(rtt), "rtts/drain")
}
