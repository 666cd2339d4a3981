package https

// TestH2FirstFlightLikeStock proves that the relay listener answers the
// first bytes of an HTTP/2 connection (after a TLS handshake with ALPN h2)
// frame for frame as a stock net/http server configured like it
// (Transport.NewHTTPServer, same certificate, same cover site) answers
// them: the same frames, HPACK-decoded headers (date aside), DATA lengths
// and ending (close, reset, or still open at a deadline). Each case is an
// adversarial client first flight; whatever is not a valid session
// request must not tell the relay from the stock server. Where stock
// net/http itself varies from run to run, ffCanon folds the variants.
//
// POSTERN_SLOW_PROBES=1 (without -short) adds cases that wait out the
// 10 s preface timeout and the 5 s idle timeout.

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/internal/token"
)

// ffStep is one action of a scripted client: a write, a pause (reading
// goes on meanwhile), or waiting for the server's first frame.
type ffStep struct {
	send  []byte
	pause time.Duration
	await bool
}

type ffCase struct {
	name     string
	deadline time.Duration // reading stops this long after the handshake
	slow     bool          // only with POSTERN_SLOW_PROBES=1
	script   func(f *ffFlight)
}

// ffFlight records the script of one connection. Frames accumulate
// until a pause or await (or the end) and then leave in one write. One
// HPACK encoder per connection keeps its table in step with the server's.
type ffFlight struct {
	c     *tls.Conn
	steps []ffStep
	buf   bytes.Buffer // the write being built
	hb    bytes.Buffer // HPACK output
	fr    *http2.Framer
	enc   *hpack.Encoder
	err   error
}

func newFlight(c *tls.Conn) *ffFlight {
	f := &ffFlight{c: c}
	f.fr = http2.NewFramer(&f.buf, nil)
	f.fr.AllowIllegalWrites = true
	f.enc = hpack.NewEncoder(&f.hb)
	return f
}

// then ends the write being built; s (a pause or an await) comes next.
func (f *ffFlight) then(s ffStep) *ffFlight {
	if f.buf.Len() > 0 {
		f.steps = append(f.steps, ffStep{send: bytes.Clone(f.buf.Bytes())})
		f.buf.Reset()
	}
	f.steps = append(f.steps, s)
	return f
}

func (f *ffFlight) pause(d time.Duration) *ffFlight { return f.then(ffStep{pause: d}) }

// await waits for the server's first frame (its SETTINGS).
func (f *ffFlight) await() *ffFlight { return f.then(ffStep{await: true}) }

func (f *ffFlight) raw(s string) *ffFlight { f.buf.WriteString(s); return f }

func (f *ffFlight) preface() *ffFlight { return f.raw(http2.ClientPreface) }

func (f *ffFlight) settings(s ...http2.Setting) *ffFlight { f.fr.WriteSettings(s...); return f }

// browser writes a browser's first flight: preface, SETTINGS (Chromium's
// values) and a connection WINDOW_UPDATE.
func (f *ffFlight) browser() *ffFlight {
	f.preface().settings(
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: 65536},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 6291456},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 262144})
	f.fr.WriteWindowUpdate(0, 15663105)
	return f
}

// block HPACK-encodes a request; a POST declares its body's length, and a
// non-empty cookie is sent as the session cookie.
func (f *ffFlight) block(method, path, cookie string, bodyLen int) []byte {
	f.hb.Reset()
	kv := []string{":method", method, ":scheme", "https", ":authority", "relay.test", ":path", path, "user-agent", "probe/1"}
	if cookie != "" {
		kv = append(kv, "cookie", token.Cookie+"="+cookie)
	}
	if method == "POST" {
		kv = append(kv, "content-length", fmt.Sprint(bodyLen))
	}
	for i := 0; i < len(kv); i += 2 {
		f.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(f.hb.Bytes())
}

// amplifiedBlock is a header block of under 16 KB that decodes to about
// 50 MB of fields: a request whose one literal puts a 4,000-byte name in
// the dynamic table, then a one-byte reference to it (index 62, the newest
// entry) repeated to fill the block.
func amplifiedBlock() []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	enc.WriteField(hpack.HeaderField{Name: strings.Repeat("x", 4000)})
	for b.Len() < 16000 {
		b.WriteByte(0x80 | 62)
	}
	return b.Bytes()
}

