package route

import (
	"context"
	"io"
	"math/rand/v2"
	"time"

	"github.com/postern/postern/transport"
)

// outcome is one finished attempt.
type outcome[S io.Closer] struct {
	i   int
	s   S
	err error
}

// Dial races cands through reg: it starts them in order, each Stagger after
// the one before or as soon as the one before fails, runs hs on each
// stream, and returns the first session whose handshake succeeds with its
// candidate. Every other attempt is cancelled, and a session that succeeds
// too late is closed. If every candidate fails, the error is an *Error.
func Dial[S io.Closer](ctx context.Context, reg *transport.Registry, cands []Candidate, opts Options, hs Handshake[S]) (S, Candidate, error) {
	var zero S
	if len(cands) == 0 {
		return zero, Candidate{}, ErrNoCandidate
	}
	opts = opts.withDefaults()
	if opts.Memory != nil {
		cands = opts.Memory.Order(opts.Network, cands)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan outcome[S], len(cands))
	next, running := 0, 0
	start := func() {
		i := next
		next++
		running++
		go func() {
			s, err := attempt(ctx, reg, cands[i], opts.PerAttempt, hs)
			results <- outcome[S]{i, s, err}
		}()
	}
	start()
	var fails []Attempt
	timer := time.NewTimer(opts.Stagger)
	defer timer.Stop()
	for running > 0 {
		stagger := timer.C
		if opts.Stagger < 0 || next == len(cands) {
			stagger = nil
		}
		select {
		case r := <-results:
			running--
			if r.err == nil {
				cancel()
				go drain(results, running)
				return r.s, cands[r.i], nil
			}
			fails = append(fails, Attempt{Relay: cands[r.i].Relay, Transport: cands[r.i].Endpoint.Transport, Err: r.err})
			if opts.Memory != nil && ctx.Err() == nil {
				opts.Memory.Failure(opts.Network, cands[r.i])
			}
			if next < len(cands) && ctx.Err() == nil {
				start()
				resetTimer(timer, opts.Stagger)
			}
		case <-stagger:
			start()
			resetTimer(timer, opts.Stagger)
		}
	}
	return zero, Candidate{}, &Error{Attempts: fails}
}

// attempt dials one candidate and runs the handshake, within perAttempt.
func attempt[S io.Closer](ctx context.Context, reg *transport.Registry, c Candidate, perAttempt time.Duration, hs Handshake[S]) (S, error) {
	var zero S
	actx, cancel := context.WithTimeout(ctx, perAttempt)
	defer cancel()
	conn, err := reg.Dial(actx, c.Endpoint)
	if err != nil {
		return zero, err
	}
	s, err := hs(actx, conn)
	if err != nil {
		if actx.Err() != nil && ctx.Err() == nil {
			err = actx.Err()
		}
		return zero, transport.Classify("hello", c.Endpoint.Transport, err)
	}
	return s, nil
}

// drain closes sessions of attempts that succeed after a winner.
func drain[S io.Closer](results <-chan outcome[S], running int) {
	for ; running > 0; running-- {
		if r := <-results; r.err == nil {
			r.s.Close()
		}
	}
}

// resetTimer restarts the stagger timer, jittered by ±20 % so that
// clients do not start their attempts in lockstep.
func resetTimer(t *time.Timer, d time.Duration) {
	if d >= 0 {
		t.Reset(d*4/5 + rand.N(d*2/5+1))
	}
}

func (o Options) withDefaults() Options {
	if o.PerAttempt <= 0 {
		o.PerAttempt = DefaultPerAttempt
	}
	if o.Stagger == 0 {
		o.Stagger = DefaultStagger
	}
	return o
}
