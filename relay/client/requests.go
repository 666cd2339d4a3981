package client

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
)

// roundTrip sends the request that build makes for a fresh request id and
// waits for its Result (and, for a Fetch, the Deliver frames before it).
func (c *Client) roundTrip(ctx context.Context, build func(req uint32) relay.Message) (relay.Result, []Delivery, error) {
	p, err := c.begin(ctx, build)
	if err != nil {
		return relay.Result{}, nil, err
	}
	return p.wait(ctx)
}

// pendingCall is a request that was written and whose Result is awaited.
type pendingCall struct {
	c   *Client
	req uint32
	typ relay.FrameType
	cl  *call
}

// begin writes the request that build makes for a fresh request id and
// returns it, to be waited for.
func (c *Client) begin(ctx context.Context, build func(req uint32) relay.Message) (*pendingCall, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := c.nextReq.Add(1)
	m := build(req)
	cl := &call{start: time.Now(), res: make(chan relay.Result, 1), fetch: m.Type() == relay.FrameFetch}
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.pending[req] = cl
	if t := m.Type(); t == relay.FrameSubscribe || t == relay.FrameSubscribeAfter {
		c.subs[req] = true
	}
	c.mu.Unlock()
	if err := c.writeCtx(ctx, m); err != nil {
		if _, ok := errors.AsType[*notWritten](err); ok {
			c.mu.Lock() // nothing went out: the session goes on without it
			if c.pending != nil {
				delete(c.pending, req)
				delete(c.subs, req)
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err() // closed under a blocked write
		}
		if c.stalled.Load() {
			// The stall watcher closed the connection under this write:
			// the session stalled, which is what the caller must hear
			// (a sender resumes after a stall, and gives up on other
			// failures), whether its request was written or waiting.
			err = errStalled
		}
		c.mu.Lock()
		if c.writeErr == nil {
			c.writeErr = err
		}
		c.mu.Unlock()
		c.conn.Close()
		return nil, err
	}
	return &pendingCall{c: c, req: req, typ: m.Type(), cl: cl}, nil
}

// wait waits for the request's Result (and, for a Fetch, the Deliver
// frames before it).
func (p *pendingCall) wait(ctx context.Context) (relay.Result, []Delivery, error) {
	c, req, cl := p.c, p.req, p.cl
	select {
	case r, ok := <-cl.res:
		if !ok {
			return relay.Result{}, nil, fmt.Errorf("%w: %w", ErrClosed, c.Err())
		}
		if p.typ != relay.FramePing && r.Code != relay.CodeOK {
			c.forget(req)
			return r, nil, refusal{&relay.Error{Code: r.Code, Msg: r.Msg}}
		}
		c.acked()
		c.mu.Lock()
		f := cl.fetched
		c.mu.Unlock()
		return r, f, nil
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, req)
		}
		c.mu.Unlock()
		c.forget(req)
		return relay.Result{}, nil, ctx.Err()
	}
}

// forget drops a subscription that the relay refused or that was never
// answered, so later Deliver frames with its id are not taken as pushes.
func (c *Client) forget(req uint32) {
	c.mu.Lock()
	delete(c.subs, req)
	c.mu.Unlock()
}

func ownerKey(owner ed25519.PrivateKey) (k [ed25519.PublicKeySize]byte) {
	copy(k[:], owner.Public().(ed25519.PublicKey))
	return k
}

// CreateMailbox creates mailbox id owned by owner. capVerifier is
// SHA-256 of the send capability, or nil for a mailbox anyone may send to.
func (c *Client) CreateMailbox(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, capVerifier []byte) error {
	if len(capVerifier) > relay.MaxCapLen {
		return fmt.Errorf("relay: capability verifier longer than %d bytes", relay.MaxCapLen)
	}
	bind, err := c.binding()
	if err != nil {
		return err
	}
	_, _, err = c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.Create{Req: req, Mailbox: id, Owner: ownerKey(owner), CapVerifier: capVerifier}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
	return err
}