// request writes HEADERS on stream 1 and, for a body, one DATA frame
// that ends the stream.
func (f *ffFlight) request(method, path, cookie, body string) *ffFlight {
	b := f.block(method, path, cookie, len(body))
	f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b, EndStream: body == "", EndHeaders: true})
	if body != "" {
		f.fr.WriteData(1, true, []byte(body))
	}
	return f
}

// forged returns a fresh, well-formed token bound to this connection but
// made under another key.
func (f *ffFlight) forged() string {
	cs := f.c.ConnectionState()
	binding, err := cs.ExportKeyingMaterial(token.ExporterLabel, nil, token.ExporterLen)
	key := make([]byte, transport.KeySize)
	rand.Read(key)
	tok, err2 := token.Make(key, testPath, binding, time.Now())
	f.err = errors.Join(f.err, err, err2)
	return tok
}

func ffCases() []ffCase {
	// Cases the server answers and then waits on are read for 3 s (well
	// short of the 5 s idle timeout); those it closes, until it does.
	const wait = 3 * time.Second
	set := func(id http2.SettingID, v uint32) func(f *ffFlight) {
		return func(f *ffFlight) { f.preface().settings(http2.Setting{ID: id, Val: v}) }
	}
	post := func(cookie string) func(f *ffFlight) {
		return func(f *ffFlight) { f.browser().request("POST", testPath, cookie, "hello") }
	}
	bogus := "GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n"
	return []ffCase{
		{"handshake then nothing", wait, false, func(*ffFlight) {}},
		{"bogus preface (HTTP/1.1 over h2)", wait, false, func(f *ffFlight) { f.raw(bogus) }},
		{"bogus preface after server SETTINGS", wait, false, func(f *ffFlight) { f.await().raw(bogus) }},
		{"preface only, then silence (2 s SETTINGS timeout)", wait, false, func(f *ffFlight) { f.preface().pause(2500 * time.Millisecond) }},
		{"preface split across two writes", wait, false, func(f *ffFlight) {
			f.raw(http2.ClientPreface[:10]).pause(300 * time.Millisecond).raw(http2.ClientPreface[10:]).settings()
		}},
		{"preface + SETTINGS, wait for ACK", wait, false, set(http2.SettingMaxConcurrentStreams, 100)},
		{"SETTINGS ENABLE_PUSH=2", wait, false, set(http2.SettingEnablePush, 2)},
		{"SETTINGS INITIAL_WINDOW_SIZE=2^31", wait, false, set(http2.SettingInitialWindowSize, 1<<31)},
		{"SETTINGS MAX_FRAME_SIZE=100", wait, false, set(http2.SettingMaxFrameSize, 100)},
		{"SETTINGS + PING", wait, false, func(f *ffFlight) {
			f.preface().settings().fr.WritePing(false, [8]byte{'p', 'r', 'o', 'b', 'e', '!', '!', '!'})
		}},
		{"SETTINGS + WINDOW_UPDATE 0 on stream 0", wait, false, func(f *ffFlight) { f.preface().settings().fr.WriteWindowUpdate(0, 0) }},
		{"HEADERS without SETTINGS first", wait, false, func(f *ffFlight) { f.preface().request("GET", "/", "", "") }},
		{"GET /", wait, false, func(f *ffFlight) { f.browser().request("GET", "/", "", "") }},
		{"GET / after server SETTINGS", wait, false, func(f *ffFlight) { f.await().browser().request("GET", "/", "", "") }},
		{"POST session path, no cookie", wait, false, post("")},
		{"POST session path, garbage sid", wait, false, post("not-a-token!")},
		{"POST session path, forged token", wait, false, func(f *ffFlight) { post(f.forged())(f) }},
		{"GET / in HEADERS + CONTINUATION", wait, false, func(f *ffFlight) {
			b := f.browser().block("GET", "/", "", 0)
			f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:len(b)/2], EndStream: true})
			f.fr.WriteContinuation(1, true, b[len(b)/2:])
		}},
		{"HEADERS expanding past the header list limit", wait, false, func(f *ffFlight) {
			f.browser().fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: amplifiedBlock(), EndStream: true, EndHeaders: true})
		}},
		{"DATA on stream 1 before HEADERS", wait, false, func(f *ffFlight) { f.browser().fr.WriteData(1, true, []byte("hello")) }},
		{"WINDOW_UPDATE before SETTINGS, then SETTINGS", wait, false, func(f *ffFlight) {
			f.preface().fr.WriteWindowUpdate(0, 1)
			f.settings()
		}},
		{"SETTINGS ACK first, then SETTINGS and GET /", wait, false, func(f *ffFlight) {
			f.preface().fr.WriteSettingsAck()
			f.settings().request("GET", "/", "", "")
		}},
		{"SETTINGS with 40 unknown entries, then GET /", wait, false, func(f *ffFlight) {
			var many []http2.Setting
			for i := range 40 {
				many = append(many, http2.Setting{ID: http2.SettingID(0x1a1a + i), Val: uint32(i)})
			}
			f.preface().settings(many...).request("GET", "/", "", "")
		}},
		{"two SETTINGS, then GET /", wait, false, func(f *ffFlight) {
			f.browser().settings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10}).request("GET", "/", "", "")
		}},
		{"GET / dribbled a byte every 2 ms", wait, false, func(f *ffFlight) {
			f.browser().pause(0)
			var b bytes.Buffer
			http2.NewFramer(&b, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1,
				BlockFragment: f.block("GET", "/", "", 0), EndStream: true, EndHeaders: true})
			for _, c := range b.Bytes() {
				f.raw(string([]byte{c})).pause(2 * time.Millisecond)
			}
		}},
		{"slow client: POST session path 300 ms after SETTINGS", wait, false, func(f *ffFlight) {
			f.browser().pause(300*time.Millisecond).request("POST", testPath, f.forged(), "hello")
		}},
		// Slow: net/http's timers waited out in full.
		{"silent client: 10 s preface timeout", 12 * time.Second, true, func(*ffFlight) {}},
		{"partial preface: 10 s preface timeout", 12 * time.Second, true, func(f *ffFlight) { f.raw(http2.ClientPreface[:10]) }},
		{"preface at 9 s, then no SETTINGS: 2 s more", 13 * time.Second, true, func(f *ffFlight) { f.pause(9 * time.Second).preface() }},
		{"SETTINGS then idle: 5 s idle timeout", 8 * time.Second, true, func(f *ffFlight) { f.browser() }},
	}
}

