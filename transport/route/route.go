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
//
// # Backoff by failure class
//
// With a Memory, every failed attempt puts its recipe (the way into a
// relay, see Recipe) in backoff on that network for a time its class
// calls for. A recipe in backoff is tried after every other candidate,
// never dropped, so a client with one way in still tries it. A success
// ends the backoff; consecutive failures double it, up to a cap:
//
//	class          first     cap      why
//	refused        30 s      10 min   nothing listening, or an RST to the SYN: often brief
//	relay_down     30 s      10 min   every transport refused: the relay restarts
//	busy           10 s ±50% 2 min    the relay is at a cap; jittered so clients spread out
//	unknown        1 min     30 min
//	reset          2 min     1 h      censor signatures: injected RST,
//	timeout        2 min     1 h        blackholed address,
//	stalled        2 min     1 h        frozen flow,
//	throttled      2 min     1 h        throttled flow,
//	udp_silent     5 min     1 h        UDP dropped,
//	tls            5 min     1 h        TLS alert or ServerHello dropped
//	protocol       10 min    6 h      something answers that is no relay (a front, a portal)
//	auth           1 h       24 h     the relay refused our token: a new descriptor is needed
//	invalid        until the endpoint changes (at most 30 days): retrying cannot help
//	network_down   none: our own network, not the recipe
//	canceled       none: the caller gave up, or another candidate won
//
// The first failure of a recipe that worked is forgiven with probability
// one half (it keeps its head start), so one transient error does not make
// the client forget a good path.
//
// Failures after the dial count too: the caller reports a session that
// stalled, was throttled or was told "busy" with Memory.SessionFailure
// (package relay/client does this for its sessions), and the recipe goes
// into backoff for that class at once: the success a first failure would
// forgive was counted on that same session.
//
// # Timeouts scaled by handshake time
//
// Dial measures how long the winning attempt took, from the dial to the end
// of the caller's handshake (Candidate.RTT; several network round trips),
// and Memory.Success keeps a smoothed value per recipe. With Options'
// PerAttempt and Stagger left zero, a candidate whose handshake time t is
// known gets clamp(8t + 1 s, MinPerAttempt, DefaultPerAttempt) and starts
// the next candidate after clamp(1.5t, MinStagger, DefaultStagger); one
// that is unknown (nor another recipe of its relay) gets the defaults.
//
// A dial where every candidate is invalid (a misconfiguration) fails as soon
// as the candidates are checked, with an error that says so.
package route

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	// RTT is set by Dial on the candidate that won: how long its attempt
	// took, from the dial to the end of the caller's handshake.
	// Memory.Success keeps a smoothed value per recipe to scale the
	// timeouts of later dials. Zero when not measured.
	RTT time.Duration
}

// Filter narrows the candidates taken from a descriptor.
type Filter struct {
	// Transport, if set, keeps only endpoints of that transport.
	Transport string
	// LocalAddr, if set, is the local IP every candidate dials from.
	LocalAddr string
	// Sessions, if set, keeps TLS sessions for resumption across dials
	// (transport.Endpoint.Sessions).
	Sessions transport.SessionCache
	// PublicOnly sets transport.Endpoint.PublicOnly on every candidate.
	PublicOnly bool
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
		tep.Sessions = f.Sessions
		tep.PublicOnly = f.PublicOnly
		out = append(out, Candidate{Relay: d.RelayID(), Endpoint: tep})
	}
	return out
}

// Options tune Dial. The zero value means the defaults.
type Options struct {
	// PerAttempt bounds each attempt: the transport handshake plus the
	// caller's handshake. Default: scaled by the candidate's handshake
	// time known to Memory (see the package documentation), else
	// DefaultPerAttempt.
	PerAttempt time.Duration
	// Stagger is how long Dial waits for a running attempt before it
	// starts the next candidate beside it; a failed attempt starts the
	// next at once. Default: scaled by the running candidate's known
	// handshake time, else DefaultStagger; jittered by ±20 %. Negative
	// means one at a time.
	Stagger time.Duration
	// Memory, if set, gives the ways in that worked on Network a head
	// start, puts those in backoff last, scales the timeouts, and records
	// every failed attempt with its class. Dial does not record successes:
	// the caller calls Memory.Success with the candidate Dial returned
	// (which carries the measured RTT) once a request over the session
	// was acknowledged.
	Memory  *Memory
	Network string
	// Observe, if set, is told of every attempt that ends before Dial
	// returns, in the order they end: each failure, and the winner with a
	// nil Err. Attempts cancelled because another won are not reported.
	// It runs on Dial's goroutine (keep it cheap) and is how the client
	// metrics count attempts by transport and class.
	Observe func(Attempt)
	// EarlyData, if set, is given to every attempt's transport dial
	// (transport.WithEarlyData), not to the handshake: the session's
	// first bytes, which a transport that can sends with the session
	// request. The handshake learns from the Conn (transport.EarlySender)
	// whether it still has to write them.
	EarlyData []byte
}

// Handshake runs the caller's protocol on a fresh stream; the candidate
// wins only if it succeeds. It owns conn: on failure it must close it.
type Handshake[S io.Closer] func(ctx context.Context, conn transport.Conn) (S, error)

// Attempt is how one candidate's attempt ended: a failure (in Error, and
// for Options.Observe), or the winner (for Options.Observe, Err nil).
type Attempt struct {
	Relay     string
	Transport string
	Err       error
	// Took is how long the attempt ran, from its dial until it failed or
	// its handshake finished.
	Took time.Duration
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
	if e.Misconfigured() {
		return "misconfigured: no endpoint can be dialed as given; fix the descriptor or the flags (retrying will not help): " +
			strings.Join(parts, "; ")
	}
	return "no relay reachable: " + strings.Join(parts, "; ")
}

// Misconfigured reports whether every attempt failed as ClassInvalid: the
// endpoints or the options are unusable, and only a change to them helps.
func (e *Error) Misconfigured() bool {
	for _, a := range e.Attempts {
		if transport.ClassOf(a.Err) != transport.ClassInvalid {
			return false
		}
	}
	return len(e.Attempts) > 0
}

// Unwrap returns each attempt's error, so errors.Is finds any class.
func (e *Error) Unwrap() []error {
	out := make([]error, len(e.Attempts))
	for i, a := range e.Attempts {
		out[i] = a.Err
	}
	return out
}

// Class is the class of the last attempt to fail (the one that got
// furthest when attempts were tried in order), or ClassRelayDown when that
// attempt's relay refused every attempt over two or more transports. (Over
// one transport, refused may be a censor's RST and stays ClassRefused.)
func (e *Error) Class() transport.Class {
	if len(e.Attempts) == 0 {
		return transport.ClassUnknown
	}
	last := e.Attempts[len(e.Attempts)-1]
	if e.RelayDown(last.Relay) {
		return transport.ClassRelayDown
	}
	return transport.ClassOf(last.Err)
}

// RelayDown reports whether relay refused every attempt at it, over at
// least two transports.
func (e *Error) RelayDown(relay string) bool {
	var transports []string
	for _, a := range e.Attempts {
		if a.Relay != relay {
			continue
		}
		if transport.ClassOf(a.Err) != transport.ClassRefused {
			return false
		}
		if !slices.Contains(transports, a.Transport) {
			transports = append(transports, a.Transport)
		}
	}
	return len(transports) >= 2
}
