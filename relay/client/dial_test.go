package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// fakeTransport dials by handing a loopback TCP pair's far end to the
// relay server, or fails with a fixed error.
type fakeTransport struct {
	name string
	fail error
	r    *relaytest.Relay
	t    *testing.T
}

func (f *fakeTransport) Name() string { return f.name }

func (f *fakeTransport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	if f.fail != nil {
		return nil, transport.Classify("dial", f.name, f.fail)
	}
	cc, sc := relaytest.Pipe(f.t)
	f.r.Serve(sc, f.name)
	return cc, nil
}

func (f *fakeTransport) Listen(context.Context, transport.ListenConfig) (transport.Listener, error) {
	return nil, errors.New("not used")
}

// testDescriptor is a signed descriptor of a new relay key with one
// endpoint per transport name, in that order (the fake transports ignore
// the address).
func testDescriptor(t *testing.T, transports ...string) *descriptor.Descriptor {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	d := &descriptor.Descriptor{Issued: time.Now().Add(-time.Minute), Expires: time.Now().Add(time.Hour)}
	for _, name := range transports {
		d.Endpoints = append(d.Endpoints, descriptor.Endpoint{Transport: name, Addr: "127.0.0.1:9", Path: "/p", Key: make([]byte, 32)})
	}
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	if d, err = descriptor.Parse(line, time.Now()); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDialFallsBack(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	var reg transport.Registry
	reg.Register(&fakeTransport{name: "blocked", fail: syscall.ECONNREFUSED})
	reg.Register(&fakeTransport{name: "works", r: r, t: t})
	d := testDescriptor(t, "blocked", "works")
	ctx := context.Background()
	c, err := client.Dial(ctx, &reg, client.DialOptions{}, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Only the blocked transport: the error is classified and names no address.
	_, err = client.Dial(ctx, &reg, client.DialOptions{Transport: "blocked"}, d)
	if !errors.Is(err, transport.ErrRefused) || strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("err = %v", err)
	}
	if _, err = client.Dial(ctx, &reg, client.DialOptions{Transport: "nope"}, d); !errors.Is(err, route.ErrNoCandidate) {
		t.Fatalf("err = %v", err)
	}
}

// TestDialRemembersAfterAck: with a route memory, the way in that won is
// remembered only once the relay has acknowledged a request, and the next
// dial on that network tries it first.
func TestDialRemembersAfterAck(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	var reg transport.Registry
	slow := &fakeTransport{name: "first", fail: syscall.ECONNREFUSED}
	reg.Register(slow)
	reg.Register(&fakeTransport{name: "second", r: r, t: t})
	d := testDescriptor(t, "first", "second")
	path := filepath.Join(t.TempDir(), "routes")
	mem, err := route.OpenMemory(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	opts := client.DialOptions{Memory: mem, Network: "cafe"}
	c, err := client.Dial(ctx, &reg, opts, d)
	if err != nil {
		t.Fatal(err)
	}
	second := route.FromDescriptor(d, route.Filter{Transport: "second"})[0]
	// Only the first candidate's failure may be on file: no success yet.
	if again, err := route.OpenMemory(path, 0); err != nil || again.RTT("cafe", second) != 0 {
		t.Fatalf("remembered after the bare hello (%v)", err)
	}
	if err := c.Ping(ctx); err != nil { // a Ping is acknowledged
		t.Fatal(err)
	}
	c.Close()
	if again, err := route.OpenMemory(path, 0); err != nil || again.RTT("cafe", second) == 0 {
		t.Fatalf("not remembered after an acknowledged request (%v)", err)
	}
	first := route.FromDescriptor(d, route.Filter{})
	if got := mem.Order("cafe", first); got[0].Endpoint.Transport != "second" {
		t.Fatalf("the winner has no head start: %s first", got[0].Endpoint.Transport)
	}
}

// earlyTransport is a fakeTransport that sends the dial's early data on
// the stream before it returns it, and says so, as https and h3 do.
type earlyTransport struct {
	fakeTransport
	got   [][]byte // the early data of each dial
	first chan []byte
}

type earlyConn struct {
	transport.Conn
	early []byte
	first chan []byte // the client's first write after the dial
}

func (c earlyConn) SentEarly() []byte { return c.early }

func (c earlyConn) Write(p []byte) (int, error) {
	select {
	case c.first <- bytes.Clone(p):
	default:
	}
	return c.Conn.Write(p)
}

func (f *earlyTransport) Dial(ctx context.Context, ep transport.Endpoint) (transport.Conn, error) {
	cc, sc := relaytest.Pipe(f.t)
	early := transport.EarlyData(ctx)
	f.got = append(f.got, early)
	if len(early) > 0 {
		if _, err := cc.Write(early); err != nil {
			return nil, err
		}
	}
	f.r.Serve(sc, f.name)
	return earlyConn{Conn: cc, early: early, first: f.first}, nil
}

// TestDialSendsHelloEarly: Dial asks the transport to send the protocol
// hello with the session request, and the client does not send it again
// when the transport did: its first write is the next request.
func TestDialSendsHelloEarly(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	var reg transport.Registry
	et := &earlyTransport{fakeTransport: fakeTransport{name: "early", r: r, t: t}, first: make(chan []byte, 1)}
	reg.Register(et)
	d := testDescriptor(t, "early")
	ctx := context.Background()
	c, err := client.Dial(ctx, &reg, client.DialOptions{}, d)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after an early hello: %v", err)
	}
	if len(et.got) != 1 {
		t.Fatalf("%d dials, want 1", len(et.got))
	}
	typ, p, err := relay.ReadFrame(bytes.NewReader(et.got[0]))
	if err != nil || typ != relay.FrameClientHello {
		t.Fatalf("early data: frame %v, %v; want a ClientHello", typ, err)
	}
	if _, err := relay.ParseClientHello(p); err != nil {
		t.Fatalf("early hello: %v", err)
	}
	select {
	case w := <-et.first:
		if typ, _, err := relay.ReadFrame(bytes.NewReader(w)); err != nil || typ != relay.FramePing {
			t.Fatalf("the client's first write after the dial: frame %v, %v; want the Ping, not a second hello", typ, err)
		}
	default:
		t.Fatal("the client wrote nothing")
	}
}
