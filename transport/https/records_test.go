package https

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/httpsession"
)

// writeLog records the size of every TLS record that reaches a socket,
// and how many writes carried them.
type writeLog struct {
	mu     sync.Mutex
	sizes  []int // records, header included
	writes int
	part   []byte // a record's start, cut by the end of a write
}

type loggedConn struct {
	net.Conn
	log *writeLog
}

func (c loggedConn) Write(p []byte) (int, error) {
	l := c.log
	l.mu.Lock()
	l.writes++
	b := append(l.part, p...)
	for len(b) >= 5 {
		n := 5 + (int(b[3])<<8 | int(b[4]))
		if len(b) < n {
			break
		}
		l.sizes = append(l.sizes, n)
		b = b[n:]
	}
	l.part = append([]byte(nil), b...)
	l.mu.Unlock()
	return c.Conn.Write(p)
}

func (c loggedConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// take returns the record sizes and the number of writes logged since
// the last take.
func (l *writeLog) take() ([]int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, w := l.sizes, l.writes
	l.sizes, l.writes = nil, 0
	return s, w
}

// tls13Overhead is what TLS 1.3 adds to a record's plaintext: a 5-byte
// header, the content type byte and a 16-byte AEAD tag.
const tls13Overhead = 5 + 1 + 16

// loggedSession opens one session whose sockets log their writes.
func loggedSession(t *testing.T) (client, relay transport.Conn, clientLog, relayLog *writeLog) {
	clientLog, relayLog = &writeLog{}, &writeLog{}
	tr := &Transport{wrap: &connWrap{func(c net.Conn) net.Conn { return loggedConn{c, relayLog} }}}
	r := startRelay(t, tr, nil)
	accepted := make(chan transport.Conn, 1)
	go func() {
		c, err := r.ln.Accept(context.Background())
		if err == nil {
			accepted <- c
		}
	}()
	tgt, err := httpsession.NewTarget(Name, r.ep)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", r.ep.Addr)
	if err != nil {
		t.Fatal(err)
	}
	client, err = open(context.Background(), loggedConn{raw, clientLog}, tgt, r.ep)
	if err != nil {
		raw.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	relay = within(t, "accept", accepted)
	t.Cleanup(func() { relay.Close() })
	return client, relay, clientLog, relayLog
}

// send writes n bytes in one Write on w and reads them on r.
func send(t *testing.T, w, r transport.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	werr := make(chan error, 1)
	go func() { _, err := w.Write(data); werr <- err }()
	if _, err := io.ReadFull(r, data); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "write", werr); err != nil {
		t.Fatal(err)
	}
}

// TestDataFramesFillTLSRecords: a large session write leaves each way as
// DATA frames that, header included, fill one TLS record each, none
// spilling a few bytes into a second record; and the records leave
// gathered, four full ones per write to the socket (cork.go).
func TestDataFramesFillTLSRecords(t *testing.T) {
	client, relay, clientLog, relayLog := loggedSession(t)
	const (
		// Past the first 128 KiB, sent in smaller records (crypto/tls's
		// and uTLS's dynamic record sizing).
		warm = 160 << 10
		// With warm, within the relay's receive window (net/http's 1 MiB),
		// so that no frame is cut short waiting for window.
		size = 512 << 10
	)
	cases := []struct {
		name  string
		w, r  transport.Conn
		log   *writeLog
		bytes int // session bytes on the wire: with the relay's record header
		piece int // DATA payload of a full frame
	}{
		{"relay to client", relay, client, relayLog, size + recordHeaderLen, dataPiece},
		{"client to relay", client, relay, clientLog, size, h2MaxData},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			send(t, tc.w, tc.r, warm)
			tc.log.take()
			send(t, tc.w, tc.r, size)
			sizes, writes := tc.log.take()
			frames := (tc.bytes + tc.piece - 1) / tc.piece
			full := 0
			for _, s := range sizes {
				if s == h2FrameHeader+tc.piece+tls13Overhead {
					full++
				}
			}
			if len(sizes) != frames || full != frames-1 {
				t.Errorf("%d records, %d of one full frame; want %d and %d (record sizes %v)", len(sizes), full, frames, frames-1, sizes)
			}
			if want := (frames + 3) / 4; writes != want {
				t.Errorf("%d records in %d writes to the socket, want %d", len(sizes), writes, want)
			}
			if tc.piece+h2FrameHeader > 16384 {
				t.Errorf("a full DATA frame is %d bytes, more than one TLS record", tc.piece+h2FrameHeader)
			}
		})
	}
}

