package h3

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/postern/postern/transport"
)

const (
	envStuffAddr    = "POSTERN_H3_STUFF_ADDR"
	envStuffPin     = "POSTERN_H3_STUFF_PIN"
	envStuffN       = "POSTERN_H3_STUFF_N"
	envStuffStreams = "POSTERN_H3_STUFF_STREAMS"
)

// BenchmarkSessionStreamStuffing: POSTERN_STUFF_SESSIONS (16) sessions
// from one source, each on a QUIC connection of its own, each of which
// then opens 99 more request streams (the first byte of a HEADERS frame
// header, or a whole 4,003-byte unknown frame) and 99 unidirectional
// streams (half a stream type), all the QUIC limits let it; "idle" opens
// none, "served" has the relay serve them all as before 2026-12-07
// (Transport.openSessionConns). The clients run in a child process
// (TestStuffingClients), so what is reported per connection is the
// relay's: live heap, goroutines, goroutines serving a stream (in
// serveStream or serveUni), and the streams the relay refused, as the
// child saw them a second after it sent.
func BenchmarkSessionStreamStuffing(b *testing.B) {
	n := envCount("POSTERN_STUFF_SESSIONS", 16)
	for _, bc := range []struct {
		name    string
		streams int
		open    bool
	}{{"idle", 0, false}, {"served", MaxIncomingStreams - 1, true}, {"refused", MaxIncomingStreams - 1, false}} {
		b.Run(bc.name, func(b *testing.B) {
			var heap, gor, serving, refused float64
			for b.Loop() {
				r := startRelay(b, &Transport{openSessionConns: bc.open}, nil)
				serveEcho(b, r.ln)
				before := relayMem()
				servingBefore := servingStreams()
				end, ref := startStuffingClients(b, r.ep, n, bc.streams)
				after := relayMem()
				heap = float64(after.heap-before.heap) / float64(n)
				gor = float64(after.goroutines-before.goroutines) / float64(n)
				serving = float64(servingStreams()-servingBefore) / float64(n)
				refused = float64(ref) / float64(n)
				end()
				r.ln.Close()
			}
			b.ReportMetric(heap/1024, "heap-KiB/conn")
			b.ReportMetric(gor, "goroutines/conn")
			b.ReportMetric(serving, "serving/conn")
			b.ReportMetric(refused, "refused/conn")
		})
	}
}

// startStuffingClients starts the child process, waits until its n
// sessions have sent their streams, and returns the function that ends
// it and how many of the streams the relay had refused.
func startStuffingClients(b *testing.B, ep transport.Endpoint, n, streams int) (func(), int) {
	var refused int
	stop := startChild(b, "TestStuffingClients", []string{envStuffAddr + "=" + ep.Addr, envStuffPin + "=" + hex.EncodeToString(ep.CertSHA256),
		envStuffN + "=" + strconv.Itoa(n), envStuffStreams + "=" + strconv.Itoa(streams)},
		func(line string) error {
			_, err := fmt.Sscanf(line, "ready %d\n", &refused)
			return err
		})
	return stop, refused
}

// TestStuffingClients is the child process of
// BenchmarkSessionStreamStuffing: it opens the sessions and their
// streams, waits a second for them to land, says "ready" with how many
// streams the relay refused, and holds everything until stdin closes.
func TestStuffingClients(t *testing.T) {
	addr := os.Getenv(envStuffAddr)
	if addr == "" {
		t.Skip("the client process of BenchmarkSessionStreamStuffing")
	}
	n, _ := strconv.Atoi(os.Getenv(envStuffN))
	streams, _ := strconv.Atoi(os.Getenv(envStuffStreams))
	pin, _ := hex.DecodeString(os.Getenv(envStuffPin))
	ep := transport.Endpoint{Transport: Name, Addr: addr, SNI: testSNI, Path: testPath, Key: testKey, CertSHA256: pin}
	var sent []interface{ Context() context.Context }
	for range n {
		qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), addr, &quic.Config{KeepAlivePeriod: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		openControl(t, qc)
		sessionOn(t, ep, qc)
		bidi, uni := parkStreams(t, qc, streams)
		for _, s := range bidi {
			sent = append(sent, s)
		}
		for _, s := range uni {
			sent = append(sent, s)
		}
	}
	time.Sleep(time.Second) // the last data lands
	refused := 0
	for _, s := range sent {
		if s.Context().Err() != nil {
			refused++
		}
	}
	fmt.Printf("ready %d\n", refused)
	io.Copy(io.Discard, os.Stdin)
}
