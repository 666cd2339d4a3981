package https

import (
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
)

// Reads beneath crypto/tls end where a TLS record ends.
//
// crypto/tls reads records into a bytes.Buffer (Conn.rawInput) that it
// never shrinks. For each record it asks for the 5-byte header, then for
// the rest, and takes whatever one read of the socket returns: under bulk
// traffic that is often the start of the next record too. When a record
// begins with bytes already in the buffer, a bytes.Buffer reuses its
// space only for at most half of it, so for a full-size record the
// buffer doubles: after 256 KiB of 16 KiB records had arrived, a
// session's buffer held 40 KiB for the rest of the connection, idle or
// not (BenchmarkIdleSessionMemory/engine/echo=256KiB). When no read
// crosses the end of a record, the buffer is empty whenever a record
// begins and is reused whenever the record fits: it no longer doubles at
// each record. It still grows as crypto/tls grows it, to the larger of
// the record (plus 512 bytes) and twice its size, so where it settles
// depends on the order of record sizes: one full record plus 512 bytes,
// 21,760 B, in the benchmark; up to 32 KiB when a record of just under
// half that came first.
//
// recordReads keeps what a socket read returned past the end of the
// record it began in and hands it out first, again a record at a time.
// A socket read still fills as much of crypto/tls's buffer as the socket
// has: bytes past a record's end are copied once more rather than read
// by a system call of their own. As crypto/tls's buffer no longer grows
// past one record, bulk transfers take more reads: 4.6–4.9 read system
// calls per 64 KiB one way, both ends, against 2.8–2.9 (syscr/op in
// BenchmarkThroughput). It never waits for bytes crypto/tls did not ask
// for, and it holds a buffer only while bytes wait in it: an idle
// connection holds none. It reads the stream as records from its first
// byte; bytes that are no TLS record (a probe's) are cut at whatever
// length their "header" claims, which crypto/tls refuses at the header
// anyway.
//
// One thing crypto/tls did with the bytes it read ahead is gone: when a
// close_notify alert already sat behind the application data it
// returned, Read returned io.EOF with that data. The alert now stays in
// the stash until the next Read, which returns io.EOF instead: the
// peer's end shows one Read later. The socket reads, and so what a peer
// sees, are those crypto/tls made before.
type recordReads struct {
	hdr   [recordHeaderSize]byte // the current record's header, as far as seen
	seen  int                    // header bytes of the current record handed out
	left  int                    // body bytes of the current record still to hand out
	stash []byte                 // bytes read past the end of the record handed out
	buf   *[]byte                // stash's pooled backing
	err   error                  // the read error that came with the stashed bytes
	// mid is set while a record has begun (seen > 0), for another
	// goroutine than the reader's; corkConn.Read sets it (see arrivals).
	mid atomic.Bool
}

const recordHeaderSize = 5

// stashPool holds the buffers for bytes read past a record's end: at
// most what one read into crypto/tls's buffer returns, a record and a
// little more.
var stashPool = sync.Pool{New: func() any { b := make([]byte, 0, 24<<10); return &b }}

// read reads from raw into p, ending at the end of the record that p's
// first byte is in. (countedConn.Read has the same body, written out: its
// frame is on every idle session's stack; see h2Front.serveTLS.)
func (r *recordReads) read(raw io.Reader, p []byte) (int, error) {
	if r.pending() {
		return r.unstash(p)
	}
	n, err := raw.Read(p)
	k := r.advance(p[:n])
	if k < n {
		return r.keep(p, k, n, err)
	}
	return n, err
}

// pending reports whether bytes or an error wait from an earlier read.
func (r *recordReads) pending() bool { return len(r.stash) > 0 || r.err != nil }

// unstash hands out waiting bytes, up to the end of their record, or the
// error that came with them once they are gone.
func (r *recordReads) unstash(p []byte) (int, error) {
	if len(r.stash) == 0 {
		err := r.err
		r.err = nil
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := r.advance(r.stash[:min(len(p), len(r.stash))])
	copy(p, r.stash[:n])
	r.stash = r.stash[n:]
	if len(r.stash) == 0 {
		r.drop()
	}
	return n, nil
}

// keep returns the k bytes of p[:n] that end the current record and
// keeps the rest, and err, for the next reads.
func (r *recordReads) keep(p []byte, k, n int, err error) (int, error) {
	if r.buf == nil {
		r.buf = stashPool.Get().(*[]byte)
	}
	r.stash = append((*r.buf)[:0], p[k:n]...)
	*r.buf = r.stash[:0]
	r.err = err
	return k, nil
}

// advance moves past the bytes of b that belong to the current record
// (as many as b holds, up to the record's end) and returns their number.
func (r *recordReads) advance(b []byte) int {
	i := 0
	for i < len(b) {
		if r.seen < recordHeaderSize {
			c := copy(r.hdr[r.seen:], b[i:])
			r.seen += c
			i += c
			if r.seen < recordHeaderSize {
				return i
			}
			r.left = int(binary.BigEndian.Uint16(r.hdr[3:]))
		}
		c := min(r.left, len(b)-i)
		r.left -= c
		i += c
		if r.left == 0 {
			r.seen = 0
			return i
		}
	}
	return i
}

// drop gives the stash's buffer back.
func (r *recordReads) drop() {
	r.stash = nil
	if r.buf != nil {
		if cap(*r.buf) <= 64<<10 {
			stashPool.Put(r.buf) // keep left it empty: *r.buf is stash[:0]
		}
		r.buf = nil
	}
}
