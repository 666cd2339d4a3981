package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/bufpool"
	"github.com/postern/postern/relay/store"
)

// chunkReader returns at most the next size of its chunk sizes per Read,
// cycling through them.
type chunkReader struct {
	r     io.Reader
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	n := c.sizes[c.i%len(c.sizes)]
	c.i++
	return c.r.Read(p[:min(len(p), max(n, 1))])
}

// readAllFrames reads frames until an error and returns them with the
// error.
func readAllFrames(read func() (relay.FrameType, []byte, error)) ([][]byte, error) {
	var out [][]byte
	for {
		t, p, err := read()
		if err != nil {
			return out, err
		}
		out = append(out, append([]byte{byte(t)}, p...))
	}
}

// testStream is frames of every size class that matters to the reader:
// empty, tiny, around the pooled buffer's size and larger than it.
func testStream() []byte {
	var s []byte
	for _, n := range []int{0, 1, 4, 100, 4096 + 100, readBufSize - 5, readBufSize, readBufSize + 1, 3 * readBufSize, relay.MaxFrameSize} {
		p := bytes.Repeat([]byte{byte(n)}, n)
		s = append(s, byte(relay.FramePing), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		s = append(s, p...)
	}
	return s
}

func TestFrameReaderMatchesReadFrame(t *testing.T) {
	stream := testStream()
	// relay.ReadFrame over one bytes.Reader is the reference.
	ref := bytes.NewReader(stream)
	want, werr := readAllFrames(func() (relay.FrameType, []byte, error) { return relay.ReadFrame(ref) })
	if werr != io.EOF || len(want) != 10 {
		t.Fatalf("reference read %d frames, %v", len(want), werr)
	}
	for _, sizes := range [][]int{{1}, {3}, {5}, {6, 1}, {4096}, {readBufSize}, {1 << 20}, {2, 7, 40000, 5, 1}} {
		fr := &frameReader{r: &chunkReader{r: bytes.NewReader(stream), sizes: sizes}}
		got, err := readAllFrames(fr.ReadFrame)
		if err != io.EOF {
			t.Fatalf("chunks %v: ended with %v, want EOF", sizes, err)
		}
		if len(got) != len(want) {
			t.Fatalf("chunks %v: %d frames, want %d", sizes, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("chunks %v: frame %d differs (%d bytes, want %d)", sizes, i, len(got[i]), len(want[i]))
			}
		}
		if fr.buffered() != 0 {
			t.Fatalf("chunks %v: %d bytes left buffered", sizes, fr.buffered())
		}
	}
}

func TestFrameReaderErrors(t *testing.T) {
	stream := testStream()
	cases := []struct {
		name string
		r    io.Reader
		want error
	}{
		{"truncated payload", bytes.NewReader(stream[:5+3]), io.ErrUnexpectedEOF},
		{"truncated header", bytes.NewReader([]byte{1, 0, 0}), io.ErrUnexpectedEOF},
		{"too large", bytes.NewReader([]byte{1, 0xff, 0, 0, 0}), relay.ErrFrameTooLarge},
		{"data and error", iotest.DataErrReader(bytes.NewReader(stream[:5+4096])), io.ErrUnexpectedEOF},
		{"timeout", iotest.TimeoutReader(bytes.NewReader(stream)), iotest.ErrTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fr := &frameReader{r: tc.r}
			_, err := readAllFrames(fr.ReadFrame)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// countingReader counts the reads that return data.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n++
	}
	return n, err
}

// TestFrameReaderReads: what a session's reads cost the transport. A
// frame carrying a 4 KiB envelope that arrives on its own costs two reads:
// the header with the payload's first bytes into the session's 512-byte
// buffer, then the rest straight into the frame (the buffer once held the
// whole frame, for one read, but every idle session held 4.5 KiB for it).
// Small frames that arrive together cost one read between them.
func TestFrameReaderReads(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frame  []byte
		frames int
		writes int // the frames are written in this many writes
		reads  int
	}{
		{"4 KiB envelopes, one at a time", relay.AppendFrame(nil, relay.Send{Req: 1, Envelope: make([]byte, 4096)}), 5, 5, 10},
		{"pings, together", relay.AppendFrame(nil, relay.Ping{Req: 1, Data: []byte("x")}), 16, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			cr := &countingReader{r: pr}
			fr := &frameReader{r: cr}
			per := tc.frames / tc.writes
			go func() {
				for range tc.writes {
					pw.Write(bytes.Repeat(tc.frame, per))
				}
				pw.Close()
			}()
			for range tc.frames {
				if _, _, err := fr.ReadFrame(); err != nil {
					t.Fatal(err)
				}
			}
			if cr.n != tc.reads {
				t.Fatalf("%d reads for %d frames of %d bytes in %d writes, want %d", cr.n, tc.frames, len(tc.frame), tc.writes, tc.reads)
			}
		})
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(testStream()[:5+4096+200], uint16(1), uint16(7))
	f.Add([]byte{1, 0, 0, 0, 2, 'h', 'i', 2, 0, 0, 0, 0}, uint16(5), uint16(1))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff}, uint16(3), uint16(3))
	f.Fuzz(func(t *testing.T, stream []byte, a, b uint16) {
		ref := bytes.NewReader(stream)
		want, werr := readAllFrames(func() (relay.FrameType, []byte, error) { return relay.ReadFrame(ref) })
		fr := &frameReader{r: &chunkReader{r: bytes.NewReader(stream), sizes: []int{int(a), int(b)}}}
		got, err := readAllFrames(fr.ReadFrame)
		if err != werr || len(got) != len(want) {
			t.Fatalf("%d frames, %v; relay.ReadFrame: %d, %v", len(got), err, len(want), werr)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
	})
}

