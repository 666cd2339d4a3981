package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
)

// chromiumConn is one connection of testdata/chromium-156-h2.json.
type chromiumConn struct {
	Role        string   `json:"role"`
	ClientHello string   `json:"client_hello"`
	Records     []string `json:"records"`
	H2          string   `json:"h2"`
}

// chromiumCapture returns the captured connection of role.
func chromiumCapture(t *testing.T, role string) chromiumConn {
	t.Helper()
	b, err := os.ReadFile("testdata/chromium-156-h2.json")
	if err != nil {
		t.Fatal(err)
	}
	var c struct{ Connections []chromiumConn }
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	for _, conn := range c.Connections {
		if conn.Role == role {
			return conn
		}
	}
	t.Fatalf("no %q connection in the capture", role)
	return chromiumConn{}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// appRecords returns the lengths of the client's application-data
// records (type 23) from "type:length" entries.
func appRecords(t *testing.T, recs []string) []int {
	t.Helper()
	var out []int
	for _, r := range recs {
		typ, n, _ := strings.Cut(r, ":")
		l, err := strconv.Atoi(n)
		if err != nil {
			t.Fatalf("record %q", r)
		}
		if typ == "23" {
			out = append(out, l)
		}
	}
	return out
}

// recordList lists the TLS records in raw as "type:length".
func recordList(raw []byte) []string {
	var out []string
	for len(raw) >= 5 {
		n := int(raw[3])<<8 | int(raw[4])
		if len(raw) < 5+n {
			break
		}
		out = append(out, strconv.Itoa(int(raw[0]))+":"+strconv.Itoa(n))
		raw = raw[5+n:]
	}
	return out
}

// h2Start is the decoded beginning of a client's HTTP/2 connection.
type h2Start struct {
	settings []http2.Setting
	window   uint32
	headers  *http2.HeadersFrame
	block    []byte
	fields   []hpack.HeaderField
}

// decodeStart decodes the preface, SETTINGS, WINDOW_UPDATE and the first
// HEADERS frame (any other frame in between, such as a SETTINGS ACK, is
// skipped).
func decodeStart(t *testing.T, b []byte) h2Start {
	t.Helper()
	if !bytes.HasPrefix(b, []byte(http2.ClientPreface)) {
		t.Fatalf("no preface in %x", b[:min(len(b), 24)])
	}
	fr := http2.NewFramer(nil, bytes.NewReader(b[len(http2.ClientPreface):]))
	var s h2Start
	for s.headers == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("decode frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if s.settings == nil && !f.IsAck() {
				f.ForeachSetting(func(st http2.Setting) error { s.settings = append(s.settings, st); return nil })
			}
		case *http2.WindowUpdateFrame:
			if s.window == 0 && f.StreamID == 0 {
				s.window = f.Increment
			}
		case *http2.HeadersFrame:
			s.headers = f
			s.block = bytes.Clone(f.HeaderBlockFragment())
		}
	}
	fields, err := hpack.NewDecoder(65536, nil).DecodeFull(s.block)
	if err != nil {
		t.Fatalf("HPACK: %v", err)
	}
	s.fields = fields
	return s
}

// recordedConn is what a recording server saw of one client connection.
type recordedConn struct {
	raw, plain *teeConn
}

// teeConn keeps a copy of everything read from its Conn.
type teeConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *teeConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

// plainConn is the plaintext side of a server TLS connection, recorded,
// with the TLS state for the HTTP/2 server.
type plainConn struct {
	*teeConn
	tc *tls.Conn
}

func (p plainConn) ConnectionState() tls.ConnectionState { return p.tc.ConnectionState() }

// startRecorder starts a TLS server on 127.0.0.1 (the shared test
// certificate, ALPN h2) that answers every HTTP/2 request 404 and sends
// each connection, once its first request arrived, on the channel.
func startRecorder(t *testing.T) (string, <-chan *recordedConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert(t)}, NextProtos: []string{"h2"}}
	out := make(chan *recordedConn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				raw := &teeConn{Conn: c}
				tc := tls.Server(raw, cfg)
				if tc.HandshakeContext(context.Background()) != nil {
					return
				}
				rc := &recordedConn{raw: raw, plain: &teeConn{Conn: tc}}
				var once sync.Once
				h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					once.Do(func() { out <- rc })
					w.WriteHeader(http.StatusNotFound)
				})
				(&http2.Server{}).ServeConn(plainConn{rc.plain, tc}, &http2.ServeConnOpts{Handler: h})
			}()
		}
	}()
	return ln.Addr().String(), out
}

// dialRecorder dials addr with the https transport; the recorder answers
// 404, so the dial fails once the session request was answered.
func dialRecorder(t *testing.T, addr, sni string) {
	t.Helper()
	key := make([]byte, 32)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ep := transport.Endpoint{Transport: Name, Addr: addr, SNI: sni, Path: testPath, Key: key, CertSHA256: pin(t)}
	c, err := (&Transport{}).Dial(ctx, ep)
	if err == nil {
		c.Close()
		t.Fatal("session opened on a server that answers 404")
	}
}

// firstRecord returns the first TLS record of raw, header included.
func firstRecord(raw []byte) []byte {
	if len(raw) < 5 {
		return raw
	}
	return raw[:min(len(raw), 5+(int(raw[3])<<8|int(raw[4])))]
}
