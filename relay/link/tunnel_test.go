package link_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// pipeTransport dials by serving a loopback pair's far end on a relay.
type pipeTransport struct {
	name string
	r    *relaytest.Relay
	t    *testing.T
	// freeze, if set, makes each dialled connection a freezingConn.
	freeze *atomic.Int64
}

func (p *pipeTransport) Name() string { return p.name }
func (p *pipeTransport) Dial(context.Context, transport.Endpoint) (transport.Conn, error) {
	cc, sc := relaytest.Pipe(p.t)
	p.r.Serve(sc, p.name)
	if p.freeze != nil {
		return &freezingConn{Conn: cc, left: p.freeze, closed: make(chan struct{})}, nil
	}
	return cc, nil
}

// freezingConn is a censor's frozen flow as its client sees it: once
// left (shared, counted down by reads) is set to a count of bytes, reads
// deliver that many more and then nothing (what else came is dropped),
// until the connection is closed. Below zero: not frozen yet.
type freezingConn struct {
	transport.Conn
	left      *atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *freezingConn) Read(p []byte) (int, error) {
	if c.left.Load() == 0 {
		<-c.closed
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Read(p)
	if left := c.left.Load(); left >= 0 { // frozen while this read waited, or before
		n = int(min(int64(n), left))
		c.left.Add(-int64(n))
	}
	return n, err
}

func (c *freezingConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
func (p *pipeTransport) Listen(context.Context, transport.ListenConfig) (transport.Listener, error) {
	return nil, errors.New("not used")
}

// signedDescriptor is a descriptor with one endpoint on transport name,
// signed by priv, as a line and parsed.
func signedDescriptor(t testing.TB, priv ed25519.PrivateKey, name string) (string, *descriptor.Descriptor) {
	d := &descriptor.Descriptor{Endpoints: []descriptor.Endpoint{{Transport: name, Addr: "127.0.0.1:9", Path: "/p", Key: make([]byte, 32)}},
		Issued: time.Now().Add(-time.Minute), Expires: time.Now().Add(time.Hour)}
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	if d, err = descriptor.Parse(line, time.Now()); err != nil {
		t.Fatal(err)
	}
	return line, d
}

// tunnelSetup is a home relay B and an entry relay A that tunnels to it
// through the one dial path, both in process.
type tunnelSetup struct {
	reg        transport.Registry
	home       *relaytest.Relay
	homeLine   string
	entry      *descriptor.Descriptor
	entryRelay *relaytest.Relay
}

func newTunnelSetup(t *testing.T, homeKey ed25519.PrivateKey, entryTunnels bool) *tunnelSetup {
	_, bPriv, _ := ed25519.GenerateKey(nil)
	_, aPriv, _ := ed25519.GenerateKey(nil)
	s := &tunnelSetup{}
	s.home = relaytest.New(t, store.Options{}, server.Config{RelayKey: homeKey, AcceptTunnels: homeKey != nil})
	s.reg.Register(&pipeTransport{name: "to-b", r: s.home, t: t})
	var cfg server.Config
	if entryTunnels {
		cfg.Tunneler = link.NewTunneler(link.TunnelerConfig{Open: func(ctx context.Context, home *descriptor.Descriptor) (io.ReadWriteCloser, error) {
			return client.OpenTunnel(ctx, &s.reg, client.DialOptions{}, home)
		}})
	}
	s.entryRelay = relaytest.New(t, store.Options{}, cfg)
	s.reg.Register(&pipeTransport{name: "to-a", r: s.entryRelay, t: t})
	if homeKey == nil {
		homeKey = bPriv
	}
	s.homeLine, _ = signedDescriptor(t, homeKey, "to-b")
	_, s.entry = signedDescriptor(t, aPriv, "to-a")
	return s
}

// TestTunnel: a client tunnels through A to B and subscribes, fetches and
// acks inside; the session ends cleanly and leaves no goroutine behind.
func TestTunnel(t *testing.T) {
	_, bPriv, _ := ed25519.GenerateKey(nil)
	s := newTunnelSetup(t, bPriv, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	direct := s.home.Connect(t)
	m := relaytest.NewMailbox(t, direct, nil)
	before := runtime.NumGoroutine()

	c, err := client.DialTunnel(ctx, &s.reg, client.DialOptions{}, s.homeLine, s.entry)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(ctx, m.Owner, m.ID); err != nil {
		t.Fatal(err)
	}
	ref, err := direct.Send(ctx, m.Seal(t, "through the tunnel"), nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-c.Deliveries():
		if d.Ref != ref || d.Mailbox != m.ID {
			t.Fatal("pushed the wrong envelope")
		}
	case <-ctx.Done():
		t.Fatal("no push through the tunnel")
	}
	ds, err := c.Fetch(ctx, m.Owner, m.ID, 10)
	if err != nil || len(ds) != 1 || ds[0].Ref != ref {
		t.Fatalf("fetch: %d, %v", len(ds), err)
	}
	if n, err := c.Ack(ctx, m.Owner, m.ID, ref); err != nil || n != 1 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	if line, err := c.Descriptor(ctx); err == nil || line != "" {
		t.Fatalf("the inner session should be B's (no Descriptor func set): %q, %v", line, err)
	}
	c.Close()
	waitGoroutines(t, before)
}

// TestTunnelFrozenPushStalls: a censor freezes the flow to the entry
// relay in the middle of a 64 KiB envelope pushed to a subscription
// inside the tunnel, before the first inner TLS record of it is whole. No
// request waits and nothing of the push reached the session, but the
// session stalls within its window: the record begun beneath it counts
// (transport.Arrivals). Until 2026-12-06 such a push was noticed at the
// next ping, a minute later; an idle subscription inside a tunnel still
// never stalls.
func TestTunnelFrozenPushStalls(t *testing.T) {
	_, bPriv, _ := ed25519.GenerateKey(nil)
	s := newTunnelSetup(t, bPriv, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a deadlock guard
	defer cancel()
	freeze := &atomic.Int64{}
	freeze.Store(-1)
	s.reg.Register(&pipeTransport{name: "to-a-frozen", r: s.entryRelay, t: t, freeze: freeze})
	_, aPriv, _ := ed25519.GenerateKey(nil)
	_, entry := signedDescriptor(t, aPriv, "to-a-frozen")
	direct := s.home.Connect(t)
	m := relaytest.NewMailbox(t, direct, nil)
	const window = 300 * time.Millisecond
	c, err := client.DialTunnel(ctx, &s.reg, client.DialOptions{StallWindow: window}, s.homeLine, entry)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(ctx, m.Owner, m.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * window) // idle: no stall
	select {
	case <-c.Done():
		t.Fatalf("an idle subscription in a tunnel ended: %v", c.Err())
	default:
	}
	freeze.Store(20) // inside the first inner TLS record of the push: nothing of it reaches the session
	big, err := envelope.SealMessage(m.Card, nil, make([]byte, 40<<10), &envelope.Options{Suite: envelope.SuiteX25519})
	if err != nil || len(big) != 1 {
		t.Fatalf("sealed %d envelopes, %v", len(big), err)
	}
	if _, err := direct.Send(ctx, big[0], nil); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitStalled(t, ctx, c)
}

// waitGoroutines waits until the goroutine count is back to n: every
// session and splice of the tunnel has ended.
func waitGoroutines(t *testing.T, n int) {
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// TestTunnelRefusals: a home relay with another key than the descriptor
// names fails the TLS pin; an entry relay without tunnels and a home
// relay that takes no tunnels refuse with their codes.
func TestTunnelRefusals(t *testing.T) {
	_, other, _ := ed25519.GenerateKey(nil)
	cases := []struct {
		name         string
		homeKey      ed25519.PrivateKey // nil: B does not take tunnels
		wrongPin     bool
		entryTunnels bool
		want         error
	}{
		{"wrong home key", other, true, true, client.ErrTunnelKey},
		{"entry without tunnels", other, false, false, relay.ErrUnsupported},
		{"home without tunnels", nil, false, true, relay.ErrInternal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newTunnelSetup(t, tc.homeKey, tc.entryTunnels)
			if tc.wrongPin {
				_, pin, _ := ed25519.GenerateKey(nil)
				s.homeLine, _ = signedDescriptor(t, pin, "to-b")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := client.DialTunnel(ctx, &s.reg, client.DialOptions{}, s.homeLine, s.entry)
			if !errors.Is(err, tc.want) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestTunnelerPerSource: one source holds at most a sixteenth of the
// tunnels (at least 4), dials included, so a few addresses cannot take
// every slot; another source still gets one, and a closed tunnel gives
// its slot back.
func TestTunnelerPerSource(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	line, _ := signedDescriptor(t, priv, "home")
	tn := link.NewTunneler(link.TunnelerConfig{Max: 16, Open: func(context.Context, *descriptor.Descriptor) (io.ReadWriteCloser, error) {
		a, _ := net.Pipe()
		return a, nil
	}})
	ctx := context.Background()
	a, b := [16]byte{1}, [16]byte{2}
	var held []io.ReadWriteCloser
	for i := range 4 {
		s, err := tn.Tunnel(ctx, a, line)
		if err != nil {
			t.Fatalf("a's tunnel %d: %v", i, err)
		}
		held = append(held, s)
	}
	if _, err := tn.Tunnel(ctx, a, line); !errors.Is(err, relay.ErrBusy) {
		t.Fatalf("a's fifth tunnel: %v, want CodeBusy", err)
	}
	s, err := tn.Tunnel(ctx, b, line)
	if err != nil {
		t.Fatalf("b, while a holds its share: %v", err)
	}
	s.Close()
	held[0].Close()
	if _, err := tn.Tunnel(ctx, a, line); err != nil {
		t.Fatalf("a, once one of its tunnels closed: %v", err)
	}
	// An operator's share (an upstream of relays in a censored network).
	wide := link.NewTunneler(link.TunnelerConfig{Max: 16, PerSource: 10, Open: func(context.Context, *descriptor.Descriptor) (io.ReadWriteCloser, error) {
		a, _ := net.Pipe()
		return a, nil
	}})
	for i := range 10 {
		if _, err := wide.Tunnel(ctx, a, line); err != nil {
			t.Fatalf("tunnel %d of a share of 10: %v", i, err)
		}
	}
	if _, err := wide.Tunnel(ctx, a, line); !errors.Is(err, relay.ErrBusy) {
		t.Fatalf("past a share of 10: %v", err)
	}
}
