package main

import (
	"context"
	"testing"
	"time"
)

// TestPipelineLimits: a connection's pipeline starts at 64 KiB and four
// envelopes, grows by what the relay acks (each acked envelope adds one
// envelope and its bytes, so it doubles each round trip) to 4 MiB and 60
// envelopes, and never past two seconds' worth at the rate the relay
// acked: a throttled flow stays at the start's bytes.
func TestPipelineLimits(t *testing.T) {
	start := time.Unix(1e9, 0)
	for _, tc := range []struct {
		name          string
		ackedN, acked int
		after         time.Duration
		wantN, wantB  int
	}{
		{"new connection", 0, 0, 0, pipelineDepth, pipelineBytes},
		{"one 64 KiB envelope acked in 100 ms", 1, 64 << 10, 100 * time.Millisecond, pipelineDepth + 1, 128 << 10},
		{"seven acked in 300 ms", 7, 448 << 10, 300 * time.Millisecond, pipelineDepth + 7, 512 << 10},
		{"4 KiB envelopes: four acked", 4, 16 << 10, 100 * time.Millisecond, 2 * pipelineDepth, 80 << 10},
		{"past the caps", 128, 8 << 20, time.Second, maxPipelineDepth, maxPipelineBytes},
		{"throttled to 16 KB/s", 1, 64 << 10, 4 * time.Second, pipelineDepth + 1, pipelineBytes},
		{"throttled to 160 KB/s", 25, 1600 << 10, 10 * time.Second, pipelineDepth + 25, 320 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(start)
			p.ackedN, p.acked = tc.ackedN, tc.acked
			if n, b := p.limits(start.Add(tc.after)); n != tc.wantN || b != tc.wantB {
				t.Fatalf("limits = %d envelopes, %d bytes; want %d, %d", n, b, tc.wantN, tc.wantB)
			}
		})
	}
}

// TestPipelineAcquire: one envelope always goes out, even one over the
// byte limit; the next waits until it is released; a cancelled context
// gets nothing out, whether it ends during the wait or before it.
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
	wait := func(what string) bool {
		t.Helper()
		select {
		case ok := <-got:
			return ok
		case <-time.After(30 * time.Second): // a deadlock guard
			t.Fatalf("%s: acquire never returned", what)
			return false
		}
	}
	if !wait("after a release") {
		t.Fatal("acquire failed")
	}
	for range pipelineDepth - 1 {
		if !p.acquire(ctx, 1) {
			t.Fatal("acquire failed under the limits")
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { got <- p.acquire(cctx, 1) }()
	cancel()
	if wait("cancelled while waiting") {
		t.Fatal("a fifth small envelope went out past the start's four")
	}
	if p.acquire(cctx, 1) {
		t.Fatal("an envelope went out on a cancelled context")
	}
	if q := newPipeline(time.Now()); q.acquire(cctx, 1) {
		t.Fatal("an envelope went out on a cancelled context, with room for it")
	}
}
