package https

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// chunkReader returns src in reads of the sizes sizes gives, then err.
type chunkReader struct {
	src   []byte
	sizes func() int
	err   error
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, c.err
	}
	n := copy(p[:min(len(p), max(1, c.sizes()))], c.src)
	c.src = c.src[n:]
	return n, nil
}

// noise is what records' bodies are cut from.
var noise = func() []byte {
	b := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}()

// records returns a stream of n TLS-like records with bodies of random
// length (some empty) and where each begins.
func records(rng *rand.Rand, n int) (stream []byte, starts map[int]bool) {
	starts = map[int]bool{}
	for range n {
		starts[len(stream)] = true
		body := rng.IntN(17 << 10)
		if rng.IntN(8) == 0 {
			body = rng.IntN(3)
		}
		stream = append(stream, 23, 3, 3)
		stream = binary.BigEndian.AppendUint16(stream, uint16(body))
		off := rng.IntN(len(noise) - body)
		stream = append(stream, noise[off:off+body]...)
	}
	starts[len(stream)] = true
	return stream, starts
}

// fakeConn is a net.Conn that reads from r.
type fakeConn struct {
	net.Conn
	r io.Reader
}

func (c fakeConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// The readers recordReads works in: itself, and the two connections
// beneath TLS whose Read it is (the relay's countedConn, with the body
// written out, and the client's corkConn).
var recordReaders = []struct {
	name string
	open func(src io.Reader) (io.Reader, *recordReads)
}{
	{"recordReads", func(src io.Reader) (io.Reader, *recordReads) {
		r := &recordReads{}
		return readerFunc(func(p []byte) (int, error) { return r.read(src, p) }), r
	}},
	{"countedConn", func(src io.Reader) (io.Reader, *recordReads) {
		c := &countedConn{Conn: fakeConn{r: src}}
		return c, &c.rr
	}},
	{"corkConn", func(src io.Reader) (io.Reader, *recordReads) {
		c := &corkConn{Conn: fakeConn{r: src}}
		return c, &c.rr
	}},
}

// checkRecordReads reads stream through each of recordReaders with reads
// of random sizes beneath and above it, and checks that it comes out
// whole, that no read crosses a record's end, and that src's error comes
// last.
func checkRecordReads(t *testing.T, rng *rand.Rand, stream []byte, starts map[int]bool, under, over int) {
	t.Helper()
	for _, rd := range recordReaders {
		checkRecordReader(t, rng, stream, starts, under, over, rd.name, rd.open)
	}
}

func checkRecordReader(t *testing.T, rng *rand.Rand, stream []byte, starts map[int]bool, under, over int, name string, open func(io.Reader) (io.Reader, *recordReads)) {
	t.Helper()
	src := &chunkReader{src: stream, sizes: func() int { return rng.IntN(under) + 1 }, err: io.EOF}
	rd, r := open(src)
	var got []byte
	buf := make([]byte, over)
	for reads := 0; ; reads++ {
		if reads > 4*len(stream)+10 {
			t.Fatalf("%s: no end of stream", name)
		}
		p := buf[:rng.IntN(over)+1]
		n, err := rd.Read(p)
		if n > 0 {
			// Every byte handed out but the last is inside one record: no
			// record begins after the read's first byte and before its end.
			for i := len(got) + 1; i < len(got)+n; i++ {
				if starts[i] {
					t.Fatalf("%s: a read of %d bytes at %d crosses the record boundary at %d", name, n, len(got), i)
				}
			}
			got = append(got, p[:n]...)
		}
		if err != nil {
			if err != io.EOF {
				t.Fatalf("%s: error %v", name, err)
			}
			break
		}
		if n == 0 {
			t.Fatalf("%s: a read returned nothing and no error", name)
		}
	}
	if !bytes.Equal(got, stream) {
		t.Fatalf("%s: read %d bytes, want the %d of the stream", name, len(got), len(stream))
	}
	if r.buf != nil || r.stash != nil {
		t.Fatalf("%s: the stash's buffer is still held after the stream ended", name)
	}
}

func TestRecordReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		under := []int{1, 5, 300, 20 << 10, 100 << 10}[i%5]
		over := []int{1, 6, 517, 18 << 10, 64 << 10}[(i/5)%5]
		n := 1 + rng.IntN(12)
		if under*over < 100 {
			n = 1 + rng.IntN(3) // byte by byte: a short stream says as much
		}
		stream, starts := records(rng, n)
		checkRecordReads(t, rng, stream, starts, under, over)
	}
}