// TestUploadErrors: the client's direct request body keeps a pipe's
// contract: a Write after CloseWrite is canceled, one after the relay
// ended the session is a reset.
func TestUploadErrors(t *testing.T) {
	client, relay, _, _ := loggedSession(t)
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); !errors.Is(err, net.ErrClosed) || transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("Write after CloseWrite: %v, want ClassCanceled", err)
	}
	if n, err := relay.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("relay read after CloseWrite: %d, %v; want io.EOF", n, err)
	}

	client, relay, _, _ = loggedSession(t)
	relay.Close()
	io.ReadAll(client) // the relay's end of the response
	var err error
	for range 100 { // the reset reaches the client's writer after its reader
		if _, err = client.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	if transport.ClassOf(err) != transport.ClassReset {
		t.Errorf("Write after the relay closed: %v, want ClassReset", err)
	}
}

// TestH2BodyChunks: the response body's pooled chunks give back exactly
// the bytes written, in order, whatever the sizes of writes and reads,
// and a drained body holds no chunk.
func TestH2BodyChunks(t *testing.T) {
	conn := &scriptConn{r: bytes.NewReader(nil), closed: make(chan struct{})}
	defer conn.Close()
	cc, err := newH2Client(conn, &browser.Current.HTTP2)
	if err != nil {
		t.Fatal(err)
	}
	b := cc.body
	b.start()
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var want, got bytes.Buffer
		for range rng.IntN(6) + 1 {
			p := make([]byte, rng.IntN(3*h2MaxFrame))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			want.Write(p)
			if !b.write(p) {
				t.Fatal("body refused data")
			}
		}
		for got.Len() < want.Len() {
			p := make([]byte, rng.IntN(40000)+1)
			n, err := b.Read(p)
			if err != nil {
				t.Fatal(err)
			}
			got.Write(p[:n])
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("round %d: read back differs from what was written", round)
		}
		if b.buf != nil {
			t.Fatalf("round %d: drained body still holds %d chunks", round, len(b.buf))
		}
	}
	b.write([]byte("left over"))
	b.Close()
	if b.buf != nil {
		t.Fatal("closed body still holds chunks")
	}
	if _, err := b.Read(make([]byte, 1)); err != errBodyClosed {
		t.Errorf("Read after Close: %v", err)
	}
}

// frozenConn is a client connection whose writes block, once frozen,
// until it is closed: a censor that drops every packet of a flow, so the
// socket's send buffer fills and write(2) never returns.
type frozenConn struct {
	net.Conn
	frozen    atomic.Bool
	blocked   chan struct{} // closed when a write first blocks
	block     sync.Once
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *frozenConn) Write(p []byte) (int, error) {
	if !c.frozen.Load() {
		return c.Conn.Write(p)
	}
	c.block.Do(func() { close(c.blocked) })
	<-c.closed
	return 0, net.ErrClosed
}

func (c *frozenConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestCloseUnblocksFrozenWrite: Close of a session whose Write is blocked
// in the connection (a frozen flow) returns and ends that Write, so the
// stall watchdog can move to another connection. The reset Close sends
// must not wait behind the blocked frame.
func TestCloseUnblocksFrozenWrite(t *testing.T) {
	// 64 KiB: the writes gathered beneath TLS (cork.go) go out when 64 KiB
	// have gathered; 40 KiB: when the last frame is written.
	for _, size := range []int{64 << 10, 40 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) { closeUnblocksFrozenWrite(t, size) })
	}
}

func closeUnblocksFrozenWrite(t *testing.T, size int) {
	r := startRelay(t, &Transport{}, nil)
	go func() {
		if c, err := r.ln.Accept(context.Background()); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}()
	tgt, err := httpsession.NewTarget(Name, r.ep)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", r.ep.Addr)
	if err != nil {
		t.Fatal(err)
	}
	fc := &frozenConn{Conn: raw, blocked: make(chan struct{}), closed: make(chan struct{})}
	client, err := open(context.Background(), fc, tgt, r.ep)
	if err != nil {
		raw.Close()
		t.Fatal(err)
	}
	fc.frozen.Store(true)
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(make([]byte, size))
		wrote <- err
	}()
	within(t, "the first frozen write", fc.blocked)
	closed := make(chan struct{})
	go func() {
		client.Close()
		close(closed)
	}()
	within(t, "Close with a write blocked in the connection", closed)
	if err := within(t, "the blocked Write", wrote); err == nil {
		t.Error("the Write blocked in a frozen connection returned no error after Close")
	}
}
