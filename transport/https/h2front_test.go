package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
	"github.com/postern/postern/transport/transporttest"
)

// frontOf returns the relay listener's HTTP/2 front.
func frontOf(t *testing.T, r *relay) *h2Front {
	t.Helper()
	l, ok := r.ln.(*listener)
	if !ok || l.front == nil {
		t.Fatal("listener has no HTTP/2 front")
	}
	return l.front
}

// engineTransport waits long for a client's first flight, so that a
// loaded test machine does not send sessions the stock way.
func engineTransport() *Transport { return &Transport{frontWait: 2 * time.Second} }

// A session from Postern's client goes to the engine, and the connections
// of the cover site's visitors go to the stock server.
func TestFrontRoutesSessionsToEngine(t *testing.T) {
	r := startRelay(t, engineTransport(), nil)
	serveEcho(r.ln)
	f := frontOf(t, r)
	const sessions = 5
	for range sessions {
		c := dial(t, r.ep)
		transporttest.EchoRoundTrip(t, c, []byte("engine"))
		c.Close()
	}
	if f.engine.Load() != sessions || f.handed.Load() != 0 {
		t.Fatalf("%d of %d sessions on the engine, %d handed to the stock server", f.engine.Load(), sessions, f.handed.Load())
	}
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	before := f.handed.Load()
	getPage(t, cc)
	if f.handed.Load() != before+1 {
		t.Fatalf("page request: handed %d → %d", before, f.handed.Load())
	}
}

// A connection that begins with a session carries that session alone:
// another request on it is refused (REFUSED_STREAM), never served and
// never a second session. Only the holder of the connection's TLS keys,
// who proved the token, can send one.
func TestEngineRefusesOtherStreams(t *testing.T) {
	r := startRelay(t, engineTransport(), nil)
	serveEcho(r.ln)
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	resp, pw := engineSession(t, r, tc, cc)
	for _, second := range []*http.Request{
		mustRequest(t, "GET", "https://relay.test/"),
		mustRequest(t, "POST", "https://relay.test"+testPath),
	} {
		second.Header.Set("Cookie", token.Cookie+"="+boundToken(t, r.ep.Key, tc, time.Now()))
		res, err := cc.RoundTrip(second)
		if err == nil {
			res.Body.Close()
			t.Fatalf("%s on the session's connection: status %d, want REFUSED_STREAM", second.Method, res.StatusCode)
		}
		var se http2.StreamError
		if !errors.As(err, &se) || se.Code != http2.ErrCodeRefusedStream {
			t.Fatalf("%s on the session's connection: %v, want REFUSED_STREAM", second.Method, err)
		}
	}
	if n := r.obs.Get(transport.OutcomeOK); n != 1 {
		t.Errorf("%d sessions reported, want 1", n)
	}
	// The session itself still works.
	pw.Write([]byte{0x42})
	var b [1]byte
	if _, err := io.ReadFull(&recordReader{r: resp.Body}, b[:]); err != nil || b[0] != 0x42 {
		t.Fatalf("session after refused streams: %v", err)
	}
}

// A valid session the listener has no room for goes to the stock server,
// which serves the cover site and reports it busy (not a replay, though
// the front spent the token).
func TestEngineBusyGoesToCover(t *testing.T) {
	tr := engineTransport()
	tr.MaxSessions = 1
	r := startRelay(t, tr, nil)
	f := frontOf(t, r)
	serveEcho(r.ln)
	c := dial(t, r.ep)
	defer c.Close()
	transporttest.EchoRoundTrip(t, c, []byte("holds the only slot"))
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	if got := post(t, cc, boundToken(t, r.ep.Key, tc, time.Now())); got != http.StatusNotFound {
		t.Fatalf("session beyond the cap: status %d, want the cover's 404", got)
	}
	if busy, replay := r.obs.Get(transport.OutcomeBusy), r.obs.Get(transport.OutcomeReplay); busy != 1 || replay != 0 {
		t.Errorf("reported busy %d, replay %d; want 1 and 0", busy, replay)
	}
	if n := f.declined.Load(); n != 1 {
		t.Errorf("the front saw %d session requests declined by the gate, want 1", n)
	}
}

