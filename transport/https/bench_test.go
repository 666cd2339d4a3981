package https

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"

	"github.com/postern/postern/transport"
)

const benchChunk = 64 << 10

// benchEcho writes b.N chunks through c while reading the echo back.
func benchEcho(b *testing.B, c io.ReadWriter, closeWrite func() error) {
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	werr := make(chan error, 1)
	go func() {
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
		}
		werr <- closeWrite()
	}()
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, benchChunk))
	if err != nil {
		b.Fatal(err)
	}
	if err := <-werr; err != nil {
		b.Fatal(err)
	}
	if n != int64(b.N)*benchChunk {
		b.Fatalf("echoed %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
}

// BenchmarkSessionThroughput echoes over one https session on loopback.
func BenchmarkSessionThroughput(b *testing.B) {
	r := startRelay(b, &Transport{}, nil)
	serveEcho(r.ln)
	c := dial(b, r.ep)
	defer c.Close()
	benchEcho(b, c, c.CloseWrite)
}

// rawTLSEcho is the baseline: crypto/tls over TCP on loopback, same
// certificate, an echo server.
func rawTLSEcho(b *testing.B) (addr string, cfg *tls.Config) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert(b)}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				io.Copy(c, c)
				c.(*tls.Conn).CloseWrite()
			}()
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert(b).Leaf)
	return ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "relay.test"}
}

// BenchmarkRawTLSEchoThroughput is the physical limit for
// BenchmarkSessionThroughput.
func BenchmarkRawTLSEchoThroughput(b *testing.B) {
	addr, cfg := rawTLSEcho(b)
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// TLS close_notify ends the stream for the server's io.Copy but also
	// forbids further writes on our side; a TCP half-close keeps reads going.
	benchEcho(b, c, func() error { return c.NetConn().(*net.TCPConn).CloseWrite() })
}

// BenchmarkHandshake measures dial to established session.
func BenchmarkHandshake(b *testing.B) {
	r := startRelay(b, &Transport{}, nil)
	go func() {
		for {
			c, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tr := &Transport{}
	b.ResetTimer()
	for range b.N {
		c, err := tr.Dial(context.Background(), r.ep)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkRawTLSHandshake is the baseline: TCP connect and a crypto/tls
// TLS 1.3 handshake with the same certificate.
func BenchmarkRawTLSHandshake(b *testing.B) {
	addr, cfg := rawTLSEcho(b)
	b.ResetTimer()
	for range b.N {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

var _ transport.Conn = (*serverConn)(nil)
