package borrow

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/transport"
)

// spliceBuf is the size of each direction's copy buffer.
const spliceBuf = 16 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, spliceBuf); return &b }}

// state is who a connection belongs to. It changes once, from undecided.
type state int

const (
	undecided state = iota
	toOrigin        // spliced; also once the origin has sent or closed anything
	toRelay         // authenticated, handed to Accept
)

// flow is one accepted connection: its inspection, its origin connection
// and, if spliced, both directions of the splice.
type flow struct {
	l      *Listener
	client net.Conn
	act    activity

	dialCancel context.CancelFunc
	dialed     chan struct{} // closed once the origin dial has ended
	backEnded  chan struct{} // closed once origin-to-client has ended
	inspected  chan struct{} // closed once the inspection has stopped reading (or there was none)
	back       chan struct{} // closed once its goroutine has returned
	originFIN  atomic.Bool   // the origin's FIN came before anything else it sent

	mu     sync.Mutex
	state  state
	origin net.Conn // set before dialed closes; nil if the dial failed
	killed bool
}

// inspection is what reading the first record found.
type inspection struct {
	prefix    []byte            // every byte read from the client, in order
	err       error             // the read error that ended it, if any
	authentic bool              // a valid tag, not seen before
	outcome   transport.Outcome // for Observe if spliced
}

// handle decides where c goes and, if it goes to the origin, splices it.
func (l *Listener) handle(c net.Conn) {
	defer l.wg.Done()
	src := l.sources.keyOf(c.RemoteAddr())
	if !l.sources.acquire(src) {
		l.opts.Observe(transport.OutcomeLimited)
		reset(c)
		return
	}
	defer l.sources.release(src)
	ctx, cancel := context.WithTimeout(l.ctx, l.opts.DialTimeout)
	f := &flow{l: l, client: c, dialCancel: cancel, dialed: make(chan struct{}),
		backEnded: make(chan struct{}), back: make(chan struct{}), inspected: make(chan struct{})}
	f.act.init(l.opts.SpliceIdle, l.opts.HalfCloseIdle)
	if !l.track(f) {
		cancel()
		c.Close()
		return
	}
	defer l.untrack(f)
	// Inspect if both this source and the listener have room; else
	// straight to the origin.
	inspect := l.sources.acquirePending(src)
	if inspect && !tryAcquire(l.pending) {
		l.sources.releasePending(src)
		inspect = false
	}
	l.wg.Add(1)
	go f.dialAndPumpBack(ctx)
	in := inspection{outcome: transport.OutcomeCover}
	if inspect {
		in = f.inspect()
		close(f.inspected)
		<-l.pending
		l.sources.releasePending(src)
	} else {
		close(f.inspected)
	}
	if in.authentic && f.claim(toRelay) {
		f.handOver(in.prefix)
		return
	}
	f.claim(toOrigin)
	f.splice(in)
}

// inspect reads the client's first bytes for as long as they can still be
// an authenticating ClientHello record, and checks the tag of a whole one.
func (f *flow) inspect() inspection {
	in := inspection{outcome: transport.OutcomeCover}
	limit := RecordHeaderLen + MaxRecord
	buf := make([]byte, limit)
	n, v, total := 0, needMore, 0
	f.client.SetReadDeadline(time.Now().Add(f.l.opts.HelloTimeout))
	for i := 0; v == needMore && n < limit && i < limit; i++ {
		if f.originsAlready() {
			in.err = os.ErrDeadlineExceeded // as if HelloTimeout had passed
			break
		}
		m, err := f.client.Read(buf[n:])
		n += m
		if h := f.l.opts.inspected; h != nil {
			h(n)
		}
		v, total = scan(buf[:n])
		if err != nil {
			in.err = err
			break
		}
	}
	f.client.SetReadDeadline(time.Time{})
	in.prefix = slices.Clone(buf[:n])
	if v == wholeRecord && in.err == nil {
		in.authentic, in.outcome = f.l.authenticate(in.prefix[RecordHeaderLen:total])
	}
	return in
}

// authenticate checks the tag of a ClientHello message and spends it.
func (l *Listener) authenticate(msg []byte) (bool, transport.Outcome) {
	ch, err := parseClientHello(msg)
	if err != nil {
		return false, transport.OutcomeCover
	}
	now := l.opts.Now()
	w, ok := l.key.verify(ch, now)
	if !ok {
		return false, transport.OutcomeCover
	}
	if !l.replay.admit(w, windowOf(now), ch.sessionID) {
		return false, transport.OutcomeReplay
	}
	return true, transport.OutcomeOK
}

// claim moves an undecided flow to s; it reports whether the flow is s.
func (f *flow) claim(s state) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == undecided {
		f.state = s
	}
	return f.state == s
}

// originsAlready reports whether the origin has claimed the flow (it sent
// bytes, FIN or a reset first).
func (f *flow) originsAlready() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == toOrigin
}

