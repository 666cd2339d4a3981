package main

import (
	"context"
	"errors"
	"time"

	"github.com/postern/postern/relay/client"
)

// fallbackDelay is the head start the preferred way in (the home relay,
// or the entry relays on a network where only they worked) gets before
// the other joins the race. A failure of the preferred way starts the
// other at once.
const fallbackDelay = time.Second

// dialFunc opens a session one way: to the home relay, through an entry
// relay's Forward, or through a tunnel.
type dialFunc func(ctx context.Context) (*client.Client, error)

type dialResult struct {
	c     *client.Client
	other bool
	err   error
}

// raceDial runs first, then other after fallbackDelay or as soon as first
// fails, and returns the first session opened and whether it came from
// other. The loser is cancelled, and closed if it opens anyway. A nil
// other means first alone.
func raceDial(ctx context.Context, first, other dialFunc) (*client.Client, bool, error) {
	if other == nil {
		c, err := first(ctx)
		return c, false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialResult, 2)
	start := func(d dialFunc, isOther bool) {
		go func() {
			c, err := d(ctx)
			results <- dialResult{c, isOther, err}
		}()
	}
	start(first, false)
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	started, pending := false, 1
	var errs []error
	for pending > 0 {
		select {
		case <-timer.C:
		case r := <-results:
			pending--
			if r.err == nil {
				go closeLate(results, pending)
				return r.c, r.other, nil
			}
			errs = append(errs, r.err)
		}
		if !started {
			started, pending = true, pending+1
			start(other, true)
		}
	}
	return nil, false, errors.Join(errs...)
}

// closeLate closes the sessions of the n dials still under way when they
// finish (they were cancelled; one may have won anyway).
func closeLate(results <-chan dialResult, n int) {
	for range n {
		if r := <-results; r.err == nil {
			r.c.Close()
		}
	}
}