// Send hands an envelope to the relay and returns once the relay has made
// it durable. sendCap is the recipient's send capability from their card
// (nil if none).
func (c *Client) Send(ctx context.Context, env, sendCap []byte) (Ref, error) {
	if len(sendCap) > relay.MaxCapLen {
		return Ref{}, fmt.Errorf("relay: send capability longer than %d bytes", relay.MaxCapLen)
	}
	r, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
		return relay.Send{Req: req, Cap: sendCap, Envelope: env}
	})
	if err != nil {
		return Ref{}, err
	}
	if len(r.Body) != relay.RefSize {
		return Ref{}, relay.ErrMalformed
	}
	return Ref(r.Body), nil
}

// Subscribe asks the relay to push mailbox id's envelopes to Deliveries as
// they arrive, starting with those already waiting.
func (c *Client) Subscribe(ctx context.Context, owner ed25519.PrivateKey, id [32]byte) error {
	bind, err := c.binding()
	if err != nil {
		return err
	}
	_, _, err = c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.Subscribe{Req: req, Mailbox: id}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
	return err
}

// SubscribeAfter is Subscribe for the envelopes with seq > after only
// (relay.SubscribeAfter): for a caller that has paged through the mailbox
// up to after and holds what it did not ack there. It returns the cursor
// the relay started the subscription from: after, or 0 when after is past
// every envelope the mailbox has had (a mailbox the relay lost and its
// owner made again, numbering its envelopes from another start: what the
// caller holds is of the one before). A relay from before it refuses it with
// relay.CodeUnknownFrame; after = 0 is a plain Subscribe.
func (c *Client) SubscribeAfter(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, after uint64) (uint64, error) {
	if after == 0 {
		return 0, c.Subscribe(ctx, owner, id)
	}
	bind, err := c.binding()
	if err != nil {
		return 0, err
	}
	r, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.SubscribeAfter{Req: req, Mailbox: id, After: after}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
	if err != nil {
		return 0, err
	}
	if len(r.Body) != 8 {
		return 0, fmt.Errorf("%w: a subscription's cursor of %d bytes", relay.ErrMalformed, len(r.Body))
	}
	from := binary.BigEndian.Uint64(r.Body)
	if from != after && from != 0 {
		return 0, fmt.Errorf("%w: a subscription from another cursor than asked", relay.ErrMalformed)
	}
	return from, nil
}

// Fetch returns up to max waiting envelopes, oldest first (max <= 0: as
// many as the relay allows in one go). They stay on the relay until acked.
func (c *Client) Fetch(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, max int) ([]Delivery, error) {
	return c.FetchAfter(ctx, owner, id, 0, max)
}

// FetchAfter is Fetch for envelopes after sequence number after (the Seq of
// the last Delivery seen), to page past envelopes the caller holds.
func (c *Client) FetchAfter(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, after uint64, max int) ([]Delivery, error) {
	p, err := c.beginFetch(ctx, owner, id, after, max)
	if err != nil {
		return nil, err
	}
	return p.fetched(ctx)
}

