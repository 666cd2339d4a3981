package censortest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Middlebox is a censor on loopback: a TCP proxy that forwards every
// connection it accepts to a target and interferes with it as its [Rule]
// says. It needs no privileges, so it cannot drop a SYN or forge packets: a
// client always completes its TCP handshake with the middlebox first, and
// sees interference only after that. [UDPMiddlebox] is its UDP sibling.
//
// Rules for TCP, and the failure class that transport.ClassOf gives the
// error of a Postern client dialing through the middlebox (checked by
// classes_test.go with the https transport):
//
//	Pass               no failure
//	Blackhole          ClassTLS: TCP connected (the middlebox cannot drop the
//	                   SYN), the TLS handshake never answered, which is what a
//	                   dropped ServerHello looks like; the kernel-level blackhole
//	                   of package netns drops the SYN and gives ClassTimeout
//	ResetOnConnect     ClassReset (ECONNRESET from the dial or the first read;
//	                   a real censor's RST to the SYN would give ClassRefused)
//	ResetOnSNI         ClassReset for the blocked name (the TLS handshake read gets ECONNRESET)
//	DropOnSNI          ClassTLS for the blocked name: TCP connected, the
//	                   ClientHello never answered
//	DropServerHello    ClassTLS: the ClientHello reaches the server, its answer
//	                   never reaches the client
//	FreezeAfter        a timeout once the limit is passed, nothing before; the
//	                   session layer reports it as ClassStalled
//	DropAnswersAfter   the same, once the client has sent its limit
//	ResetAfter         ClassReset (ECONNRESET) once the limit is passed
//	Throttle           no failure, only slower
//	Latency            no failure, only later
//	GFWFullyEncrypted  no failure for TLS (exempt); a first payload that looks
//	                   random is dropped: ClassTimeout
//
// Verdicts on a connection's first flight (ResetOnSNI, DropOnSNI,
// DropServerHello, GFWFullyEncrypted) stick to that connection, as a
// censor's per-flow state does; the other rules act on every chunk and
// follow [Middlebox.SetRule] at once.
type Middlebox struct {
	ln     net.Listener
	target string
	rule   atomic.Pointer[Rule]

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both sides of every open connection
	closed bool
	done   chan struct{} // closed at cleanup: wakes throttled pumps
	// changed is closed when a rule is set (and made again): it wakes
	// the pumps Stall holds (under mu).
	changed chan struct{}
	// hostBuckets are ThrottleHost's buckets, one per direction, shared
	// by every connection; made at the first byte a ThrottleHost rule
	// meters (under mu).
	hostBuckets [2]*tokenBucket
	// open and peak count the client connections being forwarded: now,
	// and the most at once (under mu).
	open, peak int
	// now is the throttles' clock (tests freeze it).
	now func() time.Time
	wg  sync.WaitGroup
}

// DefaultFreezeLimit is the per-direction limit of [FreezeAfter] when it is
// given n <= 0: the 16 KiB at which Russian TSPU freezes are reported.
const DefaultFreezeLimit = 16 << 10

// maxFirstFlight bounds what a rule that inspects the first client flight
// ([ResetOnSNI] and the like) buffers while it looks for a ClientHello; a
// longer first flight is judged as it is.
const maxFirstFlight = 64 << 10

// chunkSize is the most the middlebox reads from one side at a time.
const chunkSize = 32 << 10

// NewMiddlebox starts a middlebox on 127.0.0.1 that forwards to target
// (host:port) under [Pass]. It stops at t's cleanup: the listener and every
// connection are closed, and all its goroutines have returned.
func NewMiddlebox(t testing.TB, target string) *Middlebox {
	t.Helper()
	return newMiddlebox(t, target, time.Now)
}

// newMiddlebox is NewMiddlebox with now as the throttles' clock.
func newMiddlebox(t testing.TB, target string, now func() time.Time) *Middlebox {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("middlebox: listen on loopback: %v", err)
	}
	m := &Middlebox{ln: ln, target: target, conns: make(map[net.Conn]struct{}), done: make(chan struct{}), now: now}
	m.SetRule(Pass)
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

// Addr is the host:port clients dial instead of the target.
func (m *Middlebox) Addr() string { return m.ln.Addr().String() }

