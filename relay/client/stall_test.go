package client_test

import (
	"context"
	"errors"
	"net"
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
