package https

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
)

// stallingClient is an HTTP/2 client that gives the server no
// flow-control credit (SETTINGS_INITIAL_WINDOW_SIZE 0), so each cover
// response waits after its HEADERS, holding its stream open.
type stallingClient struct {
	t    testing.TB
	c    *tls.Conn
	fr   *http2.Framer
	next uint32 // the next stream id
	dec  *hpack.Decoder
}

func newStallingClient(t testing.TB, addr, ip string) *stallingClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(cert(t).Leaf)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 20 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "relay.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, http2.ClientPreface)
	s := &stallingClient{t: t, c: c, fr: http2.NewFramer(c, c), next: 1}
	s.dec = hpack.NewDecoder(4096, nil)
	s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	return s
}

// get opens n streams asking for the cover's front page.
func (s *stallingClient) get(n int) {
	s.t.Helper()
	if err := s.tryGet(n); err != nil {
		s.t.Fatal(err)
	}
}

// tryGet is get returning its error.
func (s *stallingClient) tryGet(n int) error {
	for range n {
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.next, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			return err
		}
		s.next += 2
	}
	return nil
}

// answers reads until n responses have begun (their HEADERS) and returns
// nil, or returns the error that ended the connection first.
func (s *stallingClient) answers(n int) error {
	s.c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang guard
	for n > 0 {
		f, err := s.fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				s.fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if _, err := s.dec.DecodeFull(f.HeaderBlockFragment()); err != nil {
				return err
			}
			n--
		}
	}
	return nil
}

// finish gives the last n streams opened the credit their responses
// wait for (later streams still get none) and reads until they ended.
func (s *stallingClient) finish(n int) {
	s.t.Helper()
	s.fr.WriteWindowUpdate(0, 1<<30)
	for id := s.next - 2*uint32(n); id < s.next; id += 2 {
		s.fr.WriteWindowUpdate(id, 1<<30)
	}
	s.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for n > 0 {
		f, err := s.fr.ReadFrame()
		if err != nil {
			s.t.Fatalf("waiting for %d streams to end: %v", n, err)
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) && f.Header().Type == http2.FrameData {
			n--
		}
		if h, ok := f.(*http2.HeadersFrame); ok {
			s.dec.DecodeFull(h.HeaderBlockFragment())
		}
		if f.Header().Type == http2.FrameSettings && !f.Header().Flags.Has(http2.FlagSettingsAck) {
			s.fr.WriteSettingsAck()
		}
	}
}

