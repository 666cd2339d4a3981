package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// Delivery is one envelope handed to the client by Fetch or a subscription.
type Delivery struct {
	Mailbox [32]byte
	Ref     store.Ref
	// Seq is the envelope's position in its mailbox; pass the last one
	// seen to FetchAfter to page onward.
	Seq      uint64
	Envelope []byte
}

// maxQueued bounds pushed envelopes waiting in a Client: a relay that
// respects MaxUnacked for every subscription never gets near it.
const maxQueued = 16 * MaxUnacked

// ErrClientClosed is returned by calls on a closed Client or after its
// session ended.
var ErrClientClosed = errors.New("relay: session closed")

// Client is the client side of one relay session. Its methods are safe for
// concurrent use; requests are pipelined on the one stream.
type Client struct {
	conn transport.Conn
	br   *bufio.Reader

	wmu sync.Mutex
	bw  *bufio.Writer

	challenge [ChallengeSize]byte
	nextReq   atomic.Uint32

	mu      sync.Mutex
	pending map[uint32]*call
	err     error // why the session ended
	done    chan struct{}

	deliveries chan Delivery
	qmu        sync.Mutex
	queue      []Delivery // pushed envelopes not yet taken from deliveries
	qwake      chan struct{}
}

type call struct {
	res     chan result
	fetch   bool       // Deliver frames with this request id answer it
	fetched []Delivery // Deliver frames answering a Fetch
}

// NewClient runs the protocol handshake on conn and returns a client that
// owns conn. ctx bounds the handshake only.
func NewClient(ctx context.Context, conn transport.Conn) (*Client, error) {
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, sessionBufSize), bw: bufio.NewWriterSize(conn, sessionBufSize),
		pending: make(map[uint32]*call), done: make(chan struct{}), deliveries: make(chan Delivery),
		qwake: make(chan struct{}, 1)}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hello := append(helloMagic[:], ProtocolVersion, ProtocolVersion)
	if err := c.write(frameClientHello, hello); err != nil {
		conn.Close()
		return nil, c.ctxErr(ctx, err)
	}
	t, p, err := readFrame(c.br)
	if err != nil {
		conn.Close()
		return nil, c.ctxErr(ctx, err)
	}
	if t == frameResult {
		conn.Close()
		if r, err := decodeResult(p); err == nil && r.code != CodeOK {
			return nil, &Error{Code: r.code, Msg: r.msg}
		}
		return nil, errMalformed
	}
	cur := cursor{b: p}
	v := cur.u8()
	copy(c.challenge[:], cur.take(ChallengeSize))
	cur.u32()
	if t != frameServerHello || !cur.done() {
		conn.Close()
		return nil, errMalformed
	}
	if v != ProtocolVersion {
		conn.Close()
		return nil, ErrVersion
	}
	go c.readLoop()
	go c.forward()
	return c, nil
}

// forward moves pushed envelopes from the queue to the deliveries channel,
// so that the read loop never blocks on a slow consumer (which could be
// waiting for a Result the read loop has yet to read). The relay bounds
// how many unacked envelopes it pushes, which bounds the queue.
func (c *Client) forward() {
	defer close(c.deliveries)
	for {
		c.qmu.Lock()
		var d Delivery
		have := len(c.queue) > 0
		if have {
			d = c.queue[0]
			c.queue[0] = Delivery{}
			c.queue = c.queue[1:]
		}
		c.qmu.Unlock()
		if !have {
			select {
			case <-c.qwake:
				continue
			case <-c.done:
				return
			}
		}
		select {
		case c.deliveries <- d:
		case <-c.done:
			return
		}
	}
}

func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Close ends the session.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Done is closed when the session has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the session ended, or nil while it is running.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Deliveries yields envelopes pushed by subscriptions, in order. It is
// closed when the session ends; envelopes not yet taken are then dropped
// (they stay on the relay until acked).
func (c *Client) Deliveries() <-chan Delivery { return c.deliveries }