// SetRule makes r the rule for new connections and for those running. A
// running connection sees the change at its next chunk of data (and a
// chunk being throttled at its next piece): freezes, throttling and
// blackholing take effect mid-connection; ResetOnConnect only
// acts at connection start and the first-flight rules (ResetOnSNI,
// DropOnSNI, DropServerHello, GFWFullyEncrypted) only on the first client
// flight. A nil r means [Pass].
func (m *Middlebox) SetRule(r Rule) {
	if r == nil {
		r = Pass
	}
	m.rule.Store(&r)
	m.mu.Lock()
	if m.changed != nil {
		close(m.changed)
	}
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// waitRule waits until the rule is no longer *rp, and reports whether
// it changed (false: the middlebox closed first).
func (m *Middlebox) waitRule(rp *Rule) bool {
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if m.rule.Load() != rp {
			return true
		}
		select {
		case <-changed:
		case <-m.done:
			return false
		}
	}
}

func (m *Middlebox) current() Rule { return *m.rule.Load() }

// Peak is the most client connections the middlebox has handled at once
// (from accept until both directions are done), and ResetPeak starts
// counting it again from those open now.
func (m *Middlebox) Peak() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak
}

// ResetPeak: see Peak.
func (m *Middlebox) ResetPeak() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peak = m.open
}

// Open is how many client connections the middlebox is handling now.
func (m *Middlebox) Open() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open
}

func (m *Middlebox) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return // closed at cleanup
		}
		if !m.track(c) {
			return
		}
		m.wg.Add(1)
		go m.handle(c)
	}
}

// track records c so that cleanup closes it; false (and c closed) if the
// middlebox is already closed.
func (m *Middlebox) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		c.Close()
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *Middlebox) untrack(cs ...net.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		c.Close()
		delete(m.conns, c)
	}
}

func (m *Middlebox) close() {
	m.ln.Close()
	m.mu.Lock()
	m.closed = true
	close(m.done)
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// handle runs one client connection until both directions are done.
func (m *Middlebox) handle(client net.Conn) {
	defer m.wg.Done()
	m.mu.Lock()
	m.open++
	m.peak = max(m.peak, m.open)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.open--
		m.mu.Unlock()
	}()
	switch m.current().onConnect() {
	case actForward:
	case actReset:
		reset(client)
		m.untrack(client)
		return
	default:
		return // stays open, silent, until cleanup closes it
	}
	server, err := net.Dial("tcp", m.target)
	if err != nil {
		reset(client) // the client sees the target's refusal as a reset
		m.untrack(client)
		return
	}
	if !m.track(server) {
		m.untrack(client)
		return
	}
	defer m.untrack(client, server)
	fl := new(tcpFlow)
	first, verdict := m.inspectFirstFlight(client)
	switch verdict {
	case actReset:
		reset(client)
		server.Close()
		return
	case actHold:
		fl.mute(ClientToServer)
		fl.mute(ServerToClient)
	case actMuteServer:
		fl.mute(ServerToClient)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.pump(client, server, ServerToClient, nil, fl)
	}()
	m.pump(server, client, ClientToServer, first, fl)
	<-done
}

// tcpFlow is the state the middlebox keeps on one connection: the verdict
// on its first flight, its throttle buckets, one per direction, each
// touched only by that direction's pump, and the bytes passed each way
// (each counted by its pump, read by the other's rule).
type tcpFlow struct {
	muted   [2]atomic.Bool
	buckets [2]*tokenBucket
	sent    [2]atomic.Int64 // bytes passed in each direction
}

func (f *tcpFlow) mute(dir Direction)         { f.muted[dir].Store(true) }
func (f *tcpFlow) isMuted(dir Direction) bool { return f.muted[dir].Load() }

// inspectFirstFlight reads the client's first flight if the current rule
// looks at it, and asks the rule for a verdict. It returns the bytes read,
// to be forwarded unless the verdict says otherwise.
func (m *Middlebox) inspectFirstFlight(client net.Conn) ([]byte, action) {
	r := m.current()
	if !r.inspects() {
		return nil, actForward
	}
	f := readFirstFlight(client)
	return f.raw, r.onFirstFlight(&f)
}

