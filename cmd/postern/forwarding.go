package main

import (
	"context"
	"errors"
	"io"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// layerOpener is the home side of two-hop sends: it opens layers sealed to
// this relay for the session server.
type layerOpener struct{ o *forward.Opener }

func (l layerOpener) Open(layer []byte) ([]byte, []byte, error) {
	sendCap, env, err := l.o.Open(layer)
	if errors.Is(err, forward.ErrReplay) {
		err = relay.ErrReplay
	}
	return sendCap, env, err
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

// newForwarder is the entry side of two-hop sends: forwards queued in the
// store's outbox, handed to home relays over links dialed like a client.
func (r *relayRun) newForwarder() *link.Forwarder {
	ob := r.st.(store.Outbox)
	r.met.WatchOutbox(func() (int, int64) { s := ob.OutboxStats(); return s.Items, s.Bytes })
	reg := newRegistry()
	return link.NewForwarder(link.ForwarderConfig{
		Queue: outboxQueue{ob},
		Dest:  forward.Dest,
		Dial: func(ctx context.Context, home *descriptor.Descriptor) (*client.Client, error) {
			return client.Dial(ctx, reg, client.DialOptions{}, home)
		},
		Observe: r.met.Forward,
		Log:     r.log,
	})
}

// newTunneler is the entry side of tunnels: streams to home relays dialed
// like a client, bounded by link.DefaultMaxTunnels.
func newTunneler() *link.Tunneler {
	reg := newRegistry()
	return link.NewTunneler(link.TunnelerConfig{
		Open: func(ctx context.Context, home *descriptor.Descriptor) (io.ReadWriteCloser, error) {
			return client.OpenTunnel(ctx, reg, client.DialOptions{}, home)
		},
	})
}
