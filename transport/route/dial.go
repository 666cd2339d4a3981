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
	i    int
	s    S
	took time.Duration // from the dial until the handshake ended or the attempt failed
	err  error
}

// timing is one candidate's budget and head start over the next.
type timing struct {
	perAttempt, stagger time.Duration
}

// Dial races cands through reg: it starts them in order (the Memory's
// order if Options has one), each a stagger after the one before or as
// soon as the one before fails, runs hs on each stream, and returns the
// first session whose handshake succeeds with its candidate, whose RTT is
// set to the time the attempt took. Every other attempt is cancelled, and
// a session that succeeds too late is closed. If every candidate fails,
// the error is an *Error; each failure is recorded in the Memory.
func Dial[S io.Closer](ctx context.Context, reg *transport.Registry, cands []Candidate, opts Options, hs Handshake[S]) (S, Candidate, error) {
	var zero S
	if len(cands) == 0 {
		return zero, Candidate{}, ErrNoCandidate
	}
	mem := opts.Memory
	var record func(Candidate, error)
	if mem != nil {
		cands = mem.Order(opts.Network, cands)
		changed := false
		defer func() {
			if changed {
				mem.save() // best effort: the memory only speeds up later dials
			}
		}()
		record = func(c Candidate, err error) {
			changed = mem.fail(opts.Network, c, transport.ClassOf(err), true) || changed
		}
	}
	plan := opts.plan(cands)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan outcome[S], len(cands))
	next, running := 0, 0
	start := func() {
		i := next
		next++
		running++
		go func() {
			s, took, err := attempt(ctx, reg, cands[i], plan[i].perAttempt, opts.EarlyData, hs)
			results <- outcome[S]{i, s, took, err}
		}()
	}
	start()
	var fails []Attempt
	timer := time.NewTimer(jitter(plan[0].stagger))
	defer timer.Stop()
	for running > 0 {
		stagger := timer.C
		if next == len(cands) || plan[next-1].stagger < 0 {
			stagger = nil
		}
		select {
		case r := <-results:
			running--
			a := Attempt{Relay: cands[r.i].Relay, Transport: cands[r.i].Endpoint.Transport, Err: r.err, Took: r.took}
			if opts.Observe != nil {
				opts.Observe(a)
			}
			if r.err == nil {
				cancel()
				go drain(results, running)
				won := cands[r.i]
				won.RTT = r.took
				return r.s, won, nil
			}
			fails = append(fails, a)
			if record != nil && ctx.Err() == nil {
				record(cands[r.i], r.err)
			}
			if next < len(cands) && ctx.Err() == nil {
				start()
				resetTimer(timer, plan[next-1].stagger)
			}
		case <-stagger:
			start()
			resetTimer(timer, plan[next-1].stagger)
		}
	}
	return zero, Candidate{}, &Error{Attempts: fails}
}

// attempt dials one candidate (asking for early data) and runs the
// handshake, within perAttempt, and returns how long that took, until
// success or failure.
func attempt[S io.Closer](ctx context.Context, reg *transport.Registry, c Candidate, perAttempt time.Duration, early []byte, hs Handshake[S]) (S, time.Duration, error) {
	var zero S
	begin := time.Now()
	actx, cancel := context.WithTimeout(ctx, perAttempt)
	defer cancel()
	dctx := actx
	if len(early) > 0 {
		dctx = transport.WithEarlyData(actx, early)
	}
	conn, err := reg.Dial(dctx, c.Endpoint)
	if err != nil {
		return zero, time.Since(begin), err
	}
	s, err := hs(actx, conn)
	if err != nil {
		if actx.Err() != nil && ctx.Err() == nil {
			err = actx.Err()
		}
		return zero, time.Since(begin), transport.Classify("hello", c.Endpoint.Transport, err)
	}
	return s, time.Since(begin), nil
}

// drain closes sessions of attempts that succeed after a winner.
func drain[S io.Closer](results <-chan outcome[S], running int) {
	for ; running > 0; running-- {
		if r := <-results; r.err == nil {
			r.s.Close()
		}
	}
}

// resetTimer restarts the stagger timer, jittered.
func resetTimer(t *time.Timer, d time.Duration) {
	if d >= 0 {
		t.Reset(jitter(d))
	}
}

// jitter spreads d by ±20 % so that clients do not start their attempts in
// lockstep.
func jitter(d time.Duration) time.Duration {
	if d < 0 {
		return d
	}
	return d*4/5 + rand.N(d*2/5+1)
}

// plan returns each candidate's timing: the Options' values where set,
// else scaled by its handshake time known to the Memory.
func (o Options) plan(cands []Candidate) []timing {
	out := make([]timing, len(cands))
	for i, c := range cands {
		var rtt time.Duration
		if o.Memory != nil && (o.PerAttempt <= 0 || o.Stagger == 0) {
			rtt = o.Memory.RTT(o.Network, c)
		}
		out[i] = timing{o.PerAttempt, o.Stagger}
		if o.PerAttempt <= 0 {
			out[i].perAttempt = scaledPerAttempt(rtt)
		}
		if o.Stagger == 0 {
			out[i].stagger = scaledStagger(rtt)
		}
	}
	return out
}
