package server

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

var errIdle = errors.New("relay: session idle")

type session struct {
	srv    *Server
	conn   transport.Conn
	ctx    context.Context
	cancel context.CancelFunc
	fr     *frameReader // the run goroutine's; see frameio.go

	writers atomic.Int32 // writers waiting for or holding wmu
	wmu     sync.Mutex
	w       io.Writer   // conn, or a tunnel's TLS inside it
	wbuf    *[]byte     // frames not yet written; nil while there are none
	werr    error       // the first failed write's error, returned by every later one
	wtimer  *time.Timer // armed while a write is in progress
	stalled atomic.Bool // the session ended because a write stayed blocked

	deliverSem chan struct{} // this session's delivery budget, one token per batch

	bind      relay.Binding // this relay's key and the session challenge
	peerRelay atomic.Bool   // a relay authenticated the session as a link (RelayAuth)
	inner     bool          // the session runs inside a tunnel's TLS (home side)
	sem       chan struct{}
	wg        sync.WaitGroup

	smu  sync.Mutex
	subs map[[32]byte]*subscription
}

// idleTimer closes the session when no frame arrives for a while. It works
// on every transport, deadlines or not.
type idleTimer struct {
	t *time.Timer
	d time.Duration
}

func (ss *session) run() error {
	timedOut := make(chan struct{})
	idle := &idleTimer{d: ss.srv.cfg.HelloTimeout}
	idle.t = time.AfterFunc(idle.d, func() { close(timedOut); ss.cancel() })
	defer idle.t.Stop()
	wrap := func(err error) error {
		select {
		case <-timedOut:
			return errIdle
		default:
			return err
		}
	}
	if err := ss.hello(); err != nil {
		return wrap(err)
	}
	idle.d = ss.srv.cfg.IdleTimeout
	for {
		if !idle.t.Reset(idle.d) {
			return errIdle
		}
		t, p, err := ss.fr.ReadFrame()
		if err != nil {
			return wrap(err)
		}
		if t == relay.FrameTunnel {
			if spliced, err := ss.tunnel(p, idle.t); spliced || err != nil {
				return err
			}
			continue
		}
		if err := ss.handle(t, p); err != nil {
			return err
		}
	}
}

func (ss *session) hello() error {
	t, p, err := ss.fr.ReadFrame()
	if err != nil {
		return err
	}
	if t == relay.FrameTunnelHello && !ss.inner {
		if err := ss.acceptTunnel(p); err != nil {
			return err
		}
		return ss.hello()
	}
	h, err := relay.ParseClientHello(p)
	if t != relay.FrameClientHello || err != nil {
		return relay.ErrMalformed
	}
	if h.Min > relay.ProtocolVersion || h.Max < relay.ProtocolVersion {
		ss.write(relay.Result{Code: relay.CodeVersion, Msg: relay.CodeVersion.String()})
		return relay.ErrVersion
	}
	var challenge [relay.ChallengeSize]byte
	rand.Read(challenge[:])
	ss.bind, _ = relay.NewBinding(ss.srv.pub, challenge)
	return ss.write(relay.ServerHello{Version: relay.ProtocolVersion, Challenge: challenge, MaxEnvelope: envelope.Bucket64K})
}

// write sends one frame: it is written out at once unless another writer
// is waiting, which then writes both (see frameio.go). A write that stays
// blocked for WriteTimeout ends the session (writeStalled).
func (ss *session) write(m relay.Message) error { return ss.put(m, true) }

// queue adds a frame to the write buffer without writing it out (unless
// the buffer is full); the caller calls flush before it waits for
// anything.
func (ss *session) queue(m relay.Message) error { return ss.put(m, false) }

// flush writes out what is buffered unless another writer is waiting.
func (ss *session) flush() error { return ss.put(nil, true) }

func (ss *session) put(m relay.Message, flush bool) error {
	ss.writers.Add(1)
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	last := ss.writers.Add(-1) == 0
	if ss.werr != nil {
		return ss.werr
	}
	alone := writtenAlone(m)
	if alone && ss.wbuf != nil && len(*ss.wbuf) > 0 {
		if err := ss.writeOut(); err != nil {
			return err
		}
	}
	if m != nil {
		if ss.wbuf == nil {
			ss.wbuf = getBuf()
		}
		*ss.wbuf = appendMessage(*ss.wbuf, m)
	}
	if ss.wbuf == nil || !alone && (!flush || !last) && len(*ss.wbuf) < flushBytes {
		return nil
	}
	return ss.writeOut()
}

