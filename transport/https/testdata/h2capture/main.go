// Command h2capture records what a locally installed Chromium sends on its
// HTTP/2 connections, so that the https transport's client can be checked
// against it (transport/https/h2profile_test.go).
//
// It is a maintenance tool, not part of any build: CI never runs it. Usage,
// from the module root:
//
//	go run ./transport/https/testdata/h2capture -out transport/https/testdata
//
// It runs Chromium twice against a Go TLS server on a fresh 127.0.0.1 port:
//
//  1. at https://relay.example:PORT/ (relay.example mapped to 127.0.0.1, so
//     the ClientHello carries SNI). The page sets a cookie "sid" as long as a
//     Postern session token, answers with "Connection: close" (the Go HTTP/2
//     server then sends GOAWAY) and runs a streaming fetch() POST, which
//     Chromium sends on a second connection: a resumed TLS session whose
//     first request is a same-origin POST, as Postern's session request.
//  2. at https://127.0.0.1:PORT/, for the ClientHello of an IP literal.
//
// For every connection it keeps the ClientHello record, the type and length
// of every TLS record the client sent before its first request arrived, and
// the plaintext HTTP/2 bytes up to the end of the first HEADERS frame, and
// writes them to OUT/chromium-MAJOR-h2.json with the version and command.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/postern/postern/transport/https"
)

// Capture is the file format (also read by the tests).
type Capture struct {
	Chromium    string       `json:"chromium"`
	Commands    []string     `json:"commands"`
	Connections []Connection `json:"connections"`
}

// Connection is one TLS connection Chromium opened.
type Connection struct {
	// Role: "navigation" (GET / on a fresh profile), "fetch" (the POST, on
	// a second, resumed connection), "ip" (GET / of an IP literal), or
	// "unused" (a connection Chromium opened but sent no request on).
	Role string `json:"role"`
	// ClientHello is the first TLS record, header included, hex.
	ClientHello string `json:"client_hello"`
	// Records are "type:length" of every client TLS record (header not
	// counted) up to the first request, in order.
	Records []string `json:"records"`
	// H2 is the plaintext from the connection preface to the end of the
	// first HEADERS frame, hex.
	H2 string `json:"h2"`
}

const page = `<!doctype html><title>t</title><script>
const body = new ReadableStream({start(c) { c.enqueue(new Uint8Array(16)); c.close(); }});
fetch('/api/v2/sync', {method: 'POST', headers: {'content-type': 'application/octet-stream'},
  body, duplex: 'half'});
</script>`

func main() {
	out := flag.String("out", ".", "directory for the capture")
	bin := flag.String("chromium", "chromium", "Chromium binary")
	timeout := flag.Duration("timeout", 40*time.Second, "time limit for one run")
	flag.Parse()
	if err := run(*bin, *out, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "h2capture:", err)
		os.Exit(1)
	}
}

