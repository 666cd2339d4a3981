package route_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// TestDialObserve: Observe hears every attempt that ended before Dial
// returned, in order, with its class and how long it ran; the winner has
// a nil error and the attempt cancelled by its win is not reported.
func TestDialObserve(t *testing.T) {
	cases := []struct {
		name  string
		modes []string
		opts  route.Options
		want  []string // transport:class:took
	}{
		{"refused then ok", []string{"refuse", "ok"}, route.Options{Stagger: -1},
			[]string{"a-refuse:refused:0s", "b-ok:ok:0s"}},
		{"blackhole loses to the next", []string{"hang", "ok"}, route.Options{Stagger: time.Second},
			[]string{"b-ok:ok:0s"}},
		{"timeouts only", []string{"hang", "hang"}, route.Options{Stagger: -1, PerAttempt: 3 * time.Second},
			[]string{"a-hang:timeout:3s", "b-hang:timeout:3s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg, cands, _ := setup(t, tc.modes...)
				var got []string
				tc.opts.Observe = func(a route.Attempt) {
					class := "ok"
					if a.Err != nil {
						class = transport.ClassOf(a.Err).String()
					}
					got = append(got, fmt.Sprintf("%s:%s:%v", a.Transport, class, a.Took))
				}
				s, _, err := route.Dial(context.Background(), reg, cands, tc.opts, handshake)
				if err == nil {
					s.Close()
				}
				synctest.Wait()
				if !slices.Equal(got, tc.want) {
					t.Fatalf("observed %q, want %q", got, tc.want)
				}
			})
		})
	}
}

// TestSessionFailureNotForgiven: a session failure puts a recipe that had
// just worked in backoff at once, whatever the coin of a first failure
// would say; Failure may forgive it.
func TestSessionFailureNotForgiven(t *testing.T) {
	for _, class := range []transport.Class{transport.ClassStalled, transport.ClassThrottled, transport.ClassBusy} {
		t.Run(class.String(), func(t *testing.T) {
			for range 16 { // a forgiving coin would let some of these through
				mem, _ := route.OpenMemory("", 0)
				https, h3 := way("https"), way("h3")
				mem.Success("n", https)
				if err := mem.SessionFailure("n", https, class); err != nil {
					t.Fatal(err)
				}
				until, got := mem.Backoff("n", https)
				if until.IsZero() || got != class {
					t.Fatalf("after a %v session: backoff until %v, class %v", class, until, got)
				}
				if order := mem.Order("n", []route.Candidate{https, h3}); order[0].Endpoint.Transport != "h3" {
					t.Fatal("the recipe whose session failed still leads")
				}
			}
		})
	}
	mem, _ := route.OpenMemory("", 0)
	c := way("https")
	if mem.SessionFailure("n", c, transport.ClassCanceled); !mustZero(mem.Backoff("n", c)) {
		t.Fatal("a canceled session counted against the recipe")
	}
}

func way(tr string) route.Candidate {
	return route.Candidate{Relay: "R", Endpoint: transport.Endpoint{Transport: tr, Addr: "127.0.0.9:443"}}
}

func mustZero(until time.Time, _ transport.Class) bool { return until.IsZero() }