// writtenAlone says whether m is a Deliver frame of an envelope of
// aloneBytes or more, which put writes out alone: what is buffered
// before it, then the frame. Over TLS a client gets a record's bytes
// only once the whole record came, and the https engine cuts each
// transport write into records of its own; a large frame written with
// the frame after it shared its last record with that frame's first
// 16 KiB, and came whole only once they had come too. Behind a throttle
// of 8 KB/s a flow, each 16 KiB envelope pushed in a run came 2 s late
// (a follower on such a network saw a message's first fragment 2.2 s
// after its first 16,290 bytes; 2026-12-07).
func writtenAlone(m relay.Message) bool {
	d, ok := m.(relay.Deliver)
	return ok && len(d.Envelope) >= aloneBytes
}

// aloneBytes is the least envelope writtenAlone writes alone: a 16 KiB
// bucket's, as large as a record; its frame's tail then costs a record
// of its own, 31 bytes more (a TLS 1.3 record's 22 and an HTTP/2 DATA
// frame's 9), 0.2 % of it. Smaller ones go several to a record (four
// of 4 KiB): each alone would cost 0.8 %.
const aloneBytes = envelope.Bucket16K

// writePending writes out whatever is buffered, whether or not another
// writer is waiting: for code about to write to the connection around the
// buffer (a tunnel's TLS handshake or splice), which must not leave a
// frame behind it.
func (ss *session) writePending() error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	return ss.writePendingLocked()
}

// writePendingLocked is writePending for a caller that holds wmu.
func (ss *session) writePendingLocked() error {
	if ss.werr != nil {
		return ss.werr
	}
	if ss.wbuf == nil {
		return nil
	}
	return ss.writeOut()
}

// writeOut writes the buffer to the transport; the caller holds wmu.
func (ss *session) writeOut() error {
	ss.wtimer.Reset(ss.srv.writeTimeout())
	_, err := ss.w.Write(*ss.wbuf)
	ss.wtimer.Stop()
	if err != nil {
		// The transport may still hold the buffer: it is not reused.
		ss.wbuf, ss.werr = nil, err
		return err
	}
	putBuf(ss.wbuf)
	ss.wbuf = nil
	return nil
}

// appendMessage appends m as a frame to b.
func appendMessage(b []byte, m relay.Message) []byte {
	if d, ok := m.(relay.Deliver); ok {
		return append(d.AppendFrameHead(b), d.Envelope...)
	}
	return relay.AppendFrame(b, m)
}

var errWriteStalled = errors.New("relay: session write stalled")

// writeStalled ends a session whose peer stopped reading: closing the
// conn unblocks the write and frees what it held.
func (ss *session) writeStalled() {
	ss.stalled.Store(true)
	ss.cancel()
	ss.conn.Close()
}

func (ss *session) reply(req uint32, err error, body []byte) error {
	if err == nil {
		return ss.write(relay.Result{Req: req, Body: body})
	}
	code := codeOf(err)
	return ss.write(relay.Result{Req: req, Code: code, Msg: code.String()})
}

// codeOf maps store and protocol errors to wire codes. Unknown errors
// become CodeInternal and their text never leaves the relay.
func codeOf(err error) relay.Code {
	var pe *relay.Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	if errors.Is(err, relay.ErrMalformed) {
		return relay.CodeBadFrame
	}
	var se *store.Error
	if errors.As(err, &se) {
		switch se.Code {
		case store.CodeNoMailbox:
			return relay.CodeNoMailbox
		case store.CodeMailboxExists:
			return relay.CodeMailboxExists
		case store.CodeMailboxFull:
			return relay.CodeMailboxFull
		case store.CodeStoreFull:
			return relay.CodeRelayFull
		case store.CodeInvalid:
			return relay.CodeBadFrame
		case store.CodeRotatedOften:
			return relay.CodeBusy
		}
	}
	return relay.CodeInternal
}

