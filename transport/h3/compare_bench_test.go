//go:build linux

package h3

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// BenchmarkVsRaw measures an h3 session and a bare quic-go stream in the
// same run, in alternating rounds (the machine is shared), echo and
// one-way, with 32 KiB writes:
//
//	h3-MB/s, raw-MB/s     bytes written by the client per second
//	ratio                 h3-MB/s / raw-MB/s
//	median-ratio          the median of that ratio over the rounds (each
//	                      h3 round against the raw round next to it), less
//	                      sensitive to other load on the machine
//	h3-sendmsg/op, ...    sendmsg calls per 32 KiB written, client and
//	                      server together (counted in WriteMsgUDP, which
//	                      keeps quic-go's GSO path: sendHook)
//	h3-pkts/sendmsg, ...  QUIC packets per sendmsg (GSO batch size)
//
// With POSTERN_HY2BENCH naming a built hy2bench (the module in hy2bench/:
// Hysteria 2's core, github.com/apernet/hysteria/core/v2, server and
// client in a process of their own), Hysteria 2 runs the same rounds as a
// third side, in turn with the other two, and the benchmark adds
//
//	hy2-MB/s, ratio-hy2, median-ratio-hy2
//	                      its rate, and h3's against it as above
//
// (no sendmsg counts for it: they are counted inside this process).
//
// ns/op covers all the transports; ignore it.
func BenchmarkVsRaw(b *testing.B) {
	for _, mode := range []struct {
		name  string
		serve func(io.ReadWriter)
		round func(c io.ReadWriter, k int, buf []byte) error
	}{
		{"echo", echoServe, echoRound},
		{"oneway", sinkServe, oneWayRound},
	} {
		b.Run(mode.name, func(b *testing.B) {
			sides := []*benchSide{
				{name: "h3"},
				{name: "raw"},
			}
			sides[0].c = sessionPair(b, mode.serve, &sides[0].sends)
			sides[1].c = rawPair(b, mode.serve, &sides[1].sends)
			if cmd := strings.Fields(os.Getenv(envHy2Bench)); len(cmd) > 0 {
				sides = append(sides, hy2Side(b, cmd, mode.name))
			}
			compareRounds(b, sides, mode.round)
		})
	}
}

type benchSide struct {
	name   string
	c      io.ReadWriter
	sends  sendCount
	remote func(k int) (time.Duration, error) // a side in another process
	dur    time.Duration
	ops    int
	rounds []time.Duration
}

// envHy2Bench names the hy2bench binary, and any flags of its own (such as
// -bandwidth) after it; see BenchmarkVsRaw.
const envHy2Bench = "POSTERN_HY2BENCH"

// hy2Side starts hy2bench (argv: the binary and its flags) in mode (it
// warms up before it says ready) and returns a side whose rounds it runs
// and times.
func hy2Side(b *testing.B, argv []string, mode string) *benchSide {
	args := append(argv[1:len(argv):len(argv)], "-mode", mode, "-chunk", strconv.Itoa(benchChunk), "-warmup", strconv.Itoa(benchWarmup))
	cmd := exec.Command(argv[0], args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", envHy2Bench, err)
	}
	b.Cleanup(func() {
		in.Close() // it exits at the end of its input
		stuck := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
		defer stuck.Stop()
		if err := cmd.Wait(); err != nil {
			b.Errorf("hy2bench: %v", err)
		}
	})
	out := bufio.NewReader(outPipe)
	if line, err := out.ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("hy2bench: %q, %v", line, err)
	}
	return &benchSide{name: "hy2", remote: func(k int) (time.Duration, error) {
		if _, err := fmt.Fprintf(in, "round %d\n", k); err != nil {
			return 0, err
		}
		line, err := out.ReadString('\n')
		var ns int64
		if err == nil {
			_, err = fmt.Sscanf(line, "done %d\n", &ns)
		}
		if err != nil {
			return 0, fmt.Errorf("hy2bench: %q, %v", line, err)
		}
		return time.Duration(ns), nil
	}}
}

const (
	benchRounds = 30
	benchWarmup = 32 // chunks per side before measuring (windows grow)
)

