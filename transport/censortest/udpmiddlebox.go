package censortest

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// UDPMiddlebox is a censor on loopback for UDP: it relays the datagrams of
// each client (source address) to a target through an upstream socket of
// that client's own, and the target's answers back, interfering as its
// [Rule] says. Rules for UDP and the class transport.ClassOf gives the
// error of an h3 client dialing through it:
//
//	Pass       no failure
//	DropUDP    ClassUDPSilent (nothing ever comes back)
//	Blackhole  as DropUDP
//	Throttle   no failure, only slower (datagrams over the rate are dropped)
//	GFWQUIC    ClassUDPSilent for the blocked name when the client's source
//	           port is at least the middlebox's port; no failure otherwise
//	Latency    no failure, only later (each datagram rtt/2 each way; past
//	           4,096 waiting in a direction, dropped)
//
// A flow is one client address. At most [MaxUDPFlows] are open at once
// (datagrams from further clients are dropped) and one with no datagram
// either way for [UDPFlowIdle] is closed. The rule applies to every
// datagram and follows [UDPMiddlebox.SetRule] at once, except that a flow
// GFWQUIC blocked stays blocked for [QUICBlockDuration], and datagrams
// already delayed leave when their delay ends.
type UDPMiddlebox struct {
	pc       *net.UDPConn
	target   *net.UDPAddr
	port     uint16 // the destination port of the clients' datagrams
	rule     atomic.Pointer[Rule]
	maxFlows int
	idle     time.Duration
	now      func() time.Time

	mu     sync.Mutex
	flows  map[netip.AddrPort]*udpFlow
	closed bool
	wg     sync.WaitGroup
}

// Limits of a UDPMiddlebox.
const (
	MaxUDPFlows = 256
	UDPFlowIdle = 30 * time.Second
	maxDatagram = 64 << 10
	// maxQUICInspect is how many of a flow's first client datagrams
	// GFWQUIC reads while it looks for a whole ClientHello.
	maxQUICInspect = 4
)

// NewUDPMiddlebox starts a UDP middlebox on 127.0.0.1 that relays to
// target (host:port) under [Pass]. It stops at t's cleanup: its socket and
// every flow's are closed and all its goroutines have returned.
func NewUDPMiddlebox(t testing.TB, target string) *UDPMiddlebox {
	t.Helper()
	return newUDPMiddlebox(t, target, MaxUDPFlows, UDPFlowIdle)
}

func newUDPMiddlebox(t testing.TB, target string, maxFlows int, idle time.Duration) *UDPMiddlebox {
	t.Helper()
	taddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatalf("UDP middlebox: target %q: %v", target, err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("UDP middlebox: listen on loopback: %v", err)
	}
	m := &UDPMiddlebox{pc: pc, target: taddr, port: uint16(pc.LocalAddr().(*net.UDPAddr).Port),
		maxFlows: maxFlows, idle: idle, now: time.Now, flows: make(map[netip.AddrPort]*udpFlow)}
	m.SetRule(Pass)
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

// Addr is the host:port clients send to instead of the target.
func (m *UDPMiddlebox) Addr() string { return m.pc.LocalAddr().String() }

// SetRule makes r the rule for every datagram from now on. A nil r means
// [Pass].
func (m *UDPMiddlebox) SetRule(r Rule) {
	if r == nil {
		r = Pass
	}
	m.rule.Store(&r)
}

func (m *UDPMiddlebox) current() Rule { return *m.rule.Load() }

// UDPFlow describes one client flow through a [UDPMiddlebox].
type UDPFlow struct {
	Client  netip.AddrPort // the client's address as the middlebox sees it
	Blocked bool           // GFWQUIC blocked it and the block has not expired
}

// Flows returns the open flows.
func (m *UDPMiddlebox) Flows() []UDPFlow {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]UDPFlow, 0, len(m.flows))
	for _, f := range m.flows {
		out = append(out, UDPFlow{Client: f.client, Blocked: f.blocked(m.now())})
	}
	return out
}

// udpFlow is one client's flow. The client direction's state (hello,
// inspected, buckets[ClientToServer]) is touched only by serve, the
// server direction's only by the flow's own goroutine.
type udpFlow struct {
	client       netip.AddrPort
	up           *net.UDPConn
	lastSeen     atomic.Int64 // unix nanoseconds of the last datagram either way
	blockedUntil atomic.Int64 // unix nanoseconds; 0 if never blocked
	hello        cryptoStream
	inspected    int         // client datagrams fed to hello
	helloDone    atomic.Bool // hello parsed, or given up
	buckets      [2]*tokenBucket
	lines        [2]*udpLine   // once a rule has delayed datagrams
	done         chan struct{} // closed when the flow is removed
}

func (f *udpFlow) touch(t time.Time) { f.lastSeen.Store(t.UnixNano()) }

func (f *udpFlow) blocked(t time.Time) bool { return t.UnixNano() < f.blockedUntil.Load() }

// datagram is what a rule sees of one datagram.
type datagram struct {
	dir              Direction
	payload          []byte
	hello            *ClientHello // the flow's ClientHello, once reassembled
	newHello         bool         // this datagram completed hello
	srcPort, dstPort uint16       // of the client's datagrams: client's port, middlebox's port
}

func (m *UDPMiddlebox) serve() {
	defer m.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := m.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error for an earlier send, say
		}
		f := m.flow(from)
		if f == nil {
			continue
		}
		f.touch(m.now())
		if m.admit(f, ClientToServer, buf[:n]) {
			m.forward(f, ClientToServer, buf[:n], func(p []byte) { f.up.Write(p) })
		}
	}
}

