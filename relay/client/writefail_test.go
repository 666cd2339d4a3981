package client_test

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/transport"
)

// resetConn fails every write with a reset once armed, as a connection
// whose peer (or a censor) sent an RST.
type resetConn struct {
	transport.Conn
	armed atomic.Bool
}

func (c *resetConn) Write(p []byte) (int, error) {
	if c.armed.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
	}
	return c.Conn.Write(p)
}

// TestWriteResetEndsSessionAsReset: when a write fails with a reset and
// the client closes the connection, a request waiting on the session
// hears the reset, not the "use of closed network connection" its
// reader then gets (classed canceled): a sender resumes after a reset and
// gives up on a cancel, so which one it heard first decided, by a race,
// whether a send through a censor that resets flows went on (a flake of
// TestSendThroughResettingCensor).
func TestWriteResetEndsSessionAsReset(t *testing.T) {
	cc, sc := relaytest.Pipe(t)
	defer sc.Close()
	read := make(chan struct{}, 8)
	go func() { // a relay that says hello and then answers nothing
		if _, _, err := relay.ReadFrame(sc); err != nil {
			return
		}
		sc.Write(relay.AppendFrame(nil, relay.ServerHello{Version: relay.ProtocolVersion, MaxEnvelope: 64 << 10}))
		for {
			if _, _, err := relay.ReadFrame(sc); err != nil {
				return
			}
			read <- struct{}{}
		}
	}()
	rc := &resetConn{Conn: cc}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a deadlock guard
	defer cancel()
	c, err := client.New(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waiting := make(chan error, 1)
	go func() { waiting <- c.Ping(ctx) }()
	select { // the first Ping reached the relay (it stays unanswered)
	case <-read:
	case <-ctx.Done():
		t.Fatal("the first Ping never arrived")
	}
	rc.armed.Store(true)
	if err := c.Ping(ctx); transport.ClassOf(err) != transport.ClassReset {
		t.Fatalf("the Ping whose write failed: %v (class %v), want a reset", err, transport.ClassOf(err))
	}
	err = <-waiting
	if !errors.Is(err, client.ErrClosed) || transport.ClassOf(err) != transport.ClassReset {
		t.Fatalf("the Ping waiting: %v (class %v), want the session closed by a reset", err, transport.ClassOf(err))
	}
}