// gateWriter counts writes; the first one blocks until open is closed.
type gateWriter struct {
	mu      sync.Mutex
	writes  [][]byte
	entered chan struct{}
	open    chan struct{}
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	g.writes = append(g.writes, bytes.Clone(p))
	first := len(g.writes) == 1
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.open
	}
	return len(p), nil
}

// TestWritesCoalesce: answers written while another write is in progress
// leave together in one transport write once it is done.
func TestWritesCoalesce(t *testing.T) {
	srv, err := New(Config{Store: store.NewMemory(store.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	g := &gateWriter{entered: make(chan struct{}), open: make(chan struct{})}
	ss := &session{srv: srv, w: g}
	ss.wtimer = time.AfterFunc(time.Hour, func() {})
	ss.wtimer.Stop()
	first := make(chan error, 1)
	go func() { first <- ss.write(relay.Pong{Req: 0}) }()
	<-g.entered
	const waiting = 10
	var wg sync.WaitGroup
	for i := 1; i <= waiting; i++ {
		wg.Go(func() {
			if err := ss.write(relay.Pong{Req: uint32(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	// Every writer has either queued its frame or waits for wmu.
	for ss.writers.Load() < waiting {
		runtime.Gosched()
	}
	close(g.open)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if len(g.writes) != 2 {
		t.Fatalf("%d transport writes for 1 + %d frames, want 2", len(g.writes), waiting)
	}
	seen := make(map[uint32]bool)
	fr := &frameReader{r: bytes.NewReader(g.writes[1])}
	for range waiting {
		_, p, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		m, err := relay.ParsePong(p)
		if err != nil || seen[m.Req] {
			t.Fatalf("frame %+v, %v", m, err)
		}
		seen[m.Req] = true
	}
	if ss.wbuf != nil {
		t.Fatal("the session holds a write buffer after writing everything")
	}
}

type pipeConn struct{ net.Conn }

func (c pipeConn) CloseWrite() error { return c.Close() }

// TestIdleSessionHoldsNoWriteBuffer: after the hello and a ping, a
// session waiting for its next frame holds no write buffer.
func TestIdleSessionHoldsNoWriteBuffer(t *testing.T) {
	srv, err := New(Config{Store: store.NewMemory(store.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() { srv.ServeConn(ctx, pipeConn{s}, "pipe"); close(done) }()
	defer func() { c.Close(); <-done }()
	for _, m := range []relay.Message{relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion}, relay.Ping{Req: 1, Data: []byte("x")}} {
		if _, err := c.Write(relay.AppendFrame(nil, m)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := relay.ReadFrame(c); err != nil {
			t.Fatal(err)
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.sessions) != 1 {
		t.Fatalf("%d sessions", len(srv.sessions))
	}
	for ss := range srv.sessions {
		ss.wmu.Lock()
		held := ss.wbuf != nil
		ss.wmu.Unlock()
		if held {
			t.Fatal("an idle session holds a write buffer")
		}
	}
}

// TestSpliceWritesBufferedFrameFirst: a frame still in the write buffer
// when a splice starts (a Tunnel's answer that yielded to a waiting
// writer) reaches the client before the first spliced byte.
func TestSpliceWritesBufferedFrameFirst(t *testing.T) {
	srv, err := New(Config{Store: store.NewMemory(store.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, relaySide := net.Pipe()
	home, homeSide := net.Pipe()
	defer client.Close()
	defer home.Close()
	ss := &session{srv: srv, conn: pipeConn{relaySide}, w: relaySide, ctx: ctx, fr: &frameReader{r: relaySide}}
	ss.wtimer = time.AfterFunc(time.Hour, func() {})
	ss.wtimer.Stop()
	if err := ss.queue(relay.Pong{Req: 7}); err != nil {
		t.Fatal(err)
	}
	spliced := make(chan error, 1)
	go func() { spliced <- ss.splice(homeSide) }()
	go home.Write([]byte("from home"))
	typ, p, err := relay.ReadFrame(client)
	if err != nil {
		t.Fatal(err)
	}
	if typ != relay.FramePong {
		t.Fatalf("first on the wire: frame type %#x, want the buffered Pong", typ)
	}
	if pong, err := relay.ParsePong(p); err != nil || pong.Req != 7 {
		t.Fatalf("first on the wire: %+v (%v), want the buffered Pong 7", pong, err)
	}
	got := make([]byte, len("from home"))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "from home" {
		t.Fatalf("then %q, %v; want the spliced bytes", got, err)
	}
	client.Close()
	home.Close()
	<-spliced
}

// TestFramePayloadSteps: payloads of every size around the steps its
// buffer grows through come back whole, whatever the reads' sizes, and a
// Send frame's is in the bufpool class its size calls for.
func TestFramePayloadSteps(t *testing.T) {
	var sizes []int
	for _, s := range payloadSteps {
		sizes = append(sizes, s-1, s, s+1)
	}
	sizes = append(sizes, 0, 1, 40000, relay.MaxFrameSize)
	for _, typ := range []relay.FrameType{relay.FramePing, relay.FrameSend} {
		for _, n := range sizes {
			payload := make([]byte, n)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			frame := append([]byte{byte(typ), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, payload...)
			for _, chunks := range [][]int{{1}, {7, 3000}, {1 << 20}} {
				fr := &frameReader{r: &chunkReader{r: bytes.NewReader(frame), sizes: chunks}}
				gt, p, err := fr.ReadFrame()
				if err != nil || gt != typ || !bytes.Equal(p, payload) {
					t.Fatalf("type %v, %d bytes in chunks %v: %v, frame %v of %d bytes", typ, n, chunks, err, gt, len(p))
				}
				if typ == relay.FrameSend {
					if want := cap(bufpool.Get(n)); cap(p) != want {
						t.Fatalf("a Send payload of %d bytes in a buffer of %d, want bufpool's %d", n, cap(p), want)
					}
				}
			}
		}
	}
}

// trickleReader hands out its data, then blocks until more is given,
// reporting the size of each read that finds nothing to hand out.
type trickleReader struct {
	data    chan []byte
	pending []byte
	waiting chan int // len(p) of a read that has to wait
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if len(r.pending) == 0 {
		r.waiting <- len(p)
		d, ok := <-r.data
		if !ok {
			return 0, io.EOF
		}
		r.pending = d
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

// TestFramePayloadHeldGrowsWithArrival: a frame whose header declares the
// largest payload and whose bytes stop after a few holds a buffer of the
// first step, not of the payload declared: a 5-byte header pinned 66 KiB
// per session until the idle timeout, which a peer could repeat on every
// session it opens.
func TestFramePayloadHeldGrowsWithArrival(t *testing.T) {
	for _, typ := range []relay.FrameType{relay.FramePing, relay.FrameSend} {
		n := int(relay.MaxPayload(typ))
		payload := bytes.Repeat([]byte{0xa5}, n)
		frame := append([]byte{byte(typ), byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, payload...)
		r := &trickleReader{data: make(chan []byte), waiting: make(chan int)}
		fr := &frameReader{r: r}
		type result struct {
			p   []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			_, p, err := fr.ReadFrame()
			done <- result{p, err}
		}()
		<-r.waiting // the first read
		r.data <- frame[:5+10]
		held := <-r.waiting // the header and 10 bytes read: waiting for more
		if held > payloadSteps[0] {
			t.Fatalf("type %v: after 10 of %d bytes, a read into %d bytes waits (want at most %d)", typ, n, held, payloadSteps[0])
		}
		// The first step filled and 10 bytes more: the second step's.
		sent := 5 + payloadSteps[0] + 10
		r.data <- frame[5+10 : sent]
		held = <-r.waiting
		if held > payloadSteps[1]-payloadSteps[0]-10 {
			t.Fatalf("type %v: after %d of %d bytes, a read into %d bytes waits (want at most %d)", typ, sent-5, n, held, payloadSteps[1]-payloadSteps[0]-10)
		}
		rest := frame[sent:]
		go func() {
			for len(rest) > 0 {
				k := min(len(rest), 3000)
				r.data <- rest[:k]
				if rest = rest[k:]; len(rest) > 0 {
					<-r.waiting
				}
			}
		}()
		res := <-done
		if res.err != nil || !bytes.Equal(res.p, payload) {
			t.Fatalf("type %v: %v, %d bytes", typ, res.err, len(res.p))
		}
	}
}

// BenchmarkReadFrameLargest: reading a Send frame of the largest envelope
// from memory, its payload given back to bufpool as a Send's is: what the
// payload's growing buffer costs in copying, with no transport around it.
func BenchmarkReadFrameLargest(b *testing.B) {
	frame := relay.AppendFrame(nil, relay.Send{Req: 1, Envelope: make([]byte, 64<<10)})
	r := bytes.NewReader(frame)
	fr := &frameReader{r: r}
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		r.Reset(frame)
		_, p, err := fr.ReadFrame()
		if err != nil {
			b.Fatal(err)
		}
		bufpool.Put(p)
	}
}

// recordWriter keeps each transport write.
type recordWriter struct{ writes [][]byte }

func (r *recordWriter) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// TestLargeDeliverWrittenAlone: a push of a run of envelopes (queued, as
// push does, then flushed) writes each Deliver frame of a 16 KiB
// envelope or larger in a transport write of its own, and what was
// queued before it in one before it; smaller ones go together. Over the
// https engine each write ends a TLS record, so a large envelope comes
// whole as soon as its own bytes came (writtenAlone).
func TestLargeDeliverWrittenAlone(t *testing.T) {
	srv, err := New(Config{Store: store.NewMemory(store.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	w := &recordWriter{}
	ss := &session{srv: srv, w: w}
	ss.wtimer = time.AfterFunc(time.Hour, func() {})
	ss.wtimer.Stop()
	sizes := []int{100, 4 << 10, envelope.Bucket16K, envelope.Bucket16K, 200, envelope.Bucket64K, 300}
	for i, n := range sizes {
		if err := ss.queue(relay.Deliver{Req: 1, Seq: uint64(i + 1), Envelope: make([]byte, n)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.flush(); err != nil {
		t.Fatal(err)
	}
	// The writes' frames, by their envelopes' sizes.
	var got [][]int
	for _, b := range w.writes {
		var frames []int
		fr := &frameReader{r: bytes.NewReader(b)}
		for {
			_, p, err := fr.ReadFrame()
			if err != nil {
				break
			}
			d, err := relay.ParseDeliver(p)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, len(d.Envelope))
		}
		got = append(got, frames)
	}
	want := [][]int{{100, 4 << 10}, {envelope.Bucket16K}, {envelope.Bucket16K}, {200}, {envelope.Bucket64K}, {300}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("writes of frames of envelopes of %v bytes, want %v", got, want)
	}
}
