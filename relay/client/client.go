// Package client is the client side of Postern's relay session protocol
// (documented in package relay): a session to one relay, Dial through a
// relay descriptor, Follow for a subscription that survives reconnects,
// and Inbox, which turns deliveries into messages and acks only what the
// application has taken.
//
// It links no server code and no database: a messenger app imports this
// package, package relay (the wire protocol) and package envelope.
package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
)

// Ref names one envelope waiting on a relay; ack it to delete it.
type Ref [relay.RefSize]byte

// Delivery is one envelope handed to the client by Fetch or a subscription.
type Delivery struct {
	Mailbox [relay.MailboxSize]byte
	Ref     Ref
	// Seq is the envelope's position in its mailbox; pass the last one
	// seen to FetchAfter to page onward.
	Seq      uint64
	Envelope []byte
}

// maxQueued bounds pushed envelopes waiting in a Client: a relay that
// respects MaxUnacked for every subscription never gets near it.
const maxQueued = 16 * relay.MaxUnacked

// ErrNoRelayKey is returned by requests the owner signs when the client
// does not know the relay's key.
var ErrNoRelayKey = errors.New("relay: the relay's key is unknown, so nothing can be signed for it: dial the relay with its descriptor (client.Dial) or pass client.WithRelayKey")

// ErrClosed is returned by calls on a closed Client or after its session
// ended.
var ErrClosed = errors.New("relay: session closed")

// Client is the client side of one relay session. Its methods are safe for
// concurrent use; requests are pipelined on the one stream.
type Client struct {
	conn transport.Conn
	br   *bufio.Reader

	stallWindow atomic.Int64           // nanoseconds (see SetStallWindow)
	firstAck    atomic.Pointer[func()] // run once, at the first request the relay acknowledges
	lastRead    atomic.Int64           // unix nanoseconds of the last byte received
	// received counts the bytes read from conn, framed those of the
	// frames read whole; reading is set while the read loop waits in
	// readFrame. Between them they tell a frame that began to arrive
	// and stopped (see stalledAt).
	received, framed atomic.Int64
	reading          atomic.Bool
	stalled          atomic.Bool // the watchdog ended the session
	// inDeliver is the payload of the Deliver frame the read loop is
	// reading, inGot bytes of it read (under inMu): what of an envelope
	// came before a Drain left its page (see begun).
	inMu      sync.Mutex
	inDeliver []byte
	inGot     int
	// pushed is signalled (without blocking) when a read brought part
	// of a Deliver frame and not the rest: a follower watching its
	// pushes looks while one comes, and sleeps while none does.
	pushed chan struct{}

	wmu sync.Mutex
	bw  *bufio.Writer

	challenge [relay.ChallengeSize]byte
	relayKey  ed25519.PublicKey // from the relay's descriptor; owner signatures are bound to it
	nextReq   atomic.Uint32

	mu      sync.Mutex
	pending map[uint32]*call
	subs    map[uint32]bool // request ids of subscriptions: their Deliver frames are pushes
	err     error           // why the session ended
	// writeErr is the error of the failed write after which this side
	// closed the connection (begin): the reader then fails with "use of
	// closed network connection", which says nothing of why.
	writeErr error
	done     chan struct{}

	deliveries chan Delivery
	qmu        sync.Mutex
	queue      []Delivery // pushed envelopes not yet taken from deliveries
	qwake      chan struct{}
}

type call struct {
	start   time.Time // when it was sent, for the stall watchdog
	res     chan relay.Result
	fetch   bool       // Deliver frames with this request id answer it
	fetched []Delivery // Deliver frames answering a Fetch
}

