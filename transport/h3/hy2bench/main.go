// Command hy2bench is the Hysteria 2 side of the h3 transport's
// BenchmarkVsRaw (transport/h3/compare_bench_test.go): a Hysteria 2 server
// and client (github.com/apernet/hysteria/core/v2, their default QUIC
// configuration and congestion control) in one process on loopback,
// carrying the same echo and one-way rounds as the h3 session and the bare
// quic-go stream, run when the benchmark asks so that all three alternate
// in one run.
//
// It lives in a module of its own: Hysteria's core is built on a fork of
// quic-go (github.com/apernet/quic-go) and an older qpack, which cannot
// share a build with the quic-go that Postern uses.
//
// The server's target is the serve function itself, not a TCP socket:
// the server hands its QUIC stream to the target's ReadFrom (io.Copy does,
// in Hysteria's proxy loop), which echoes or sinks on that stream, as the
// h3 benchmark's relay does on its session. So what is measured is
// Hysteria's QUIC stream, framing and configuration, without an outbound
// TCP leg that the h3 session does not have either.
//
// -core quic runs a bare stream of the quic-go fork instead (see
// quicPair). -bandwidth declares a rate, as Hysteria users do for its Brutal
// congestion control; without it both ends use BBR.
//
// Protocol on stdin and stdout: after setting up and a warm-up it prints
// "ready"; each line "round K" runs K chunks and is answered "done NS",
// NS the round's duration in nanoseconds measured here. It exits at the
// end of stdin.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"time"

	"github.com/apernet/hysteria/core/v2/client"
	"github.com/apernet/hysteria/core/v2/server"
	"github.com/apernet/quic-go"
)

func main() {
	mode := flag.String("mode", "echo", "echo or oneway")
	chunk := flag.Int("chunk", 32<<10, "bytes per write")
	warmup := flag.Int("warmup", 32, "chunks before the first round")
	core := flag.String("core", "hysteria", "hysteria, or quic: a bare stream of the quic-go fork Hysteria is built on, its default configuration")
	bandwidth := flag.Uint64("bandwidth", 0, "bytes/s each way the client declares, for Hysteria's Brutal congestion control (0: none declared, so BBR, Hysteria's default)")
	flag.Parse()
	if err := run(*mode, *core, *chunk, *warmup, *bandwidth); err != nil {
		fmt.Fprintln(os.Stderr, "hy2bench:", err)
		os.Exit(1)
	}
}

func run(mode, core string, chunk, warmup int, bandwidth uint64) error {
	var serve func(io.ReadWriter)
	var round func(io.ReadWriter, int, []byte) error
	switch mode {
	case "echo":
		serve, round = echoServe, echoRound
	case "oneway":
		serve, round = sinkServe, oneWayRound
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	var c io.ReadWriter
	var stop func()
	var err error
	switch core {
	case "hysteria":
		c, stop, err = pair(serve, bandwidth)
	case "quic":
		c, stop, err = quicPair(serve)
	default:
		err = fmt.Errorf("unknown core %q", core)
	}
	if err != nil {
		return err
	}
	defer stop()
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	if err := round(c, warmup, buf); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var k int
		if _, err := fmt.Sscanf(in.Text(), "round %d", &k); err != nil || k <= 0 {
			return fmt.Errorf("bad request %q", in.Text())
		}
		start := time.Now()
		if err := round(c, k, buf); err != nil {
			return err
		}
		fmt.Printf("done %d\n", time.Since(start).Nanoseconds())
	}
	return in.Err()
}

