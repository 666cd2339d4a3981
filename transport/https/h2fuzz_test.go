package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport/httpsession"
)

// flightConn is a connection whose reads return data in pieces of at most
// step bytes and then time out, and whose writes are kept.
type flightConn struct {
	data []byte
	step int
	eof  bool // at the end of data, io.EOF (else a read timeout)
	mu   sync.Mutex
	out  bytes.Buffer
}

func (c *flightConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		if c.eof {
			return 0, io.EOF
		}
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(p[:min(len(p), c.step)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *flightConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *flightConn) Close() error                     { return nil }
func (c *flightConn) LocalAddr() net.Addr              { return httpsession.HiddenAddr(Name) }
func (c *flightConn) RemoteAddr() net.Addr             { return httpsession.HiddenAddr(Name) }
func (c *flightConn) SetDeadline(time.Time) error      { return nil }
func (c *flightConn) SetReadDeadline(time.Time) error  { return nil }
func (c *flightConn) SetWriteDeadline(time.Time) error { return nil }

// testFront is a front with the stock server's real first frames and no
// listener behind it.
func testFront(tb testing.TB) *h2Front {
	tb.Helper()
	stock, err := newStockH2(&Transport{}, &tls.Config{Certificates: []tls.Certificate{cert(tb)}})
	if err != nil {
		tb.Fatal(err)
	}
	f := &h2Front{l: &listener{ln: closedListener{}}, stock: stock}
	f.windows.reset(engineWindowBudget) // so that windows may grow
	return f
}

// clientFlight is a browser-like first flight after the preface: SETTINGS,
// WINDOW_UPDATE, the session request's HEADERS, then DATA.
func clientFlight(tb testing.TB) []byte {
	var b, block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":authority", "relay.test"}, {":scheme", "https"},
		{":path", testPath}, {"cookie", "sid=AAAA"}, {"content-type", "application/octet-stream"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr := http2.NewFramer(&b, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 65536},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 6291456})
	fr.WriteWindowUpdate(0, 15663105)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true,
		Priority: http2.PriorityParam{Exclusive: true, Weight: 219}})
	fr.WriteData(1, false, []byte("session bytes"))
	fr.WritePing(false, [8]byte{1})
	fr.WriteData(1, true, nil)
	return b.Bytes()
}

// FuzzFirstFlight feeds the front any first flight after the preface: it
// must not panic, must consume no more than it was given, must write only
// whole frames, and a request it decodes must be well formed.
func FuzzFirstFlight(f *testing.F) {
	front := testFront(f)
	f.Add(clientFlight(f), uint8(0))
	f.Add(clientFlight(f), uint8(7))
	f.Add([]byte{0, 0, 6, frameSettings, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2}, uint8(1))
	f.Add([]byte{0, 0, 0, frameData, 0, 0, 0, 0, 1}, uint8(2))
	// SETTINGS, then a connection WINDOW_UPDATE two bytes short.
	f.Add([]byte{0, 0, 0, frameSettings, 0, 0, 0, 0, 0, 0, 0, 2, frameWindowUpdate, 0, 0, 0, 0, 0, 0, 1}, uint8(9))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		c := &flightConn{data: data, step: int(step%64) + 1}
		ff := &firstFlight{tc: c, sendWin: h2DefaultWindow, atOnce: step&1 == 0,
			peer: peerSettings{initialWindow: h2DefaultWindow, maxFrame: h2MaxFrame}}
		req, end, first, ok := front.readFirstFlight(ff)
		if end > len(ff.buf) || len(ff.buf) > len(data) {
			t.Fatalf("consumed %d of %d read, %d given", end, len(ff.buf), len(data))
		}
		// The front writes only the stock server's first frames and the
		// ACK of one SETTINGS, each once, and whole.
		out := c.out.Bytes()
		seen := map[string]bool{}
		for _, fr := range splitFrames(out) {
			if len(fr) < h2FrameHeader || len(fr) != h2FrameHeader+(int(fr[0])<<16|int(fr[1])<<8|int(fr[2])) {
				t.Fatalf("front wrote a partial frame: % x", out)
			}
			ack := fr[3] == frameSettings && fr[4] == flagAck && len(fr) == h2FrameHeader
			if seen[string(fr)] || !ack && !bytes.Contains(front.stock.first, fr) {
				t.Fatalf("front wrote % x", fr)
			}
			seen[string(fr)] = true
		}
		if !ok {
			return
		}
		if first == nil || req.stream%2 != 1 {
			t.Fatalf("decoded request on stream %d without its header block", req.stream)
		}
		r, ok := front.request(context.Background(), tls.ConnectionState{}, "127.0.0.1:1", req)
		if ok && (r.Method == "" || r.URL == nil || r.URL.Path == "" && r.URL.Opaque == "") {
			t.Fatalf("malformed request accepted: %+v", r)
		}
	})
}