// handle processes one request frame. It returns an error only when the
// session must end.
func (ss *session) handle(t relay.FrameType, p []byte) error {
	req, ok := relay.RequestID(p)
	if !ok {
		// No request id to answer: framing is lost or the peer is not a client.
		return relay.ErrMalformed
	}
	switch t {
	case relay.FrameSend:
		return ss.sendAsync(req, p, ss.sendPooled)
	case relay.FrameCreate:
		return ss.reply(req, ss.create(p), nil)
	case relay.FrameSubscribe:
		return ss.reply(req, ss.subscribe(p), nil)
	case relay.FrameSubscribeAfter:
		body, err := ss.subscribeFrom(p)
		return ss.reply(req, err, body)
	case relay.FrameFetch:
		return ss.counted(req)(ss.fetch(p))
	case relay.FrameAck:
		return ss.counted(req)(ss.ack(p))
	case relay.FrameRotate:
		return ss.counted(req)(ss.rotate(p))
	case relay.FrameDelete:
		return ss.reply(req, ss.delete(p), nil)
	case relay.FramePing:
		m, err := relay.ParsePing(p)
		if err != nil {
			return ss.reply(req, relay.ErrBadFrame, nil)
		}
		return ss.write(relay.Pong(m))
	case relay.FrameForward:
		return ss.reply(req, ss.forward(p), nil)
	case relay.FrameLayer:
		if !ss.peerRelay.Load() {
			return ss.reply(req, relay.ErrUnauthorized, nil)
		}
		return ss.sendAsync(req, p, ss.layer)
	case relay.FrameRelayAuth:
		return ss.reply(req, ss.relayAuth(p), nil)
	case relay.FrameDescriptor:
		line, err := ss.descriptor(p)
		return ss.reply(req, err, line)
	case relay.FrameFetchPart:
		body, err := ss.fetchPart(p)
		return ss.reply(req, err, body)
	case relay.FrameClientHello:
		return ss.reply(req, relay.ErrBadFrame, nil)
	default:
		return ss.reply(req, relay.ErrUnknownFrame, nil)
	}
}

// counted answers a request whose Result body is a count.
func (ss *session) counted(req uint32) func(int, error) error {
	return func(n int, err error) error { return ss.reply(req, err, relay.CountBody(n)) }
}

// sendAsync stores a Send in its own goroutine: Sends wait for a durable
// commit, and running them concurrently lets one session keep a group
// commit busy.
func (ss *session) sendAsync(req uint32, p []byte, store func([]byte) (store.Ref, error)) error {
	select {
	case ss.sem <- struct{}{}:
	case <-ss.ctx.Done():
		return ss.ctx.Err()
	}
	select {
	case ss.srv.sendSem <- struct{}{}:
	case <-ss.ctx.Done():
		<-ss.sem
		return ss.ctx.Err()
	}
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer func() { <-ss.sem }()
		ref, err := store(p)
		// The relay-wide slot bounds the stores in flight, not the
		// replies: a session that stops reading its Results blocks in
		// reply until its write times out, and held every slot it had
		// meanwhile (a reviewer: 8 such sessions took all 512 for 30 s,
		// and every other client's Send waited). Its own slot (ss.sem)
		// stays until the reply is written, which bounds what it holds.
		p = nil
		<-ss.srv.sendSem
		var body []byte
		if err == nil {
			body = ref[:]
		}
		ss.reply(req, err, body)
	}()
	return nil
}

func (ss *session) forward(p []byte) error {
	m, err := relay.ParseForward(p)
	if err != nil {
		return relay.ErrBadFrame
	}
	if ss.srv.cfg.Forwarder == nil {
		return relay.ErrUnsupported
	}
	return ss.srv.cfg.Forwarder.Forward(ss.ctx, ss.source(), m.Payload)
}

// source is what the client counts as for the server's own per-source
// limits: what the transport's listener counts it as (a relay-side Conn
// hides the address), else a keyed hash of the address the Conn gives.
func (ss *session) source() [16]byte {
	if s, ok := ss.conn.(transport.Sourced); ok {
		return s.Source()
	}
	var remote string
	if a := ss.conn.RemoteAddr(); a != nil {
		remote = a.String()
	}
	h := transport.SourceHash(ss.srv.sourceKey, remote)
	return [16]byte(h[:16])
}

func (ss *session) descriptor(p []byte) ([]byte, error) {
	if _, err := relay.ParseDescriptorRequest(p); err != nil {
		return nil, relay.ErrBadFrame
	}
	if ss.srv.cfg.Descriptor == nil {
		return nil, relay.ErrUnsupported
	}
	return []byte(ss.srv.cfg.Descriptor()), nil
}