// firstFlight is what a client sent first: packet is its first read (a
// censor's "first data packet"), raw everything read, hello the ClientHello
// those bytes carry or nil if they are not a whole, well-formed one.
type firstFlight struct {
	packet []byte
	raw    []byte
	hello  *ClientHello
}

// readFirstFlight reads from c once, and then on while the bytes read are
// TLS handshake records that do not yet hold a whole handshake message. It
// stops at an error, at the first byte that does not continue a handshake
// record, or past maxFirstFlight.
func readFirstFlight(c net.Conn) firstFlight {
	var f firstFlight
	buf := make([]byte, chunkSize)
	for len(f.raw) < maxFirstFlight {
		n, err := c.Read(buf)
		f.raw = append(f.raw, buf[:n]...)
		if f.packet == nil && n > 0 {
			f.packet = f.raw[:n:n]
		}
		complete, more := scanHandshake(f.raw)
		if complete {
			f.hello, _ = ParseClientHello(f.raw) // not a ClientHello: hello stays nil
			return f
		}
		if !more || err != nil {
			return f
		}
	}
	return f
}

// scanHandshake reports whether the handshake records in raw hold a whole
// handshake message, and if not, whether more bytes could complete them.
func scanHandshake(raw []byte) (complete, more bool) {
	var hs []byte
	for len(raw) > 0 {
		if raw[0] != recordTypeHandshake {
			return false, false
		}
		if len(raw) < recordHeaderLen {
			return false, true
		}
		n := int(raw[3])<<8 | int(raw[4])
		if len(raw) < recordHeaderLen+n {
			return false, true
		}
		hs = append(hs, raw[recordHeaderLen:recordHeaderLen+n]...)
		raw = raw[recordHeaderLen+n:]
		if want, ok := handshakeLen(hs); ok && len(hs) >= want {
			return true, false
		}
	}
	return false, true
}

// pump copies src to dst in direction dir, first the bytes in pending,
// letting through what the current rule's budget allows at the rule's rate
// and discarding the rest, as a censor dropping packets would; once a rule
// delays bytes, they pass through a delay line. At EOF it half-closes dst
// unless the direction is frozen; at any other error, or at cleanup, it
// closes both.
func (m *Middlebox) pump(dst, src net.Conn, dir Direction, pending []byte, fl *tcpFlow) {
	var sent int64
	var line *delayLine
	defer func() {
		if line != nil {
			line.finish()
		}
	}()
	buf := make([]byte, chunkSize)
	for {
		rp := m.rule.Load()
		r := *rp
		if r.stalls() {
			if !m.waitRule(rp) {
				src.Close()
				dst.Close()
				return
			}
			continue
		}
		allow := min(int64(len(pending)), r.budget(dir, sent, fl.sent[1-dir].Load()))
		if fl.isMuted(dir) {
			allow = 0
		}
		over := allow < int64(len(pending)) && !fl.isMuted(dir) && r.resets(dir, sent, fl.sent[1-dir].Load())
		if allow > 0 {
			fl.sent[dir].Add(allow) // before the write: the answer to these bytes sees them
			var n int64
			var err error
			if d := r.delay(); d > 0 || line != nil {
				if line == nil {
					line = m.newDelayLine(dst, src)
				}
				n, err = m.throttle(pending[:allow], fl, dir, rp, func(p []byte) error { return line.send(p, d) })
			} else {
				n, err = m.throttle(pending[:allow], fl, dir, rp, func(p []byte) error { return writeAll(dst, p) })
			}
			if err != nil {
				src.Close()
				dst.Close()
				return
			}
			sent += n
			if n < allow { // a rule set meanwhile: it takes the rest, budget and all
				fl.sent[dir].Add(n - allow)
				pending = pending[n:]
				continue
			}
		}
		if over {
			// The budget ran out with bytes left: reset both ways.
			client, server := src, dst
			if dir == ServerToClient {
				client, server = dst, src
			}
			reset(client)
			reset(server)
			return
		}
		n, err := src.Read(buf)
		pending = buf[:n]
		if n > 0 {
			continue
		}
		if errors.Is(err, io.EOF) {
			if line != nil && !line.finish() {
				return
			}
			if m.current().budget(dir, sent, fl.sent[1-dir].Load()) > 0 && !fl.isMuted(dir) {
				closeWrite(dst)
			}
			return
		}
		src.Close()
		dst.Close()
		return
	}
}