func (c *Client) readLoop() {
	var err error
	defer func() {
		if err == nil || errors.Is(err, io.EOF) {
			err = ErrClientClosed
		}
		c.mu.Lock()
		c.err = err
		pend := c.pending
		c.pending = nil
		c.mu.Unlock()
		for _, cl := range pend {
			close(cl.res)
		}
		close(c.done)
	}()
	for {
		var t frameType
		var p []byte
		t, p, err = readFrame(c.br)
		if err != nil {
			return
		}
		switch t {
		case frameResult, framePong:
			var r result
			if t == frameResult {
				r, err = decodeResult(p)
			} else if len(p) >= 4 {
				r = result{req: binary.BigEndian.Uint32(p), body: p[4:]}
			} else {
				err = errMalformed
			}
			if err != nil {
				return
			}
			c.mu.Lock()
			cl := c.pending[r.req]
			delete(c.pending, r.req)
			c.mu.Unlock()
			if cl != nil {
				cl.res <- r
			}
		case frameDeliver:
			var d delivery
			d, err = decodeDeliver(p)
			if err != nil {
				return
			}
			dv := Delivery{Mailbox: d.mailbox, Ref: store.Ref(d.ref), Seq: d.seq, Envelope: d.envelope}
			c.mu.Lock()
			cl := c.pending[d.req]
			if cl != nil && cl.fetch {
				if len(cl.fetched) >= MaxFetch {
					c.mu.Unlock()
					err = fmt.Errorf("%w: relay answered a Fetch with more than %d envelopes", errMalformed, MaxFetch)
					return
				}
				cl.fetched = append(cl.fetched, dv)
			}
			c.mu.Unlock()
			if cl == nil || !cl.fetch {
				c.qmu.Lock()
				if len(c.queue) >= maxQueued {
					c.qmu.Unlock()
					err = fmt.Errorf("%w: relay pushed more than %d unacked envelopes", errMalformed, maxQueued)
					return
				}
				c.queue = append(c.queue, dv)
				c.qmu.Unlock()
				select {
				case c.qwake <- struct{}{}:
				default:
				}
			}
		default:
			err = fmt.Errorf("relay: unexpected frame type %#x from relay", byte(t))
			return
		}
	}
}

func (c *Client) write(t frameType, payload ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := appendFrame(nil, t, payload...)
	if _, err := c.bw.Write(b); err != nil {
		return err
	}
	return c.bw.Flush()
}

// roundTrip sends a request (payload after the request id) and waits for
// its Result.
func (c *Client) roundTrip(ctx context.Context, t frameType, build func(req []byte) []byte) (result, []Delivery, error) {
	req := c.nextReq.Add(1)
	cl := &call{res: make(chan result, 1), fetch: t == frameFetch}
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return result{}, nil, fmt.Errorf("%w: %v", ErrClientClosed, err)
	}
	c.pending[req] = cl
	c.mu.Unlock()
	payload := build(binary.BigEndian.AppendUint32(nil, req))
	if err := c.write(t, payload); err != nil {
		c.conn.Close()
		return result{}, nil, err
	}
	select {
	case r, ok := <-cl.res:
		if !ok {
			return result{}, nil, fmt.Errorf("%w: %v", ErrClientClosed, c.Err())
		}
		if t != framePing && r.code != CodeOK {
			return r, nil, &Error{Code: r.code, Msg: r.msg}
		}
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
		return result{}, nil, ctx.Err()
	}
}

func (c *Client) signed(owner ed25519.PrivateKey, t frameType, p []byte) []byte {
	return append(p, sign(owner, c.challenge[:], t, p)...)
}

// CreateMailbox creates mailbox id owned by owner. capVerifier is
// SHA-256 of the send capability, or nil for a mailbox anyone may send to.
func (c *Client) CreateMailbox(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, capVerifier []byte) error {
	if len(capVerifier) > MaxCapLen {
		return fmt.Errorf("relay: capability verifier longer than %d bytes", MaxCapLen)
	}
	_, _, err := c.roundTrip(ctx, frameCreate, func(p []byte) []byte {
		p = append(p, id[:]...)
		p = append(p, owner.Public().(ed25519.PublicKey)...)
		p = append(p, byte(len(capVerifier)))
		p = append(p, capVerifier...)
		return c.signed(owner, frameCreate, p)
	})
	return err
}

// Send hands an envelope to the relay and returns once the relay has made
// it durable. sendCap is the recipient's send capability from their card
// (nil if none).
func (c *Client) Send(ctx context.Context, env, sendCap []byte) (store.Ref, error) {
	if len(sendCap) > MaxCapLen {
		return store.Ref{}, fmt.Errorf("relay: send capability longer than %d bytes", MaxCapLen)
	}
	r, _, err := c.roundTrip(ctx, frameSend, func(p []byte) []byte {
		p = append(p, byte(len(sendCap)))
		p = append(p, sendCap...)
		return append(p, env...)
	})
	if err != nil {
		return store.Ref{}, err
	}
	if len(r.body) != RefSize {
		return store.Ref{}, errMalformed
	}
	return store.Ref(r.body), nil
}