// flow returns the flow of client, opening it if there is room; nil if
// there is none or the middlebox is closed.
func (m *UDPMiddlebox) flow(client netip.AddrPort) *udpFlow {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.flows[client]; ok || m.closed {
		return f
	}
	if len(m.flows) >= m.maxFlows {
		return nil
	}
	up, err := net.DialUDP("udp", nil, m.target)
	if err != nil {
		return nil
	}
	f := &udpFlow{client: client, up: up, done: make(chan struct{})}
	f.touch(m.now())
	m.flows[client] = f
	m.wg.Add(1)
	go m.pumpBack(f)
	return f
}

// pumpBack relays the target's answers on f's upstream socket to the
// client until f has been idle for m.idle, its socket fails or closes.
func (m *UDPMiddlebox) pumpBack(f *udpFlow) {
	defer m.wg.Done()
	defer m.remove(f)
	buf := make([]byte, maxDatagram)
	for {
		f.up.SetReadDeadline(time.Unix(0, f.lastSeen.Load()).Add(m.idle))
		n, err := f.up.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && m.now().Sub(time.Unix(0, f.lastSeen.Load())) < m.idle {
				continue // the client sent meanwhile
			}
			return
		}
		f.touch(m.now())
		if m.admit(f, ServerToClient, buf[:n]) {
			m.forward(f, ServerToClient, buf[:n], func(p []byte) { m.pc.WriteToUDPAddrPort(p, f.client) })
		}
	}
}

func (m *UDPMiddlebox) remove(f *udpFlow) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.flows[f.client] == f {
		delete(m.flows, f.client)
	}
	f.up.Close()
	close(f.done)
}

// udpLineCap bounds the datagrams a flow's delay line holds in one
// direction; past it a datagram is dropped, as a full router queue drops.
const udpLineCap = 4096

// forward sends p on in dir with out: at once, or once a rule delays
// datagrams, through the flow's delay line in that direction (each
// direction's line is touched only by that direction's goroutine).
func (m *UDPMiddlebox) forward(f *udpFlow, dir Direction, p []byte, out func([]byte)) {
	d := m.current().delay()
	if d <= 0 && f.lines[dir] == nil {
		out(p)
		return
	}
	if f.lines[dir] == nil {
		f.lines[dir] = m.newUDPLine(f, out)
	}
	select {
	case f.lines[dir].ch <- delayedChunk{due: time.Now().Add(d), p: bytes.Clone(p)}:
	default:
	}
}

// udpLine sends a flow's datagrams in one direction, each once its delay
// has passed, until the flow is removed.
type udpLine struct{ ch chan delayedChunk }

func (m *UDPMiddlebox) newUDPLine(f *udpFlow, out func([]byte)) *udpLine {
	l := &udpLine{ch: make(chan delayedChunk, udpLineCap)}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTimer(time.Hour) // set for each datagram below
		t.Stop()
		defer t.Stop()
		for {
			var c delayedChunk
			select {
			case c = <-l.ch:
			case <-f.done:
				return
			}
			t.Reset(time.Until(c.due))
			select {
			case <-t.C:
				out(c.p)
			case <-f.done:
				return
			}
		}
	}()
	return l
}

// admit reports whether the current rule lets p through on f in dir.
func (m *UDPMiddlebox) admit(f *udpFlow, dir Direction, p []byte) bool {
	now := m.now()
	if f.blocked(now) {
		return false
	}
	r := m.current()
	d := datagram{dir: dir, payload: p, srcPort: f.client.Port(), dstPort: m.port}
	if r.inspectsQUIC() {
		if dir == ServerToClient && !f.helloDone.Load() {
			// The verdict is pending: only ACKs of a partial ClientHello can
			// come now. Across a border the censor decides before the
			// server's answer arrives; on loopback it would not.
			return false
		}
		if dir == ClientToServer {
			d.hello, d.newHello = f.inspect(p)
		}
	}
	switch r.onDatagram(&d) {
	case actForward:
	case actBlockFlow:
		f.blockedUntil.Store(now.Add(QUICBlockDuration).UnixNano())
		return true // the datagram that gave the verdict has passed already
	default:
		return false
	}
	rate := r.rate(dir)
	if rate <= 0 {
		return true
	}
	b := f.buckets[dir]
	if b == nil {
		b = newTokenBucket(rate, m.now)
		f.buckets[dir] = b
	}
	b.setRate(rate)
	return b.allow(len(p))
}

// inspect feeds one of the flow's first client datagrams to its CRYPTO
// stream, and returns the ClientHello and true if p completed it.
func (f *udpFlow) inspect(p []byte) (*ClientHello, bool) {
	if f.helloDone.Load() {
		return nil, false
	}
	f.inspected++
	if err := f.hello.addDatagram(p); err != nil {
		f.helloDone.Store(true) // not QUIC, or not a v1 Initial: a censor moves on
		return nil, false
	}
	h, err := f.hello.clientHello()
	if h != nil || err != nil || f.inspected >= maxQUICInspect {
		f.hello = cryptoStream{}
		f.helloDone.Store(true)
	}
	return h, h != nil
}

func (m *UDPMiddlebox) close() {
	m.pc.Close()
	m.mu.Lock()
	m.closed = true
	for _, f := range m.flows {
		f.up.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}