// FuzzEngineFrames feeds the engine any frames on an established session:
// it must not panic or hang, and Read must return only DATA it queued.
func FuzzEngineFrames(f *testing.F) {
	front := testFront(f)
	flight := clientFlight(f)
	f.Add(flight)
	f.Add(flight[len(flight)/2:])
	f.Add([]byte{0, 0, 4, frameWindowUpdate, 0, 0, 0, 0, 1, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, data []byte) {
		// The bytes the front read past HEADERS, then the connection,
		// split where the first byte says, read in pieces of 1 to 7 bytes
		// and ended by io.EOF.
		split := 0
		if len(data) > 0 {
			split = int(data[0]) * len(data) / 256
		}
		c := &flightConn{data: data[split:], step: 1 + split%7, eof: true}
		ff := &firstFlight{tc: c, sendWin: h2DefaultWindow,
			peer: peerSettings{initialWindow: h2DefaultWindow, maxFrame: h2MaxFrame}}
		s := newH2Session(front, c, 1, nil, ff)
		s.left = data[:split]
		read := make(chan int, 1)
		go func() {
			n, _ := io.Copy(io.Discard, s)
			read <- int(n)
		}()
		s.fail(s.readLoop())
		if n := <-read; n > len(data) {
			t.Fatalf("read %d session bytes from %d bytes of frames", n, len(data))
		}
		s.mu.Lock()
		if s.recvConn < 0 || s.recvStream < 0 || s.recvConn > s.winConn || s.recvStream > s.winStream ||
			s.owedConn < 0 || s.owedStream < 0 {
			t.Fatalf("windows: conn %d/%d owed %d, stream %d/%d owed %d",
				s.recvConn, s.winConn, s.owedConn, s.recvStream, s.winStream, s.owedStream)
		}
		s.mu.Unlock()
		s.Close()
	})
}

// DATA frames share buffers: a client cannot make the engine hold more
// than twice what it sent, plus one buffer, while the relay does not read
// (tiny frames held a 16 KiB buffer each before small payloads joined the
// last buffer, and 4 KiB ones four times their size until any payload that
// fits did); full-size frames keep a buffer each.
func TestEngineFramesShareBuffers(t *testing.T) {
	for _, tc := range []struct{ size, frames, want int }{
		{1, 20000, 2},   // 20,000 bytes fill one buffer and part of another
		{4096, 128, 32}, // four to a buffer
		{5000, 100, 34}, // three to a buffer
		{8193, 64, 64},  // one to a buffer: twice their size
		{16384, 32, 32}, // full-size: one each
		{16383, 32, 32}, // one byte short: still one each
	} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			front := testFront(t)
			c := &flightConn{step: 1}
			ff := &firstFlight{tc: c, sendWin: h2DefaultWindow,
				peer: peerSettings{initialWindow: h2DefaultWindow, maxFrame: h2MaxFrame}}
			s := newH2Session(front, c, 1, nil, ff)
			var b bytes.Buffer
			fr := http2.NewFramer(&b, nil)
			p := bytes.Repeat([]byte{'x'}, tc.size)
			for range tc.frames {
				fr.WriteData(1, false, p)
			}
			s.left = b.Bytes()
			s.readLoop() // ends at the end of b
			s.mu.Lock()
			chunks, queued := len(s.queue), 0
			for _, c := range s.queue {
				queued += c.end - c.off
			}
			s.mu.Unlock()
			if queued != tc.size*tc.frames || chunks != tc.want {
				t.Errorf("%d bytes in %d buffers, want %d in %d", queued, chunks, tc.size*tc.frames, tc.want)
			}
			if chunks*16384 > 2*queued+16384 {
				t.Errorf("%d buffers hold %d bytes: more than twice as much plus one buffer", chunks, queued)
			}
			s.Close()
		})
	}
}
