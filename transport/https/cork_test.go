package https

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
)

// TestCorkedWriteFlushesBeforeWindowWait: a client that grants a stream
// window smaller than one session write, and opens it only for data it
// has received, still gets the whole write. The engine gathers a write's
// frames beneath TLS (cork.go); had it waited for window with frames
// still gathered, the client would never see them, never open the
// window, and both would wait for ever.
func TestCorkedWriteFlushesBeforeWindowWait(t *testing.T) {
	r := startRelay(t, engineTransport(), nil)
	const size = 256 << 10
	data := bytes.Repeat([]byte("window"), size/6)
	wrote := make(chan error, 1)
	go func() {
		c, err := r.ln.Accept(context.Background())
		if err != nil {
			wrote <- err
			return
		}
		t.Cleanup(func() { c.Close() })
		_, err = c.Write(data)
		wrote <- err
	}()
	tc := tlsDial(t, r.ep.Addr, "h2")
	defer tc.Close()
	t2, err := http2.ConfigureTransports(&http.Transport{HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 20000}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := t2.NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := engineSession(t, r, tc, cc)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(data))
		n, _ := io.ReadFull(&recordReader{r: resp.Body}, b)
		got <- b[:n]
	}()
	if b := within(t, "the session write through a 20,000-byte stream window", got); !bytes.Equal(b, data) {
		t.Fatalf("read %d of %d bytes, or different ones", len(b), len(data))
	}
	if err := within(t, "Write", wrote); err != nil {
		t.Fatal(err)
	}
}

// TestCorkedUploadFlushesBeforeWindowWait is the same for the client's
// writes: an HTTP/2 server (x/net's) that grants a 20,000-byte stream
// window gets the whole of a 256 KiB session write.
func TestCorkedUploadFlushesBeforeWindowWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan int64, 1)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK) // the response starts first, as a relay's does
			w.(http.Flusher).Flush()
			n, _ := io.Copy(io.Discard, r.Body)
			received <- n
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert(t)}, NextProtos: []string{"h2"}},
	}
	if err := http2.ConfigureServer(srv, &http2.Server{MaxUploadBufferPerStream: 20000}); err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ck := &corkConn{Conn: raw}
	tc := tls.Client(ck, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cc, err := newH2Client(tc, &browser.Current.HTTP2)
	if err != nil {
		t.Fatal(err)
	}
	cc.cork = ck
	defer cc.Close()
	body, w := cc.Upload()
	req, _ := http.NewRequest("POST", "https://relay.test/upload", body)
	res, err := cc.RoundTrip(req) // the request's HEADERS go out first
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	const size = 256 << 10
	wrote := make(chan error, 1)
	go func() {
		_, err := w.Write(make([]byte, size))
		if err == nil {
			err = w.Close()
		}
		wrote <- err
	}()
	if err := within(t, "the upload through a 20,000-byte stream window", wrote); err != nil {
		t.Fatal(err)
	}
	if n := within(t, "the server's read", received); n != size {
		t.Fatalf("the server read %d of %d bytes", n, size)
	}
}

// TestControlFramesPassDuringWindowWait: while the relay waits for window
// to send to a client that reads only after its own upload, the
// WINDOW_UPDATEs the relay owes for that upload (written by another
// goroutine) must still go out: nothing may sit gathered beneath TLS
// while a writer waits. Each direction moves more than the other side's
// window, so each waits at least once.
func TestControlFramesPassDuringWindowWait(t *testing.T) {
	r := startRelay(t, engineTransport(), nil)
	accepted := make(chan transport.Conn, 1)
	go func() {
		if c, err := r.ln.Accept(context.Background()); err == nil {
			accepted <- c
		}
	}()
	c := dial(t, r.ep)
	defer c.Close()
	rc := within(t, "accept", accepted)
	defer rc.Close()
	const down, up = 16 << 20, 4 << 20 // the client's stream window is 6 MiB, the relay's 1 MiB
	relayWrote := make(chan error, 1)
	go func() { _, err := rc.Write(make([]byte, down)); relayWrote <- err }()
	relayRead := make(chan error, 1)
	go func() { _, err := io.ReadFull(rc, make([]byte, up)); relayRead <- err }()
	uploaded := make(chan error, 1)
	go func() { _, err := c.Write(make([]byte, up)); uploaded <- err }()
	if err := within(t, "the client's upload while the relay waits for window", uploaded); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "the relay's read of the upload", relayRead); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { _, err := io.ReadFull(c, make([]byte, down)); got <- err }()
	if err := within(t, "the client's read", got); err != nil {
		t.Fatal(err)
	}
	if err := within(t, "the relay's write", relayWrote); err != nil {
		t.Fatal(err)
	}
	if n := frontOf(t, r).engine.Load(); n != 1 {
		t.Fatalf("%d sessions on the engine, want 1", n)
	}
}

// TestCorkNeverBlocksBehindAFlush: with a write of gathered bytes blocked
// on a peer that does not read, a small write (a TLS alert, a control
// frame) and release (Close) still return at once; a writer that finds a full buffer
// waiting behind the blocked write waits for it (the memory stays
// bounded); closing the connection ends the blocked write, and every
// later write fails.
func TestCorkNeverBlocksBehindAFlush(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			peer <- c
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	p := within(t, "accept", peer)
	defer p.Close()
	// Fill the socket's send buffer and the peer's receive buffer.
	chunk := make([]byte, 64<<10)
	for {
		raw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := raw.Write(chunk); err != nil {
			break
		}
	}
	raw.SetWriteDeadline(time.Time{})

	var k writeCork
	k.cork()
	k.last()
	flushed := make(chan error, 1)
	// A run larger than any send buffer's slack, so that its write blocks.
	go func() { _, err := k.write(raw, make([]byte, 4<<20)); flushed <- err }()
	select {
	case err := <-flushed:
		t.Fatalf("a 4 MiB write to a peer that does not read returned (%v)", err)
	case <-time.After(100 * time.Millisecond): // it is blocked in the socket write
	}
	small := make(chan error, 1)
	go func() { _, err := k.write(raw, []byte("alert")); small <- err }()
	if err := within(t, "a small write while a flush is blocked", small); err != nil {
		t.Fatal(err)
	}
	big := make(chan error, 1)
	go func() {
		k.cork()
		for range 3 {
			if _, err := k.write(raw, make([]byte, 32<<10)); err != nil {
				big <- err
				return
			}
		}
		big <- nil
	}()
	select {
	case err := <-big:
		t.Fatalf("96 KiB written behind a blocked flush without waiting (%v): the buffer is not bounded", err)
	case <-time.After(200 * time.Millisecond):
	}
	released := make(chan struct{})
	go func() { k.release(raw); close(released) }()
	within(t, "release while a flush is blocked", released)
	raw.Close()
	if err := within(t, "the blocked flush after Close", flushed); err == nil {
		t.Error("the blocked flush returned no error after the connection closed")
	}
	if err := within(t, "the waiting writer after Close", big); err == nil {
		t.Error("the writer waiting behind the blocked flush returned no error")
	}
	if _, err := k.write(raw, []byte("later")); err == nil {
		t.Error("a write after a failed flush succeeded")
	}
}
