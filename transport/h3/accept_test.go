package h3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/postern/postern/transport"
)

// frameHead returns an HTTP/3 frame header.
func frameHead(typ, length uint64) []byte {
	return quicvarint.Append(quicvarint.Append(nil, typ), length)
}

// getFrame returns the HEADERS frame of a GET of path with the extra
// header fields kv (name, value, ...). (QPACK Huffman-codes every value:
// a '~' takes 13 bits.)
func getFrame(t testing.TB, path string, kv ...string) []byte {
	t.Helper()
	req, err := http.NewRequest("GET", "https://"+testSNI+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	f, err := requestHeaders(req)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestUnfinishedHeadersBounded: a client that announces a 1 MiB HEADERS
// frame on each of a connection's 100 request streams, and sends all but
// its last byte, makes the relay hold little. http3, reading the frames as
// they came and crediting them back, held 202 MiB of heap for this one
// connection until the idle timeout (quic-go v0.65, on the tree before
// accept.go); a source may hold 128 connections.
func TestUnfinishedHeadersBounded(t *testing.T) {
	skip := append(frameHead(0x21, largeHeaders), make([]byte, largeHeaders)...)
	for _, c := range []struct {
		name    string
		opening []byte
		size    int
	}{
		{"largest", frameHead(0x1, maxHeaderBytes), maxHeaderBytes},
		{"largest after a long unknown frame", append(skip, frameHead(0x1, maxHeaderBytes)...), maxHeaderBytes},
		{"small", frameHead(0x1, largeHeaders), largeHeaders},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := liveHeap()
			r := startRelay(t, nil, nil)
			qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), r.ln.Addr().String(), &quic.Config{})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			sent := 0
			zeros := make([]byte, 16<<10)
			for range MaxIncomingStreams {
				str, err := qc.OpenStream()
				if err != nil {
					t.Fatal(err)
				}
				wg.Go(func() {
					// As far as flow control lets it within the deadline,
					// from a buffer the client shares (the heap measured
					// is the relay's, in this process).
					str.SetWriteDeadline(time.Now().Add(3 * time.Second))
					n, err := str.Write(c.opening)
					for left := c.size - 1; err == nil && left > 0; left -= len(zeros) {
						var k int
						k, err = str.Write(zeros[:min(left, len(zeros))])
						n += k
					}
					mu.Lock()
					sent += n
					mu.Unlock()
				})
			}
			wg.Wait()
			held := float64(liveHeap()-before) / (1 << 20)
			t.Logf("sent %.1f MiB of unfinished headers; the relay holds %.1f MiB", float64(sent)/(1<<20), held)
			if held > 24 {
				t.Errorf("the relay holds %.1f MiB for one connection's unfinished headers", held)
			}
			if qc.Context().Err() != nil {
				t.Fatal("the connection closed: nothing was measured")
			}
		})
	}
}

// answer is what a raw request stream met: the status of its response,
// or how the stream or the connection was ended.
func answer(qc *quic.Conn, opening []byte, fin bool) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return "open: " + err.Error()
	}
	str.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := str.Write(opening); err != nil {
		return describeErr(err) // refused while it was still sent
	}
	if fin {
		str.Close()
	}
	res, err := (&frameReader{r: str}).readResponse(1 << 20)
	if err != nil {
		return describeErr(err)
	}
	return fmt.Sprint(res.StatusCode)
}

// describeErr names how a stream or connection was ended, without what
// varies between runs.
func describeErr(err error) string {
	var se *quic.StreamError
	var ae *quic.ApplicationError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("stream reset %#x", uint64(se.ErrorCode))
	case errors.As(err, &ae):
		return fmt.Sprintf("connection closed %#x", uint64(ae.ErrorCode))
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer"
	}
	return err.Error()
}