// pair starts a Hysteria 2 server and client on loopback and returns a
// proxied TCP connection whose server end runs serve.
func pair(serve func(io.ReadWriter), bandwidth uint64) (net.Conn, func(), error) {
	cert, pool, err := selfSigned()
	if err != nil {
		return nil, nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	srv, err := server.NewServer(&server.Config{
		TLSConfig:     server.TLSConfig{Certificates: []tls.Certificate{cert}},
		Conn:          udp,
		Outbound:      outbound{serve},
		Authenticator: anyone{},
	})
	if err != nil {
		udp.Close()
		return nil, nil, err
	}
	go srv.Serve()
	cl, _, err := client.NewClient(&client.Config{
		ServerAddr:      udp.LocalAddr(),
		Auth:            "bench",
		TLSConfig:       client.TLSConfig{ServerName: "bench.test", RootCAs: pool},
		BandwidthConfig: client.BandwidthConfig{MaxTx: bandwidth, MaxRx: bandwidth},
	})
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	c, err := cl.TCP("bench.test:1")
	if err != nil {
		cl.Close()
		srv.Close()
		return nil, nil, err
	}
	return c, func() { c.Close(); cl.Close(); srv.Close() }, nil
}

// quicPair returns the client end of a bare stream of apernet/quic-go (no
// Hysteria, quic-go's default configuration) whose server end runs serve:
// it tells what of Hysteria's rate is the quic-go it is built on.
func quicPair(serve func(io.ReadWriter)) (io.ReadWriter, func(), error) {
	cert, pool, err := selfSigned()
	if err != nil {
		return nil, nil, err
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"bench"}}, nil)
	if err != nil {
		return nil, nil, err
	}
	go func() {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		s, err := qc.AcceptStream(context.Background())
		if err != nil {
			return
		}
		serve(s)
		s.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{ServerName: "bench.test", RootCAs: pool, NextProtos: []string{"bench"}}, nil)
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0, "")
		ln.Close()
		return nil, nil, err
	}
	return s, func() { qc.CloseWithError(0, ""); ln.Close() }, nil
}

type anyone struct{}

func (anyone) Authenticate(net.Addr, string, uint64) (bool, string) { return true, "bench" }

// outbound gives every TCP request a target that runs serve.
type outbound struct{ serve func(io.ReadWriter) }

func (o outbound) TCP(string) (net.Conn, error) {
	return &target{serve: o.serve, done: make(chan struct{})}, nil
}
func (o outbound) UDP(string) (server.UDPConn, error) {
	return nil, errors.New("hy2bench: no UDP")
}

// target is the server's end of a proxied connection. Hysteria's proxy
// loop copies with io.Copy both ways: ReadFrom gets the QUIC stream and
// serves on it; WriteTo waits for that to end.
type target struct {
	serve func(io.ReadWriter)
	done  chan struct{}
	once  sync.Once
}

var errUnused = errors.New("hy2bench: the target is served through ReadFrom")

func (t *target) ReadFrom(r io.Reader) (int64, error) {
	rw, ok := r.(io.ReadWriter)
	if !ok {
		return 0, errUnused
	}
	t.serve(rw)
	t.Close()
	return 0, nil
}

func (t *target) WriteTo(io.Writer) (int64, error) {
	<-t.done
	return 0, nil
}

func (t *target) Read([]byte) (int, error)         { return 0, errUnused }
func (t *target) Write([]byte) (int, error)        { return 0, errUnused }
func (t *target) Close() error                     { t.once.Do(func() { close(t.done) }); return nil }
func (t *target) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (t *target) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (t *target) SetDeadline(time.Time) error      { return nil }
func (t *target) SetReadDeadline(time.Time) error  { return nil }
func (t *target) SetWriteDeadline(time.Time) error { return nil }

func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench.test"},
		DNSNames:     []string{"bench.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

// The rounds, as in compare_bench_test.go (which cannot be imported here).

func echoRound(c io.ReadWriter, k int, buf []byte) error {
	errc := make(chan error, 1)
	go func() {
		for range k {
			if _, err := c.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if err := discard(c, k*len(buf)); err != nil {
		return err
	}
	return <-errc
}

func oneWayRound(c io.ReadWriter, k int, buf []byte) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(k*len(buf)))
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}
	for range k {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	_, err := io.ReadFull(c, hdr[:1])
	return err
}

func discard(r io.Reader, n int) error {
	buf := make([]byte, 32<<10)
	for n > 0 {
		m, err := r.Read(buf[:min(len(buf), n)])
		n -= m
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}

func echoServe(c io.ReadWriter) { io.CopyBuffer(c, c, make([]byte, 32<<10)) }

func sinkServe(c io.ReadWriter) {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if err := discard(c, int(binary.BigEndian.Uint64(hdr[:]))); err != nil {
			return
		}
		if _, err := c.Write(hdr[:1]); err != nil {
			return
		}
	}
}