func ffEnd(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "END still open at deadline"
	case errors.Is(err, io.EOF):
		return "END closed (EOF)"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "END closed mid-frame"
	case errors.Is(err, syscall.ECONNRESET):
		return "END reset"
	}
	return "END error: " + err.Error()
}

// ffRead reads frames until the connection ends or the read deadline
// passes, and returns the transcript: one line per frame (DATA summed
// per stream, at its first frame) and a last line for the ending. first
// is closed at the first frame.
func ffRead(c net.Conn, first chan<- struct{}) []string {
	fr := http2.NewFramer(nil, c)
	var lines, fields []string
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == "date" {
			f.Value = "<date>"
		}
		fields = append(fields, f.Name+": "+f.Value)
	})
	data := map[uint32][2]int{} // stream: line, total
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return append(lines, ffEnd(err))
		}
		if len(lines) == 0 {
			close(first)
		}
		h := f.Header()
		line := fmt.Sprintf("%v stream=%d", h.Type, h.StreamID)
		if _, fl, ok := strings.Cut(h.String(), " flags="); ok {
			line += " " + strings.Fields(fl)[0] // named as in RFC 9113: ACK, END_STREAM|END_HEADERS
		}
		var frag []byte
		switch f := f.(type) {
		case *http2.DataFrame:
			d, ok := data[h.StreamID]
			if !ok {
				d[0] = len(lines)
				lines = append(lines, "")
			}
			d[1] += len(f.Data())
			data[h.StreamID] = d
			lines[d[0]] = fmt.Sprintf("DATA stream=%d total=%d", h.StreamID, d[1])
			if f.StreamEnded() {
				lines[d[0]] += " END_STREAM"
			}
			continue
		case *http2.HeadersFrame:
			frag = f.HeaderBlockFragment()
		case *http2.ContinuationFrame:
			frag = f.HeaderBlockFragment()
		case *http2.SettingsFrame:
			f.ForeachSetting(func(s http2.Setting) error { line += " " + s.String(); return nil })
		case *http2.WindowUpdateFrame:
			line += fmt.Sprintf(" +%d", f.Increment)
		case *http2.PingFrame:
			line += fmt.Sprintf(" %q", f.Data[:])
		case *http2.GoAwayFrame:
			line += fmt.Sprintf(" last=%d %v debug=%q", f.LastStreamID, f.ErrCode, f.DebugData())
		case *http2.RSTStreamFrame:
			line += " " + f.ErrCode.String()
		default:
			line += fmt.Sprintf(" len=%d", h.Length)
		}
		if _, err := dec.Write(frag); err != nil {
			fields = append(fields, "HPACK ERROR "+err.Error())
		}
		if (h.Type == http2.FrameHeaders || h.Type == http2.FrameContinuation) && h.Flags.Has(http2.FlagHeadersEndHeaders) {
			if err := dec.Close(); err != nil {
				fields = append(fields, "HPACK ERROR "+err.Error())
			}
			line += " {" + strings.Join(fields, ", ") + "}"
			fields = nil
		}
		lines = append(lines, line)
	}
}

