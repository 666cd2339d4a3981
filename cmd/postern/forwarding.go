package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// layerOpener is the home side of two-hop sends: it opens layers sealed to
// this relay for the session server.
type layerOpener struct{ o *forward.Opener }

func (l layerOpener) Open(layer []byte) ([]byte, []byte, func(bool), error) {
	sendCap, env, done, err := l.o.Open(layer)
	switch {
	case errors.Is(err, forward.ErrReplay):
		err = relay.ErrReplay
	case errors.Is(err, forward.ErrInFlight):
		err = relay.ErrBusy
	}
	return sendCap, env, done, err
}

// outboxQueue adapts the store's outbox to the link forwarder's queue.
type outboxQueue struct{ ob store.Outbox }

func (q outboxQueue) Enqueue(ctx context.Context, dest [32]byte, item []byte) (uint64, error) {
	it, err := q.ob.Enqueue(ctx, dest, item)
	if errors.Is(err, store.ErrOutboxFull) {
		return 0, relay.ErrOutboxFull
	}
	return it.Seq, err
}

func (q outboxQueue) Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]link.Item, error) {
	items, err := q.ob.Pending(ctx, dest, after, max)
	out := make([]link.Item, len(items))
	for i, it := range items {
		out[i] = link.Item{Seq: it.Seq, Data: it.Item}
	}
	return out, err
}

func (q outboxQueue) Done(ctx context.Context, dest [32]byte, seqs ...uint64) error {
	return q.ob.Done(ctx, dest, seqs...)
}

func (q outboxQueue) Dests(ctx context.Context) ([][32]byte, error) { return q.ob.Dests(ctx) }

// linkDialer dials other relays for links and tunnels: directly, or, for
// a relay given upstreams, through a tunnel via one of them.
type linkDialer struct {
	reg       *transport.Registry
	opts      client.DialOptions
	upstreams []*descriptor.Descriptor
	private   bool // home relays may be at addresses that are not public
}

func (r *relayRun) linkDialer() linkDialer {
	return linkDialer{reg: newRegistry(), opts: client.DialOptions{LocalAddr: r.cfg.LinkBind}, upstreams: r.cfg.upstreams,
		private: r.cfg.linkPrivate()}
}

// direct is the options of a direct dial to home: only to a public address
// unless private peers are allowed or home is an upstream (the operator's).
func (d linkDialer) direct(home *descriptor.Descriptor) client.DialOptions {
	o := d.opts
	o.PublicOnly = !d.private && !d.isUpstream(home)
	return o
}

// isUpstream reports whether home is one of the upstreams.
func (d linkDialer) isUpstream(home *descriptor.Descriptor) bool {
	for _, u := range d.upstreams {
		if descriptor.SameRelay(u, home) {
			return true
		}
	}
	return false
}

// viaUpstream reports whether home is reached through an upstream.
func (d linkDialer) viaUpstream(home *descriptor.Descriptor) bool {
	return len(d.upstreams) > 0 && home.Line != "" && !d.isUpstream(home)
}

// session opens a session to home, end to end with it either way.
func (d linkDialer) session(ctx context.Context, home *descriptor.Descriptor) (*client.Client, error) {
	if d.viaUpstream(home) {
		return client.DialTunnel(ctx, d.reg, d.opts, home.Line, d.upstreams...)
	}
	return client.Dial(ctx, d.reg, d.direct(home), home)
}

// tunnel opens a stream to home's tunnel side, for a client's tunnel.
func (d linkDialer) tunnel(ctx context.Context, home *descriptor.Descriptor) (io.ReadWriteCloser, error) {
	if d.viaUpstream(home) {
		return client.OpenTunnelVia(ctx, d.reg, d.opts, home.Line, d.upstreams...)
	}
	return client.OpenTunnel(ctx, d.reg, d.direct(home), home)
}

// newForwarder is the entry side of two-hop sends: forwards queued in the
// store's outbox, handed to home relays over links dialed like a client
// and authenticated as this relay (RelayAuth).
func (r *relayRun) newForwarder() *link.Forwarder {
	ob := r.st.(store.Outbox)
	r.met.WatchOutbox(func() (int, int64) { s := ob.OutboxStats(); return s.Items, s.Bytes })
	dialer := r.linkDialer()
	key := ed25519.NewKeyFromSeed(r.secrets.SigningKey)
	return link.NewForwarder(link.ForwarderConfig{
		Queue: outboxQueue{ob},
		Dest:  forward.Dest,
		Dial: func(ctx context.Context, home *descriptor.Descriptor) (*client.Client, error) {
			c, err := dialer.session(ctx, home)
			if err != nil {
				return nil, err
			}
			if err := c.AuthenticateRelay(ctx, r.currentDescriptor(), key); err != nil {
				c.Close()
				return nil, fmt.Errorf("relay link: the home relay refused this relay's authentication: %w", err)
			}
			return c, nil
		},
		Observe:     r.met.Forward,
		Log:         r.log,
		SourceBytes: sourceShare(r.cfg.MaxOutboxBytes),
		ItemTTL:     r.cfg.ttl,
	})
}

// sourceShare is how much of an outbox of outbox bytes (0: the default)
// one client's address may fill with forwards: a sixteenth, but at least
// 16 MiB (two of the largest messages), and no more than the outbox.
func sourceShare(outbox int64) int64 {
	if outbox <= 0 {
		outbox = store.DefaultOutboxBytes
	}
	return min(outbox, max(outbox/16, 16<<20))
}

// newTunneler is the entry side of tunnels: streams to home relays dialed
// like a client, bounded by link.DefaultMaxTunnels.
func (r *relayRun) newTunneler() *link.Tunneler {
	return link.NewTunneler(link.TunnelerConfig{Open: r.linkDialer().tunnel, PerSource: r.cfg.MaxTunnelsPerSource})
}