// New runs the protocol handshake on conn and returns a client that owns
// conn. ctx bounds the handshake only.
func New(ctx context.Context, conn transport.Conn, opts ...Option) (*Client, error) {
	c := &Client{conn: conn, bw: bufio.NewWriterSize(conn, relay.SessionBufSize), pending: make(map[uint32]*call),
		subs: make(map[uint32]bool), done: make(chan struct{}), deliveries: make(chan Delivery),
		qwake: make(chan struct{}, 1), pushed: make(chan struct{}, 1)}
	c.stallWindow.Store(int64(DefaultStallWindow))
	c.lastRead.Store(time.Now().UnixNano())
	c.br = bufio.NewReaderSize(progressReader{conn, &c.lastRead, &c.received}, relay.SessionBufSize)
	for _, o := range opts {
		o(c)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := c.handshake(); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	go c.readLoop()
	go c.forward()
	go c.watchStall()
	return c, nil
}

// helloFrame is the ClientHello frame. Dial asks the transport to send it
// with the session request (transport.WithEarlyData): the relay's
// ServerHello then comes right behind its acceptance of the session, a
// round trip sooner than if the hello waited for that acceptance.
var (
	clientHello = relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion}
	helloFrame  = relay.AppendFrame(nil, clientHello)
)

func (c *Client) handshake() error {
	if e, ok := c.conn.(transport.EarlySender); !ok || !bytes.Equal(e.SentEarly(), helloFrame) {
		if err := c.write(clientHello); err != nil {
			return err
		}
	}
	t, p, err := c.readFrame()
	if err != nil {
		return err
	}
	c.challenge, err = parseHello(t, p)
	return err
}

// readFrame reads the next frame, counting it (see received).
func (c *Client) readFrame() (relay.FrameType, []byte, error) {
	c.reading.Store(true)
	t, p, err := relay.ReadFrameSeen(c.br, c.seen)
	c.reading.Store(false)
	if err == nil {
		c.framed.Add(int64(relay.FrameHeaderSize + len(p)))
	}
	return t, p, err
}

// seen keeps track of the Deliver frame being read (see begun).
func (c *Client) seen(t relay.FrameType, p []byte, got int) {
	if t != relay.FrameDeliver {
		return
	}
	c.inMu.Lock()
	c.inDeliver, c.inGot = p, got
	c.inMu.Unlock()
	if got > 0 && got < len(p) {
		select {
		case c.pushed <- struct{}{}:
		default:
		}
	}
}

// deliverHead is the size of a Deliver frame's payload before its
// envelope: request id, mailbox, ref and sequence number.
const deliverHead = 4 + relay.MailboxSize + relay.RefSize + 8

// begun returns what came of the envelope of the Deliver frame being
// read (or read whole and being filed), if it answers request req: its
// sequence number, ref and size, and its first bytes (a copy).
func (c *Client) begun(req uint32) (Begun, bool) {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	p := c.inDeliver
	if c.inGot < deliverHead || len(p) == deliverHead || binary.BigEndian.Uint32(p) != req {
		return Begun{}, false
	}
	b := Begun{Seq: binary.BigEndian.Uint64(p[deliverHead-8:]), Total: len(p) - deliverHead,
		Data: bytes.Clone(p[deliverHead:c.inGot])}
	copy(b.Ref[:], p[4+relay.MailboxSize:])
	return b, true
}

// Pushing is the envelope a subscription is pushing, as
// FollowConfig.Leave sees it: its sequence number, its size and how much
// of it came so far, and how it is coming.
type Pushing struct {
	Seq        uint64
	Total, Got int
	// Bytes is what the session has read since the look that first saw
	// this envelope coming, Since ago (so not the bytes that look saw:
	// over TLS the first record of a push may have waited whole in a
	// buffer); Idle how long since the session last read anything. As
	// a PageProgress's, the count grows a record at a time. Idle is set
	// with nothing in part too.
	Bytes       int
	Since, Idle time.Duration
	// Below is how long since bytes last came to the session, beneath
	// it too (a TLS record begun: transport.Arrivals), as the stall
	// watcher counts them: a flow throttled inside a record shows here,
	// not in Idle. Set with nothing in part too.
	Below time.Duration
	// Last is the last envelope the subscription handed over or paged
	// past, or the one it began after (0: the mailbox's start), whatever
	// is being pushed: what waits past it on the relay has not been
	// handed over (some of it may have come, whole, and wait in the
	// session's queue).
	Last uint64
}