// Subscribe asks the relay to push mailbox id's envelopes to Deliveries as
// they arrive, starting with those already waiting.
func (c *Client) Subscribe(ctx context.Context, owner ed25519.PrivateKey, id [32]byte) error {
	_, _, err := c.roundTrip(ctx, frameSubscribe, func(p []byte) []byte {
		return c.signed(owner, frameSubscribe, append(p, id[:]...))
	})
	return err
}

// Fetch returns up to max waiting envelopes, oldest first (max <= 0: as
// many as the relay allows in one go). They stay on the relay until acked.
func (c *Client) Fetch(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, max int) ([]Delivery, error) {
	return c.FetchAfter(ctx, owner, id, 0, max)
}

// FetchAfter is Fetch for envelopes after sequence number after (the Seq of
// the last Delivery seen), to page past envelopes the caller holds.
func (c *Client) FetchAfter(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, after uint64, max int) ([]Delivery, error) {
	if max <= 0 || max > MaxFetch {
		max = MaxFetch
	}
	r, ds, err := c.roundTrip(ctx, frameFetch, func(p []byte) []byte {
		p = append(p, id[:]...)
		p = binary.BigEndian.AppendUint16(p, uint16(max))
		p = binary.BigEndian.AppendUint64(p, after)
		return c.signed(owner, frameFetch, p)
	})
	if err != nil {
		return nil, err
	}
	if len(r.body) != 4 || int(binary.BigEndian.Uint32(r.body)) != len(ds) {
		return nil, errMalformed
	}
	return ds, nil
}

// Ack deletes delivered envelopes from the relay and returns how many it
// deleted.
func (c *Client) Ack(ctx context.Context, owner ed25519.PrivateKey, id [32]byte, refs ...store.Ref) (int, error) {
	total := 0
	for len(refs) > 0 {
		batch := refs[:min(len(refs), MaxAckRefs)]
		refs = refs[len(batch):]
		r, _, err := c.roundTrip(ctx, frameAck, func(p []byte) []byte {
			p = append(p, id[:]...)
			p = binary.BigEndian.AppendUint16(p, uint16(len(batch)))
			for _, ref := range batch {
				p = append(p, ref[:]...)
			}
			return c.signed(owner, frameAck, p)
		})
		if err != nil {
			return total, err
		}
		if len(r.body) == 4 {
			total += int(binary.BigEndian.Uint32(r.body))
		}
	}
	return total, nil
}

// Rotate moves mailbox oldID (owned by oldOwner) to newID owned by
// newOwner, with its waiting envelopes, and returns how many moved.
func (c *Client) Rotate(ctx context.Context, oldOwner ed25519.PrivateKey, oldID [32]byte, newOwner ed25519.PrivateKey, newID [32]byte, capVerifier []byte) (int, error) {
	r, _, err := c.roundTrip(ctx, frameRotate, func(p []byte) []byte {
		p = append(p, oldID[:]...)
		p = append(p, newID[:]...)
		p = append(p, newOwner.Public().(ed25519.PublicKey)...)
		p = append(p, byte(len(capVerifier)))
		p = append(p, capVerifier...)
		s1 := sign(oldOwner, c.challenge[:], frameRotate, p)
		s2 := sign(newOwner, c.challenge[:], frameRotate, p)
		return append(append(p, s1...), s2...)
	})
	if err != nil {
		return 0, err
	}
	if len(r.body) != 4 {
		return 0, errMalformed
	}
	return int(binary.BigEndian.Uint32(r.body)), nil
}

// Delete deletes mailbox id and everything waiting in it.
func (c *Client) Delete(ctx context.Context, owner ed25519.PrivateKey, id [32]byte) error {
	_, _, err := c.roundTrip(ctx, frameDelete, func(p []byte) []byte {
		return c.signed(owner, frameDelete, append(p, id[:]...))
	})
	return err
}

// Ping checks the session is alive.
func (c *Client) Ping(ctx context.Context) error {
	_, _, err := c.roundTrip(ctx, framePing, func(p []byte) []byte { return append(p, "ping"...) })
	return err
}
