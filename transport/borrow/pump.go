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

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(bp *[]byte) {
	if bp != nil {
		bufPool.Put(bp)
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
