package client

import (
	"context"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// DialOptions tune Dial. The zero value races every endpoint of the
// descriptor in its order, with route's default stagger and a 15 s budget
// per attempt.
type DialOptions struct {
	// Transport, if set, restricts dialing to endpoints of that transport.
	Transport string
	// LocalAddr, if set, is the local IP to dial from.
	LocalAddr string
	// PerEndpoint bounds each attempt (transport handshake plus protocol
	// hello). Default 15s.
	PerEndpoint time.Duration
	// StallWindow ends a session that receives nothing while a request
	// waits this long (a frozen flow). Default DefaultStallWindow.
	StallWindow time.Duration
	// Memory and Network, if set, give the ways in that worked on this
	// network a head start. The winner is recorded only once the relay has
	// acknowledged a request on the session (not for the bare hello).
	// A session that fails after the dial (a stalled flow, or what the
	// caller reports with Client.Report) puts its way in into backoff
	// for that class (route.Memory.SessionFailure).
	Memory  *route.Memory
	Network string
	// Observe, if set, is told of every dial attempt: each failure and the
	// winner (route.Options.Observe). Metrics count attempts with it.
	Observe func(route.Attempt)
	// SessionFailed, if set, is told the class of a session opened by
	// Dial that failed after the dial: ClassStalled when the stall
	// watchdog ended it, or what the caller passed to Client.Report. Once
	// per session at most.
	SessionFailed func(transport.Class)
	// Sessions, if set, keeps TLS sessions so later dials resume, as a
	// browser does. Default: the transport's in-process cache.
	Sessions transport.SessionCache
	// PublicOnly refuses to connect to an address that is not public
	// (transport.Endpoint.PublicOnly): a relay's dials for a client.
	PublicOnly bool
}

// filter is the route filter of these options.
func (o DialOptions) filter() route.Filter {
	return route.Filter{Transport: o.Transport, LocalAddr: o.LocalAddr, Sessions: o.Sessions, PublicOnly: o.PublicOnly}
}

// handshake is route's handshake for a session: the protocol hello, on
// a stream that carries the session's route.
func (o DialOptions) handshake(ctx context.Context, conn transport.Conn) (*Client, error) {
	r := &sessionRoute{memory: o.Memory, network: o.Network, failed: o.SessionFailed}
	return New(ctx, &routedConn{Conn: conn, route: r}, WithStallWindow(o.StallWindow))
}

// Dial opens a session to a relay through the one dial path (package
// route): the endpoints of every descriptor in ds are candidates, raced in
// order, and the first to finish the protocol hello wins. The error names
// each relay and transport with its failure class, never an address; it
// matches route.ErrNoCandidate when no endpoint fits the options.
func Dial(ctx context.Context, reg *transport.Registry, opts DialOptions, ds ...*descriptor.Descriptor) (*Client, error) {
	var cands []route.Candidate
	keys := make(map[string][]byte, len(ds))
	for _, d := range ds {
		cands = append(cands, route.FromDescriptor(d, opts.filter())...)
		keys[d.RelayID()] = d.RelayKey
	}
	c, won, err := route.Dial(ctx, reg, cands, route.Options{PerAttempt: opts.PerEndpoint,
		Memory: opts.Memory, Network: opts.Network, Observe: opts.Observe, EarlyData: helloFrame}, opts.handshake)
	if err != nil {
		return c, err
	}
	// Owner signatures are bound to the key of the descriptor that won,
	// before the caller can send anything.
	WithRelayKey(keys[won.Relay])(c)
	c.route().win(won)
	if opts.Memory != nil {
		c.onFirstAck(func() { opts.Memory.Success(opts.Network, won) })
	}
	return c, err
}