// beginFetch writes FetchAfter's request and returns it, to be waited
// for (fetched).
func (c *Client) beginFetch(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, after uint64, max int) (*pendingCall, error) {
	if max <= 0 || max > relay.MaxFetch {
		max = relay.MaxFetch
	}
	bind, err := c.binding()
	if err != nil {
		return nil, err
	}
	return c.begin(ctx, func(req uint32) relay.Message {
		m := relay.Fetch{Req: req, Mailbox: id, Max: uint16(max), After: after}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
}

// fetched waits for a Fetch's answer: the envelopes it brought.
func (p *pendingCall) fetched(ctx context.Context) ([]Delivery, error) {
	r, ds, err := p.wait(ctx)
	if err != nil {
		return nil, err
	}
	if n, err := r.Count(); err != nil || n != len(ds) {
		return nil, relay.ErrMalformed
	}
	return ds, nil
}

// came is what came of the answer to a Fetch so far: the envelopes that
// came whole (their Delivery's bytes), and a copy of what came of the
// one coming, if one is, in the order they came.
func (p *pendingCall) came() []Begun {
	b, begun := p.c.begun(p.req) // first: it may be filed meanwhile
	p.c.mu.Lock()
	ds := slices.Clone(p.cl.fetched)
	p.c.mu.Unlock()
	var out []Begun
	for _, d := range ds {
		out = append(out, d.begun())
		begun = begun && d.Seq != b.Seq
	}
	if begun {
		out = append(out, b)
	}
	return out
}

// FetchPart asks for at most max bytes (at most relay.MaxPart) of the
// first waiting envelope with seq > after, from offset on: see "Parts" in
// package relay. ok is false when nothing waits. The answer is checked
// against the request: at most max bytes, none past the envelope's end
// (total at most relay.MaxFrameSize), and some unless the envelope has
// been read to its end. A relay from before parts refuses it with
// relay.CodeUnknownFrame.
func (c *Client) FetchPart(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, after uint64, offset, max int) (p relay.Part, ok bool, err error) {
	max = min(max, relay.MaxPart)
	if max <= 0 || offset < 0 || offset > relay.MaxFrameSize {
		return relay.Part{}, false, fmt.Errorf("relay: a part of %d bytes at offset %d cannot be asked for", max, offset)
	}
	bind, err := c.binding()
	if err != nil {
		return relay.Part{}, false, err
	}
	r, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.FetchPart{Req: req, Mailbox: id, After: after, Offset: uint32(offset), Max: uint32(max)}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
	if err != nil {
		return relay.Part{}, false, err
	}
	if len(r.Body) == 0 {
		return relay.Part{}, false, nil
	}
	if p, err = relay.ParsePart(r.Body); err != nil {
		return relay.Part{}, false, err
	}
	// Another envelope than the one asked for (a ref the caller does not
	// expect: that one is gone) may end before offset, and then comes
	// with no data; the caller starts it over at offset 0.
	if p.Total > relay.MaxFrameSize { // as a uint32: on a 32-bit build int(p.Total) may be negative
		return relay.Part{}, false, fmt.Errorf("%w: an envelope of %d bytes", relay.ErrMalformed, p.Total)
	}
	total, n := int(p.Total), len(p.Data)
	if n > max || (offset >= total && n != 0) || (offset < total && (n == 0 || offset+n > total)) {
		return relay.Part{}, false, fmt.Errorf("%w: a part of %d bytes at offset %d of an envelope of %d", relay.ErrMalformed, len(p.Data), offset, total)
	}
	return p, true, nil
}

// Ack deletes delivered envelopes from the relay and returns how many it
// deleted.
func (c *Client) Ack(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, refs ...Ref) (int, error) {
	bind, err := c.binding()
	if err != nil {
		return 0, err
	}
	total := 0
	for len(refs) > 0 {
		batch := refs[:min(len(refs), relay.MaxAckRefs)]
		refs = refs[len(batch):]
		r, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
			m := relay.Ack{Req: req, Mailbox: id, Refs: make([][relay.RefSize]byte, len(batch))}
			for i, ref := range batch {
				m.Refs[i] = ref
			}
			m.Sig = relay.Sign(owner, bind, m)
			return m
		})
		if err != nil {
			return total, err
		}
		n, err := r.Count()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// Rotate moves mailbox oldID (owned by oldOwner) to newID owned by
// newOwner, with its waiting envelopes, and returns how many moved.
func (c *Client) Rotate(ctx context.Context, oldOwner ed25519.PrivateKey, oldID [32]byte, newOwner ed25519.PrivateKey, newID [32]byte, capVerifier []byte) (int, error) {
	if len(capVerifier) > relay.MaxCapLen {
		return 0, fmt.Errorf("relay: capability verifier longer than %d bytes", relay.MaxCapLen)
	}
	bind, err := c.binding()
	if err != nil {
		return 0, err
	}
	r, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.Rotate{Req: req, Old: oldID, New: newID, NewOwner: ownerKey(newOwner), CapVerifier: capVerifier}
		m.OldSig = relay.Sign(oldOwner, bind, m)
		m.NewSig = relay.Sign(newOwner, bind, m)
		return m
	})
	if err != nil {
		return 0, err
	}
	return r.Count()
}

