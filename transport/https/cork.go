package https

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Write coalescing under TLS. crypto/tls and uTLS write each record to the
// socket with a write of its own, so a 64 KiB session write, five DATA
// frames of a record each, costs five syscalls. A writer that corks the
// connection beneath TLS gathers its records and sends them with one
// write when it uncorks, or whenever corkFlushAt bytes have gathered. A
// writer never waits (for flow-control window) while corked: it flushes
// first, so nothing it has written sits behind a wait.

// corkFlushAt is how much a cork gathers before it writes: four full
// records, a 64 KiB session write (a full record is 16384 bytes of
// plaintext and 22 of TLS 1.3).
const corkFlushAt = 64 << 10

// corkPool holds the gathering buffers: a connection holds one only while
// corked, so an idle session holds none.
var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, corkFlushAt+16384+64); return &b }}

// corkable is a connection beneath TLS that can gather writes.
type corkable interface {
	cork()
	flush() error  // write what has gathered; stay corked
	uncork() error // write what has gathered; stop gathering
}

// writeCork is the gathering state of one connection. Writes from any
// goroutine (TLS alerts, control frames) join the gathered bytes in
// order while it is corked.
type writeCork struct {
	mu  sync.Mutex
	buf *[]byte     // gathered bytes; nil when not corked
	on  atomic.Bool // buf != nil, for Close
}

// write gathers p or, uncorked, writes it (not holding the lock: Close
// must not wait behind a write blocked on a peer that does not read).
// The TLS connection above orders its writes, and a cork's gathered
// bytes all came through it, so the order of bytes holds.
func (k *writeCork) write(raw net.Conn, p []byte) (int, error) {
	k.mu.Lock()
	if k.buf == nil {
		k.mu.Unlock()
		return raw.Write(p)
	}
	defer k.mu.Unlock()
	*k.buf = append(*k.buf, p...)
	if len(*k.buf) >= corkFlushAt {
		if err := k.flushLocked(raw); err != nil {
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
	k.mu.Unlock()
}

func (k *writeCork) flush(raw net.Conn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.flushLocked(raw)
}

func (k *writeCork) uncork(raw net.Conn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := k.flushLocked(raw)
	k.drop()
	return err
}

func (k *writeCork) flushLocked(raw net.Conn) error {
	if k.buf == nil || len(*k.buf) == 0 {
		return nil
	}
	_, err := raw.Write(*k.buf)
	*k.buf = (*k.buf)[:0]
	return err
}

// closeFlushWait bounds the last write of what a cork gathered when its
// connection closes (a GOAWAY or TLS alert written while another writer
// held it corked).
const closeFlushWait = time.Second

// release sends what has gathered, within closeFlushWait, and stops
// gathering: the connection is closing. If a write is under way (it may
// be blocked on a peer that does not read), it does not wait: closing
// the connection ends that write.
func (k *writeCork) release(raw net.Conn) {
	if !k.on.Load() {
		return
	}
	raw.SetWriteDeadline(time.Now().Add(closeFlushWait))
	if !k.mu.TryLock() {
		return // a write is under way; it ends with the connection
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
}

// corkConn is a dialled connection that can gather writes (the client's
// side; the relay's accepted connections are countedConns).
type corkConn struct {
	net.Conn
	k writeCork
}

func (c *corkConn) Write(p []byte) (int, error) { return c.k.write(c.Conn, p) }
func (c *corkConn) cork()                       { c.k.cork() }
func (c *corkConn) flush() error                { return c.k.flush(c.Conn) }
func (c *corkConn) uncork() error               { return c.k.uncork(c.Conn) }

func (c *corkConn) Close() error {
	c.k.release(c.Conn)
	return c.Conn.Close()
}

// CloseWrite keeps half-close working through the wrapper.
func (c *corkConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