// claimByOrigin moves an undecided flow to the origin, whose first sign
// (bytes, FIN or reset) it was; fin if a FIN. It reports whether the flow
// is the origin's. The flow cannot go to the relay any more, so an
// inspection under way ends at once (its held bytes then go on towards
// the origin, see forward), as a direct client's bytes would have reached
// the origin. originFIN is set with the state, under f.mu, so that forward,
// which runs once handle has seen the state, sees it too.
func (f *flow) claimByOrigin(fin bool) bool {
	f.mu.Lock()
	if f.state == undecided {
		f.state = toOrigin
		f.originFIN.Store(fin)
	}
	ours := f.state == toOrigin
	f.mu.Unlock()
	if ours {
		f.client.SetReadDeadline(time.Unix(1, 0))
	}
	return ours
}

// handOver gives an authenticated connection to Accept; its origin
// connection, if any, is closed unused.
func (f *flow) handOver(prefix []byte) {
	f.dialCancel()
	f.mu.Lock()
	o := f.origin
	f.mu.Unlock()
	if o != nil {
		o.Close()
	}
	f.l.untrack(f)
	f.l.deliver(&prefixConn{Conn: f.client, prefix: prefix})
}

// kill closes everything of f (listener Close, or no room to splice).
func (f *flow) kill(resetClient bool) {
	f.mu.Lock()
	f.killed = true
	o := f.origin
	f.mu.Unlock()
	f.dialCancel()
	if resetClient {
		reset(f.client)
	} else {
		f.client.Close()
	}
	if o != nil {
		o.Close()
	}
}

// dialAndPumpBack connects to the origin at once and forwards what it
// sends to the client, unless the flow went to the relay first.
func (f *flow) dialAndPumpBack(ctx context.Context) {
	defer f.l.wg.Done()
	defer close(f.back)
	o, err := f.l.opts.Dial(ctx, "tcp", f.l.opts.Origin)
	f.dialCancel()
	f.mu.Lock()
	if err == nil && (f.state == toRelay || f.killed) {
		o.Close()
		err = net.ErrClosed
	} else if err == nil {
		f.origin = o
	}
	f.mu.Unlock()
	close(f.dialed)
	if err != nil {
		// An origin that accepted and reset at once: so does this
		// connection. An origin that is down leaves the client to the
		// inspection, so that the relay stays reachable.
		if isReset(err) && f.claim(toOrigin) {
			reset(f.client)
		}
		return
	}
	e := f.pump(f.client, o, nil, true)
	close(f.backEnded)
	if e == endFIN {
		f.watchReset(o)
	}
}

// splice sends the inspected bytes to the origin and copies both ways
// until both directions have ended.
func (f *flow) splice(in inspection) {
	l := f.l
	if !tryAcquire(l.splices) {
		l.opts.Observe(transport.OutcomeBusy)
		f.kill(true)
		return
	}
	defer func() { <-l.splices }()
	l.opts.Observe(in.outcome)
	<-f.dialed
	f.mu.Lock()
	o := f.origin
	f.mu.Unlock()
	if o == nil {
		reset(f.client) // the origin is unreachable: look like a closed port
		return
	}
	if f.forward(o, in) == endFIN {
		<-f.backEnded
	}
	f.client.Close()
	o.Close()
	<-f.back
}

// forward writes the inspected bytes to the origin, then copies the rest
// of the client's stream.
//
// If the origin's FIN came first (a web server timing out a silent client
// or a partial ClientHello the listener held back), the origin has closed:
// a direct client's bytes would have reached it before, been read, and
// only what the client sends after the FIN would draw the origin's reset.
// So the held bytes wait for the client's next bytes and go with them
// (the reset then comes one round trip after that write, as it would
// directly), and are dropped if the client ends first: an origin that
// only half-closed (no common web server does on a timeout) then misses
// them.
func (f *flow) forward(o net.Conn, in inspection) end {
	var pre []byte
	if f.originFIN.Load() {
		pre, in.prefix = in.prefix, nil
	} else if in.err == nil {
		// Whatever else the client has sent by now goes in the same
		// write, so the origin sees a burst as the client sent it (an
		// origin that closes with unread data resets, with none sends
		// FIN: a split burst could turn one into the other).
		more, err := readAvailable(f.client, spliceBuf)
		in.prefix, in.err = append(in.prefix, more...), err
	}
	if len(in.prefix) > 0 {
		f.act.touch()
		o.SetWriteDeadline(time.Now().Add(f.l.opts.SpliceIdle))
		if _, err := o.Write(in.prefix); err != nil {
			return f.broken(f.client, o, err)
		}
		in.prefix = nil // not held for the splice's life
	}
	switch err := in.err; {
	case err == nil || isTimeout(err):
	case errors.Is(err, io.EOF):
		closeWrite(o)
		f.act.halfClose()
		return endFIN
	default:
		return f.broken(o, f.client, err)
	}
	return f.pump(o, f.client, pre, false)
}
