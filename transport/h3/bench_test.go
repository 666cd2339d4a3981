package h3

import (
	"context"
	"crypto/tls"
	"io"
	"testing"

	"github.com/quic-go/quic-go"
)

// Benchmarks of the h3 transport, each beside the same work done on a bare
// quic-go connection (no HTTP/3, no token) on loopback in the same run: that
// is the physical limit the transport can approach on this machine.

const benchChunk = 32 << 10

// echoThroughput pushes b.N chunks through an echoing stream while reading
// the echo back concurrently. Bytes are counted once (one direction).
func echoThroughput(b *testing.B, c io.ReadWriter, closeWrite func() error) {
	b.Helper()
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	buf := make([]byte, benchChunk)
	errc := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- closeWrite()
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	if n != int64(b.N)*benchChunk {
		b.Fatalf("echoed %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
}

func BenchmarkSessionThroughput(b *testing.B) {
	r := startRelay(b, nil, nil)
	serveEcho(b, r.ln)
	c := dialT(b, r.ep)
	echoThroughput(b, c, c.CloseWrite)
}

func BenchmarkHandshake(b *testing.B) {
	r := startRelay(b, nil, nil)
	serveEcho(b, r.ln)
	tr := New()
	b.ReportAllocs()
	for b.Loop() {
		c, err := tr.Dial(context.Background(), r.ep)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// rawServer is a bare QUIC echo server: every stream is echoed back.
func rawServer(b *testing.B) string {
	b.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{selfSigned(b).cert},
		NextProtos:   []string{"bench"},
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				for {
					s, err := qc.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						io.Copy(s, s)
						s.Close()
					}()
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func rawDial(b *testing.B, addr string) *quic.Conn {
	b.Helper()
	qc, err := quic.DialAddr(context.Background(), addr, &tls.Config{
		ServerName: testSNI,
		RootCAs:    selfSigned(b).pool,
		NextProtos: []string{"bench"},
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return qc
}

func BenchmarkRawQUICEcho(b *testing.B) {
	qc := rawDial(b, rawServer(b))
	defer qc.CloseWithError(0, "")
	s, err := qc.OpenStreamSync(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	echoThroughput(b, s, s.Close)
}

func BenchmarkRawQUICHandshake(b *testing.B) {
	addr := rawServer(b)
	b.ReportAllocs()
	for b.Loop() {
		rawDial(b, addr).CloseWithError(0, "")
	}
}
