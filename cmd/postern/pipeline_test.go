package main

import (
	"context"
	"testing"
	"time"
)

// TestPipelineLimits: a connection's pipeline starts at 64 KiB and four
// envelopes, grows by what the relay acks (so it doubles each round trip)
// to 1 MiB and 32 envelopes, and never past two seconds' worth at the rate
// the relay acked: a throttled flow stays at the start.
func TestPipelineLimits(t *testing.T) {
	start := time.Unix(1e9, 0)
	for _, tc := range []struct {
		name         string
		acked        int
		after        time.Duration
		wantN, wantB int
	}{
		{"new connection", 0, 0, pipelineDepth, pipelineBytes},
		{"one round trip of 100 ms acked", 64 << 10, 100 * time.Millisecond, 2 * pipelineDepth, 128 << 10},
		{"three round trips", 448 << 10, 300 * time.Millisecond, 8 * pipelineDepth, 512 << 10},
		{"past the caps", 4 << 20, time.Second, maxPipelineDepth, maxPipelineBytes},
		{"throttled to 16 KB/s", 64 << 10, 4 * time.Second, pipelineDepth, pipelineBytes},
		{"throttled to 160 KB/s", 1600 << 10, 10 * time.Second, 5 * pipelineDepth, 320 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(start)
			p.acked = tc.acked
			if n, b := p.limits(start.Add(tc.after)); n != tc.wantN || b != tc.wantB {
				t.Fatalf("limits = %d envelopes, %d bytes; want %d, %d", n, b, tc.wantN, tc.wantB)
			}
		})
	}
}

// TestPipelineAcquire: one envelope always goes out, even one over the
// byte limit; the next waits until it is released; a cancelled wait
// returns false.
func TestPipelineAcquire(t *testing.T) {
	p := newPipeline(time.Now())
	ctx := context.Background()
	if !p.acquire(ctx, 2*pipelineBytes) {
		t.Fatal("the first envelope did not go out")
	}
	got := make(chan bool, 1)
	go func() { got <- p.acquire(ctx, 1) }()
	select {
	case <-got:
		t.Fatal("a second envelope went out past the byte limit")
	case <-time.After(50 * time.Millisecond):
	}
	p.release(2*pipelineBytes, false) // not acked: the limits stay
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("acquire failed")
		}
	case <-time.After(30 * time.Second): // a deadlock guard
		t.Fatal("a release did not let the next envelope out")
	}
	for range pipelineDepth - 1 {
		if !p.acquire(ctx, 1) {
			t.Fatal("acquire failed under the limits")
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { got <- p.acquire(cctx, 1) }()
	cancel()
	if <-got {
		t.Fatal("a fifth small envelope went out past the start's four")
	}
}