// delayLine writes the chunks a pump gives it to dst, each once its delay
// has passed, in order, while the pump reads on.
type delayLine struct {
	ch     chan delayedChunk
	done   chan struct{}
	failed atomic.Bool
	once   sync.Once
}

type delayedChunk struct {
	due time.Time
	p   []byte
}

func (m *Middlebox) newDelayLine(dst, src net.Conn) *delayLine {
	l := &delayLine{ch: make(chan delayedChunk, 64), done: make(chan struct{})}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(l.done)
		for c := range l.ch {
			if l.failed.Load() {
				continue
			}
			if !m.sleep(time.Until(c.due)) || writeAll(dst, c.p) != nil {
				l.failed.Store(true)
				src.Close()
				dst.Close()
			}
		}
	}()
	return l
}

// send queues a copy of p to be written d from now. A throttle's rate is
// kept by the pump before it queues, so that what the line holds is what
// the rate let through, and the pump still reads no faster than the rate.
func (l *delayLine) send(p []byte, d time.Duration) error {
	if l.failed.Load() {
		return net.ErrClosed
	}
	l.ch <- delayedChunk{due: time.Now().Add(d), p: bytes.Clone(p)}
	return nil
}

func writeAll(dst net.Conn, p []byte) error {
	_, err := dst.Write(p)
	return err
}

// finish waits until everything queued is written, and reports whether
// it all was.
func (l *delayLine) finish() bool {
	l.once.Do(func() { close(l.ch) })
	<-l.done
	return !l.failed.Load()
}

// throttle passes p to out, at most r's rate bytes per second on this
// flow and its host rate on all of them together (the slower of the two
// waits), in pieces of a sixteenth of the smaller bucket (at least
// MinThrottleBurst), as a shaper lets packets through one by one: until
// 2026-12-06 whole buckets (a second's worth) went at once, and what a
// client measured between two acks was off by up to a second. It
// returns how much of p it passed: less if a rule other than *rp (the
// one the pump read) is set meanwhile, which the pump then applies to
// the rest, budget, delay and all, from the next piece on (until
// 2026-12-07 the chunk went on under the old rule: up to 32 KiB, 3 s at
// 10 KiB/s, after SetRule(Pass)).
func (m *Middlebox) throttle(p []byte, fl *tcpFlow, dir Direction, rp *Rule, out func([]byte) error) (int64, error) {
	r := *rp
	var bs []*tokenBucket
	if rate := r.rate(dir); rate > 0 {
		if fl.buckets[dir] == nil {
			fl.buckets[dir] = newTokenBucket(rate, m.now)
		}
		fl.buckets[dir].setRate(rate)
		bs = append(bs, fl.buckets[dir])
	}
	if rate := r.hostRate(dir); rate > 0 {
		bs = append(bs, m.hostBucket(dir, rate))
	}
	if len(bs) == 0 {
		return int64(len(p)), out(p)
	}
	var n int64
	for len(p) > 0 {
		if m.rule.Load() != rp {
			return n, nil
		}
		k := len(p)
		for _, b := range bs {
			k = min(k, max(MinThrottleBurst, int(b.size())/16))
		}
		var wait time.Duration
		for _, b := range bs {
			wait = max(wait, b.take(k))
		}
		if !m.sleep(wait) {
			return n, net.ErrClosed
		}
		if err := out(p[:k]); err != nil {
			return n, err
		}
		p, n = p[k:], n+int64(k)
	}
	return n, nil
}

// hostBucket is ThrottleHost's bucket for dir, at rate.
func (m *Middlebox) hostBucket(dir Direction, rate int64) *tokenBucket {
	m.mu.Lock()
	b := m.hostBuckets[dir]
	if b == nil {
		b = newTokenBucket(rate, m.now)
		m.hostBuckets[dir] = b
	}
	m.mu.Unlock()
	b.setRate(rate)
	return b
}

// sleep waits d, or less if the middlebox closes first (then false).
func (m *Middlebox) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.done:
		return false
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

// reset closes c with an RST instead of a FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