// TestCoverStreamsPerSource: the streams one source holds open on the
// stock HTTP/2 server, across its connections, are capped: a HEADERS
// frame past the cap resets its connection (counted conn_limited), the
// source's other connections and other sources go on, and streams that
// end (the response sent, a reset, the connection closed) are given back.
// Before, one source held 250 stalled streams a connection on each of its
// 128 connections (an audit: 12.3 KiB and a goroutine each).
func TestCoverStreamsPerSource(t *testing.T) {
	const max = 8
	r := startRelay(t, &Transport{coverPerSource: max}, nil)
	addr := r.ep.Addr
	front := r.ln.(*listener).front
	held := func(ip string) (int, int) {
		h := transport.SourceHash(front.key[:], net.JoinHostPort(ip, "1"))
		return front.streams.held([16]byte(h[:16]))
	}
	waitHeld := func(ip string, want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // a hang guard
		for n, _ := held(ip); n != want; n, _ = held(ip) {
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %d streams, want %d", ip, n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	a := newStallingClient(t, addr, "127.0.0.1")
	a.get(6)
	if err := a.answers(6); err != nil {
		t.Fatal(err)
	}
	b := newStallingClient(t, addr, "127.0.0.1")
	b.get(2)
	if err := b.answers(2); err != nil {
		t.Fatal(err)
	}
	waitHeld("127.0.0.1", max)
	other := newStallingClient(t, addr, "127.0.0.2") // another source is not held back
	other.get(max)
	if err := other.answers(max); err != nil {
		t.Fatalf("another source: %v", err)
	}

	b.get(1) // one past the cap
	if err := b.answers(1); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a stream past the source's cap: %v, want the connection reset", err)
	}
	if got := r.obs.Get(transport.OutcomeConnLimited); got != 1 {
		t.Fatalf("conn_limited counted %d times, want 1", got)
	}
	waitHeld("127.0.0.1", 6) // the reset connection's two given back

	a.finish(6) // the responses sent: their streams end
	waitHeld("127.0.0.1", 0)
	a.get(max) // the whole cap again, on the connection that was spared
	if err := a.answers(max); err != nil {
		t.Fatalf("after the streams ended: %v", err)
	}
	waitHeld("127.0.0.1", max)
	a.fr.WriteRSTStream(a.next-2, http2.ErrCodeCancel) // a client's reset ends one
	waitHeld("127.0.0.1", max-1)
	a.c.Close() // a closed connection gives back the rest
	waitHeld("127.0.0.1", 0)
	if _, total := held("127.0.0.2"); total != max {
		t.Fatalf("%d streams open in all, want the other source's %d", total, max)
	}
}

// TestCoverStreamsEndWithConnection: a connection the stock server ends
// for a frame error (it sends GOAWAY and closes without reading again)
// gives its streams back. Before, they stayed counted for good: a few
// such connections from an address, and its next HEADERS reset the
// connection (a reviewer's find).
func TestCoverStreamsEndWithConnection(t *testing.T) {
	const max = 8
	r := startRelay(t, &Transport{coverPerSource: max}, nil)
	front := r.ln.(*listener).front
	h := transport.SourceHash(front.key[:], "127.0.0.1:1")
	src := [16]byte(h[:16])
	for _, bad := range []func(*http2.Framer){
		func(fr *http2.Framer) { fr.WriteRawFrame(http2.FramePing, 0, 0, make([]byte, 7)) }, // FRAME_SIZE_ERROR
		func(fr *http2.Framer) { // COMPRESSION_ERROR: an HPACK index past the table
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 99, BlockFragment: []byte{0xff, 0x7f}, EndHeaders: true, EndStream: true})
		},
	} {
		for range 3 { // each would leave 6 of the 8 counted
			a := newStallingClient(t, r.ep.Addr, "127.0.0.1")
			a.get(6)
			if err := a.answers(6); err != nil {
				t.Fatal(err)
			}
			bad(a.fr)
			a.c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang guard
			for {
				if _, err := a.fr.ReadFrame(); err != nil {
					break // the GOAWAY, then the close
				}
			}
			deadline := time.Now().Add(30 * time.Second) // a hang guard
			for n, _ := front.streams.held(src); n != 0; n, _ = front.streams.held(src) {
				if time.Now().After(deadline) {
					t.Fatalf("the connection ended with %d streams still counted", n)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}

// TestFrameScan: frame headers are found in pieces of any size.
func TestFrameScan(t *testing.T) {
	var wire bytes.Buffer
	fr := http2.NewFramer(&wire, nil)
	fr.WriteData(3, false, make([]byte, 1000))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true})
	fr.WriteRSTStream(7, http2.ErrCodeCancel)
	fr.WriteData(9, true, nil)
	fr.WriteData(1<<30+1, true, []byte{1})
	raw := wire.Bytes()
	fr.WriteRSTStream(11, http2.ErrCodeCancel)
	raw = wire.Bytes()
	raw[len(raw)-13+5] |= 0x80 // the reserved bit of the last frame's stream id
	want := "0:0:3 1:5:5 3:0:7 0:1:9 0:1:1073741825 3:0:11 "
	for _, step := range []int{1, 2, 7, 9, 10, 1000, 5000} {
		var s frameScan
		var got string
		b := raw
		for len(b) > 0 {
			k := min(step, len(b))
			s.feed(b[:k], func(typ, flags byte, id uint32) bool {
				got += fmt.Sprintf("%d:%d:%d ", typ, flags, id)
				return true
			})
			b = b[k:]
		}
		if got != want {
			t.Fatalf("pieces of %d: %q, want %q", step, got, want)
		}
	}
}

// BenchmarkStalledCoverStreams: one source opens 8 connections of 250
// stalled cover streams each (the stock server's most), with the cap on a
// source's open streams and without it, and reports what the listener
// holds then: goroutines and heap added, and the streams answered.
//
//	go test ./transport/https -run '^$' -bench StalledCoverStreams -benchtime 1x
func BenchmarkStalledCoverStreams(b *testing.B) {
	for _, tc := range []struct {
		name string
		cap  int
	}{{"cap", 0}, {"no-cap", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				r := startRelay(b, &Transport{coverPerSource: tc.cap}, nil)
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				g0 := runtime.NumGoroutine()
				answered := 0
				for range 8 {
					s := newStallingClient(b, r.ep.Addr, "127.0.0.1")
					s.tryGet(250)
					for s.answers(1) == nil {
						if answered++; answered%250 == 0 {
							break
						}
					}
				}
				time.Sleep(200 * time.Millisecond) // let the listener settle
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(runtime.NumGoroutine()-g0), "goroutines-added")
				b.ReportMetric(float64(int64(after.HeapInuse+after.StackInuse)-int64(before.HeapInuse+before.StackInuse))/(1<<20), "MiB-added")
				b.ReportMetric(float64(answered), "streams-answered")
				r.ln.Close()
			}
		})
	}
}

// FuzzFrameScan: the frame headers found in a byte stream are the same
// however it is cut into pieces, and they are where http2's own Framer
// finds them (as far as it reads frames of a valid size).
func FuzzFrameScan(f *testing.F) {
	var wire bytes.Buffer
	fr := http2.NewFramer(&wire, nil)
	fr.WriteData(3, false, make([]byte, 1000))
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: []byte{0x82}, EndHeaders: true, EndStream: true})
	fr.WriteRSTStream(7, http2.ErrCodeCancel)
	f.Add(wire.Bytes(), uint8(1))
	f.Add(wire.Bytes(), uint8(7))
	f.Add([]byte{0, 0, 1, 0, 1, 0, 0, 0, 1, 'x'}, uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		scan := func(b []byte, step int) []string {
			var s frameScan
			var got []string
			for len(b) > 0 {
				k := min(step, len(b))
				s.feed(b[:k], func(typ, flags byte, id uint32) bool {
					got = append(got, fmt.Sprintf("%d:%d:%d", typ, flags, id))
					return true
				})
				b = b[k:]
			}
			return got
		}
		whole := scan(b, len(b)+1)
		if cut := scan(b, int(step)%16+1); strings.Join(cut, " ") != strings.Join(whole, " ") {
			t.Fatalf("in pieces %v, whole %v", cut, whole)
		}
		var framed []string
		rd := http2.NewFramer(nil, bytes.NewReader(b))
		rd.SetMaxReadFrameSize(1<<24 - 1)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				break
			}
			framed = append(framed, fmt.Sprintf("%d:%d:%d", f.Header().Type, f.Header().Flags, f.Header().StreamID))
		}
		if len(framed) > len(whole) || strings.Join(whole[:len(framed)], " ") != strings.Join(framed, " ") {
			t.Fatalf("scan %v, Framer %v", whole, framed)
		}
	})
}
