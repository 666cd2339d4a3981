package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
)

// TestStalledFlowDetected: behind a censor that freezes the flow after
// 32 KiB, a session sending envelopes ends with ClassStalled within its
// stall window instead of hanging; an idle session never stalls.
func TestStalledFlowDetected(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	mb := censortest.NewMiddlebox(t, r.ServeTCP(t, "test"))
	mb.SetRule(censortest.FreezeAfter(32 << 10))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func() *client.Client {
		raw, err := net.Dial("tcp", mb.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(ctx, raw.(*net.TCPConn), client.WithStallWindow(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	owner := r.Connect(t)
	m := relaytest.NewMailbox(t, owner, nil)

	// Idle for several windows: still alive.
	idle := dial()
	defer idle.Close()
	time.Sleep(time.Second)
	if err := idle.Ping(ctx); err != nil {
		t.Fatalf("an idle session stalled: %v", err)
	}

	c := dial()
	defer c.Close()
	var sendErr error
	for i := 0; i < 100 && sendErr == nil; i++ { // 100 × 4 KiB, far past the budget
		_, sendErr = c.Send(ctx, m.Seal(t, "x"), nil)
	}
	if ctx.Err() != nil {
		t.Fatal("the frozen session hung until the test's deadline")
	}
	if !errors.Is(sendErr, transport.ErrStalled) || transport.ClassOf(sendErr) != transport.ClassStalled {
		t.Fatalf("send over a frozen flow: %v (class %v)", sendErr, transport.ClassOf(sendErr))
	}
}

// freezable is a session whose writes, once frozen, block until it is
// closed: a flow frozen upstream with the client's socket buffer full.
type freezable struct {
	transport.Conn
	frozen atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func (f *freezable) Write(p []byte) (int, error) {
	if f.frozen.Load() {
		<-f.closed
		return 0, net.ErrClosed
	}
	return f.Conn.Write(p)
}

func (f *freezable) Close() error {
	f.once.Do(func() { close(f.closed) })
	return f.Conn.Close()
}

// TestStalledWriteReportsStall: requests caught in a write (or waiting
// to write) when the stall watcher closes a frozen session report the
// stall, as those waiting for an answer do. They reported the closed
// connection, which a sender with several envelopes in flight took for a
// failure and gave up on, instead of resuming on a new connection.
func TestStalledWriteReportsStall(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	m := relaytest.NewMailbox(t, r.Connect(t), nil)
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	conn := &freezable{Conn: cc, closed: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a deadlock guard
	defer cancel()
	c, err := client.New(ctx, conn, client.WithStallWindow(200*time.Millisecond), client.WithRelayKey(r.Server.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn.frozen.Store(true)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.Send(ctx, m.Seal(t, "x"), nil)
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, transport.ErrStalled) {
			t.Fatalf("a send on the frozen session: %v, want the stall", err)
		}
	}
}

// blockedConn is a stream whose writes block, once armed, until Close: a
// frozen flow with its send buffer full.
type blockedConn struct {
	transport.Conn
	armed   atomic.Bool
	blocked chan struct{} // a write is blocked
	closed  chan struct{}
	once    sync.Once
}

func (c *blockedConn) Write(b []byte) (int, error) {
	if c.armed.Load() {
		select {
		case c.blocked <- struct{}{}:
		default:
		}
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

func (c *blockedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestSendHoldsItsDeadlineWhileWriteBlocked: a Send whose context ends
// while its write is blocked returns with the context's error then, not
// when the stall window (here an hour) closes the session; a request whose
// context ended before its write began leaves the session as it was.
func TestSendHoldsItsDeadlineWhileWriteBlocked(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	bc := &blockedConn{Conn: cc, blocked: make(chan struct{}, 1), closed: make(chan struct{})}
	c, err := client.New(context.Background(), bc, client.WithStallWindow(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gone, cancelGone := context.WithCancel(context.Background())
	cancelGone()
	if _, err := c.Send(gone, make([]byte, 4096), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a context already ended: %v", err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("the session after a request that never went out: %v", err)
	}
	bc.armed.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, make([]byte, 4096), nil)
		done <- err
	}()
	select {
	case <-bc.blocked: // the Send's write is blocked
	case <-time.After(30 * time.Second):
		t.Fatal("the Send never wrote")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Send = %v, want the context's error", err)
		}
	case <-time.After(30 * time.Second): // a deadlock guard: the stall window is an hour
		t.Fatal("Send outlived its context by a blocked write")
	}
}

// TestTinyStallWindow: a stall window too short to mean anything is
// raised to MinStallWindow, not a ticker's panic.
func TestTinyStallWindow(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	c, err := client.New(context.Background(), cc, client.WithStallWindow(3*time.Nanosecond), client.WithRelayKey(r.Server.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}
