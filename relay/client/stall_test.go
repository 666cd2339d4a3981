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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.Serve(c.(*net.TCPConn), "test")
		}
	}()
	mb := censortest.NewMiddlebox(t, ln.Addr().String())
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
