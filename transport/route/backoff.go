package route

import (
	"math/rand/v2"
	"time"

	"github.com/postern/postern/transport"
)

// backoffRule is how long a recipe that failed with one class is tried
// last: First after the first failure, doubling with every further
// consecutive failure up to Max. Jitter spreads it by ±50 %.
type backoffRule struct {
	First, Max time.Duration
	Jitter     bool
}

// invalidHold is how long a recipe that failed as ClassInvalid stays last
// while its endpoint is unchanged; a change to the endpoint lifts it at
// once. It only bounds how long the memory file keeps the entry.
const invalidHold = 30 * 24 * time.Hour

// backoffs is the table in the package documentation. Classes not in it
// (network_down, canceled) do not count against a recipe.
var backoffs = map[transport.Class]backoffRule{
	transport.ClassRefused:   {30 * time.Second, 10 * time.Minute, false},
	transport.ClassRelayDown: {30 * time.Second, 10 * time.Minute, false},
	transport.ClassBusy:      {10 * time.Second, 2 * time.Minute, true},
	transport.ClassUnknown:   {time.Minute, 30 * time.Minute, false},
	transport.ClassReset:     {2 * time.Minute, time.Hour, false},
	transport.ClassTimeout:   {2 * time.Minute, time.Hour, false},
	transport.ClassStalled:   {2 * time.Minute, time.Hour, false},
	transport.ClassThrottled: {2 * time.Minute, time.Hour, false},
	transport.ClassUDPSilent: {5 * time.Minute, time.Hour, false},
	transport.ClassTLS:       {5 * time.Minute, time.Hour, false},
	transport.ClassProtocol:  {10 * time.Minute, 6 * time.Hour, false},
	transport.ClassAuth:      {time.Hour, 24 * time.Hour, false},
	transport.ClassInvalid:   {invalidHold, invalidHold, false},
}

// counts reports whether a failure of class c is held against the recipe.
func counts(c transport.Class) bool {
	_, ok := backoffs[c]
	return ok
}

// backoff returns how long a recipe is tried last after its n-th
// consecutive failure (n ≥ 1), of class c. jitter(d) returns a value in
// [0, d].
func backoff(c transport.Class, n int, jitter func(time.Duration) time.Duration) time.Duration {
	r, ok := backoffs[c]
	if !ok {
		return 0
	}
	d := r.First
	for i := 1; i < n && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	if r.Jitter {
		d = d/2 + jitter(d)
	}
	return d
}

func randJitter(d time.Duration) time.Duration { return rand.N(d + 1) }

// Timeouts scaled by a recipe's measured handshake time (Candidate.RTT):
// an attempt may take 8 handshakes and a second more, between
// MinPerAttempt and DefaultPerAttempt; the next candidate starts after one
// and a half handshakes, between MinStagger and DefaultStagger.
const (
	MinPerAttempt = 2 * time.Second
	MinStagger    = 100 * time.Millisecond
)

// scaledPerAttempt is the per-attempt timeout for a recipe whose handshake
// takes rtt; DefaultPerAttempt when rtt is unknown (0).
func scaledPerAttempt(rtt time.Duration) time.Duration {
	if rtt <= 0 {
		return DefaultPerAttempt
	}
	return min(max(8*rtt+time.Second, MinPerAttempt), DefaultPerAttempt)
}

// scaledStagger is the head start of a recipe whose handshake takes rtt
// over the next candidate; DefaultStagger when rtt is unknown (0).
func scaledStagger(rtt time.Duration) time.Duration {
	if rtt <= 0 {
		return DefaultStagger
	}
	return min(max(rtt*3/2, MinStagger), DefaultStagger)
}
