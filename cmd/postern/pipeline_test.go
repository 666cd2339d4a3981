package main

import (
	"bytes"
	"cmp"
	"context"
	"strings"
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
		depth         int // 0: pipelineDepth
		ackedN, acked int
		after         time.Duration
		wantN, wantB  int
	}{
		{"new connection", 0, 0, 0, 0, pipelineDepth, pipelineBytes},
		{"one 64 KiB envelope acked in 100 ms", 0, 1, 64 << 10, 100 * time.Millisecond, pipelineDepth + 1, 128 << 10},
		{"seven acked in 300 ms", 0, 7, 448 << 10, 300 * time.Millisecond, pipelineDepth + 7, 512 << 10},
		{"4 KiB envelopes: four acked", 0, 4, 16 << 10, 100 * time.Millisecond, 2 * pipelineDepth, 80 << 10},
		{"past the caps", 0, 128, 8 << 20, time.Second, maxPipelineDepth, maxPipelineBytes},
		{"throttled to 16 KB/s", 0, 1, 64 << 10, 4 * time.Second, pipelineDepth + 1, pipelineBytes},
		{"throttled to 160 KB/s", 0, 25, 1600 << 10, 10 * time.Second, pipelineDepth + 25, 320 << 10},
		{"narrowed to one", 1, 0, 0, 0, 1, pipelineBytes},
		{"narrowed to one, two acked", 1, 2, 8 << 10, 100 * time.Millisecond, 3, 72 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(start, cmp.Or(tc.depth, pipelineDepth))
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
	p := newPipeline(time.Now(), pipelineDepth)
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
	if q := newPipeline(time.Now(), pipelineDepth); q.acquire(cctx, 1) {
		t.Fatal("an envelope went out on a cancelled context, with room for it")
	}
}

// TestNarrow: a connection that carried none of the envelopes it had in
// flight halves how many the next ones start with, down to one; one that
// had a single envelope in flight teaches nothing.
func TestNarrow(t *testing.T) {
	var stderr bytes.Buffer
	s := &sender{e: &env{stderr: &stderr}}
	for _, tc := range []struct{ peak, want int }{
		{1, pipelineDepth}, {4, 2}, {4, 1}, {2, 1}, {1, 1},
	} {
		s.narrow(&connStats{peak: tc.peak})
		if got := s.startDepth(); got != tc.want {
			t.Fatalf("after a connection with %d in flight: start depth %d, want %d", tc.peak, got, tc.want)
		}
	}
	if got := strings.Count(stderr.String(), "at a time"); got != 2 {
		t.Fatalf("told the user %d times, want 2 (once per change):\n%s", got, &stderr)
	}
}