// ffCanon folds what stock net/http does differently from run to run:
//   - its connection WINDOW_UPDATE waits behind the async write of its
//     SETTINGS; a SETTINGS ACK or GOAWAY may overtake it, and a GOAWAY
//     with an error code drops it: it is moved next to the SETTINGS, or
//     dropped when such a GOAWAY is sent;
//   - a SETTINGS ACK due while a write is in flight leaves after a GOAWAY
//     due too: it is moved before the GOAWAY;
//   - a SETTINGS read while the ACK of an earlier one is still due shares
//     that ACK (the server keeps one flag, needToSendSettingsAck): ACKs in
//     a row count as one. Two SETTINGS at once got one ACK in 98 of 100
//     runs from stock and 98–99 of 100 from the relay (2026-12-04);
//   - a handler done before the request's END_STREAM is processed adds
//     RST_STREAM NO_ERROR, then STREAM_CLOSED for the DATA: after the
//     server ended a stream, these are dropped;
//   - a connection closed at once (bogus preface) may close before its
//     SETTINGS leave: a lone SETTINGS before a close is dropped.
func ffCanon(lines []string) []string {
	goAwayErr, ended, wu := false, map[string]bool{}, ""
	for _, l := range lines {
		w := strings.Fields(l)
		goAwayErr = goAwayErr || w[0] == "GOAWAY" && w[3] != "NO_ERROR"
		ended[w[1]] = ended[w[1]] || (w[0] == "DATA" || w[0] == "HEADERS") && strings.Contains(strings.Split(l, "{")[0], "END_STREAM")
	}
	var out []string
	for _, l := range lines {
		w := strings.Fields(l)
		switch {
		case wu == "" && w[0] == "WINDOW_UPDATE" && w[1] == "stream=0" && strings.HasPrefix(lines[0], "SETTINGS stream=0 ["):
			if wu = l; !goAwayErr {
				out = slices.Insert(out, 1, l)
			}
		case w[0] == "RST_STREAM" && ended[w[1]] && (w[2] == "NO_ERROR" || w[2] == "STREAM_CLOSED"):
		case l == "SETTINGS stream=0 ACK" && len(out) > 0 && strings.HasPrefix(out[len(out)-1], "GOAWAY"):
			out = slices.Insert(out, len(out)-1, l)
		case l == "SETTINGS stream=0 ACK" && len(out) > 0 && out[len(out)-1] == l:
		default:
			out = append(out, l)
		}
	}
	if len(out) == 2 && strings.HasPrefix(out[0], "SETTINGS stream=0 [") && strings.HasPrefix(out[1], "END closed") {
		out = out[1:]
	}
	return out
}

