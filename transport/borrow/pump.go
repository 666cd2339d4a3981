package borrow

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// end is how one direction of a splice ended.
type end int

const (
	endFIN    end = iota // the source sent FIN; the destination is half-closed
	endReset             // a side was reset; the other is reset, both closed
	endBroken            // closed under us, idle or stalled: both closed
	endQuiet             // the flow went to the relay: nothing was touched
)

// pump copies src to dst until src ends. With claim, the first thing src
// yields (bytes, FIN or reset) commits the flow to the origin; if the flow
// went to the relay instead, pump returns endQuiet without touching dst.
// pre, if any, goes to dst in one write with the first bytes src yields,
// and is dropped if src ends first. A buffer is held only while bytes
// move: an idle splice holds none (see readPooled).
func (f *flow) pump(dst, src net.Conn, pre []byte, claim bool) end {
	for {
		src.SetReadDeadline(f.act.deadline())
		bp, n, err := readPooled(src)
		if claim && (n > 0 || (err != nil && !isTimeout(err))) {
			fin := n == 0 && errors.Is(err, io.EOF)
			if !f.claimByOrigin(fin) {
				putBuf(bp)
				return endQuiet
			}
			claim = false
			if fin {
				// The client sees the FIN only once the inspection has
				// stopped reading (the claim ended it): so all it read
				// was sent before the FIN, and is held as such (see
				// forward), and what the client sends once it sees the
				// FIN goes on at once. An inspection slowed down could
				// read those bytes too, and held them until the
				// client's next write: no reset where nginx resets
				// (TestBorrowedSiteOriginCloseLikeNginx failed 3 times
				// in 40 under load).
				<-f.inspected
			}
		}
		var werr error
		if n > 0 {
			f.act.touch()
			out := (*bp)[:n]
			if len(pre) > 0 {
				out, pre = append(pre, out...), nil
			}
			dst.SetWriteDeadline(time.Now().Add(f.act.stall))
			_, werr = dst.Write(out)
		}
		putBuf(bp)
		if werr != nil {
			return f.broken(src, dst, werr)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			closeWrite(dst)
			f.act.halfClose()
			return endFIN
		case isTimeout(err) && !f.act.expired():
		default:
			return f.broken(dst, src, err)
		}
	}
}

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

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(bp *[]byte) {
	if bp != nil {
		bufPool.Put(bp)
	}
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

// broken ends a splice after an operation on failed returned err: a reset
// of failed is passed on to other as a reset; anything else closes both.
func (f *flow) broken(other, failed net.Conn, err error) end {
	if isReset(err) {
		reset(other)
		failed.Close()
		return endReset
	}
	other.Close()
	failed.Close()
	return endBroken
}

// activity is the last time a byte moved in either direction of a splice.
type activity struct {
	last     atomic.Int64 // Unix nanoseconds
	half     atomic.Bool  // one direction has ended
	idle     time.Duration
	halfIdle time.Duration
	stall    time.Duration // bound on one blocked write
}

func (a *activity) init(idle, halfIdle time.Duration) {
	a.idle, a.halfIdle, a.stall = idle, halfIdle, halfIdle
	a.touch()
}

func (a *activity) touch()     { a.last.Store(time.Now().UnixNano()) }
func (a *activity) halfClose() { a.half.Store(true) }

func (a *activity) deadline() time.Time {
	limit := a.idle
	if a.half.Load() {
		limit = a.halfIdle
	}
	return time.Unix(0, a.last.Load()).Add(limit)
}

func (a *activity) expired() bool { return !time.Now().Before(a.deadline()) }

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

// reset closes c with an RST instead of a FIN where c is TCP.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// closeWrite sends FIN on c, or closes it if it cannot half-close.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// prefixConn reads the bytes the listener inspected, then the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite keeps half-close working through the wrapper.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
