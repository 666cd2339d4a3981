package relay

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// Observer receives relay events for metrics. Every argument comes from a
// small fixed set of strings; none identifies a user. A nil Observer in
// ServerConfig is fine.
type Observer interface {
	SessionOpened(transportName string)
	SessionClosed(transportName string)
	// Envelope reports an envelope event: "accepted", "delivered" (acked by
	// its recipient) or "rejected" (with a reason: malformed, bad_envelope,
	// no_mailbox, mailbox_full, relay_full, capability, internal).
	Envelope(event, reason string)
	// SendDuration reports how long an accepted Send took from the relay
	// reading it to the envelope being durable.
	SendDuration(d time.Duration)
}

type nopObserver struct{}

func (nopObserver) SessionOpened(string)       {}
func (nopObserver) SessionClosed(string)       {}
func (nopObserver) Envelope(string, string)    {}
func (nopObserver) SendDuration(time.Duration) {}

// ServerConfig configures a Server. Store is required; every other zero
// field means the default given.
type ServerConfig struct {
	Store store.Store
	// Logger gets session-level events at debug level, never an address,
	// mailbox id, key, ref or envelope. Default: discard.
	Logger *slog.Logger
	// Observer gets events for metrics. Default: none.
	Observer Observer
	// HelloTimeout bounds how long a new session may take to say hello.
	// Default 15s.
	HelloTimeout time.Duration
	// IdleTimeout closes a session that sends nothing for this long. Clients
	// ping to stay connected. Default 5 minutes.
	IdleTimeout time.Duration
	// MaxInFlight bounds concurrent Sends per session. Default 64.
	MaxInFlight int
	// MaxSubscriptions bounds subscriptions per session. Default 16.
	MaxSubscriptions int
	// MaxSessions bounds sessions across all listeners; a session beyond
	// it is closed at once. Default 8192.
	MaxSessions int
	// MaxSendsInFlight bounds Sends being stored across all sessions (each
	// holds up to three copies of a 64 KiB envelope). Default 512.
	MaxSendsInFlight int
	// MaxReads bounds concurrent store reads for Fetch and push across all
	// sessions. Default 4 × GOMAXPROCS.
	MaxReads int
}

// Server serves the session protocol on transport listeners.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	obs Observer

	sendSem chan struct{} // global in-flight Sends
	readSem chan struct{} // global store reads for Fetch and push

	mu       sync.Mutex
	sessions map[*session]struct{}
}

// NewServer returns a server for cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("relay: ServerConfig.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 15 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = 16
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 8192
	}
	if cfg.MaxSendsInFlight <= 0 {
		cfg.MaxSendsInFlight = 512
	}
	if cfg.MaxReads <= 0 {
		cfg.MaxReads = 4 * runtime.GOMAXPROCS(0)
	}
	return &Server{cfg: cfg, log: cfg.Logger, obs: cfg.Observer, sessions: make(map[*session]struct{}),
		sendSem: make(chan struct{}, cfg.MaxSendsInFlight), readSem: make(chan struct{}, cfg.MaxReads)}, nil
}

// Serve accepts sessions from ln until ctx ends or ln fails, serving each in
// its own goroutine. It returns nil when ctx ends. Sessions still open are
// closed when ctx ends; Serve waits for them.
func (s *Server) Serve(ctx context.Context, ln transport.Listener, transportName string) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ServeConn(ctx, conn, transportName)
		}()
	}
}

// ServeConn runs one session on conn until it ends, then closes conn.
func (s *Server) ServeConn(ctx context.Context, conn transport.Conn, transportName string) {
	ctx, cancel := context.WithCancel(ctx)
	ss := &session{srv: s, conn: conn, ctx: ctx, cancel: cancel,
		br: bufio.NewReaderSize(conn, sessionBufSize), bw: bufio.NewWriterSize(conn, sessionBufSize),
		subs: make(map[[32]byte]*subscription), sem: make(chan struct{}, s.cfg.MaxInFlight)}
	s.mu.Lock()
	if len(s.sessions) >= s.cfg.MaxSessions {
		s.mu.Unlock()
		conn.Close()
		cancel()
		s.log.Debug("session refused", "transport", transportName, "reason", "relay full")
		return
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	s.obs.SessionOpened(transportName)
	// Closing the conn is the one way to unblock a Read on every transport.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err := ss.run()
	cancel()
	stop()
	conn.Close()
	ss.wg.Wait()
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	s.obs.SessionClosed(transportName)
	s.log.Debug("session ended", "transport", transportName, "reason", endReason(err))
}

// endReason maps a session's end to a short fixed string for logs.
func endReason(err error) string {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return "closed"
	case errors.Is(err, errFrameTooLarge):
		return "frame too large"
	case errors.Is(err, errMalformed):
		return "malformed"
	case errors.Is(err, errIdle):
		return "idle"
	case errors.Is(err, ErrVersion):
		return "version"
	case errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled):
		return "shutdown"
	}
	return "transport " + transport.ClassOf(err).String()
}