// ffRun plays c against addr and returns the transcript, or one line
// starting with ERROR.
func ffRun(addr string, c ffCase) []string {
	fail := func(err error) []string { return []string{"ERROR " + err.Error()} }
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"h2"}})
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		return fail(fmt.Errorf("ALPN %q, want h2", p))
	}
	f := newFlight(conn)
	if c.script(f); f.err != nil {
		return fail(f.err)
	}
	f.then(ffStep{})
	deadline := time.Now().Add(c.deadline)
	conn.SetDeadline(deadline)
	first, stop, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range f.steps {
			if s.await {
				select {
				case <-first:
				case <-stop:
					return
				}
			}
			select {
			case <-time.After(min(s.pause, time.Until(deadline))):
			case <-stop:
				return
			}
			if len(s.send) > 0 {
				if _, err := conn.Write(s.send); err != nil {
					return // the server hung up: what it sent is still read
				}
			}
		}
	}()
	lines := ffRead(conn, first)
	close(stop)
	<-done
	return lines
}

// ffDiff shows two transcripts' common head and tail once, and between
// them the reference's lines ("-") and the relay's ("+").
func ffDiff(want, got []string) string {
	i, j := 0, 0
	for i < min(len(want), len(got)) && want[i] == got[i] {
		i++
	}
	for j < min(len(want), len(got))-i && want[len(want)-1-j] == got[len(got)-1-j] {
		j++
	}
	var b strings.Builder
	show := func(mark string, lines []string) {
		for _, l := range lines {
			b.WriteString(mark + l + "\n")
		}
	}
	show("  ", want[:i])
	show("- ", want[i:len(want)-j])
	show("+ ", got[i:len(got)-j])
	show("  ", want[len(want)-j:])
	return b.String()
}

// startStockH2 starts a stock net/http HTTPS server made by
// probeTransport.NewHTTPServer, serving the default cover site.
func startStockH2(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := probeTransport.NewHTTPServer(cover.Default())
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert(t)}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestH2FirstFlightLikeStock(t *testing.T) {
	ref := startStockH2(t)
	r := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default() })
	slow := !testing.Short() && os.Getenv("POSTERN_SLOW_PROBES") == "1"
	// Every case runs at once, whatever -parallel: most wait out a deadline.
	cases := ffCases()
	results := make([]chan [2][]string, len(cases)) // relay, reference
	for i, c := range cases {
		results[i] = make(chan [2][]string, 1)
		if !c.slow || slow {
			go func() {
				var res [2][]string
				var wg sync.WaitGroup
				wg.Go(func() { res[0] = ffRun(r.ep.Addr, c) })
				wg.Go(func() { res[1] = ffRun(ref, c) })
				wg.Wait()
				results[i] <- res
			}()
		}
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.slow && !slow {
				t.Skip("waits out a server timeout: set POSTERN_SLOW_PROBES=1 (without -short)")
			}
			res := <-results[i]
			got, want := res[0], res[1]
			if strings.HasPrefix(got[0], "ERROR") || strings.HasPrefix(want[0], "ERROR") {
				t.Fatalf("relay: %s; reference: %s", got[0], want[0])
			}
			t.Logf("reference:\n  %s", strings.Join(want, "\n  "))
			if cg, cw := ffCanon(got), ffCanon(want); !slices.Equal(cg, cw) {
				t.Errorf("relay differs from stock net/http (normalised; - reference, + relay):\n%s\nrelay as read:\n  %s",
					ffDiff(cw, cg), strings.Join(got, "\n  "))
			}
		})
	}
}

