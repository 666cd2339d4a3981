package h3

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/postern/postern/transport/httpsession"
)

// writeRecorder records each Write call separately.
type writeRecorder struct{ writes [][]byte }

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

// Each DATA frame, header and payload, reaches the stream in one write: a
// header written on its own makes quic-go send a packet for it alone.
func TestWriteDataOneWritePerFrame(t *testing.T) {
	for _, n := range []int{1, 1500, benchChunk, maxFramePayload, maxFramePayload + 1, 2*maxFramePayload + 22<<10} {
		p := pattern(n, 3)
		var w writeRecorder
		got, err := (&dataWriter{w: &w}).Write(p)
		if err != nil || got != n {
			t.Fatalf("writeData(%d bytes) = %d, %v", n, got, err)
		}
		if want := (n + maxFramePayload - 1) / maxFramePayload; len(w.writes) != want {
			t.Errorf("%d bytes: %d stream writes, want %d (one per frame)", n, len(w.writes), want)
		}
		var out []byte
		for i, wr := range w.writes {
			fr := &frameReader{r: bytes.NewReader(wr)}
			payload, err := io.ReadAll(fr)
			if err != nil {
				t.Fatalf("%d bytes, write %d: %v", n, i, err)
			}
			if len(payload) > maxFramePayload {
				t.Errorf("%d bytes, write %d: frame of %d bytes", n, i, len(payload))
			}
			// What a Write holds while the stream blocks it: one frame.
			if len(wr) > 16<<10+16 {
				t.Errorf("%d bytes, write %d: %d bytes in one stream write; a stalled session would hold them", n, i, len(wr))
			}
			out = append(out, payload...)
		}
		if !bytes.Equal(out, p) {
			t.Errorf("%d bytes: payload differs after framing", n)
		}
	}
}

// failingWriter accepts bytes until it has taken failAt of them, fails the
// write that crosses that mark (after taking its part), then accepts all.
type failingWriter struct {
	out    bytes.Buffer
	failAt int
	failed bool
}

var errTestDeadline = errors.New("deadline")

func (w *failingWriter) Write(p []byte) (int, error) {
	if !w.failed && w.out.Len()+len(p) > w.failAt {
		n := w.failAt - w.out.Len()
		w.out.Write(p[:n])
		w.failed = true
		return n, errTestDeadline
	}
	return w.out.Write(p)
}

// A write that fails partway (a deadline) leaves the stream well framed:
// the next Write finishes the frame, and what Write reported as written is
// exactly what the reader gets.
func TestDataWriterResumesFrame(t *testing.T) {
	p := pattern(3000, 5)
	for _, failAt := range []int{0, 1, 2, 3, 100, 2999, 3002, 3003, 3010} {
		w := &failingWriter{failAt: failAt}
		d := &dataWriter{w: w}
		n, err := d.Write(p)
		if err == nil && failAt < 3003 {
			t.Fatalf("failAt %d: no error", failAt)
		}
		m, err := d.Write(p[n:])
		if err != nil || n+m != len(p) {
			t.Fatalf("failAt %d: wrote %d+%d, %v", failAt, n, m, err)
		}
		got, err := io.ReadAll(&frameReader{r: &w.out})
		if err != nil || !bytes.Equal(got, p) {
			t.Errorf("failAt %d: read %d bytes, %v; want the %d written", failAt, len(got), err, len(p))
		}
	}
}

func frame(typ uint64, payload []byte) []byte {
	return append(appendFrameHeader(nil, typ, len(payload)), payload...)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestFrameReader(t *testing.T) {
	grease := uint64(0x1f*7 + 0x21)
	tests := []struct {
		name    string
		in      []byte
		want    string
		errCode http3.ErrCode // 0: io.EOF after want
	}{
		{"empty stream", nil, "", 0},
		{"one frame", frame(frameData, []byte("hello")), "hello", 0},
		{"empty DATA frames", join(frame(frameData, nil), frame(frameData, []byte("a")), frame(frameData, nil)), "a", 0},
		{"unknown and reserved frames skipped", join(frame(grease, []byte("xyz")), frame(frameData, []byte("ab")), frame(0x2f, bytes.Repeat([]byte{1}, 300)), frame(frameData, []byte("c"))), "abc", 0},
		{"SETTINGS on a request stream", join(frame(frameData, []byte("a")), frame(0x4, nil)), "a", http3.ErrCodeFrameUnexpected},
		{"GOAWAY on a request stream", frame(0x7, []byte{0}), "", http3.ErrCodeFrameUnexpected},
		{"PUSH_PROMISE", frame(0x5, []byte{0}), "", http3.ErrCodeFrameUnexpected},
		{"HTTP/2 reserved type", frame(0x6, nil), "", http3.ErrCodeFrameUnexpected},
		{"HEADERS inside the body", join(frame(frameData, []byte("a")), frame(frameHeaders, []byte{0, 0})), "a", http3.ErrCodeFrameUnexpected},
		{"truncated frame header", join(frame(frameData, []byte("a")), []byte{0x00, 0x40}), "a", http3.ErrCodeFrameError},
		{"truncated DATA payload", frame(frameData, []byte("abcdef"))[:5], "abc", http3.ErrCodeFrameError},
		{"truncated unknown frame", frame(grease, []byte("abcdef"))[:4], "", http3.ErrCodeFrameError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := &frameReader{r: bytes.NewReader(tt.in)}
			got, err := io.ReadAll(fr)
			if string(got) != tt.want {
				t.Errorf("read %q, want %q", got, tt.want)
			}
			if tt.errCode == 0 {
				if err != nil {
					t.Errorf("error %v, want a clean end", err)
				}
				return
			}
			var he *http3.Error
			if !errors.As(err, &he) || he.ErrorCode != tt.errCode {
				t.Errorf("error %v, want HTTP/3 error %v", err, tt.errCode)
			}
			if classify("session", err) == nil {
				t.Error("not classified")
			}
		})
	}
}