// Delete deletes mailbox id and everything waiting in it.
func (c *Client) Delete(ctx context.Context, owner ed25519.PrivateKey, id [32]byte) error {
	bind, err := c.binding()
	if err != nil {
		return err
	}
	_, _, err = c.roundTrip(ctx, func(req uint32) relay.Message {
		m := relay.Delete{Req: req, Mailbox: id}
		m.Sig = relay.Sign(owner, bind, m)
		return m
	})
	return err
}

// Ping checks the session is alive.
func (c *Client) Ping(ctx context.Context) error {
	_, _, err := c.roundTrip(ctx, func(req uint32) relay.Message { return relay.Ping{Req: req, Data: []byte("ping")} })
	return err
}

// Descriptor returns the relay's current signed descriptor line. The
// caller verifies it (descriptor.Parse) and checks that it names the relay
// it meant to reach.
func (c *Client) Descriptor(ctx context.Context) (string, error) {
	wait, err := c.DescriptorLater(ctx)
	if err != nil {
		return "", err
	}
	return wait(ctx)
}

// DescriptorLater sends the Descriptor request now and returns a function
// that waits for the answer, so that the request shares its round trip
// with whatever the caller sends next. The relay answers it before it
// reads the next request, so once a later request was answered, wait
// returns at once.
func (c *Client) DescriptorLater(ctx context.Context) (wait func(context.Context) (string, error), err error) {
	p, err := c.begin(ctx, func(req uint32) relay.Message { return relay.DescriptorRequest{Req: req} })
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (string, error) {
		r, _, err := p.wait(ctx)
		if err != nil {
			return "", err
		}
		return string(r.Body), nil
	}, nil
}

// Forward hands this relay, as an entry relay, a forward layer sealed to
// the home relay that homeDescriptor describes (package relay/forward).
// It returns once the entry relay has stored the layer durably; the entry
// relay then forwards it. The entry relay learns the home relay, never the
// mailbox.
func (c *Client) Forward(ctx context.Context, homeDescriptor string, layer []byte) error {
	_, _, err := c.roundTrip(ctx, func(req uint32) relay.Message {
		return relay.Forward{Req: req, Payload: relay.ForwardPayload{Descriptor: homeDescriptor, Layer: layer}.Append(nil)}
	})
	return err
}

// DeliverLayer hands a forward layer to the home relay it is sealed to
// (relay links do this). It returns nil once the home relay stored the
// Send inside, and an error matching relay.ErrReplay if the relay had it
// already: either way the layer is delivered.
func (c *Client) DeliverLayer(ctx context.Context, layer []byte) error {
	_, _, err := c.roundTrip(ctx, func(req uint32) relay.Message { return relay.Layer{Req: req, Layer: layer} })
	return err
}

// AuthenticateRelay proves to the relay at the other end that this session
// is a link from the relay with the signed descriptor line desc and its
// descriptor key (see RelayAuth in package relay). The relay takes Layer
// frames only after it.
func (c *Client) AuthenticateRelay(ctx context.Context, desc string, key ed25519.PrivateKey) error {
	bind, err := c.binding()
	if err != nil {
		return err
	}
	_, _, err = c.roundTrip(ctx, func(req uint32) relay.Message {
		return relay.RelayAuth{Req: req, Descriptor: desc, Sig: relay.SignRelayAuth(key, bind)}
	})
	return err
}

// refusal is a relay's error Result. It unwraps to the *relay.Error, and
// transport.ClassOf gives ClassBusy for the codes that mean "come back
// later" (busy, a full forward queue), so routing backs off instead of
// treating the relay as blocked.
type refusal struct{ e *relay.Error }

func (r refusal) Error() string { return r.e.Error() }
func (r refusal) Unwrap() error { return r.e }

func (r refusal) TransportClass() transport.Class {
	switch r.e.Code {
	case relay.CodeBusy, relay.CodeOutboxFull:
		return transport.ClassBusy
	}
	return transport.ClassUnknown
}