var errIdle = errors.New("relay: session idle")

type session struct {
	srv    *Server
	conn   transport.Conn
	ctx    context.Context
	cancel context.CancelFunc
	br     *bufio.Reader

	wmu sync.Mutex
	bw  *bufio.Writer

	challenge [ChallengeSize]byte
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
		t, p, err := readFrame(ss.br)
		if err != nil {
			return wrap(err)
		}
		if err := ss.handle(t, p); err != nil {
			return err
		}
	}
}

func (ss *session) hello() error {
	t, p, err := readFrame(ss.br)
	if err != nil {
		return err
	}
	c := cursor{b: p}
	magic := c.take(4)
	lo, hi := c.u8(), c.u8()
	if t != frameClientHello || !c.done() || [4]byte(magic) != helloMagic {
		return errMalformed
	}
	if lo > ProtocolVersion || hi < ProtocolVersion {
		ss.write(frameResult, encodeResult(0, CodeVersion, CodeVersion.String(), nil))
		return ErrVersion
	}
	rand.Read(ss.challenge[:])
	body := append([]byte{ProtocolVersion}, ss.challenge[:]...)
	body = binary.BigEndian.AppendUint32(body, envelope.Bucket64K)
	return ss.write(frameServerHello, body)
}

// write sends one frame and flushes.
func (ss *session) write(t frameType, payload ...[]byte) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	var hdr [frameHeaderSize]byte
	hdr[0] = byte(t)
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	binary.BigEndian.PutUint32(hdr[1:], uint32(n))
	ss.bw.Write(hdr[:])
	for _, p := range payload {
		ss.bw.Write(p)
	}
	return ss.bw.Flush()
}

func (ss *session) reply(req uint32, err error, body []byte) error {
	if err == nil {
		return ss.write(frameResult, encodeResult(req, CodeOK, "", body))
	}
	code := codeOf(err)
	return ss.write(frameResult, encodeResult(req, code, code.String(), nil))
}

// codeOf maps store and protocol errors to wire codes. Unknown errors
// become CodeInternal and their text never leaves the relay.
func codeOf(err error) Code {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	var se *store.Error
	if errors.As(err, &se) {
		switch se.Code {
		case store.CodeNoMailbox:
			return CodeNoMailbox
		case store.CodeMailboxExists:
			return CodeMailboxExists
		case store.CodeMailboxFull:
			return CodeMailboxFull
		case store.CodeStoreFull:
			return CodeRelayFull
		case store.CodeInvalid:
			return CodeBadFrame
		}
	}
	return CodeInternal
}

// handle processes one request frame. It returns an error only when the
// session must end.
func (ss *session) handle(t frameType, p []byte) error {
	if len(p) < 4 {
		if t == frameClientHello {
			return errMalformed
		}
		// No request id to answer: framing is lost or the peer is not a client.
		return errMalformed
	}
	req := binary.BigEndian.Uint32(p)
	switch t {
	case frameSend:
		// Sends wait for a durable commit; run them concurrently so one
		// session can keep a group commit busy.
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
			defer func() { <-ss.sem; <-ss.srv.sendSem }()
			ref, err := ss.send(p[4:])
			var body []byte
			if err == nil {
				body = ref[:]
			}
			ss.reply(req, err, body)
		}()
		return nil
	case frameCreate:
		return ss.reply(req, ss.create(p), nil)
	case frameSubscribe:
		return ss.reply(req, ss.subscribe(req, p), nil)
	case frameFetch:
		n, err := ss.fetch(req, p)
		return ss.reply(req, err, binary.BigEndian.AppendUint32(nil, uint32(n)))
	case frameAck:
		n, err := ss.ack(p)
		return ss.reply(req, err, binary.BigEndian.AppendUint32(nil, uint32(n)))
	case frameRotate:
		n, err := ss.rotate(p)
		return ss.reply(req, err, binary.BigEndian.AppendUint32(nil, uint32(n)))
	case frameDelete:
		return ss.reply(req, ss.delete(p), nil)
	case framePing:
		if len(p)-4 > MaxPingData {
			return ss.reply(req, ErrBadFrame, nil)
		}
		return ss.write(framePong, p)
	case frameForward:
		return ss.reply(req, ErrUnsupported, nil)
	case frameClientHello:
		return ss.reply(req, ErrBadFrame, nil)
	default:
		return ss.reply(req, ErrUnknownFrame, nil)
	}
}

