//go:build unix

package borrow

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// readPooled reads what src has, into a buffer from bufPool that the
// caller gives back with putBuf. On a TCP connection it waits for bytes
// without a buffer and takes one only once they are there, so the
// thousands of idle splices a busy front can hold keep no 16 KiB buffer
// each; other connections (tests) hold one across the wait. End of stream
// is io.EOF, with n == 0.
func readPooled(src net.Conn) (bp *[]byte, n int, err error) {
	tc, ok := src.(*net.TCPConn)
	if !ok {
		bp = getBuf()
		n, err = src.Read(*bp)
		return bp, n, err
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		b := getBuf()
		for {
			m, e := syscall.Read(int(fd), *b)
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				putBuf(b)
				return false // wait until readable
			case e != nil:
				putBuf(b)
				rerr = os.NewSyscallError("read", e)
			case m == 0:
				putBuf(b)
				rerr = io.EOF
			default:
				bp, n = b, m
			}
			return true
		}
	})
	if err != nil {
		return nil, 0, err // deadline, or closed under us
	}
	return bp, n, rerr
}

// watchReset waits, after the origin's FIN, for the origin to reset the
// connection, and passes the reset on to the client at once. A web
// server that timed a connection out has closed its socket, not only
// half-closed it: the next bytes a client sends it are answered with a
// RST, which a direct client sees one round trip after writing. Without
// the watch the front would learn of that reset only on its next write to
// the origin, one client write later. It returns when the origin's
// connection fails or is closed (the splice has ended).
func (f *flow) watchReset(o net.Conn) {
	tc, ok := o.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	o.SetReadDeadline(time.Time{}) // the back pump's idle deadline: the splice's end ends the watch
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		// A read would return EOF even after the reset (Linux checks the
		// FIN before the socket's error), so ask for the error itself.
		v, e := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		if e == nil && v == 0 {
			// Still only the FIN: wait for the socket's next event (the
			// netpoller wakes this read on every edge, the reset's too).
			return false
		}
		rerr = e
		if e == nil {
			rerr = syscall.Errno(v)
		}
		return true
	})
	if err == nil && isReset(rerr) {
		reset(f.client)
		o.Close()
	}
}

// readAvailable reads, without waiting, up to limit bytes c has already
// received. Its error is io.EOF or a reset if c has ended; nil if more may
// come. Connections that are not TCP yield nothing.
func readAvailable(c net.Conn, limit int) ([]byte, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, nil
	}
	buf := make([]byte, limit)
	n, ended := 0, error(nil)
	for n < limit && ended == nil { // each round reads at least a byte or stops
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			m, rerr = syscall.Read(int(fd), buf[n:])
			return true // never wait
		}); err != nil {
			break
		}
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
			return buf[:n], nil
		case rerr != nil:
			ended = rerr
		case m == 0:
			ended = io.EOF
		}
		n += max(m, 0)
	}
	return buf[:n], ended
}
