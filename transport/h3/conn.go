package h3

import (
	"fmt"
	"io"
	"net"
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
// Reads and writes are HTTP/3 DATA frames on that stream.
type serverConn struct {
	str          *http3.Stream
	laddr, raddr net.Addr
	release      func() // frees the listener's session slot

	// wmu serialises Write, CloseWrite and the graceful part of Close:
	// quic-go forbids closing a send stream concurrently with Write.
	wmu       sync.Mutex
	closed    atomic.Bool
	closeOnce sync.Once
}

var _ transport.Conn = (*serverConn)(nil)

func (c *serverConn) Read(b []byte) (int, error) {
	n, err := c.str.Read(b)
	return n, streamErr(err, c.closed.Load())
}

func (c *serverConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return 0, streamErr(net.ErrClosed, true)
	}
	n, err := c.str.Write(b)
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

func (c *serverConn) LocalAddr() net.Addr                { return c.laddr }
func (c *serverConn) RemoteAddr() net.Addr               { return c.raddr }
func (c *serverConn) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *serverConn) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *serverConn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }

// clientConn is the client side of a session: the response body of a
// streaming POST for reading and the request body for writing, on a QUIC
// connection that belongs to this session alone.
type clientConn struct {
	qc   *quic.Conn
	tr   *quic.Transport
	udp  net.PacketConn
	body io.ReadCloser  // response body
	pw   *io.PipeWriter // request body; http3 copies it into DATA frames
	stop func()         // cancels the request context

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ transport.Conn = (*clientConn)(nil)

func (c *clientConn) Read(b []byte) (int, error) {
	n, err := c.body.Read(b)
	return n, streamErr(err, c.closed.Load())
}

func (c *clientConn) Write(b []byte) (int, error) {
	n, err := c.pw.Write(b)
	if err == io.ErrClosedPipe && !c.closed.Load() {
		// Either CloseWrite was called or the stream failed under the
		// request body copier; in both cases nothing more can be sent.
		err = &transport.Error{Class: transport.ClassReset, Op: "session", Transport: Name,
			Err: fmt.Errorf("session stream closed for writing: %w", net.ErrClosed)}
	}
	return n, streamErr(err, c.closed.Load())
}

// CloseWrite ends the request body: the relay reads io.EOF.
func (c *clientConn) CloseWrite() error {
	if c.closed.Load() {
		return streamErr(net.ErrClosed, true)
	}
	return c.pw.Close()
}

// Close tears the session down by closing its QUIC connection. It is abrupt:
// data not yet acknowledged may be lost. For a graceful end, CloseWrite and
// read until io.EOF first.
func (c *clientConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.pw.CloseWithError(net.ErrClosed)
		c.stop()
		c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		c.tr.Close()
		c.udp.Close()
	})
	return nil
}

func (c *clientConn) LocalAddr() net.Addr  { return c.qc.LocalAddr() }
func (c *clientConn) RemoteAddr() net.Addr { return c.qc.RemoteAddr() }

func (c *clientConn) SetDeadline(time.Time) error      { return errDeadline }
func (c *clientConn) SetReadDeadline(time.Time) error  { return errDeadline }
func (c *clientConn) SetWriteDeadline(time.Time) error { return errDeadline }

var errDeadline = fmt.Errorf("h3 client session: %w; use Close to unblock", transport.ErrDeadlineUnsupported)