func (ss *session) create(p []byte) error {
	c := cursor{b: p[4:]}
	id := c.id()
	owner := ed25519.PublicKey(c.take(ed25519.PublicKeySize))
	capv := c.take(int(c.u8()))
	signedLen := len(p) - len(c.b)
	sig := c.take(ed25519.SignatureSize)
	if !c.done() || len(capv) > MaxCapLen {
		return ErrBadFrame
	}
	// The creator proves it holds the owner key.
	if !verify(owner, ss.challenge[:], frameCreate, p[:signedLen], sig) {
		return ErrUnauthorized
	}
	return ss.srv.cfg.Store.CreateMailbox(ss.ctx, id, owner, capv)
}

func (ss *session) send(p []byte) (store.Ref, error) {
	start := time.Now()
	c := cursor{b: p}
	capb := c.take(int(c.u8()))
	env := c.rest()
	obs := ss.srv.obs
	if c.bad || len(capb) > MaxCapLen {
		obs.Envelope("rejected", "malformed")
		return store.Ref{}, ErrBadFrame
	}
	id, err := envelope.PeekMailbox(env)
	if err != nil {
		obs.Envelope("rejected", "bad_envelope")
		return store.Ref{}, ErrBadEnvelope
	}
	mb, err := ss.srv.cfg.Store.Mailbox(ss.ctx, id)
	if err != nil {
		obs.Envelope("rejected", reasonOf(err))
		return store.Ref{}, err
	}
	if len(mb.SendCap) > 0 {
		sum := sha256.Sum256(capb)
		if len(capb) == 0 || subtle.ConstantTimeCompare(sum[:], mb.SendCap) != 1 {
			obs.Envelope("rejected", "capability")
			return store.Ref{}, ErrCapability
		}
	}
	ref, err := ss.srv.cfg.Store.Put(ss.ctx, id, env)
	if err != nil {
		obs.Envelope("rejected", reasonOf(err))
		return store.Ref{}, err
	}
	obs.Envelope("accepted", "")
	obs.SendDuration(time.Since(start))
	return ref, nil
}

// reasonOf maps an error to a fixed metric reason.
func reasonOf(err error) string {
	switch codeOf(err) {
	case CodeNoMailbox:
		return "no_mailbox"
	case CodeMailboxFull:
		return "mailbox_full"
	case CodeRelayFull:
		return "relay_full"
	case CodeBadFrame:
		return "malformed"
	}
	return "internal"
}

// owned parses "mailbox 32 ... sig 64" requests: it returns the mailbox id
// and the fields between id and signature after checking the signature of
// the mailbox owner over everything before it.
func (ss *session) owned(t frameType, p []byte, middle int) ([32]byte, []byte, error) {
	var id [32]byte
	if len(p) < 4+32+middle+ed25519.SignatureSize || middle < 0 {
		return id, nil, ErrBadFrame
	}
	copy(id[:], p[4:36])
	mid := p[36 : 36+middle]
	if len(p) != 36+middle+ed25519.SignatureSize {
		return id, nil, ErrBadFrame
	}
	sig := p[36+middle:]
	mb, err := ss.srv.cfg.Store.Mailbox(ss.ctx, id)
	if err != nil {
		return id, nil, err
	}
	if !verify(mb.Owner, ss.challenge[:], t, p[:36+middle], sig) {
		return id, nil, ErrUnauthorized
	}
	return id, mid, nil
}

func (ss *session) fetch(req uint32, p []byte) (int, error) {
	id, mid, err := ss.owned(frameFetch, p, 2+8)
	if err != nil {
		return 0, err
	}
	max := int(binary.BigEndian.Uint16(mid))
	after := binary.BigEndian.Uint64(mid[2:])
	if max <= 0 || max > MaxFetch {
		max = MaxFetch
	}
	items, err := ss.read(ss.ctx, id, after, max)
	if err != nil {
		return 0, err
	}
	rq := binary.BigEndian.AppendUint32(nil, req)
	for _, it := range items {
		if err := ss.deliver(rq, id, it); err != nil {
			return 0, err
		}
	}
	return len(items), nil
}

// read is a store read under the server-wide read budget.
func (ss *session) read(ctx context.Context, id [32]byte, after uint64, max int) ([]store.Item, error) {
	select {
	case ss.srv.readSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-ss.srv.readSem }()
	return ss.srv.cfg.Store.FetchAfter(ctx, id, after, max)
}

func (ss *session) deliver(rq []byte, id [32]byte, it store.Item) error {
	return ss.write(frameDeliver, rq, id[:], it.Ref[:], binary.BigEndian.AppendUint64(nil, it.Seq), it.Envelope)
}

func (ss *session) ack(p []byte) (int, error) {
	if len(p) < 4+32+2 {
		return 0, ErrBadFrame
	}
	n := int(binary.BigEndian.Uint16(p[36:38]))
	if n > MaxAckRefs {
		return 0, ErrBadFrame
	}
	id, mid, err := ss.owned(frameAck, p, 2+n*RefSize)
	if err != nil {
		return 0, err
	}
	refs := make([]store.Ref, n)
	for i := range refs {
		copy(refs[i][:], mid[2+i*RefSize:])
	}
	done, err := ss.srv.cfg.Store.Ack(ss.ctx, id, refs...)
	if err != nil {
		return 0, err
	}
	for i := 0; i < done; i++ {
		ss.srv.obs.Envelope("delivered", "")
	}
	ss.smu.Lock()
	if sub := ss.subs[id]; sub != nil {
		sub.acked(refs)
	}
	ss.smu.Unlock()
	return done, nil
}

func (ss *session) rotate(p []byte) (int, error) {
	c := cursor{b: p[4:]}
	old := c.id()
	nw := c.id()
	owner := ed25519.PublicKey(c.take(ed25519.PublicKeySize))
	capv := c.take(int(c.u8()))
	signedLen := len(p) - len(c.b)
	oldSig := c.take(ed25519.SignatureSize)
	newSig := c.take(ed25519.SignatureSize)
	if !c.done() || len(capv) > MaxCapLen {
		return 0, ErrBadFrame
	}
	mb, err := ss.srv.cfg.Store.Mailbox(ss.ctx, old)
	if err != nil {
		return 0, err
	}
	if !verify(mb.Owner, ss.challenge[:], frameRotate, p[:signedLen], oldSig) ||
		!verify(owner, ss.challenge[:], frameRotate, p[:signedLen], newSig) {
		return 0, ErrUnauthorized
	}
	ss.unsubscribe(old)
	return ss.srv.cfg.Store.RotateMailbox(ss.ctx, old, nw, owner, capv)
}

func (ss *session) delete(p []byte) error {
	id, _, err := ss.owned(frameDelete, p, 0)
	if err != nil {
		return err
	}
	ss.unsubscribe(id)
	return ss.srv.cfg.Store.DeleteMailbox(ss.ctx, id)
}

// subscription pushes a mailbox's envelopes to the session: every waiting
// one once, then each new one, reading onward from a cursor (the last
// sequence number pushed) so nothing is read twice. At most MaxUnacked
// pushed envelopes may wait for this session's acks.
type subscription struct {
	cancel context.CancelFunc
	kick   chan struct{}
	mu     sync.Mutex
	sent   map[store.Ref]struct{} // pushed, not yet acked on this session
}

func (sub *subscription) acked(refs []store.Ref) {
	sub.mu.Lock()
	for _, r := range refs {
		delete(sub.sent, r)
	}
	sub.mu.Unlock()
	select {
	case sub.kick <- struct{}{}:
	default:
	}
}

func (ss *session) subscribe(req uint32, p []byte) error {
	id, _, err := ss.owned(frameSubscribe, p, 0)
	if err != nil {
		return err
	}
	ss.smu.Lock()
	defer ss.smu.Unlock()
	if _, ok := ss.subs[id]; ok {
		return nil
	}
	if len(ss.subs) >= ss.srv.cfg.MaxSubscriptions {
		return ErrBusy
	}
	ctx, cancel := context.WithCancel(ss.ctx)
	sub := &subscription{cancel: cancel, kick: make(chan struct{}, 1), sent: make(map[store.Ref]struct{})}
	ss.subs[id] = sub
	notify, unsub := ss.srv.cfg.Store.Notify(id)
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		defer unsub()
		ss.push(ctx, req, id, sub, notify)
		// However the push ended, the subscription is gone: a new
		// Subscribe must start a new one.
		ss.smu.Lock()
		if ss.subs[id] == sub {
			delete(ss.subs, id)
		}
		ss.smu.Unlock()
		cancel()
	}()
	return nil
}

func (ss *session) unsubscribe(id [32]byte) {
	ss.smu.Lock()
	if sub := ss.subs[id]; sub != nil {
		sub.cancel()
		delete(ss.subs, id)
	}
	ss.smu.Unlock()
}

func (ss *session) push(ctx context.Context, req uint32, id [32]byte, sub *subscription, notify <-chan struct{}) {
	rq := binary.BigEndian.AppendUint32(nil, req)
	var last uint64
	for {
		sub.mu.Lock()
		room := MaxUnacked - len(sub.sent)
		sub.mu.Unlock()
		more := false
		if room > 0 {
			items, err := ss.read(ctx, id, last, min(room, MaxFetch))
			if err != nil {
				return
			}
			for _, it := range items {
				sub.mu.Lock()
				sub.sent[it.Ref] = struct{}{}
				sub.mu.Unlock()
				last = it.Seq
				if err := ss.deliver(rq, id, it); err != nil {
					ss.cancel()
					return
				}
			}
			more = len(items) == min(room, MaxFetch)
		}
		if more {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-notify:
			if !ok {
				return
			}
		case <-sub.kick:
		}
	}
}