// An error that comes with bytes past a record's end (a reader may return
// both) is returned once those bytes have been read.
func TestRecordReadsErrorAfterStash(t *testing.T) {
	boom := errors.New("boom")
	rec := []byte{23, 3, 3, 0, 2, 'a', 'b', 23, 3, 3, 0, 1, 'c'}
	var r recordReads
	p := make([]byte, 64)
	n, err := r.read(readerFunc(func(b []byte) (int, error) { return copy(b, rec), boom }), p)
	if n != 7 || err != nil {
		t.Fatalf("first read: %d, %v; want the first record (7 bytes) and no error", n, err)
	}
	if n, err = r.read(nil, p); n != 6 || err != nil || !bytes.Equal(p[:n], rec[7:]) {
		t.Fatalf("second read: %q, %v; want the second record", p[:n], err)
	}
	if n, err = r.read(nil, p); n != 0 || err != boom {
		t.Fatalf("third read: %d, %v; want the error", n, err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// FuzzRecordReads: whatever the bytes (records or not) and the read
// sizes, everything comes out in order, no read crosses the end of what
// the bytes' headers say is a record, and the stash is let go at the end.
func FuzzRecordReads(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	stream, _ := records(rng, 3)
	f.Add(stream, uint64(1), uint16(300), uint16(517))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint64(2), uint16(4096), uint16(4096))
	f.Add([]byte{22, 3, 1, 0, 0, 22, 3, 1, 0}, uint64(3), uint16(1), uint16(1))
	f.Fuzz(func(t *testing.T, stream []byte, seed uint64, under, over uint16) {
		// Where records begin, as their headers say.
		starts := map[int]bool{}
		for i := 0; i <= len(stream); {
			starts[i] = true
			if i+recordHeaderSize > len(stream) {
				break
			}
			i += recordHeaderSize + int(binary.BigEndian.Uint16(stream[i+3:]))
		}
		checkRecordReads(t, rand.New(rand.NewPCG(seed, seed)), stream, starts, int(under)+1, int(over)+1)
	})
}

// After bulk traffic an idle session's TLS read buffer, crypto/tls's on
// the relay and uTLS's on the client, holds one record and the room it
// asks beyond it (21,760 B with Go 1.26's size classes; up to 32 KiB for
// other orders of record sizes), not the 40 KiB it doubled to when reads
// ran past the end of a record.
func TestIdleSessionAfterBulkHoldsOneRecord(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	const sessions = 8
	r := startRelay(t, engineTransport(), func(c *transport.ListenConfig) { c.MaxSessionsPerSource = 2 * sessions })
	serveEcho(r.ln)
	msg := make([]byte, 256<<10)
	for range sessions {
		c := dial(t, r.ep)
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatal(err)
		}
	}
	// The TLS read buffers: what readFromUntil grew, not the stash
	// buffers (taken beneath it, from a pool that lets them go later).
	live := map[string]int64{}
	for _, rec := range transporttest.MemProfile() {
		frames := runtime.CallersFrames(rec.Stack())
		for {
			fr, more := frames.Next()
			if strings.HasSuffix(fr.Function, "(*recordReads).keep") {
				break
			}
			if side, ok := strings.CutSuffix(fr.Function, ".(*Conn).readFromUntil"); ok {
				live[side] += rec.InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	for side, pkg := range map[string]string{"relay": "crypto/tls", "client": "github.com/refraction-networking/utls"} {
		per := live[pkg] / sessions
		t.Logf("%s (%s) TLS read buffer per idle session after a 256 KiB echo: %d B", side, pkg, per)
		if per == 0 || per > 32<<10 {
			t.Errorf("the %s's TLS read buffer holds %d B per idle session after bulk traffic, want one record's (about 21 KiB)", side, per)
		}
	}
}
