package censortest

import (
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Middlebox is a censor on loopback: a TCP proxy that forwards every
// connection it accepts to a target and interferes with it as its [Rule]
// says. It needs no privileges, so it cannot drop a SYN or forge packets: a
// client always completes its TCP handshake with the middlebox first, and
// sees interference only after that.
//
// Rules and the failure class that transport.Classify gives the error of a
// client dialing through the middlebox (checked by hand on loopback; the
// class tests come with fallback routing):
//
//	Pass            no failure
//	Blackhole       ClassTimeout (a read or the context deadline expires)
//	ResetOnConnect  ClassReset (ECONNRESET from the dial or the first read;
//	                a real censor's RST to the SYN would give ClassRefused)
//	ResetOnSNI      ClassReset for the blocked name (the TLS handshake read gets ECONNRESET)
//	FreezeAfter     ClassTimeout once the limit is passed, nothing before
type Middlebox struct {
	ln     net.Listener
	target string
	rule   atomic.Pointer[Rule]

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both sides of every open connection
	closed bool
	wg     sync.WaitGroup
}

// DefaultFreezeLimit is the per-direction limit of [FreezeAfter] when it is
// given n <= 0: the 16 KiB at which Russian TSPU freezes are reported.
const DefaultFreezeLimit = 16 << 10

// maxFirstFlight bounds what [ResetOnSNI] buffers while it looks for a
// ClientHello; a longer first flight is forwarded uninspected.
const maxFirstFlight = 64 << 10

// chunkSize is the most the middlebox reads from one side at a time.
const chunkSize = 32 << 10

// NewMiddlebox starts a middlebox on 127.0.0.1 that forwards to target
// (host:port) under [Pass]. It stops at t's cleanup: the listener and every
// connection are closed, and all its goroutines have returned.
func NewMiddlebox(t testing.TB, target string) *Middlebox {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("middlebox: listen on loopback: %v", err)
	}
	m := &Middlebox{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	m.SetRule(Pass)
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

// Addr is the host:port clients dial instead of the target.
func (m *Middlebox) Addr() string { return m.ln.Addr().String() }

// SetRule makes r the rule for new connections and for those running. A
// running connection sees the change at its next chunk of data: freezes and
// blackholing take effect mid-connection, resets only act at connection
// start (ResetOnConnect) or on the first client flight (ResetOnSNI). A nil r
// means [Pass].
func (m *Middlebox) SetRule(r Rule) {
	if r == nil {
		r = Pass
	}
	m.rule.Store(&r)
}

func (m *Middlebox) current() Rule { return *m.rule.Load() }

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
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// handle runs one client connection until both directions are done.
func (m *Middlebox) handle(client net.Conn) {
	defer m.wg.Done()
	switch m.current().onConnect() {
	case actHold:
		return // stays open, silent, until cleanup closes it
	case actReset:
		reset(client)
		m.untrack(client)
		return
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.pump(client, server, ServerToClient, nil)
	}()
	if first, ok := m.inspectFirstFlight(client); ok {
		m.pump(server, client, ClientToServer, first)
	} else {
		reset(client)
		server.Close()
	}
	<-done
}

// inspectFirstFlight reads the client's first TLS handshake records if the
// current rule looks at ClientHellos, and asks it for a verdict. It returns
// the bytes read (to be forwarded) and false if the connection is to be
// reset.
func (m *Middlebox) inspectFirstFlight(client net.Conn) ([]byte, bool) {
	r := m.current()
	if !r.inspectsHello() {
		return nil, true
	}
	raw, complete := readFirstFlight(client)
	var h *ClientHello
	if complete {
		h, _ = ParseClientHello(raw) // not a ClientHello: h stays nil
	}
	return raw, r.onHello(h) != actReset
}

// readFirstFlight reads whole handshake records from c until they hold one
// complete handshake message. It stops early, with complete false, at the
// first byte that does not continue a handshake record, at an error or past
// maxFirstFlight; raw is then everything read so far.
func readFirstFlight(c net.Conn) (raw []byte, complete bool) {
	var hsLen int // handshake bytes seen
	for len(raw) < maxFirstFlight {
		hdr := make([]byte, recordHeaderLen)
		if n, err := io.ReadFull(c, hdr[:1]); n == 0 || err != nil {
			return raw, false
		}
		raw = append(raw, hdr[0])
		if hdr[0] != recordTypeHandshake {
			return raw, false
		}
		n, err := io.ReadFull(c, hdr[1:])
		raw = append(raw, hdr[1:1+n]...)
		if err != nil {
			return raw, false
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		n, err = io.ReadFull(c, body)
		raw = append(raw, body[:n]...)
		if err != nil {
			return raw, false
		}
		hsLen += len(body)
		if want, ok := handshakeLen(handshakeBytes(raw)); ok && hsLen >= want {
			return raw, true
		}
	}
	return raw, false
}

// handshakeBytes returns the first few handshake bytes carried by the
// records in raw, enough for [handshakeLen].
func handshakeBytes(raw []byte) []byte {
	var hs []byte
	for len(raw) >= recordHeaderLen && len(hs) < handshakeHeaderLen {
		n := min(int(raw[3])<<8|int(raw[4]), len(raw)-recordHeaderLen)
		hs = append(hs, raw[recordHeaderLen:recordHeaderLen+n]...)
		raw = raw[recordHeaderLen+n:]
	}
	return hs
}

// pump copies src to dst in direction dir, first the bytes in pending,
// letting through what the current rule's budget allows and discarding the
// rest, as a censor dropping packets would. At EOF it half-closes dst unless
// the direction is frozen; at any other error it closes both.
func (m *Middlebox) pump(dst, src net.Conn, dir Direction, pending []byte) {
	var sent int64
	buf := make([]byte, chunkSize)
	for {
		allow := min(int64(len(pending)), m.current().budget(dir, sent))
		if allow > 0 {
			if _, err := dst.Write(pending[:allow]); err != nil {
				src.Close()
				dst.Close()
				return
			}
			sent += allow
		}
		n, err := src.Read(buf)
		pending = buf[:n]
		if n > 0 {
			continue
		}
		if errors.Is(err, io.EOF) {
			if m.current().budget(dir, sent) > 0 {
				closeWrite(dst)
			}
			return
		}
		src.Close()
		dst.Close()
		return
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

// Direction is one way through the middlebox.
type Direction int

const (
	ClientToServer Direction = iota
	ServerToClient
)

type action int

const (
	actForward action = iota
	actHold           // keep the connection open and silent
	actReset          // close it with an RST
)

const unlimited = math.MaxInt64

// A Rule is what the middlebox does to the connections through it. Rules
// are values made by this package; combine them with [All].
type Rule interface {
	// onConnect decides on a new connection before the target is dialed.
	onConnect() action
	// inspectsHello says whether onHello wants the client's first flight.
	inspectsHello() bool
	// onHello decides on the client's first flight: h is nil when that was
	// not a whole, well-formed ClientHello.
	onHello(h *ClientHello) action
	// budget is how many more bytes may pass in dir once sent have.
	budget(dir Direction, sent int64) int64
}

// passRule lets everything through; the other rules embed it.
type passRule struct{}

func (passRule) onConnect() action             { return actForward }
func (passRule) inspectsHello() bool           { return false }
func (passRule) onHello(*ClientHello) action   { return actForward }
func (passRule) budget(Direction, int64) int64 { return unlimited }

type blackholeRule struct{ passRule }

func (blackholeRule) onConnect() action             { return actHold }
func (blackholeRule) budget(Direction, int64) int64 { return 0 }

type resetRule struct{ passRule }

func (resetRule) onConnect() action { return actReset }

var (
	// Pass forwards everything: an uncensored network.
	Pass Rule = passRule{}

	// Blackhole accepts and then drops every packet both ways, like the
	// GFW's null routing of an address found by active probing.
	Blackhole Rule = blackholeRule{}

	// ResetOnConnect closes every new connection with an RST at once, like
	// the RST injection the GFW and Iran's filter use on blocked IP:ports.
	ResetOnConnect Rule = resetRule{}
)

type sniRule struct {
	passRule
	name string
}

// ResetOnSNI resets a connection whose first TLS flight is a ClientHello for
// name (compared case-insensitively), like the GFW's SNI filtering of TLS;
// anything else, TLS or not, is forwarded intact.
func ResetOnSNI(name string) Rule { return sniRule{name: name} }

func (sniRule) inspectsHello() bool { return true }

func (r sniRule) onHello(h *ClientHello) action {
	if h != nil && h.HasServerName && strings.EqualFold(h.ServerName, r.name) {
		return actReset
	}
	return actForward
}

type freezeRule struct {
	passRule
	limit int64
}

// FreezeAfter forwards n bytes in each direction, counted separately from
// the start of the connection (n <= 0 means [DefaultFreezeLimit]), then
// silently drops the rest while the connection stays open: Russia's TSPU
// freeze of TLS connections to foreign hosting after 15-20 KB
// (XTLS/Xray-core#4846, net4people/bbs#490).
func FreezeAfter(n int) Rule {
	if n <= 0 {
		n = DefaultFreezeLimit
	}
	return freezeRule{limit: int64(n)}
}

func (r freezeRule) budget(_ Direction, sent int64) int64 { return max(r.limit-sent, 0) }

type allRules []Rule

// All applies every rule: the harshest verdict wins (reset over hold over
// forward) and the smallest budget applies.
func All(rules ...Rule) Rule { return allRules(rules) }

func (a allRules) onConnect() action {
	v := actForward
	for _, r := range a {
		v = max(v, r.onConnect())
	}
	return v
}

func (a allRules) inspectsHello() bool {
	for _, r := range a {
		if r.inspectsHello() {
			return true
		}
	}
	return false
}

func (a allRules) onHello(h *ClientHello) action {
	v := actForward
	for _, r := range a {
		v = max(v, r.onHello(h))
	}
	return v
}

func (a allRules) budget(dir Direction, sent int64) int64 {
	b := int64(unlimited)
	for _, r := range a {
		b = min(b, r.budget(dir, sent))
	}
	return b
}
