package https

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

const benchChunk = 64 << 10

// writeCounter counts the Write calls that reach a TCP socket: with
// crypto/tls and uTLS above it, one per TLS record (each record is one
// write system call).
type writeCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c writeCounter) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// CloseWrite keeps TCP half-close working through the wrapper.
func (c writeCounter) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// benchSide is what one benchmark run measures besides time.
type benchSide struct {
	client, server atomic.Int64 // writes reaching each side's socket
}

// syscw returns this process's write system calls so far
// (/proc/self/io), or -1 where that file does not exist.
func syscw() int64 { return procIO("syscw: ") }

// syscr is the process's read system calls so far (/proc/self/io), -1
// where there is none; the reads of /proc/self/io itself count too (a few
// per benchmark, the same in every run).
func syscr() int64 { return procIO("syscr: ") }

// procIO returns the counter named by field in /proc/self/io, -1 where
// there is none.
func procIO(field string) int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// cpuTime returns the CPU time this process has used, user and system,
// both sides of the benchmark together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchMode runs b.N chunks of benchChunk bytes through c: echoed back
// (echo) or only sent, the server answering with its end of stream
// (one-way). It reports writes per op on each side's socket and, from
// /proc/self/io, the whole process's write system calls per op, and the
// process's CPU time per op (cpu-µs/op: both sides; on a shared machine
// steadier than throughput).
func benchMode(b *testing.B, echo bool, c io.ReadWriter, closeWrite func() error, side *benchSide) benchResult {
	buf := make([]byte, benchChunk)
	rbuf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	side.client.Store(0)
	side.server.Store(0)
	w0, r0, cpu0 := syscw(), syscr(), cpuTime()
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
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, rbuf)
	if err != nil {
		b.Fatal(err)
	}
	if err := <-werr; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	want := int64(0)
	if echo {
		want = int64(b.N) * benchChunk
	}
	if n != want {
		b.Fatalf("read back %d bytes, want %d", n, want)
	}
	ops := float64(b.N)
	b.ReportMetric(float64(cpu.Microseconds())/ops, "cpu-µs/op")
	b.ReportMetric(float64(side.client.Load())/ops, "cwrites/op")
	b.ReportMetric(float64(side.server.Load())/ops, "swrites/op")
	if w1 := syscw(); w0 >= 0 && w1 >= 0 {
		b.ReportMetric(float64(w1-w0)/ops, "syscw/op")
	}
	if r1 := syscr(); r0 >= 0 && r1 >= 0 {
		b.ReportMetric(float64(r1-r0)/ops, "syscr/op")
	}
	return benchResult{
		mbps:  float64(b.N) * benchChunk / b.Elapsed().Seconds() / 1e6,
		cpuUs: float64(cpu.Microseconds()) / ops,
	}
}

// benchResult is what the session's figures are compared with.
type benchResult struct {
	mbps  float64 // throughput, MB/s
	cpuUs float64 // process CPU time per op, µs
}

// serveBench serves each stream as the mode wants: echo, or read to the
// end and then end the stream (one-way).
func serveBench(c io.ReadWriteCloser, closeWrite func() error, echo bool) {
	defer c.Close()
	var dst io.Writer = io.Discard
	if echo {
		dst = c
	}
	if _, err := io.CopyBuffer(dst, struct{ io.Reader }{c}, make([]byte, 32<<10)); err != nil {
		return
	}
	closeWrite()
}

// BenchmarkThroughput moves 64 KiB chunks over one https session and,
// in the same run, over raw crypto/tls on loopback (the physical limit),
// both ways (echo) and one way. Besides MB/s each reports the writes that
// reach the client's and the server's TCP socket per op (cwrites/op,
// swrites/op: one per TLS record), the process's write and read system
// calls per op (syscw/op, syscr/op, /proc/self/io: both sides, as both
// run here), and the session's "xraw": its throughput over raw TLS's
// just before it, and
// "xraw-cpu": raw TLS's CPU time per op over the session's (1 is as
// cheap as raw TLS; under load from other processes the steadier one).
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []string{"echo", "oneway"} {
		echo := mode == "echo"
		var raw benchResult
		b.Run(mode+"/rawtls", func(b *testing.B) {
			side := &benchSide{}
			c := rawTLSBench(b, echo, side)
			defer c.Close()
			// TLS close_notify would also forbid our further writes; a TCP
			// half-close ends the server's reading and keeps ours going.
			raw = benchMode(b, echo, c, func() error { return c.NetConn().(writeCounter).CloseWrite() }, side)
		})
		// session: the listener's own HTTP/2 engine (the front);
		// stockh2: the same session on net/http's HTTP/2 server.
		for _, name := range []string{"session", "stockh2"} {
			b.Run(mode+"/"+name, func(b *testing.B) {
				side := &benchSide{}
				c := sessionBench(b, echo, side, name == "stockh2")
				defer c.Close()
				got := benchMode(b, echo, c, c.CloseWrite, side)
				if raw.mbps > 0 && got.cpuUs > 0 {
					b.ReportMetric(got.mbps/raw.mbps, "xraw")
					b.ReportMetric(raw.cpuUs/got.cpuUs, "xraw-cpu")
				}
			})
		}
	}
}

// sessionBench starts a relay serving each session as the mode wants and
// dials one session, counting writes on both sockets.
func sessionBench(b *testing.B, echo bool, side *benchSide, stock bool) transport.Conn {
	tr := &Transport{stockH2: stock, wrap: &connWrap{func(c net.Conn) net.Conn { return writeCounter{c, &side.server} }}}
	r := startRelay(b, tr, nil)
	go func() {
		for {
			c, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			go serveBench(c, c.CloseWrite, echo)
		}
	}()
	tgt, err := httpsession.NewTarget(Name, r.ep)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := net.Dial("tcp", r.ep.Addr)
	if err != nil {
		b.Fatal(err)
	}
	c, err := open(context.Background(), writeCounter{raw, &side.client}, tgt, r.ep)
	if err != nil {
		raw.Close()
		b.Fatal(err)
	}
	return c
}

// rawTLSBench is the baseline of sessionBench: crypto/tls over TCP with the
// same certificate, the server serving the mode.
func rawTLSBench(b *testing.B, echo bool, side *benchSide) *tls.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert(b)}}
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			c := tls.Server(writeCounter{raw, &side.server}, srvCfg)
			go serveBench(c, func() error { return raw.(*net.TCPConn).CloseWrite() }, echo)
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert(b).Leaf)
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c := tls.Client(writeCounter{raw, &side.client}, &tls.Config{RootCAs: pool, ServerName: "relay.test"})
	if err := c.Handshake(); err != nil {
		raw.Close()
		b.Fatal(err)
	}
	return c
}

// rawTLSEcho is the baseline of BenchmarkHandshake: crypto/tls over TCP
// on loopback, same certificate, an echo server.
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
