package https

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Write coalescing under TLS. crypto/tls and uTLS write each record to the
// socket with a write of its own, so a 64 KiB session write, five DATA
// frames of a record each, costs five syscalls. Beneath TLS, a writer
// gathers the records of a run of frames it has window for and sends
// them in one socket write (one per corkFlushAt bytes).
//
// The writer marks the last frame of a run (last), and that frame's
// record write flushes and ends the run, inside the TLS write and under
// the caller's frame lock, which Close and stream resets check. A frame
// that takes the last of a window ends its run, so nothing, neither the
// run's frames nor the control frames that other goroutines write
// meanwhile, is held back while a writer waits for window. uncork, outside
// a TLS write, sends what is left after a failed or interrupted run.

// corkFlushAt is how much a cork gathers before it writes: four full
// records, a 64 KiB session write (a full record is 16384 bytes of
// plaintext and 22 of TLS 1.3).
const corkFlushAt = 64 << 10

// corkPool holds the gathering buffers: a connection holds one only
// during a run, so an idle session holds none.
var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, corkFlushAt+16384+64); return &b }}

// corkable is a connection beneath TLS that can gather writes.
type corkable interface {
	cork()         // start gathering
	last()         // the next write ends the run: it flushes and stops gathering
	uncork() error // write what has gathered and stop gathering
}

// writeCork is the gathering state of one connection. Writes from any
// goroutine (TLS alerts, control frames) join the waiting bytes in order
// during a run, and while a write of waiting bytes is under way.
//
// No lock is held across a socket write: a flush takes the waiting bytes
// and writes them with mu released, and writes that come meanwhile wait
// in a new buffer, which the flush sends next. So a write that cannot
// finish (a peer that does not read) never blocks Close, a TLS alert, or
// a control frame; only a writer that finds a full buffer (corkFlushAt)
// waiting behind it waits for it, which bounds the memory.
type writeCork struct {
	mu        sync.Mutex
	cond      sync.Cond // a flush ended
	gathering bool
	end       bool    // the next write ends the run
	buf       *[]byte // waiting bytes (from corkPool); nil when none
	flushing  bool    // a socket write of waiting bytes is under way
	err       error   // a write of waiting bytes failed: the TLS stream is cut
}

// write gathers or queues p, else writes it. The TLS connection above
// orders its writes, and waiting bytes all came through it, so the order
// of bytes holds.
func (k *writeCork) write(raw net.Conn, p []byte) (int, error) {
	k.mu.Lock()
	for k.flushing && k.err == nil && k.buf != nil && len(*k.buf) >= corkFlushAt {
		k.wait()
	}
	if k.err != nil {
		k.mu.Unlock()
		return 0, k.err
	}
	if !k.gathering && !k.flushing {
		k.mu.Unlock()
		return raw.Write(p) // nothing waits: the bytes go now
	}
	if k.buf == nil {
		k.buf = corkPool.Get().(*[]byte)
	}
	*k.buf = append(*k.buf, p...)
	var err error
	if k.gathering && (k.end || len(*k.buf) >= corkFlushAt) {
		if k.end {
			k.gathering, k.end = false, false
		}
		err = k.flushLocked(raw)
	}
	k.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (k *writeCork) wait() {
	if k.cond.L == nil {
		k.cond.L = &k.mu
	}
	k.cond.Wait()
}

func (k *writeCork) cork() {
	k.mu.Lock()
	k.gathering, k.end = true, false
	k.mu.Unlock()
}

func (k *writeCork) last() {
	k.mu.Lock()
	k.end = k.gathering
	k.mu.Unlock()
}

func (k *writeCork) uncork(raw net.Conn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gathering, k.end = false, false
	return k.flushLocked(raw)
}

// flushLocked writes the waiting bytes, and those that come while it
// writes, with k.mu released during each socket write; k.mu is held on
// entry and on return. If a flush is already under way, that one sends
// them. A failed write may have sent part of a record: every later
// write fails with its error.
func (k *writeCork) flushLocked(raw net.Conn) error {
	if k.flushing {
		return k.err
	}
	for k.err == nil && k.buf != nil && len(*k.buf) > 0 {
		b := k.buf
		k.buf = nil
		k.flushing = true
		k.mu.Unlock()
		_, err := raw.Write(*b)
		k.mu.Lock()
		k.flushing = false
		*b = (*b)[:0]
		corkPool.Put(b)
		if err != nil {
			k.err = err
		}
		k.cond.Broadcast()
	}
	if k.buf != nil && (k.err != nil || len(*k.buf) == 0) {
		*k.buf = (*k.buf)[:0]
		corkPool.Put(k.buf)
		k.buf = nil
	}
	return k.err
}

// closeFlushWait bounds the last write of what waits when the connection
// closes (a GOAWAY or TLS alert written during another writer's run).
const closeFlushWait = time.Second

// release sends what waits, within closeFlushWait, and stops gathering:
// the connection is closing. If a flush is under way (it may be blocked
// on a peer that does not read), it does not wait for it: closing the
// connection ends that write.
func (k *writeCork) release(raw net.Conn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gathering, k.end = false, false
	if k.flushing || k.buf == nil {
		return
	}
	raw.SetWriteDeadline(time.Now().Add(closeFlushWait))
	k.flushLocked(raw)
}

// corkConn is a dialled connection that can gather writes (the client's
// side; the relay's accepted connections are countedConns).
type corkConn struct {
	net.Conn
	k       writeCork
	rr      recordReads  // reads that end where a TLS record ends (tlsreads.go)
	arrived atomic.Int64 // unix nanoseconds of the last read that returned bytes
}

// Read is uTLS's (one reader at a time): uTLS keeps crypto/tls's read
// buffer, which doubled past one record the same way.
func (c *corkConn) Read(p []byte) (int, error) {
	n, err := c.rr.read(c.Conn, p)
	if n > 0 {
		// The time first: arrivals reads mid first, so a record that
		// has just begun is never seen with the time before it.
		c.arrived.Store(time.Now().UnixNano())
	}
	c.rr.mid.Store(c.rr.seen > 0)
	return n, err
}

// arrivals is when bytes last came, and whether a TLS record has begun
// and not ended.
func (c *corkConn) arrivals() (time.Time, bool) {
	mid := c.rr.mid.Load()
	return time.Unix(0, c.arrived.Load()), mid
}

func (c *corkConn) Write(p []byte) (int, error) { return c.k.write(c.Conn, p) }
func (c *corkConn) cork()                       { c.k.cork() }
func (c *corkConn) last()                       { c.k.last() }
func (c *corkConn) uncork() error               { return c.k.uncork(c.Conn) }

func (c *corkConn) Close() error {
	c.k.release(c.Conn)
	return c.Conn.Close()
}

// CloseWrite keeps half-close working through the wrapper.
func (c *corkConn) CloseWrite() error { return closeWrite(c.Conn) }

// closeWrite half-closes c if it can.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
