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
// Every socket write of gathered bytes happens inside a TLS write: the
// writer marks the last frame of a run (last), and that frame's record
// write flushes and ends the gathering. So the TLS connection sees each
// of those writes as its own: its Close still skips close_notify while
// one is blocked on a peer that does not read, and the callers' frame
// locks (which Close and stream resets check) cover them. A run ends
// before any wait for flow-control window: nothing, neither the run's
// frames nor the control frames that other goroutines write meanwhile,
// is held back while the writer waits. uncork, outside a TLS write, only
// cleans up after a failed or interrupted run.

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
// goroutine (TLS alerts, control frames) join the gathered bytes in
// order during a run.
type writeCork struct {
	mu  sync.Mutex
	buf *[]byte     // gathered bytes; nil when not gathering
	end bool        // the next write ends the run
	on  atomic.Bool // buf != nil, for Close
	err error       // a write of gathered bytes failed: the TLS stream is cut
}

// write gathers p during a run, else writes it (not holding the lock:
// Close must not wait behind a write blocked on a peer that does not
// read). The TLS connection above orders its writes, and gathered bytes
// all came through it, so the order of bytes holds.
func (k *writeCork) write(raw net.Conn, p []byte) (int, error) {
	k.mu.Lock()
	if k.err != nil {
		k.mu.Unlock()
		return 0, k.err
	}
	if k.buf == nil {
		k.mu.Unlock()
		return raw.Write(p)
	}
	defer k.mu.Unlock()
	*k.buf = append(*k.buf, p...)
	if k.end || len(*k.buf) >= corkFlushAt {
		end := k.end
		err := k.flushLocked(raw)
		if end {
			k.drop()
		}
		if err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (k *writeCork) cork() {
	k.mu.Lock()
	if k.buf == nil {
		k.buf = corkPool.Get().(*[]byte)
		k.on.Store(true)
	}
	k.end = false
	k.mu.Unlock()
}

func (k *writeCork) last() {
	k.mu.Lock()
	k.end = k.buf != nil
	k.mu.Unlock()
}

func (k *writeCork) uncork(raw net.Conn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.flushLocked(raw)
	k.drop()
	return err
}

// flushLocked writes what has gathered. A failed write may have sent
// part of a record: every later write fails with its error.
func (k *writeCork) flushLocked(raw net.Conn) error {
	if k.err != nil || k.buf == nil || len(*k.buf) == 0 {
		return k.err
	}
	_, err := raw.Write(*k.buf)
	*k.buf = (*k.buf)[:0]
	if err != nil {
		k.err = err
	}
	return err
}

// closeFlushWait bounds the last write of what a cork gathered when its
// connection closes (a GOAWAY or TLS alert written during another
// writer's run).
const closeFlushWait = time.Second

// release sends what has gathered, within closeFlushWait, and stops
// gathering: the connection is closing. If a write is under way (it may
// be blocked on a peer that does not read), it does not wait: closing
// the connection ends that write, and its writer returns the buffer.
func (k *writeCork) release(raw net.Conn) {
	if !k.on.Load() {
		return
	}
	raw.SetWriteDeadline(time.Now().Add(closeFlushWait))
	if !k.mu.TryLock() {
		return
	}
	defer k.mu.Unlock()
	k.flushLocked(raw)
	k.drop()
}

// drop returns the buffer to the pool; k.mu is held.
func (k *writeCork) drop() {
	if k.buf != nil {
		*k.buf = (*k.buf)[:0]
		corkPool.Put(k.buf)
		k.buf = nil
		k.on.Store(false)
	}
	k.end = false
}

// corkConn is a dialled connection that can gather writes (the client's
// side; the relay's accepted connections are countedConns).
type corkConn struct {
	net.Conn
	k writeCork
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
