package censortest

import (
	"sync"
	"time"
)

// MinThrottleBurst is the smallest bucket [Throttle] uses, so that one
// full-size datagram can always pass eventually.
const MinThrottleBurst = 1500

// tokenBucket meters bytes: it fills with rate tokens per second up to
// burst, and a byte costs a token. Its clock is a function so that tests
// drive it without waiting.
type tokenBucket struct {
	mu     sync.Mutex
	now    func() time.Time
	rate   float64 // tokens per second
	burst  float64 // capacity
	tokens float64 // may go negative: debt that take's callers wait off
	last   time.Time
}

func newTokenBucket(bytesPerSecond int64, now func() time.Time) *tokenBucket {
	b := &tokenBucket{now: now, last: now()}
	b.setRate(bytesPerSecond)
	b.tokens = b.burst
	return b
}

// setRate changes the rate (and with it the burst) from now on.
func (b *tokenBucket) setRate(bytesPerSecond int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if float64(bytesPerSecond) == b.rate {
		return
	}
	b.refill()
	b.rate = float64(bytesPerSecond)
	b.burst = max(b.rate, MinThrottleBurst)
	b.tokens = min(b.tokens, b.burst)
}

// size is the bucket's capacity.
func (b *tokenBucket) size() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.burst
}

// refill adds the tokens earned since last; b.mu is held.
func (b *tokenBucket) refill() {
	t := b.now()
	if d := t.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
	}
	b.last = t
}

// take spends n tokens now and returns how long the caller must wait
// before sending n bytes to stay within the rate (shaping).
func (b *tokenBucket) take(n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// allow spends n tokens if the bucket holds them (policing): false means
// the n bytes are over the rate and are to be dropped.
func (b *tokenBucket) allow(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
