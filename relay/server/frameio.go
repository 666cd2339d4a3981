package server

import (
	"encoding/binary"
	"io"
	"sync"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/bufpool"
)

// Session I/O (issue #13, "small idle sessions").
//
// Reads: a session reads through its own small buffer (readBufSize), so
// that a run of small frames (acks, pings, a busy peer's requests) costs
// one transport read; the rest of a payload at least as large as the
// buffer is read straight into the frame. An idle session waits for its
// next frame in a read into that buffer, which is all it holds for
// reading. A 4 KiB envelope's frame costs two reads: its first 512 bytes
// with the header, then the rest into the frame. (Until issue #13's idle
// session work the buffer held a whole 4 KiB envelope's frame, 4.5 KiB
// held by every idle session, for one read less per such frame. With
// the https engine a read is a lock and a copy: six alternating pairs of
// runs measured the same throughput, four earlier ones on a slower host
// less (README, "Relay session I/O"). Waiting in a read of the bare
// 5-byte header, with a pooled buffer for the payload, cost https 10-40%
// when every https read was a handoff to net/http's goroutine.)
//
// Writes: a frame is appended to the session's write buffer, taken from
// bufPool, under wmu. The writer that finds no other writer waiting for
// wmu writes the buffer out and gives it back, so an idle session holds
// no write buffer, and the answers of concurrent requests (Results of
// Sends that one group commit made durable together, say) leave in one
// transport write; pushes queue their Deliver frames and flush once per
// store read. A buffer past flushBytes is written out at once.

const (
	// readBufSize is a session's read buffer: small frames fit, with
	// room for several.
	readBufSize = 512
	// writeBufSize is the size of a new pooled write buffer.
	writeBufSize = relay.SessionBufSize
	// flushBytes is how much a session's write buffer collects before it
	// is written out whatever else is waiting. Envelopes queued there no
	// longer count against the delivery budgets, so it also bounds what a
	// session whose peer stopped reading holds beyond them.
	flushBytes = 32 << 10
	// keepBufBytes is the largest buffer that goes back to the pool: a
	// full one with a largest frame appended.
	keepBufBytes = flushBytes + relay.FrameHeaderSize + relay.MaxFrameSize
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > keepBufBytes {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// frameReader reads frames from r through a small buffer. It is an
// io.Reader too (buffered bytes first), which a tunnel's TLS and splice
// read through. One goroutine reads at a time.
type frameReader struct {
	r        io.Reader
	off, end int // unread bytes are buf[off:end]
	head     [relay.FrameHeaderSize]byte
	buf      [readBufSize]byte
}

func (fr *frameReader) buffered() int { return fr.end - fr.off }

// take moves up to len(p) buffered bytes into p.
func (fr *frameReader) take(p []byte) int {
	n := copy(p, fr.buf[fr.off:fr.end])
	fr.off += n
	return n
}

// fill reads once from r into the buffer; it is called only when nothing
// is buffered.
func (fr *frameReader) fill() error {
	n, err := fr.r.Read(fr.buf[:])
	fr.off, fr.end = 0, max(n, 0)
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// readFull fills p from the buffer and then r, like io.ReadFull. Reads
// of at least a buffer's size go straight into p; smaller ones read
// ahead.
func (fr *frameReader) readFull(p []byte) error {
	n := fr.take(p)
	for n < len(p) {
		var err error
		if len(p)-n >= readBufSize {
			var k int
			k, err = io.ReadFull(fr.r, p[n:])
			n += k
		} else if err = fr.fill(); err == nil {
			n += fr.take(p[n:])
		}
		if err == io.EOF && n > 0 {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ReadFrame reads one frame like relay.ReadFrame. The payload is a new
// slice the caller owns and may hand to other goroutines: parsed messages
// share it (relay's readRest does not copy), and Send and Layer frames are
// parsed in a goroutine of their own after the read loop has moved on. A
// pooled payload buffer would have to go back only after that goroutine
// ends.
//
// A Send frame's payload is that: it comes from a pool, and the Send's
// goroutine gives it back (bufpool.Put) once the store has the
// envelope (store.Store.Put keeps no reference to it). Every other
// payload is a new slice.
func (fr *frameReader) ReadFrame() (relay.FrameType, []byte, error) {
	if err := fr.readFull(fr.head[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.head[1:])
	if n > relay.MaxPayload(relay.FrameType(fr.head[0])) {
		return 0, nil, relay.ErrFrameTooLarge
	}
	p, err := fr.readPayload(int(n), relay.FrameType(fr.head[0]) == relay.FrameSend)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return relay.FrameType(fr.head[0]), p, nil
}

// payloadSteps are the sizes a payload's buffer grows through as its bytes
// arrive: bufpool's classes. A payload is read into a buffer no larger
// than the next step, which is replaced by one of the step after once
// full; its bytes are copied over. A buffer of the whole declared length
// at once let a peer pin 66 KiB of relay memory per session with a 5-byte
// frame header and nothing after it, until the session's idle timeout;
// now what a frame holds is at most about four times what has arrived for
// a Send (66,560 bytes once 17,413 have come), 4.7 times for the larger
// Forward and Layer frames (82,432), and at least 5 KiB. A 64 KiB
// envelope's frame costs 22 KiB of copying.
var payloadSteps = [...]int{envelope.Bucket4K + bufpool.Slack, envelope.Bucket16K + bufpool.Slack}

// readPayload reads an n-byte payload, into bufpool's buffers if pooled
// (see ReadFrame).
func (fr *frameReader) readPayload(n int, pooled bool) ([]byte, error) {
	get, put := func(k int) []byte { return make([]byte, k) }, func([]byte) {}
	if pooled {
		get, put = bufpool.Get, bufpool.Put
	}
	size := n
	for _, s := range payloadSteps {
		if n > s {
			size = s
			break
		}
	}
	p, got := get(size), 0
	for {
		if err := fr.readFull(p[got:size]); err != nil {
			put(p)
			return nil, err
		}
		if got = size; got == n {
			return p, nil
		}
		size = n
		for _, s := range payloadSteps {
			if s > got && n > s {
				size = s
				break
			}
		}
		q := get(size)
		copy(q, p[:got])
		put(p)
		p = q
	}
}

// Read reads buffered bytes first, then straight from r.
func (fr *frameReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if fr.buffered() > 0 {
		return fr.take(p), nil
	}
	return fr.r.Read(p)
}

// releaseBuffers gives the session's write buffer back once nothing
// writes any more.
func (ss *session) releaseBuffers() {
	ss.wmu.Lock()
	if ss.wbuf != nil {
		putBuf(ss.wbuf)
		ss.wbuf = nil
	}
	ss.wmu.Unlock()
}
