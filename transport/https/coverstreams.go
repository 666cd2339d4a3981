package https

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"sync"

	"github.com/postern/postern/transport"
)

// Cover streams: the HTTP/2 streams one source holds open on the stock
// server, across its connections, are capped.
//
// net/http serves each HTTP/2 stream with a goroutine of its own, up to
// 250 streams a connection (the stock server's SETTINGS), and a response
// its client gives no flow-control credit for (SETTINGS_INITIAL_WINDOW_SIZE
// 0) holds that goroutine and its buffers until coverTimeout resets the
// stream, 5 minutes later; a client that then opens another keeps them
// held for good. One source at its cap of TCP connections (connCap, 128)
// so held 32,000 streams, no token needed: an audit measured 12.3 KiB and
// a goroutine each (8 connections × 250 streams: 2,024 goroutines and
// 24 MiB more), about 385 MiB a source. HTTP/1.1 serves one request at a
// time a connection, which the connection cap bounds.
//
// The count cannot be kept in a handler: net/http writes a response's
// last bytes after the handler returns (and cancels the request's context
// before it does), which is where such a stream waits. So the connection
// the front hands to the stock server (replayConn) reads the frame
// headers going both ways: a client's HEADERS on a new stream opens one,
// and the server's END_STREAM (on HEADERS or DATA) or a RST_STREAM either
// way ends it. A HEADERS frame that would take its source past
// coverPerSource open streams closes that connection (reset), as a
// connection over the source's cap of connections is (connCap), and is
// counted as OutcomeConnLimited. What a client sees: nothing, unless one
// address holds more than coverPerSource streams open at once (a browser
// loading a page holds a few dozen). Then one source holds at most
// 256 × 12.3 KiB ≈ 3 MiB of such streams, less than its connections
// themselves.
//
// Behind a CDN (ListenConfig.AllowUnbound) there is no front and every
// source is one of the CDN's addresses: no cap (as for connections).
const coverPerSource = 256

// coverStreams keeps the count of open streams per source on a listener's
// stock HTTP/2 server.
type coverStreams struct {
	max     int
	observe func(transport.Outcome) // nil: none

	mu       sync.Mutex
	bySource map[[16]byte]int // sources with streams open
}

func newCoverStreams(max int, observe func(transport.Outcome)) *coverStreams {
	return &coverStreams{max: max, observe: observe, bySource: make(map[[16]byte]int)}
}

// countStreams returns the account of tc's open streams for f.streams,
// nil if there is no cap.
func (f *h2Front) countStreams(tc *tls.Conn) *connStreams {
	if f.streams == nil {
		return nil
	}
	h := transport.SourceHash(f.key[:], tc.RemoteAddr().String())
	return newConnStreams(f.streams, [16]byte(h[:16]), tc.NetConn())
}

// take counts one more open stream of src, or reports false at its cap.
func (cs *coverStreams) take(src [16]byte) bool {
	cs.mu.Lock()
	n := cs.bySource[src]
	if n < cs.max {
		cs.bySource[src] = n + 1
	}
	cs.mu.Unlock()
	if n >= cs.max && cs.observe != nil {
		cs.observe(transport.OutcomeConnLimited)
	}
	return n < cs.max
}

// give takes n streams of src off the count.
func (cs *coverStreams) give(src [16]byte, n int) {
	if n == 0 {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if left := cs.bySource[src] - n; left > 0 {
		cs.bySource[src] = left
	} else {
		delete(cs.bySource, src)
	}
}

// held returns how many streams src has open, and how many are open in
// all (tests).
func (cs *coverStreams) held(src [16]byte) (source, total int) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, n := range cs.bySource {
		total += n
	}
	return cs.bySource[src], total
}

// errCoverStreams ends a connection whose source opened one stream too
// many.
var errCoverStreams = errors.New("https: the source holds its cap of open streams")

// connStreams is one connection's open streams, for coverStreams. The
// stock server reads (one goroutine) and writes (another) at once.
type connStreams struct {
	cs   *coverStreams
	src  [16]byte
	conn net.Conn // reset when the cap is passed

	mu    sync.Mutex
	open  map[uint32]bool
	maxID uint32 // the highest stream the client opened
	done  bool   // the connection ended: nothing more is counted

	in, out frameScan
}

func newConnStreams(cs *coverStreams, src [16]byte, conn net.Conn) *connStreams {
	return &connStreams{cs: cs, src: src, conn: conn, open: make(map[uint32]bool)}
}

// read takes note of the frames the client sent in b, and reports false
// when a new stream took the source past its cap: the connection is then
// reset.
func (c *connStreams) read(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := c.in.feed(b, func(typ, _ byte, id uint32) bool {
		switch {
		case c.done:
		case typ == frameHeaders && id > c.maxID && id&1 == 1:
			c.maxID = id
			if !c.cs.take(c.src) {
				return false
			}
			c.open[id] = true
		case typ == frameRSTStream:
			c.endLocked(id)
		}
		return true
	})
	if !ok {
		c.endAllLocked()
		resetConn(c.conn)
	}
	return ok
}

// wrote takes note of the frames the server wrote in b.
func (c *connStreams) wrote(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.feed(b, func(typ, flags byte, id uint32) bool {
		if typ == frameRSTStream || ((typ == frameHeaders || typ == frameData) && flags&flagEndStream != 0) {
			c.endLocked(id)
		}
		return true
	})
}

// end gives back every stream still counted: the connection ended.
func (c *connStreams) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endAllLocked()
}

func (c *connStreams) endLocked(id uint32) {
	if c.open[id] {
		delete(c.open, id)
		c.cs.give(c.src, 1)
	}
}

func (c *connStreams) endAllLocked() {
	if !c.done {
		c.done = true
		c.cs.give(c.src, len(c.open))
		clear(c.open)
	}
}

// frameScan follows the frame headers of one direction of an HTTP/2
// connection as its bytes go by, in pieces of any size.
type frameScan struct {
	hdr  [h2FrameHeader]byte
	have int // bytes of hdr read
	skip int // payload bytes of the current frame still to pass
}

// feed passes b, calling fn with each frame header completed in it; it
// stops and returns false when fn does.
func (s *frameScan) feed(b []byte, fn func(typ, flags byte, id uint32) bool) bool {
	for len(b) > 0 {
		if s.skip > 0 {
			k := min(s.skip, len(b))
			s.skip -= k
			b = b[k:]
			continue
		}
		k := copy(s.hdr[s.have:], b)
		s.have += k
		b = b[k:]
		if s.have < h2FrameHeader {
			return true
		}
		s.have = 0
		s.skip = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
		if !fn(s.hdr[3], s.hdr[4], binary.BigEndian.Uint32(s.hdr[5:])&(1<<31-1)) {
			return false
		}
	}
	return true
}
