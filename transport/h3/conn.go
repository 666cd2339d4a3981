package h3

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
)

// Stream error code sent when a session is closed with data still in flight.
var codeCanceled = quic.StreamErrorCode(http3.ErrCodeRequestCanceled)

// serverConn is the relay side of a session: the taken-over request stream.
// Reads and writes are HTTP/3 DATA frames on that stream. Reads, closes,
// resets and deadlines go through http3.Stream; writes go to the QUIC
// stream under it, a frame per stream write (dataWriter), since
// http3.Stream.Write writes each frame header with a stream write of its
// own.
type serverConn struct {
	str          *http3.Stream
	dw           dataWriter // on str's QUIC stream
	laddr, raddr net.Addr
	src          [16]byte // what the relay counts the client as (transport.Sourced)
	release      func()   // frees the listener's session slot
	// req is the session's request, whose Trailer http3 sets if the
	// client sends a HEADERS frame on the session stream (up to the
	// server's header limit): Read drops it at once, else it would live
	// as long as the session. Only Read's goroutine touches it.
	req *http.Request

	// wmu serialises Write, CloseWrite and the graceful part of Close:
	// quic-go forbids closing a send stream concurrently with Write.
	wmu       sync.Mutex
	closed    atomic.Bool
	closeOnce sync.Once
}

var _ transport.Conn = (*serverConn)(nil)

func (c *serverConn) Read(b []byte) (int, error) {
	n, err := c.str.Read(b)
	if c.req != nil && c.req.Trailer != nil {
		c.req.Trailer = nil // a session's client sends none; none is kept
	}
	return n, streamErr(err, c.closed.Load())
}

func (c *serverConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return 0, streamErr(net.ErrClosed, true)
	}
	n, err := c.dw.Write(b)
	return n, streamErr(err, c.closed.Load())
}

// CloseWrite ends the response body: the client reads io.EOF.
func (c *serverConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return streamErr(net.ErrClosed, true)
	}
	return streamErr(c.str.Close(), false)
}

// Close ends the session. Reading stops at once (STOP_SENDING to the peer).
// If no Write is in progress, data already written is still delivered and
// followed by end-of-stream; a Write in progress is aborted and the stream
// reset instead.
func (c *serverConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.str.CancelRead(codeCanceled)
		if c.wmu.TryLock() {
			c.str.Close()
			c.wmu.Unlock()
		} else {
			c.str.CancelWrite(codeCanceled)
		}
		c.release()
	})
	return nil
}

// abort resets both directions of a session the relay never accepted, so
// the client reads an error rather than a clean end of stream.
func (c *serverConn) abort() {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.str.CancelRead(codeCanceled)
		c.str.CancelWrite(codeCanceled)
		c.release()
	})
}

func (c *serverConn) LocalAddr() net.Addr                { return c.laddr }
func (c *serverConn) RemoteAddr() net.Addr               { return c.raddr }
func (c *serverConn) Source() [16]byte                   { return c.src }
func (c *serverConn) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *serverConn) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *serverConn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }
