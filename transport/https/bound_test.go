package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/internal/token"
)

// A request that is not a session whose body stops coming: net/http
// reads what is left of a body under 256 KiB before it answers, and that
// read had no deadline, so the connection stayed open for good (an audit
// held 200 of 200 such past 3 s with 300 ms timeouts). The relay closes
// it once the bound passes: the read fails there, and so does the writing
// of the answer, whose bound is the same (as with a Go server whose
// ReadTimeout and WriteTimeout are equal).
func TestStalledBodyBounded(t *testing.T) {
	for _, tc := range []struct{ name, head string }{
		{"Content-Length", "Content-Length: 200000\r\n\r\nabc"},
		{"chunked", "Transfer-Encoding: chunked\r\n\r\n5\r\nab"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, &Transport{coverWait: 200 * time.Millisecond}, nil)
			c := tlsDial(t, r.ep.Addr, "http/1.1")
			defer c.Close()
			io.WriteString(c, "POST /x HTTP/1.1\r\nHost: relay.test\r\n"+tc.head)
			c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a deadlock guard
			if b, err := io.ReadAll(c); isTimeout(err) {
				t.Fatalf("the relay still holds the connection after 30 s (read %q)", b)
			}
		})
	}
}

// A client that gives no flow-control credit (SETTINGS_INITIAL_WINDOW_SIZE
// 0) and asks for a page: the response waited for credit for good, its
// stream stayed open and the connection never counted idle (an audit held
// 100 of 100). The relay resets the stream once the bound passes, and the
// idle timeout then closes the connection; with the front (a visitor's
// connection goes to the stock server) and without (behind a CDN).
func TestZeroWindowBounded(t *testing.T) {
	for _, cdn := range []bool{false, true} {
		t.Run(map[bool]string{false: "front", true: "cdn"}[cdn], func(t *testing.T) {
			tr := &Transport{coverWait: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
			r := startRelay(t, tr, func(c *transport.ListenConfig) { c.AllowUnbound = cdn })
			c := tlsDial(t, r.ep.Addr, "h2")
			defer c.Close()
			io.WriteString(c, http2.ClientPreface)
			fr := http2.NewFramer(c, c)
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
			var block bytes.Buffer
			enc := hpack.NewEncoder(&block)
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", "/"}} {
				enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
			c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a deadlock guard
			reset := false
			for {
				f, err := fr.ReadFrame()
				if isTimeout(err) {
					t.Fatalf("the relay still holds the connection after 30 s (stream reset: %v)", reset)
				}
				if err != nil {
					break
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						fr.WriteSettingsAck()
					}
				case *http2.RSTStreamFrame:
					reset = reset || f.StreamID == 1
				}
			}
			if !reset {
				t.Fatal("the connection closed, but the stream was never reset")
			}
		})
	}
}

// A session takes its request over: the bound on the cover's requests
// does not apply to it, on the engine, on the stock HTTP/2 server or over
// HTTP/1.1 (behind a CDN).
func TestSessionsOutliveCoverBound(t *testing.T) {
	const bound = time.Second
	for _, tc := range []struct {
		name string
		tr   *Transport
		cdn  bool
	}{
		{"engine", &Transport{frontWait: 2 * time.Second, coverWait: bound}, false},
		{"stock HTTP/2", &Transport{stockH2: true, coverWait: bound}, false},
		{"HTTP/1.1", &Transport{coverWait: bound}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := startRelay(t, tc.tr, func(c *transport.ListenConfig) { c.AllowUnbound = tc.cdn })
			var c io.ReadWriter
			if tc.cdn {
				c = http1Session(t, r)
			} else {
				dc := dial(t, r.ep)
				defer dc.Close()
				c = dc
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a deadlock guard
			defer cancel()
			sc, err := r.ln.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			time.Sleep(3 * bound)
			if _, err := sc.Write([]byte("late")); err != nil {
				t.Fatalf("the relay's write after the cover's bound: %v", err)
			}
			b := make([]byte, 4)
			if _, err := io.ReadFull(c, b); err != nil || string(b) != "late" {
				t.Fatalf("client read %q, %v", b, err)
			}
			if _, err := c.Write([]byte("back")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(sc, b); err != nil || string(b) != "back" {
				t.Fatalf("the relay's read after the cover's bound: %q, %v", b, err)
			}
		})
	}
}

// http1Session opens a session over HTTP/1.1 with an unbound token, as a
// client behind a CDN does, and returns its two directions.
func http1Session(t *testing.T, r *relay) io.ReadWriter {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}}
	t.Cleanup(tr.CloseIdleConnections)
	tok, _ := token.Make(r.ep.Key, testPath, nil, time.Now())
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	req, _ := http.NewRequest("POST", "https://"+r.ep.Addr+testPath, pr)
	req.Header.Set("Cookie", token.Cookie+"="+tok)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("session: status %d", resp.StatusCode)
	}
	return struct {
		io.Reader
		io.Writer
	}{&recordReader{r: resp.Body}, pw}
}

// TestNoLateResets: streams answered in full over HTTP/2, a hundred at a
// time on one connection, are not reset once the bound on the cover's
// requests passes (a reviewer's test: with the deadlines set through
// http.ResponseController, a message to the connection's loop that could
// come after the stream ended, 10 of 1,000 finished streams were reset,
// RST_STREAM INTERNAL_ERROR, when the bound passed).
func TestNoLateResets(t *testing.T) {
	for _, cdn := range []bool{false, true} {
		t.Run(map[bool]string{false: "front", true: "cdn"}[cdn], func(t *testing.T) {
			// 1 s: each hundred streams take about 20 ms here, and a
			// stream still coming when its bound passes is reset too.
			tr := &Transport{coverWait: time.Second, IdleTimeout: 5 * time.Second}
			r := startRelay(t, tr, func(c *transport.ListenConfig) { c.AllowUnbound = cdn })
			c := tlsDial(t, r.ep.Addr, "h2")
			defer c.Close()
			c.Write([]byte(http2.ClientPreface))
			fr := http2.NewFramer(c, c)
			fr.WriteSettings()
			var block bytes.Buffer
			enc := hpack.NewEncoder(&block)
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "relay.test"}, {":path", "/"}} {
				enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			hdr := block.Bytes()
			done := map[uint32]bool{}
			const n = 1000
			start := time.Now()
			lateRST := map[uint32]time.Duration{}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			const batch = 100
			for b := 0; b < n; b += batch {
				for i := b; i < b+batch; i++ {
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hdr, EndStream: true, EndHeaders: true})
				}
				for len(done) < b+batch {
					f, err := fr.ReadFrame()
					if err != nil {
						t.Fatal(err)
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.DataFrame:
						if len(f.Data()) > 0 {
							fr.WriteWindowUpdate(0, uint32(len(f.Data())))
						}
						if f.StreamEnded() {
							done[f.StreamID] = true
						}
					case *http2.HeadersFrame:
						if f.StreamEnded() {
							done[f.StreamID] = true
						}
					case *http2.RSTStreamFrame:
						t.Fatalf("stream %d reset while in flight: %v", f.StreamID, f.ErrCode)
					}
				}
			}
			t.Logf("%d GETs answered in %v", n, time.Since(start))
			c.SetReadDeadline(time.Now().Add(2500 * time.Millisecond)) // past the bound, within the idle timeout
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					break
				}
				if f, ok := f.(*http2.RSTStreamFrame); ok && done[f.StreamID] {
					lateRST[f.StreamID] = time.Since(start)
					t.Logf("RST_STREAM %v on stream %d, finished long before, at %v", f.ErrCode, f.StreamID, lateRST[f.StreamID])
				}
			}
			if len(lateRST) > 0 {
				t.Errorf("%d of %d finished streams reset later with RST_STREAM", len(lateRST), n)
			}
		})
	}
}