// TestH2RefusedTLSLikeStock: a TLS 1.2 connection with a cipher suite
// HTTP/2 forbids (CBC) gets the stock server's GOAWAY
// INADEQUATE_SECURITY at once, before any SETTINGS, from the relay too.
func TestH2RefusedTLSLikeStock(t *testing.T) {
	ref := startStockH2(t)
	r := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default() })
	run := func(addr string) []string {
		cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"h2"},
			MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if cs := c.ConnectionState(); cs.NegotiatedProtocol != "h2" || cs.Version != tls.VersionTLS12 {
			t.Fatalf("negotiated %q over %x", cs.NegotiatedProtocol, cs.Version)
		}
		io.WriteString(c, http2.ClientPreface)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		return ffRead(c, make(chan struct{}))
	}
	got, want := run(r.ep.Addr), run(ref)
	if !slices.Equal(got, want) || !strings.Contains(strings.Join(want, " "), "INADEQUATE_SECURITY") {
		t.Errorf("relay differs from stock net/http (- reference, + relay):\n%s", ffDiff(want, got))
	}
}

// TestH2BadFrameAtOnceOrder: a first frame the front does not take, sent
// at once with the preface (or right behind the SETTINGS), goes to the
// stock server with nothing more of the front's written: the stock server
// then queues its connection WINDOW_UPDATE behind its SETTINGS flush and
// mostly answers the bad frame first, a GOAWAY that drops it (in 0-8% of
// runs it does not). The front wrote the WINDOW_UPDATE every time, which
// a dozen probes told apart (ffCanon folds that frame away, so
// TestH2FirstFlightLikeStock cannot see it). Each case must not carry it
// in all of 8 runs, as it did.
func TestH2BadFrameAtOnceOrder(t *testing.T) {
	if raceEnabled {
		// The stock server's own race is the measure, and the race
		// detector's instrumentation shifts it (it sent the frame in 8 of
		// 8 runs of one case once). .ci/run runs this test without it.
		t.Skip("goroutine timing under -race")
	}
	r := startRelay(t, probeTransport, func(c *transport.ListenConfig) { c.Cover = cover.Default() })
	for _, c := range []ffCase{
		{"preface + PING at once", 3 * time.Second, false, func(f *ffFlight) { f.preface().fr.WritePing(false, [8]byte{}) }},
		{"preface + DATA at once", 3 * time.Second, false, func(f *ffFlight) { f.preface().fr.WriteData(1, true, []byte("x")) }},
		{"preface + SETTINGS + WINDOW_UPDATE 0 at once", 3 * time.Second, false, func(f *ffFlight) { f.preface().settings().fr.WriteWindowUpdate(0, 0) }},
		{"preface + SETTINGS + DATA at once", 3 * time.Second, false, func(f *ffFlight) { f.preface().settings().fr.WriteData(1, true, []byte("x")) }},
	} {
		k := 0
		for range 8 {
			if strings.Contains(strings.Join(ffRun(r.ep.Addr, c), " | "), "WINDOW_UPDATE") {
				k++
			}
		}
		if k == 8 {
			t.Errorf("%s: the relay sent its WINDOW_UPDATE before the GOAWAY in 8 of 8 runs", c.name)
		}
	}
}