func run(bin, out string, timeout time.Duration) error {
	vout, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return fmt.Errorf("run %s --version: %w (apt-get install chromium)", bin, err)
	}
	version := regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`).FindString(string(vout))
	c := Capture{Chromium: version}
	for _, host := range []string{"relay.example", "127.0.0.1"} {
		conns, cmd, err := captureRun(bin, host, timeout)
		if err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		c.Commands = append(c.Commands, cmd)
		c.Connections = append(c.Connections, conns...)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	name := filepath.Join(out, "chromium-"+strings.Split(version, ".")[0]+"-h2.json")
	fmt.Println("chromium", version, "->", name)
	return os.WriteFile(name, append(b, '\n'), 0o644)
}

// recorder keeps a copy of everything read from a connection.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// tlsPlain is the plaintext side of a server TLS connection, recorded.
type tlsPlain struct {
	*recorder
	tc *tls.Conn
}

func (p *tlsPlain) ConnectionState() tls.ConnectionState { return p.tc.ConnectionState() }

type conn struct {
	raw, plain *recorder
}

type connKey struct{}

// server accepts TLS connections on ln and serves the page and the POST
// over HTTP/2; done receives the index of the connection that carried the
// first request of the wanted method.
type server struct {
	cfg   *tls.Config
	mu    sync.Mutex
	conns []*conn
	done  chan int
	want  string
}

func (s *server) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.serveConn(c)
	}
}

func (s *server) serveConn(c net.Conn) {
	defer c.Close()
	raw := &recorder{Conn: c}
	tc := tls.Server(raw, s.cfg)
	if err := tc.Handshake(); err != nil {
		return
	}
	cc := &conn{raw: raw, plain: &recorder{Conn: tc}}
	s.mu.Lock()
	s.conns = append(s.conns, cc)
	idx := len(s.conns) - 1
	s.mu.Unlock()
	ctx := context.WithValue(context.Background(), connKey{}, idx)
	h2 := &http2.Server{}
	h2.ServeConn(&tlsPlain{recorder: cc.plain, tc: tc}, &http2.ServeConnOpts{Context: ctx, Handler: http.HandlerFunc(s.handle)})
}

func (s *server) handle(w http.ResponseWriter, r *http.Request) {
	idx, _ := r.Context().Value(connKey{}).(int)
	io.Copy(io.Discard, r.Body)
	if r.Method == http.MethodGet && r.URL.Path == "/" {
		w.Header().Set("Content-Type", "text/html")
		// A cookie of a Postern token's length (sid=, 76 characters).
		w.Header().Set("Set-Cookie", "sid="+strings.Repeat("A", 76)+"; Path=/; Secure")
		if s.want == http.MethodPost {
			w.Header().Set("Connection", "close") // GOAWAY: the fetch needs a new connection
		}
		io.WriteString(w, page)
	} else {
		w.WriteHeader(http.StatusNotFound)
	}
	if r.Method == s.want {
		select {
		case s.done <- idx:
		default:
		}
	}
}

// captureRun starts Chromium at host and returns the connections up to
// the first request of the wanted method.
func captureRun(bin, host string, timeout time.Duration) ([]Connection, string, error) {
	cert, err := https.SelfSigned("127.0.0.1", "relay.example")
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	defer ln.Close()
	s := &server{cfg: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		done: make(chan int, 1), want: http.MethodPost}
	if host == "127.0.0.1" {
		s.want = http.MethodGet
	}
	go s.serve(ln)
	profile, err := os.MkdirTemp("", "h2capture-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(profile)
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--ignore-certificate-errors", "--user-data-dir=" + profile,
		"--host-resolver-rules=MAP relay.example 127.0.0.1",
		"https://" + host + ":" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "/",
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	var last int
	select {
	case last = <-s.done:
	case <-time.After(timeout):
		return nil, "", fmt.Errorf("no %s from chromium within %s", s.want, timeout)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Connection
	for i, c := range s.conns[:last+1] {
		role := "navigation"
		switch {
		case host == "127.0.0.1":
			role = "ip"
		case i == last:
			role = "fetch"
		}
		conn, err := describe(role, c)
		if err != nil {
			return nil, "", fmt.Errorf("connection %d: %w", i, err)
		}
		out = append(out, conn)
	}
	line := "chromium " + strings.Join(args, " ")
	return out, strings.ReplaceAll(line, profile, "$(mktemp -d)"), nil
}

// describe cuts a recorded connection down to the file format.
func describe(role string, c *conn) (Connection, error) {
	raw, plain := c.raw.bytes(), c.plain.bytes()
	out := Connection{Role: role}
	for len(raw) >= 5 {
		n := int(raw[3])<<8 | int(raw[4])
		if len(raw) < 5+n {
			break
		}
		if out.ClientHello == "" {
			out.ClientHello = fmt.Sprintf("%x", raw[:5+n])
		}
		out.Records = append(out.Records, fmt.Sprintf("%d:%d", raw[0], n))
		raw = raw[5+n:]
	}
	end, err := firstHeadersEnd(plain)
	if err != nil {
		out.Role = "unused" // a spare connection Chromium opened and dropped
		return out, nil
	}
	out.H2 = fmt.Sprintf("%x", plain[:end])
	return out, nil
}

// firstHeadersEnd returns the offset just past the first HEADERS frame.
func firstHeadersEnd(b []byte) (int, error) {
	off := len(http2.ClientPreface)
	if !bytes.HasPrefix(b, []byte(http2.ClientPreface)) {
		return 0, fmt.Errorf("no HTTP/2 preface")
	}
	for off+9 <= len(b) {
		n := int(b[off])<<16 | int(b[off+1])<<8 | int(b[off+2])
		typ := b[off+3]
		off += 9 + n
		if typ == byte(http2.FrameHeaders) && off <= len(b) {
			return off, nil
		}
	}
	return 0, fmt.Errorf("no complete HEADERS frame in %d bytes", len(b))
}
