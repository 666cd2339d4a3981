// Package route is Postern's one dial path: every way a program reaches a
// relay (a client session, `postern probe`, a relay link) goes through
// Dial. It turns relay descriptors into candidates (relay × transport ×
// address), races them with staggered starts, runs the caller's
// handshake on each stream so that a candidate only wins once the relay
// has answered, and reports every failure by transport and class, never by
// address.
//
// What fallback routing adds on top (failure-class backoff, memory per
// network, tunnels through entry relays, stall detection) lives here too,
// so clients, the prober and relay links share it.
package route

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// Defaults for Options.
const (
	DefaultPerAttempt = 15 * time.Second
	DefaultStagger    = 250 * time.Millisecond
)

// ErrNoCandidate is returned when no candidate is left to try.
var ErrNoCandidate = errors.New("route: no usable endpoint")

// Candidate is one way to reach a relay.
type Candidate struct {
	// Relay names the relay in errors: a label the caller chose, such as
	// a descriptor's relay id. Never an address.
	Relay    string
	Endpoint transport.Endpoint
}

// Filter narrows the candidates taken from a descriptor.
type Filter struct {
	// Transport, if set, keeps only endpoints of that transport.
	Transport string
	// LocalAddr, if set, is the local IP every candidate dials from.
	LocalAddr string
}

// FromDescriptor lists d's endpoints as candidates in the operator's order
// of preference.
func FromDescriptor(d *descriptor.Descriptor, f Filter) []Candidate {
	var out []Candidate
	for _, ep := range d.Endpoints {
		tep := ep.TransportEndpoint()
		if f.Transport != "" && f.Transport != tep.Transport {
			continue
		}
		tep.LocalAddr = f.LocalAddr
		out = append(out, Candidate{Relay: d.RelayID(), Endpoint: tep})
	}
	return out
}

// Options tune Dial. The zero value means the defaults.
type Options struct {
	// PerAttempt bounds each attempt: the transport handshake plus the
	// caller's handshake. Default DefaultPerAttempt.
	PerAttempt time.Duration
	// Stagger is how long Dial waits for a running attempt before it
	// starts the next candidate beside it; a failed attempt starts the
	// next at once. Default DefaultStagger, jittered by ±20 %; negative
	// means one at a time.
	Stagger time.Duration
	// Memory, if set, gives the ways in that worked on Network a head
	// start. Dial does not record successes: the caller calls
	// Memory.Success once a request over the session was acknowledged.
	Memory  *Memory
	Network string
}

// Handshake runs the caller's protocol on a fresh stream; the candidate
// wins only if it succeeds. It owns conn: on failure it must close it.
type Handshake[S io.Closer] func(ctx context.Context, conn transport.Conn) (S, error)

// Attempt is one candidate's failure.
type Attempt struct {
	Relay     string
	Transport string
	Err       error
}

// Error is a failed Dial: every attempt, in the order they ended.
type Error struct {
	Attempts []Attempt
}

func (e *Error) Error() string {
	parts := make([]string, len(e.Attempts))
	for i, a := range e.Attempts {
		parts[i] = fmt.Sprintf("relay %s over %s: %v", a.Relay, a.Transport, a.Err)
	}
	return "no relay reachable: " + strings.Join(parts, "; ")
}

// Unwrap returns each attempt's error, so errors.Is finds any class.
func (e *Error) Unwrap() []error {
	out := make([]error, len(e.Attempts))
	for i, a := range e.Attempts {
		out[i] = a.Err
	}
	return out
}

// Class is the class of the last attempt to fail: the one that got
// furthest when attempts were tried in order.
func (e *Error) Class() transport.Class {
	if len(e.Attempts) == 0 {
		return transport.ClassUnknown
	}
	return transport.ClassOf(e.Attempts[len(e.Attempts)-1].Err)
}