// TestRequestOpeningsLikeStock: however a request stream opens, before
// or past what the listener waits for whole, the relay answers as a stock
// http3.Server with the same cover does.
func TestRequestOpeningsLikeStock(t *testing.T) {
	get := getFrame(t, "/")
	big := getFrame(t, "/", "cookie", strings.Repeat("~", 20<<10))
	unknown := append(frameHead(0x21, 10), make([]byte, 10)...)
	longUnknown := append(frameHead(0x21, largeHeaders), make([]byte, largeHeaders)...)
	cases := []struct {
		name    string
		opening []byte
		fin     bool
	}{
		{"get", get, true},
		{"get without FIN", get, false},
		{"unknown frame then get", append(bytes.Clone(unknown), get...), true},
		{"long unknown frame then get", append(bytes.Clone(longUnknown), get...), true},
		{"get with 20 KiB of headers", big, true},
		{"headers over http3's limit", frameHead(0x1, maxHeaderBytes+1), false},
		{"headers ended early", append(frameHead(0x1, 200), 0, 0, 0xd1), true},
		{"data first", append(frameHead(0x0, 3), 1, 2, 3), true},
		{"reserved type first", append(frameHead(0x2, 3), 1, 2, 3), true},
		{"garbage headers", append(frameHead(0x1, 4), 0xff, 0xff, 0xff, 0xff), true},
	}
	relay := startRelay(t, nil, nil)
	stock := startStock(t, testCover)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got [2]string
			for i, addr := range []string{relay.ln.Addr().String(), stock} {
				qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), addr, &quic.Config{})
				if err != nil {
					t.Fatal(err)
				}
				got[i] = answer(qc, c.opening, c.fin)
				qc.CloseWithError(0, "")
			}
			if got[0] != got[1] {
				t.Errorf("relay: %s; stock http3: %s", got[0], got[1])
			}
			t.Logf("%s", got[0])
		})
	}
}