// Behind a CDN (unbound tokens allowed) one HTTP/2 connection carries
// many users' requests: the listener has no front, every connection is
// the stock server's.
func TestNoFrontWithUnboundTokens(t *testing.T) {
	r := startRelay(t, &Transport{}, func(c *transport.ListenConfig) { c.AllowUnbound = true })
	if l := r.ln.(*listener); l.front != nil {
		t.Fatal("a listener that takes unbound tokens has an HTTP/2 front")
	}
	serveEcho(r.ln)
	c := dial(t, r.ep)
	defer c.Close()
	transporttest.EchoRoundTrip(t, c, []byte("stock"))
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// engineSession opens a session on cc, a plain HTTP/2 client on tc, and
// checks that the relay's engine serves it. The session's upload is pw.
func engineSession(t *testing.T, r *relay, tc *tls.Conn, cc *http2.ClientConn) (*http.Response, *io.PipeWriter) {
	t.Helper()
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, _ := http.NewRequest("POST", "https://relay.test"+testPath, pr)
	req.Header.Set("Cookie", token.Cookie+"="+boundToken(t, r.ep.Key, tc, time.Now()))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if f := frontOf(t, r); resp.StatusCode != http.StatusOK || f.engine.Load() != 1 {
		t.Fatalf("session: status %d, %d on the engine", resp.StatusCode, f.engine.Load())
	}
	return resp, pw
}

// What a session keeps of its request's header block holds no reference
// to the first flight's read buffer (4 KiB), which would otherwise live
// as long as the connection (hpack's Decoder, built from that block if
// another header block comes, keeps a slice of the last block it
// decoded).
func TestDecodedRequestFreesFirstFlight(t *testing.T) {
	f := frontOf(t, startRelay(t, engineTransport(), nil))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, hf := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", testPath}} {
		enc.WriteField(hpack.HeaderField{Name: hf[0], Value: hf[1]})
	}
	buf := make([]byte, 4096) // as firstFlight.fill allocates
	n := copy(buf, block.Bytes())
	freed := make(chan struct{})
	runtime.AddCleanup(&buf[0], func(ch chan struct{}) { close(ch) }, freed)
	req, first, ok := f.decodeRequest(buf[:n], flagEndHeaders, 1)
	if !ok || len(req.fields) != 4 {
		t.Fatalf("decodeRequest: ok %v, %d fields", ok, len(req.fields))
	}
	buf = nil
	for i := 0; ; i++ {
		runtime.GC()
		select {
		case <-freed:
			runtime.KeepAlive(first)
			return
		case <-time.After(10 * time.Millisecond):
		}
		if i == 100 {
			runtime.KeepAlive(first)
			t.Fatal("the first flight's buffer is still reachable while the session's copy of its header block lives")
		}
	}
}

// The first request's header block is bounded as the stock server bounds
// it: by the decoded size of its fields, counted while decoding. A block
// of references to one large table entry is refused without expanding it
// (it decoded to 50 MB of fields, about 100 MB allocated, before), and a
// list just under the limit still decodes.
func TestFrontHeaderListBounded(t *testing.T) {
	f := testFront(t)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	_, _, ok := f.decodeRequest(amplifiedBlock(), flagEndHeaders, 1)
	runtime.ReadMemStats(&m1)
	if ok {
		t.Fatal("a header block decoding to 50 MB was taken")
	}
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 4<<20 {
		t.Fatalf("decoding a 16 KB header block allocated %d KB", got>>10)
	}
	limit := int(f.stock.maxHeaderList)
	for _, tc := range []struct {
		size int
		ok   bool
	}{{limit, true}, {limit + 1, false}} {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		fields := []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/"}}
		used := 0
		for _, hf := range fields {
			used += int(hf.Size())
		}
		fields = append(fields, hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("p", tc.size-used-32-len("x-pad"))})
		for _, hf := range fields {
			enc.WriteField(hf)
		}
		req, _, ok := f.decodeRequest(b.Bytes(), flagEndHeaders, 1)
		if ok != tc.ok || (ok && len(req.fields) != len(fields)) {
			t.Fatalf("a list of %d bytes (limit %d): ok %v with %d fields, want %v", tc.size, limit, ok, len(req.fields), tc.ok)
		}
	}
}

// BenchmarkFrontAmplifiedHeaders: what one HEADERS frame of references to
// a large table entry (amplifiedBlock) costs the front, beside what the
// stock server's framer (x/net/http2 with its header list limit) spends on
// the same frame, in the same run.
//
//	go test ./transport/https -run '^$' -bench FrontAmplifiedHeaders -benchmem
func BenchmarkFrontAmplifiedHeaders(b *testing.B) {
	block := amplifiedBlock()
	b.Run("front", func(b *testing.B) {
		f := testFront(b)
		for b.Loop() {
			if req, _, ok := f.decodeRequest(block, flagEndHeaders, 1); ok {
				f.request(context.Background(), tls.ConnectionState{}, "", req)
			}
		}
	})
	b.Run("stock-framer", func(b *testing.B) {
		var frame bytes.Buffer
		http2.NewFramer(&frame, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		limit := uint32(testFront(b).stock.maxHeaderList)
		for b.Loop() {
			fr := http2.NewFramer(io.Discard, bytes.NewReader(frame.Bytes()))
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			fr.MaxHeaderListSize = limit
			if _, err := fr.ReadFrame(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A session's client whose WINDOW_UPDATEs (or a SETTINGS change of the
// initial window) take the session stream's send window past 2^31-1
// commits a FLOW_CONTROL_ERROR: the session ends with a GOAWAY of that
// code, where the engine used to cap the window and go on.
func TestEngineStreamWindowOverflow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(fr *http2.Framer)
	}{
		{"WINDOW_UPDATE", func(fr *http2.Framer) { fr.WriteWindowUpdate(1, 1<<31-1) }},
		{"SETTINGS", func(fr *http2.Framer) {
			fr.WriteWindowUpdate(1, 1<<31-1-65535)
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, engineTransport(), nil)
			serveEcho(r.ln)
			c := tlsDial(t, r.ep.Addr, "h2")
			defer c.Close()
			rawSession(t, r, c, nil)
			var out bytes.Buffer
			tc.write(http2.NewFramer(&out, nil))
			if _, err := c.Write(out.Bytes()); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a deadlock guard
			rd := http2.NewFramer(nil, c)
			for {
				f, err := rd.ReadFrame()
				if err != nil {
					t.Fatalf("no GOAWAY before %v", err)
				}
				if g, ok := f.(*http2.GoAwayFrame); ok {
					if g.ErrCode != http2.ErrCodeFlowControl {
						t.Fatalf("GOAWAY %v, want FLOW_CONTROL_ERROR", g.ErrCode)
					}
					return
				}
			}
		})
	}
}