// pushing returns the envelope of the Deliver frame being read, if a
// subscription pushes it and some of it is still to come, and the
// subscription's request id.
func (c *Client) pushing() (Pushing, uint32, bool) {
	c.inMu.Lock()
	p, got := c.inDeliver, c.inGot
	c.inMu.Unlock()
	if got < deliverHead || got >= len(p) {
		return Pushing{}, 0, false
	}
	req := binary.BigEndian.Uint32(p)
	c.mu.Lock()
	sub := c.subs[req]
	c.mu.Unlock()
	if !sub {
		return Pushing{}, 0, false
	}
	return Pushing{Seq: binary.BigEndian.Uint64(p[deliverHead-8:]), Total: len(p) - deliverHead, Got: got - deliverHead}, req, true
}

// parseHello accepts a ServerHello of our version and returns its
// challenge; a Result carries the relay's refusal.
func parseHello(t relay.FrameType, p []byte) ([relay.ChallengeSize]byte, error) {
	switch t {
	case relay.FrameResult:
		if r, err := relay.ParseResult(p); err == nil && r.Code != relay.CodeOK {
			return [relay.ChallengeSize]byte{}, &relay.Error{Code: r.Code, Msg: r.Msg}
		}
	case relay.FrameServerHello:
		h, err := relay.ParseServerHello(p)
		if err != nil {
			return h.Challenge, err
		}
		if h.Version != relay.ProtocolVersion {
			return h.Challenge, relay.ErrVersion
		}
		return h.Challenge, nil
	}
	return [relay.ChallengeSize]byte{}, relay.ErrMalformed
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

// Close ends the session.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Received is how many bytes the session has read from its connection
// (its frames, the last perhaps begun only): after a stall, what the
// network let through before it froze the flow.
func (c *Client) Received() int64 { return c.received.Load() }

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

// queued reports how many pushed deliveries wait in the Client, not yet
// taken from Deliveries.
func (c *Client) queued() int {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return len(c.queue)
}

func (c *Client) readLoop() {
	var err error
	defer func() { c.end(err) }()
	for {
		var t relay.FrameType
		var p []byte
		if t, p, err = c.readFrame(); err != nil {
			return
		}
		switch t {
		case relay.FrameResult:
			var r relay.Result
			if r, err = relay.ParseResult(p); err != nil {
				return
			}
			c.answer(r)
		case relay.FramePong:
			var r relay.Pong
			if r, err = relay.ParsePong(p); err != nil {
				return
			}
			c.answer(relay.Result{Req: r.Req, Body: r.Data})
		case relay.FrameDeliver:
			var d relay.Deliver
			if d, err = relay.ParseDeliver(p); err != nil {
				return
			}
			if err = c.delivered(d); err != nil {
				return
			}
			c.seen(t, nil, 0) // filed: not kept twice, nor for the session's life
		default:
			err = fmt.Errorf("relay: unexpected frame type %#x from relay", byte(t))
			return
		}
	}
}

// end records why the session ended and wakes every waiting request.
func (c *Client) end(err error) {
	c.mu.Lock()
	if c.stalled.Load() {
		err = errStalled
	} else if errors.Is(err, net.ErrClosed) && c.writeErr != nil {
		// Closed here after a write failed (a reset, say): that is why
		// the session ended, and what every request waiting hears.
		err = c.writeErr
	} else if err == nil || errors.Is(err, io.EOF) {
		err = ErrClosed
	}
	c.err = err
	pend := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, cl := range pend {
		close(cl.res)
	}
	close(c.done)
}

func (c *Client) answer(r relay.Result) {
	c.mu.Lock()
	cl := c.pending[r.Req]
	delete(c.pending, r.Req)
	c.mu.Unlock()
	if cl != nil {
		cl.res <- r
	}
}

// delivered files a Deliver frame: with the Fetch it answers, or on the
// push queue if it belongs to a subscription. Deliver frames for any other
// request id (a cancelled Fetch, a relay pushing what was never asked for)
// are dropped: the envelopes stay on the relay.
func (c *Client) delivered(d relay.Deliver) error {
	dv := Delivery{Mailbox: d.Mailbox, Ref: Ref(d.Ref), Seq: d.Seq, Envelope: d.Envelope}
	c.mu.Lock()
	cl, sub := c.pending[d.Req], c.subs[d.Req]
	if cl != nil && cl.fetch {
		defer c.mu.Unlock()
		if len(cl.fetched) >= relay.MaxFetch {
			return fmt.Errorf("%w: relay answered a Fetch with more than %d envelopes", relay.ErrMalformed, relay.MaxFetch)
		}
		cl.fetched = append(cl.fetched, dv)
		return nil
	}
	c.mu.Unlock()
	if !sub {
		return nil
	}
	c.qmu.Lock()
	if len(c.queue) >= maxQueued {
		c.qmu.Unlock()
		return fmt.Errorf("%w: relay pushed more than %d unacked envelopes", relay.ErrMalformed, maxQueued)
	}
	c.queue = append(c.queue, dv)
	c.qmu.Unlock()
	select {
	case c.qwake <- struct{}{}:
	default:
	}
	return nil
}

func (c *Client) write(m relay.Message) error { return c.writeCtx(context.Background(), m) }

// notWritten is writeCtx's error when ctx ended before the write began:
// the session is as it was.
type notWritten struct{ err error }

func (e *notWritten) Error() string { return e.err.Error() }
func (e *notWritten) Unwrap() error { return e.err }

// writeCtx writes m unless ctx has ended by the time the session's writer
// is free, and closes the session if ctx ends while the write is blocked
// (a frozen flow whose send buffer is full): the caller's deadline holds,
// not the stall window's, and a frame cut short would spoil the stream
// anyway.
func (c *Client) writeCtx(ctx context.Context, m relay.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		return &notWritten{err}
	}
	stop := func() bool { return true }
	if ctx.Done() != nil { // a context that can end (not the hello's)
		stop = context.AfterFunc(ctx, func() { c.conn.Close() })
	}
	// Built in the writer's own free space (empty after each Flush), so a
	// frame up to relay.SessionBufSize costs no allocation of its own.
	_, err := c.bw.Write(relay.AppendFrame(c.bw.AvailableBuffer(), m))
	if err == nil {
		err = c.bw.Flush()
	}
	if !stop() {
		return ctx.Err() // the session is closed
	}
	return err
}

// onFirstAck runs f once the relay has acknowledged a request on this
// session: the moment a way in counts as working.
func (c *Client) onFirstAck(f func()) { c.firstAck.Store(&f) }

// acked runs the first-ack hook, once.
func (c *Client) acked() {
	if f := c.firstAck.Swap(nil); f != nil {
		(*f)()
	}
}

// WithRelayKey sets the relay's Ed25519 descriptor key, which owner
// signatures are bound to. Dial and DialTunnel set it from the descriptor;
// a caller of New must pass it to sign anything. Take it from the relay's
// signed descriptor, never from the relay itself.
func WithRelayKey(key ed25519.PublicKey) Option {
	return func(c *Client) { c.relayKey = append(ed25519.PublicKey(nil), key...) }
}

// binding is what owner signatures on this session are bound to.
func (c *Client) binding() (relay.Binding, error) {
	b, ok := relay.NewBinding(c.relayKey, c.challenge)
	if !ok {
		return b, ErrNoRelayKey
	}
	return b, nil
}
