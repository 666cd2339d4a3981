package h3

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/transporttest"
)

// Probe resistance: a relay listener and a stock quic-go http3.Server with the
// same certificate and the same cover handler must answer every probe alike.

// startStock starts a stock http3.Server serving h on 127.0.0.1, on a
// quic.Transport with a stateless-reset key as quic-go recommends for every
// server (so it answers datagrams for unknown connections with a reset).
func startStock(t *testing.T, h http.Handler) string {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var key quic.StatelessResetKey
	crand.Read(key[:])
	qt := &quic.Transport{Conn: udp, StatelessResetKey: &key}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{selfSigned(t).cert}}
	ln, err := qt.ListenEarly(http3.ConfigureTLSConfig(tlsConf), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{Handler: h, TLSConfig: tlsConf}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeListener(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
		ln.Close()
		qt.Close()
		udp.Close()
	})
	return udp.LocalAddr().String()
}

// prober is one QUIC connection of an HTTP/3 client that looks at a server
// from the outside.
type prober struct {
	qc  *quic.Conn
	tr  *quic.Transport
	udp *net.UDPConn
	cc  *http3.ClientConn
}

func (p *prober) RoundTrip(r *http.Request) (*http.Response, error) { return p.cc.RoundTrip(r) }
func (p *prober) ConnectionState() tls.ConnectionState              { return p.qc.ConnectionState().TLS }

func newProber(t *testing.T, addr string) transporttest.ProbeConn {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	qc, err := tr.Dial(ctx, raddr, &tls.Config{
		ServerName:         testSNI,
		InsecureSkipVerify: true,
		NextProtos:         []string{http3.NextProtoH3},
	}, nil)
	if err != nil {
		t.Fatalf("probe dial: %v", err)
	}
	p := &prober{qc: qc, tr: tr, udp: udp, cc: (&http3.Transport{DisableCompression: true}).NewClientConn(qc)}
	t.Cleanup(p.close)
	return p
}

func (p *prober) close() {
	p.qc.CloseWithError(0, "")
	p.tr.Close()
	p.udp.Close()
}

// TestProbeTable runs the cover/session/probe table both HTTP transports
// share, over HTTP/3, against a stock http3.Server with the same cover.
func TestProbeTable(t *testing.T) {
	for _, cv := range []struct {
		name  string
		relay http.Handler // the listener's Cover (nil: built-in)
		stock http.Handler
	}{
		{"test cover", testCover, testCover},
		{"default cover", nil, cover.Default()},
	} {
		t.Run(cv.name, func(t *testing.T) {
			// The replay probe sends its replay on the connection of the
			// session it opened, where the relay now refuses every other
			// stream (streams.go, TestSessionConnStreamsRefused): the
			// table runs with those served, as before. Every other probe
			// is on a connection without a session, which that leaves
			// as it is.
			r := startRelay(t, &Transport{openSessionConns: true}, func(cfg *transport.ListenConfig) { cfg.Cover = cv.relay })
			serveEcho(t, r.ln)
			transporttest.RunProbes(t, transporttest.Probes{
				Relay: r.ep.Addr, Reference: startStock(t, cv.stock), Dial: newProber,
				Host: testSNI, Path: testPath, Key: testKey, Outcomes: r.obs,
			})
		})
	}
}

// Datagrams that are not a QUIC handshake must meet the same fate at the
// relay as at a stock server: silence, or the same version negotiation.
func TestProbeUDP(t *testing.T) {
	r := startRelay(t, nil, nil)
	targets := [2]string{r.ep.Addr, startStock(t, testCover)}
	rng := rand.New(rand.NewChaCha8([32]byte{'p', 'r', 'o', 'b', 'e'}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// longHeader builds a QUIC long-header packet of n bytes: first byte
	// (form, fixed bit, type), version, 8-byte DCID and SCID, random rest.
	longHeader := func(n int, first byte, version uint32) []byte {
		b := random(n)
		b[0] = first | byte(rng.Uint32()&0x0f)
		b[1], b[2], b[3], b[4] = byte(version>>24), byte(version>>16), byte(version>>8), byte(version)
		b[5] = 8
		b[14] = 8
		return b
	}
	shortHeader := func(n int) []byte {
		b := random(n)
		b[0] = 0x40 | b[0]&0x3f
		return b
	}
	tests := []struct {
		name      string
		datagram  []byte
		wantReply bool // a stock server answers (guards the comparison itself)
	}{
		{"random 1 B", random(1), false},
		{"random 100 B", random(100), false},
		// Short headers for an unknown connection get a stateless reset
		// from any server with a reset key.
		{"random 1200 B", random(1200), true},
		{"random 1500 B", random(1500), true},
		{"short header 1200 B", shortHeader(1200), true},
		{"Initial v1 random 1200 B", longHeader(1200, 0xc0, 1), false},
		{"Initial v1 random 300 B", longHeader(300, 0xc0, 1), false},
		{"Handshake v1 random 1200 B", longHeader(1200, 0xe0, 1), false},
		{"unknown version 1200 B", longHeader(1200, 0xc0, 0x1a2a3a4a), true},
		{"unknown version 300 B", longHeader(300, 0xc0, 0x1a2a3a4a), false},
	}
	// The first byte of random cases decides their fate; make sure the random
	// 1200/1500 B cases do not happen to be long headers with an unknown
	// version (that is covered explicitly).
	for _, i := range []int{2, 3} {
		tests[i].datagram[0] &^= 0x80
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got [2]string
			errs := make(chan error, 2)
			for i, addr := range targets {
				go func() {
					var err error
					got[i], err = udpProbe(addr, tt.datagram)
					errs <- err
				}()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if got[0] != got[1] {
				t.Errorf("relay answered %s, stock answered %s", got[0], got[1])
			}
			if (got[1] != "nothing") != tt.wantReply {
				t.Errorf("stock answered %s; test expects reply=%v", got[1], tt.wantReply)
			}
		})
	}
	// The relay still works after the garbage.
	serveEcho(t, r.ln)
	transporttest.EchoRoundTrip(t, dialT(t, r.ep), []byte("after the probes"))
}

// udpProbe sends one datagram from a fresh socket and describes the reply
// that arrives within a short bounded wait.
func udpProbe(addr string, datagram []byte) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write(datagram); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return "nothing", nil
	}
	if err != nil {
		return "error " + err.Error(), nil
	}
	b := buf[:n]
	if n >= 5 && b[0]&0x80 != 0 {
		return fmt.Sprintf("long header, version %x, %d bytes", b[1:5], n), nil
	}
	return fmt.Sprintf("short header, %d bytes", n), nil
}