// TestLargeHeadersWithinBudget: a request whose HEADERS frame is large
// goes to http3 only within the header budget, and is refused
// (H3_REQUEST_REJECTED) while another source's unfinished frame holds
// it; it is served once that frame is done with. A request holds its
// share until it is answered: its decoded headers live as long.
func TestLargeHeadersWithinBudget(t *testing.T) {
	entered, release := make(chan struct{}, 4), make(chan struct{})
	answer1 := sync.OnceFunc(func() { close(release) })
	defer answer1()
	r := startRelay(t, &Transport{HeaderBudget: 48 << 10}, func(c *transport.ListenConfig) {
		c.Cover = holdCover(entered, release)
	})
	l := r.ln.(*listener)
	addr := r.ln.Addr().String()
	large := getFrame(t, "/", "cookie", strings.Repeat("~", 20<<10)) // 33 KB

	qh, err := quicFrom(t, net.IPv4(127, 0, 0, 2), addr, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	go answer(qh, getFrame(t, "/hold", "cookie", strings.Repeat("~", 20<<10)), true)
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the held request never reached the handler")
	}
	if n := l.headers.held(); n != 1 {
		t.Fatalf("a request with large headers in the handler holds %d shares of the header budget, want 1", n)
	}
	answer1()
	waitFor(t, "the answered request's share given back", func() bool { return l.headers.held() == 0 })

	// An unfinished 40 KB frame holds 40 KB of the 48.
	qa, err := quicFrom(t, net.IPv4(127, 0, 0, 3), addr, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	str, err := qa.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := str.Write(append(frameHead(0x1, 40<<10), make([]byte, 1<<10)...)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the unfinished frame holds its share", func() bool { return l.headers.held() == 1 })

	// Another source's 33 KB of headers are refused, not processed.
	qb, err := quicFrom(t, net.IPv4(127, 0, 0, 4), addr, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s := answer(qb, large, true); s != "stream reset 0x10b" {
		t.Fatalf("large headers while the budget is spent: %s, want H3_REQUEST_REJECTED", s)
	}
	// Headers larger than http3 takes are refused as http3 refuses them,
	// spent budget or not: it reads nothing of them.
	if s := answer(qb, frameHead(0x1, maxHeaderBytes+1), false); s != "431" {
		t.Fatalf("headers over http3's limit, budget spent: %s, want 431", s)
	}
	qa.CloseWithError(0, "")
	waitFor(t, "the closed connection's share given back", func() bool { return l.headers.held() == 0 })
	if s := answer(qb, large, true); s != "200" {
		t.Fatalf("once the budget had room: %s, want 200", s)
	}
	// The share goes back when http3 returns from the stream, which can
	// be just after the client has read the answer.
	waitFor(t, "the share of the request answered given back", func() bool { return l.headers.held() == 0 })
}

// TestManyLargeHeadersOneConnection: many large requests at once on one
// connection are each answered or refused, and the connection stays
// usable. When requests over the budget waited instead, what their
// client sent filled the connection's window and the requests holding
// shares could not finish: nothing on it moved until its idle timeout
// (a reviewer's find: 19 requests with 166 KB of headers, none answered
// in 5 s, where stock http3 answers all).
func TestManyLargeHeadersOneConnection(t *testing.T) {
	r := startRelay(t, nil, nil)
	qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), r.ln.Addr().String(), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	large := getFrame(t, "/", "cookie", strings.Repeat("~", 100<<10))
	var wg sync.WaitGroup
	got := make([]string, 19)
	for i := range got {
		wg.Go(func() { got[i] = answer(qc, large, true) })
	}
	wg.Wait()
	counts := map[string]int{}
	for _, s := range got {
		counts[s]++
	}
	t.Logf("%d requests with %d-byte header frames at once: %v", len(got), len(large), counts)
	if counts["200"]+counts["stream reset 0x10b"] != len(got) || counts["200"] == 0 {
		t.Errorf("answers: %v", counts)
	}
	if s := answer(qc, getFrame(t, "/"), true); s != "200" {
		t.Errorf("a plain request after them: %s", s)
	}
}

// TestHeaderBudget checks the budget's accounting: a source's share, the
// listener's total, giving back.
func TestHeaderBudget(t *testing.T) {
	b := newHeaderBudget(4<<20 + 512<<10)
	a, c := [16]byte{1}, [16]byte{2}
	key := func(i int) heldKey { return heldKey{id: quic.StreamID(i)} }
	if !b.take(key(0), a, 1<<20) || !b.take(key(1), a, 1<<20) {
		t.Fatal("a source could not take two frames of the largest size")
	}
	if b.take(key(2), a, 1) {
		t.Fatal("a source took more than its share")
	}
	if !b.take(key(3), c, 3<<20) { // clamped to a share
		t.Fatal("a frame larger than a share could not take a whole share")
	}
	if b.used != 4<<20 {
		t.Fatalf("used %d", b.used)
	}
	if b.take(key(4), [16]byte{3}, 1<<20) {
		t.Fatal("took past the listener's budget")
	}
	b.release(key(9)) // holds nothing
	b.release(key(0))
	if !b.take(key(4), [16]byte{3}, 1<<20) {
		t.Fatal("the room given back could not be taken")
	}
	for _, k := range []int{1, 3, 4, 3} {
		b.release(key(k))
	}
	if b.used != 0 || len(b.bySource) != 0 || len(b.streams) != 0 || b.held() != 0 {
		t.Fatalf("left: used %d, sources %d, streams %d, held %d", b.used, len(b.bySource), len(b.streams), b.held())
	}
}

// TestQPACKStreamsDrained: what a client sends on its QPACK streams is
// read, instruction by instruction, and the connection closes with the
// stream's QPACK error at the first instruction a server with no dynamic
// table cannot take. http3 never read them: whatever came, up to the
// connection's window, stayed (114 MiB of heap per connection in 1-byte
// frames, BenchmarkTinyFrameStuffing). Valid instructions, however many,
// keep the connection (Chromium sends a Stream Cancellation for every
// request stream reset before its end).
func TestQPACKStreamsDrained(t *testing.T) {
	r := startRelay(t, nil, nil)
	addr := r.ln.Addr().String()
	cancellations := make([]byte, 0, 600<<10)
	for id := uint64(0); len(cancellations) < 600<<10; id += 4 { // 6-bit prefixed ids
		if id < 63 {
			cancellations = append(cancellations, 0x40|byte(id))
			continue
		}
		cancellations = append(cancellations, 0x7f)
		for v := id - 63; ; v >>= 7 {
			if v < 0x80 {
				cancellations = append(cancellations, byte(v))
				break
			}
			cancellations = append(cancellations, byte(v)|0x80)
		}
	}
	for _, c := range []struct {
		name      string
		typ       byte
		valid     []byte // more than the stream's 512 KiB window: read, or the write blocks
		invalid   []byte
		closeCode quic.ApplicationErrorCode
	}{
		{"encoder", qpackEncoderStream, bytes.Repeat([]byte{0x20}, 600<<10), []byte{0x21}, qpackEncoderStreamError},
		{"decoder", qpackDecoderStream, cancellations, []byte{0x81}, qpackDecoderStreamError},
		{"decoder, insert count increment", qpackDecoderStream, nil, []byte{0x01}, qpackDecoderStreamError},
		{"decoder, stream id past 62 bits", qpackDecoderStream, nil, append([]byte{0x7f}, bytes.Repeat([]byte{0xff}, 10)...), qpackDecoderStreamError},
	} {
		t.Run(c.name, func(t *testing.T) {
			qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), addr, &quic.Config{})
			if err != nil {
				t.Fatal(err)
			}
			s, err := qc.OpenUniStream()
			if err != nil {
				t.Fatal(err)
			}
			s.SetWriteDeadline(time.Now().Add(20 * time.Second)) // a deadlock guard
			if _, err := s.Write(append([]byte{c.typ}, c.valid...)); err != nil {
				t.Fatalf("valid instructions: %v", err)
			}
			if got := answer(qc, getFrame(t, "/"), true); got != "200" {
				t.Fatalf("after %d bytes of valid instructions: %s", len(c.valid), got)
			}
			if _, err := s.Write(c.invalid); err != nil {
				t.Fatal(err)
			}
			select {
			case <-qc.Context().Done():
			case <-time.After(20 * time.Second): // a deadlock guard
				t.Fatal("the connection stayed open after an invalid instruction")
			}
			var ae *quic.ApplicationError
			if err := context.Cause(qc.Context()); !errors.As(err, &ae) || ae.ErrorCode != c.closeCode || !ae.Remote {
				t.Errorf("closed with %v, want %#x from the relay", err, uint64(c.closeCode))
			}
		})
	}
}

