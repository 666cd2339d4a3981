package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
)

// rttCases are the round trips the receive benchmarks run over: none, for
// the time the relay's and the receiver's work take on their own (the
// floor beside each), and a 20 ms path.
var rttCases = []time.Duration{0, 20 * time.Millisecond}

// drainBacklog is the backlog the receive benchmarks drain: four pages.
const drainBacklog = 1000

// BenchmarkDrainOverRTT drains a backlog of 1,000 waiting envelopes (four
// pages) over a session whose writes reach the relay rtt late. ms/drain
// is the time one drain takes; over a path, rtts/drain is that time in
// round trips, whose floor is one per page plus the Fetch that finds the
// mailbox empty (5), or the time with no delay, whichever is more.
func BenchmarkDrainOverRTT(b *testing.B) {
	for _, rtt := range rttCases {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				r, mb, _ := backlog(b, drainBacklog, nil)
				in := discardingInbox(b, mb)
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
			reportDrain(b, total, rtt)
		})
	}
}

// BenchmarkFollowOverRTT is BenchmarkDrainOverRTT for Follow: the backlog
// is pushed to a subscription, at most relay.MaxUnacked envelopes ahead
// of the receiver's Acks, and the time runs from the dial until the relay
// holds none. Over a path the floor is 6 round trips: the session's hello,
// the Subscribe, one per window of pushes after the first (3) and the
// last Ack's way to the relay.
func BenchmarkFollowOverRTT(b *testing.B) {
	for _, rtt := range rttCases {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			var total time.Duration
			var acks int64
			for b.Loop() {
				b.StopTimer()
				r, mb, acked := backlog(b, drainBacklog, nil)
				in := discardingInbox(b, mb)
				ctx, stop := context.WithCancel(context.Background())
				done := make(chan error, 1)
				b.StartTimer()
				start := time.Now()
				go func() { done <- in.Follow(ctx, lateDial(b, r, rtt), mb.Owner, mb.ID, nil) }()
				for deadline := start.Add(time.Minute); pending(b, r, mb) > 0; {
					if time.Now().After(deadline) { // a deadlock guard
						b.Fatalf("%d envelopes still pending", pending(b, r, mb))
					}
					time.Sleep(100 * time.Microsecond)
				}
				total += time.Since(start)
				b.StopTimer()
				stop()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				acks += acked.Load()
				b.StartTimer()
			}
			reportDrain(b, total, rtt)
			b.ReportMetric(float64(acks)/float64(b.N), "acks/drain")
		})
	}
}

func discardingInbox(b *testing.B, mb *relaytest.Mailbox) *client.Inbox {
	in, err := client.NewInbox(client.InboxConfig{Identity: mb.Ident, Take: func(client.Message) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	return in
}

func reportDrain(b *testing.B, total, rtt time.Duration) {
	per := total / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(time.Millisecond), "ms/drain")
	if rtt > 0 {
		b.ReportMetric(float64(per)/float64(rtt), "rtts/drain")
	}
}
