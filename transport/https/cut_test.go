package https

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// TestSessionCutByFINIsNotItsEnd: a session whose TCP connection ends
// (a FIN from a middlebox, a relay's process gone) before the relay ended
// the session's stream reads an unexpected EOF, classed as a reset, not
// the io.EOF of a session the relay closed: a sender resumes after a
// reset, and took the cut session for a closed one and gave up (a flake
// of TestSendThroughResettingCensor, where a reset middlebox's close
// could reach the client as a FIN).
func TestSessionCutByFINIsNotItsEnd(t *testing.T) {
	tr := engineTransport()
	r := startRelay(t, tr, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	go func() { // a plain TCP proxy, whose connections the test closes
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.ep.Addr)
		if err != nil {
			c.Close()
			return
		}
		mu.Lock()
		conns = append(conns, c, up)
		mu.Unlock()
		go io.Copy(up, c)
		io.Copy(c, up)
	}()
	ep := r.ep
	ep.Addr = ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a deadlock guard
	defer cancel()
	accepted := make(chan transport.Conn, 1)
	go func() {
		if rc, err := r.ln.Accept(ctx); err == nil {
			accepted <- rc
		}
	}()
	c, err := tr.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case rc := <-accepted:
		defer rc.Close()
	case <-ctx.Done():
		t.Fatal("the relay never accepted the session")
	}
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		read <- err
	}()
	mu.Lock()
	conns[0].(*net.TCPConn).CloseWrite() // a FIN to the client (a Close could be a reset)
	conns[1].Close()
	mu.Unlock()
	select {
	case err = <-read:
	case <-ctx.Done():
		t.Fatal("the cut session's Read never returned")
	}
	if errors.Is(err, io.EOF) || transport.ClassOf(err) != transport.ClassReset {
		t.Fatalf("the cut session's Read: %v (class %v), want an unexpected EOF, classed reset", err, transport.ClassOf(err))
	}
}
