package borrow

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleSplices holds N spliced connections that carried a
// request and its answer and then went quiet (a browser's idle keep-alive
// connections, or a prober holding connections open), and reports what
// the front holds per connection: live heap and goroutine stacks, with the
// same clients connected straight to the origin in the same run as the
// baseline, subtracted. Both ends of every connection are in this process,
// so only the difference is the front's.
//
//	go test ./transport/borrow -run '^$' -bench IdleSplices -benchtime 1x
func BenchmarkIdleSplices(b *testing.B) {
	const n = 500
	// The origin answers a request, then waits for the client to close.
	ol := benchOrigin(b, func(c net.Conn) {
		buf := make([]byte, 64)
		if _, err := io.ReadFull(c, buf[:4]); err != nil {
			return
		}
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
		c.Read(buf) // until the client closes
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l, err := Listen(ln, testKey, Options{Origin: ol.Addr().String(), MaxPerSource: n + 1, MaxSplices: n + 1})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	// measure opens n connections to addr, each sending a request and
	// reading the answer, and returns the live heap, stacks and
	// goroutines while they are held.
	measure := func(addr string) (heap, stacks uint64, goroutines int) {
		conns := make([]net.Conn, 0, n)
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		answer := make([]byte, 38)
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			c.SetDeadline(time.Now().Add(failAfter))
			c.Write([]byte("GET "))
			if _, err := io.ReadFull(c, answer); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(100 * time.Millisecond) // let every goroutine park
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
	}
	for b.Loop() {
		dh, ds, dg := measure(ol.Addr().String())
		time.Sleep(100 * time.Millisecond) // the origin's goroutines end
		fh, fs, fg := measure(l.Addr().String())
		per := func(front, direct uint64) float64 { return (float64(front) - float64(direct)) / n }
		b.ReportMetric(per(fh, dh), "heap-B/splice")
		b.ReportMetric(per(fs, ds), "stack-B/splice")
		b.ReportMetric(float64(fg-dg)/n, "goroutines/splice")
	}
}

// BenchmarkSpliceThroughput sends 64 MiB through a splice to an origin
// that discards it, beside the same transfer straight to the origin
// (direct) in the same run.
//
//	go test ./transport/borrow -run '^$' -bench SpliceThroughput -count 3
func BenchmarkSpliceThroughput(b *testing.B) {
	ol := benchOrigin(b, func(c net.Conn) {
		io.Copy(io.Discard, c)
		c.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l, err := Listen(ln, testKey, Options{Origin: ol.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const size = 64 << 20
	chunk := make([]byte, 64<<10)
	chunk[0] = 'G' // not a ClientHello: spliced at once
	for _, tc := range []struct{ name, addr string }{{"direct", ol.Addr().String()}, {"front", l.Addr().String()}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				c, err := net.Dial("tcp", tc.addr)
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(time.Minute))
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := c.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
				c.(*net.TCPConn).CloseWrite()
				if got, err := io.ReadAll(c); string(got) != "ok" || err != nil {
					b.Fatalf("read %q, %v", got, err)
				}
				c.Close()
			}
		})
	}
}

// benchOrigin is a loopback TCP server that runs serve on each connection
// (and closes it after), until the benchmark ends.
func benchOrigin(b *testing.B, serve func(net.Conn)) net.Listener {
	b.Helper()
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ol.Close() })
	go func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ol
}