func responseBlock(t testing.TB, fields ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := qpack.NewEncoder(&buf)
	for i := 0; i < len(fields); i += 2 {
		if err := enc.WriteField(qpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return frame(frameHeaders, buf.Bytes())
}

func TestReadResponse(t *testing.T) {
	ok := responseBlock(t, ":status", "200", "content-type", httpsession.ContentType, "date", "Thu, 03 Dec 2026 20:00:00 GMT")
	early := responseBlock(t, ":status", "103", "link", "</a.css>; rel=preload")
	tests := []struct {
		name    string
		in      []byte
		status  int
		body    string
		errCode http3.ErrCode
	}{
		{"200 and body", join(ok, frame(frameData, []byte("session"))), 200, "session", 0},
		{"after interim responses", join(early, early, ok), 200, "", 0},
		{"cover site 404", responseBlock(t, ":status", "404"), 404, "", 0},
		{"unknown frame before the response", join(frame(0x21, []byte("x")), ok), 200, "", 0},
		{"too many interim responses", join(early, early, early, early, early, early, ok), 0, "", http3.ErrCodeExcessiveLoad},
		{"DATA before HEADERS", join(frame(frameData, []byte("x")), ok), 0, "", http3.ErrCodeFrameUnexpected},
		{"no :status", responseBlock(t, "content-type", "text/html"), 0, "", http3.ErrCodeMessageError},
		{"malformed :status", responseBlock(t, ":status", "2x0"), 0, "", http3.ErrCodeMessageError},
		{"two :status", responseBlock(t, ":status", "200", ":status", "404"), 0, "", http3.ErrCodeMessageError},
		{"request pseudo-header", responseBlock(t, ":status", "200", ":path", "/"), 0, "", http3.ErrCodeMessageError},
		{"ends before the response", nil, 0, "", http3.ErrCodeRequestIncomplete},
		{"ends inside the response", ok[:len(ok)-3], 0, "", http3.ErrCodeRequestIncomplete},
		{"header block too large", frame(frameHeaders, make([]byte, chromeMaxFieldSectionSize+1)), 0, "", http3.ErrCodeExcessiveLoad},
		{"not QPACK", frame(frameHeaders, []byte{0, 0, 0xff, 0xff}), 0, "", http3.ErrCodeQPACKDecompressionFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := &frameReader{r: bytes.NewReader(tt.in)}
			res, err := fr.readResponse(chromeMaxFieldSectionSize)
			if tt.errCode != 0 {
				var he *http3.Error
				if !errors.As(err, &he) || he.ErrorCode != tt.errCode {
					t.Fatalf("readResponse: %v, %v; want HTTP/3 error %v", res, err, tt.errCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("readResponse: %v", err)
			}
			if res.StatusCode != tt.status {
				t.Errorf("status %d, want %d", res.StatusCode, tt.status)
			}
			body, err := io.ReadAll(fr)
			if err != nil || string(body) != tt.body {
				t.Errorf("body %q, %v; want %q", body, err, tt.body)
			}
		})
	}
	res, err := (&frameReader{r: bytes.NewReader(ok)}).readResponse(chromeMaxFieldSectionSize)
	if err != nil {
		t.Fatal(err)
	}
	if res.Header.Get("Date") == "" || res.Header.Get("Content-Type") != httpsession.ContentType || res.ContentLength != -1 {
		t.Errorf("response header %v, content length %d", res.Header, res.ContentLength)
	}
}

// FuzzFrameReader reads arbitrary bytes as a relay's request stream: a
// response, then the body. It must not panic, never return more than the
// caller asked for, and never more payload than the input holds.
func FuzzFrameReader(f *testing.F) {
	ok := responseBlock(f, ":status", "200", "content-type", httpsession.ContentType)
	f.Add(join(ok, frame(frameData, []byte("hello"))))
	f.Add(join(responseBlock(f, ":status", "103"), ok, frame(0x21, []byte("x")), frame(frameData, nil)))
	f.Add(join(ok, frame(frameData, []byte("abc"))[:3]))
	f.Add(quicvarint.Append(nil, 1<<62-1))
	f.Add([]byte(strings.Repeat("\x01\x02\x00\x00", 8)))
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := &frameReader{r: bytes.NewReader(in)}
		res, err := fr.readResponse(1 << 10)
		if err != nil {
			if res != nil {
				t.Fatal("response with an error")
			}
			return
		}
		if res.StatusCode < 200 || res.StatusCode > 999 {
			t.Fatalf("status %d", res.StatusCode)
		}
		total := 0
		buf := make([]byte, 7)
		for {
			n, err := fr.Read(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("Read returned %d for a %d-byte buffer", n, len(buf))
			}
			total += n
			if err != nil {
				break
			}
		}
		if total > len(in) {
			t.Fatalf("read %d payload bytes from %d input bytes", total, len(in))
		}
	})
}
