package censortest

import (
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestTokenBucketShapes(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	const rate = 10_000
	b := newTokenBucket(rate, clk.now)
	if d := b.take(rate); d != 0 {
		t.Fatalf("a full burst waits %v", d)
	}
	if d := b.take(rate / 2); d != 500*time.Millisecond {
		t.Fatalf("half a second's worth over the burst waits %v, want 500ms", d)
	}
	clk.advance(500 * time.Millisecond)
	if d := b.take(rate / 10); d != 100*time.Millisecond {
		t.Fatalf("after paying the debt, a tenth waits %v, want 100ms", d)
	}
	clk.advance(time.Hour)
	if d := b.take(rate + 1); d != 100*time.Microsecond {
		t.Fatalf("an idle bucket holds only its burst: one byte over waits %v", d)
	}
}

// TestTokenBucketPolices offers twice the rate for ten simulated seconds
// in 100-byte datagrams and counts what is admitted: the burst plus the
// rate times the time, to the datagram.
func TestTokenBucketPolices(t *testing.T) {
	// Each rate makes a whole number of nanoseconds per datagram.
	for _, rate := range []int64{2000, 10_000, 1_000_000} {
		clk := &fakeClock{t: time.Unix(1000, 0)}
		b := newTokenBucket(rate, clk.now)
		const seconds, size = 10, 100
		step := time.Second * size / time.Duration(2*rate)
		var admitted int64
		for range 2 * rate * seconds / size {
			if b.allow(size) {
				admitted += size
			}
			clk.advance(step)
		}
		burst := max(rate, MinThrottleBurst)
		if want := burst + rate*seconds; admitted < want-2*size || admitted > want {
			t.Errorf("rate %d: admitted %d bytes in %ds, want %d (burst %d)", rate, admitted, seconds, want, burst)
		}
	}
}

func TestTokenBucketSetRate(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	b := newTokenBucket(100_000, clk.now)
	b.setRate(2000)
	if b.allow(2001) {
		t.Error("lowering the rate kept the old burst")
	}
	if !b.allow(2000) {
		t.Error("the new burst is not available")
	}
	clk.advance(time.Second)
	if !b.allow(2000) || b.allow(1) {
		t.Error("the new rate does not refill one second's worth per second")
	}
}