// compareRounds runs b.N chunks through each side, in benchRounds rounds
// that alternate between the sides, and reports the metrics above.
func compareRounds(b *testing.B, sides []*benchSide, round func(io.ReadWriter, int, []byte) error) {
	buf := pattern(benchChunk, 7)
	run := func(s *benchSide, k int) (time.Duration, error) {
		if s.remote != nil {
			return s.remote(k)
		}
		start := time.Now()
		err := round(s.c, k, buf)
		return time.Since(start), err
	}
	for _, s := range sides {
		if s.remote != nil {
			continue // it warmed up before it said ready
		}
		if err := round(s.c, benchWarmup, buf); err != nil {
			b.Fatalf("%s warm-up: %v", s.name, err)
		}
		s.sends = sendCount{}
	}
	k := max(1, (b.N+benchRounds-1)/benchRounds)
	b.ResetTimer()
	for r := range benchRounds {
		for i := range sides {
			s := sides[(i+r)%len(sides)]
			d, err := run(s, k)
			if err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			s.dur += d
			s.ops += k
			s.rounds = append(s.rounds, d)
		}
	}
	b.StopTimer()
	mbps := func(s *benchSide) float64 { return float64(s.ops) * benchChunk / s.dur.Seconds() / 1e6 }
	for _, s := range sides {
		b.ReportMetric(mbps(s), s.name+"-MB/s")
		if s.remote != nil {
			continue
		}
		b.ReportMetric(float64(s.sends.calls.Load())/float64(s.ops), s.name+"-sendmsg/op")
		b.ReportMetric(float64(s.sends.packets.Load())/float64(max(1, s.sends.calls.Load())), s.name+"-pkts/sendmsg")
	}
	for i, s := range sides[1:] {
		suffix := "" // h3 against raw quic-go keeps its old names
		if i > 0 {
			suffix = "-" + s.name
		}
		b.ReportMetric(mbps(sides[0])/mbps(s), "ratio"+suffix)
		ratios := make([]float64, benchRounds)
		for r := range ratios { // rounds r of all sides ran back to back
			ratios[r] = s.rounds[r].Seconds() / sides[0].rounds[r].Seconds()
		}
		slices.Sort(ratios)
		b.ReportMetric(ratios[len(ratios)/2], "median-ratio"+suffix)
	}
}

// echoRound writes k chunks and reads their echo concurrently.
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

// oneWayRound announces k chunks, writes them and waits for the sink's
// one-byte acknowledgement.
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

// discard reads n bytes in 32 KiB reads.
func discard(r io.Reader, n int) error {
	buf := make([]byte, benchChunk)
	for n > 0 {
		m, err := r.Read(buf[:min(len(buf), n)])
		n -= m
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}

func echoServe(c io.ReadWriter) { io.CopyBuffer(c, c, make([]byte, benchChunk)) }

// sinkServe reads rounds of oneWayRound and acknowledges each.
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

// sendCount counts sendmsg calls and the QUIC packets in them.
type sendCount struct{ calls, packets atomic.Int64 }

func (s *sendCount) note(b, oob []byte) {
	s.calls.Add(1)
	s.packets.Add(int64(packetsIn(len(b), oob)))
}

// udpSegment is UDP_SEGMENT (linux/udp.h): the GSO segment size cmsg.
const udpSegment = 103

// packetsIn returns how many datagrams a sendmsg of n bytes carries: n
// over the GSO segment size in oob, rounded up, or 1 without GSO.
func packetsIn(n int, oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 1
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.IPPROTO_UDP && m.Header.Type == udpSegment && len(m.Data) >= 2 {
			seg := int(binary.NativeEndian.Uint16(m.Data))
			return (n + seg - 1) / seg
		}
	}
	return 1
}

// sessionPair returns the client end of an h3 session whose relay end runs
// serve; both ends' sends are counted in sends.
func sessionPair(b *testing.B, serve func(io.ReadWriter), sends *sendCount) io.ReadWriter {
	r := startRelay(b, &Transport{onSend: sends.note}, nil)
	go func() {
		c, err := r.ln.Accept(context.Background())
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := (&Transport{onSend: sends.note}).Dial(ctx, r.ep)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// rawPair returns the client end of a bare quic-go stream (quic-go's
// default configuration, no HTTP/3) whose server end runs serve.
func rawPair(b *testing.B, serve func(io.ReadWriter), sends *sendCount) io.ReadWriter {
	tc := selfSigned(b)
	srvTr := countedTransport(b, sends)
	ln, err := srvTr.Listen(&tls.Config{Certificates: []tls.Certificate{tc.cert}, NextProtos: []string{"bench"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
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
	cliTr := countedTransport(b, sends)
	qc, err := cliTr.Dial(ctx, ln.Addr(), &tls.Config{ServerName: testSNI, RootCAs: tc.pool, NextProtos: []string{"bench"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { qc.CloseWithError(0, "") })
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func countedTransport(b *testing.B, sends *sendCount) *quic.Transport {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	tr := &quic.Transport{Conn: hookSends(udp, sends.note)}
	b.Cleanup(func() { tr.Close(); udp.Close() })
	return tr
}