// FuzzQPACKInstructions: the QPACK stream checker never panics, and takes
// a stream's bytes alike however they are split into reads.
func FuzzQPACKInstructions(f *testing.F) {
	f.Add(true, []byte{0x40, 0x7f, 0x81, 0x01}, uint8(1))
	f.Add(false, []byte{0x20, 0x20, 0x21}, uint8(2))
	f.Add(true, append([]byte{0x7f}, bytes.Repeat([]byte{0xff}, 10)...), uint8(3))
	f.Fuzz(func(t *testing.T, decoder bool, b []byte, cut uint8) {
		whole := qpackInstructions{decoder: decoder}
		want := whole.take(b)
		split := qpackInstructions{decoder: decoder}
		got := true
		for rest := b; len(rest) > 0 && got; {
			n := min(int(cut)%7+1, len(rest))
			got = split.take(rest[:n])
			rest = rest[n:]
		}
		if got != want || (want && split != whole) {
			t.Fatalf("whole: %v %+v; in reads of %d: %v %+v", want, whole, int(cut)%7+1, got, split)
		}
	})
}

// FuzzHeadersPending: how the listener reads a request stream's opening
// never panics, and charges the budget only what http3 could buffer.
func FuzzHeadersPending(f *testing.F) {
	f.Add(append(frameHead(0x21, 3), 1, 2, 3, 0x01, 0x40, 0x64))
	f.Add(frameHead(0x1, maxHeaderBytes))
	f.Add([]byte{0xc0})
	f.Fuzz(func(t *testing.T, b []byte) {
		n := headersPending(bytesPeek(b))
		if n < 0 || n > maxHeaderBytes {
			t.Fatalf("charged %d", n)
		}
	})
}

// bytesPeek is a stream that holds b and then ends.
type bytesPeek []byte

func (b bytesPeek) Peek(p []byte) (int, error) {
	n := copy(p, b)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
