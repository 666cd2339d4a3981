package censortest_test

// The censor's own code as a cross-check: OpenGFW's analyzers (a real
// censor's detection code, github.com/apernet/OpenGFW) judge the same
// inputs as censortest's rules, and must agree with them.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/apernet/OpenGFW/analyzer"
	gfwtcp "github.com/apernet/OpenGFW/analyzer/tcp"
	gfwudp "github.com/apernet/OpenGFW/analyzer/udp"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}

// openGFWBlocks is OpenGFW's verdict on a first client payload: true if
// its FET analyzer finds it fully encrypted.
func openGFWBlocks(t *testing.T, payload []byte) bool {
	s := (&gfwtcp.FETAnalyzer{}).NewTCP(analyzer.TCPInfo{}, quietLogger{})
	u, _ := s.Feed(false, true, false, 0, payload)
	if u == nil {
		t.Fatal("OpenGFW's FET analyzer gave no verdict")
	}
	yes, _ := u.M["yes"].(bool)
	return yes
}

// openGFWSNI is the SNI OpenGFW's QUIC analyzer reads from a flow's
// client datagrams, "" if none.
func openGFWSNI(datagrams [][]byte) string {
	s := (&gfwudp.QUICAnalyzer{}).NewUDP(analyzer.UDPInfo{}, quietLogger{})
	for _, d := range datagrams {
		u, done := s.Feed(false, d)
		if u != nil {
			sni, _ := u.M.Get("req.sni").(string)
			return sni
		}
		if done {
			break
		}
	}
	return ""
}

func TestFullyEncryptedAgreesWithOpenGFW(t *testing.T) {
	inputs := map[string][]byte{
		"https first flight":                 firstTCPFlight(t),
		"HTTP request":                       []byte("GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n"),
		"Ex2 printable prefix, random after": append([]byte("Ppppp!"), bytes.Repeat([]byte{0x0f, 0xf0}, 100)...),
		"Ex3 mostly printable":               append(bytes.Repeat([]byte{0x0f, 'Z', 'Z'}, 10), 0xf0),
		"Ex4 printable run": append(append([]byte{0x0f, 0xf0}, bytes.Repeat([]byte("Z"), 21)...),
			bytes.Repeat([]byte{0x0f, 0xf0, 0x99, 0xa5}, 20)...),
		"Ex1 low popcount":  bytes.Repeat([]byte{0x01, 0x80, 0x03}, 100),
		"Ex1 high popcount": bytes.Repeat([]byte{0xfe, 0xff, 0x7f}, 100),
		"Ex5 TLS record":    append([]byte{0x17, 0x03, 0x03}, bytes.Repeat([]byte{0x0f, 0xf0, 0x99, 0xa5}, 20)...),
		"random-looking":    bytes.Repeat([]byte{0x0f, 0xf0, 0x99, 0xa5}, 150),
	}
	for i := range 32 {
		b := make([]byte, 64+i*50)
		rand.Read(b)
		inputs["random "+string(rune('A'+i))] = b
	}
	for name, rec := range chromium(t) {
		inputs[name] = rec
	}
	for name, p := range inputs {
		if len(p) == 0 {
			t.Errorf("%s: empty", name)
			continue
		}
		ours := censortest.FullyEncryptedExemption(p) == censortest.NotExempt
		if theirs := openGFWBlocks(t, p); ours != theirs {
			t.Errorf("%s: censortest blocks %v (%v), OpenGFW blocks %v", name, ours, censortest.FullyEncryptedExemption(p), theirs)
		}
	}
	if censortest.FullyEncryptedExemption(inputs["https first flight"]) != censortest.ExemptProtocol {
		t.Errorf("Postern's https first flight is not exempt as TLS")
	}
}

// TestFullyEncryptedDiffersFromOpenGFW pins where the paper (which
// censortest follows) and OpenGFW part: OpenGFW exempts any payload starting
// with the first three letters of nine HTTP methods, the paper only "GET ",
// "PUT ", "POST " and "HEAD ". If OpenGFW changes, this test says so.
func TestFullyEncryptedDiffersFromOpenGFW(t *testing.T) {
	random := bytes.Repeat([]byte{0x0f, 0xf0, 0x99, 0xa5}, 50)
	for _, prefix := range []string{"OPT", "DEL", "CON", "GET"} {
		p := append([]byte(prefix), random...)
		if censortest.FullyEncryptedExemption(p) != censortest.NotExempt || openGFWBlocks(t, p) {
			t.Errorf("%q + random: censortest %v, OpenGFW blocks %v; want censortest to block and OpenGFW not",
				prefix, censortest.FullyEncryptedExemption(p), openGFWBlocks(t, p))
		}
	}
}

// TestQUICClientHelloAgreesWithOpenGFW: both read the SNI of a ClientHello
// in one datagram (RFC 9001's). Postern's h3 ClientHello (quic-go, with an
// X25519MLKEM768 key share) spans two Initial datagrams: censortest
// reassembles them, OpenGFW, like the GFW the paper measured, reads only
// what one datagram holds and finds no SNI there.
func TestQUICClientHelloAgreesWithOpenGFW(t *testing.T) {
	rfc := rfc9001Initial(t)
	if h, err := censortest.QUICClientHello(rfc); err != nil || h.ServerName != "example.com" || openGFWSNI([][]byte{rfc}) != "example.com" {
		t.Errorf("RFC 9001 Initial: censortest %v %v, OpenGFW %q", h, err, openGFWSNI([][]byte{rfc}))
	}
	ds := firstUDPFlight(t)
	h, err := censortest.QUICClientHello(ds...)
	if err != nil {
		t.Fatalf("censortest: %v", err)
	}
	if h.ServerName != relaySNI {
		t.Errorf("censortest reads SNI %q, want %q", h.ServerName, relaySNI)
	}
	sni := openGFWSNI(ds)
	_, firstAlone := censortest.QUICClientHello(ds[0])
	switch {
	case sni == h.ServerName:
	case sni == "" && firstAlone != nil:
		t.Logf("h3's ClientHello spans more than one datagram: OpenGFW reads no SNI, censortest %q", h.ServerName)
	default:
		t.Errorf("OpenGFW reads SNI %q, censortest %q", sni, h.ServerName)
	}
	junk := make([]byte, 1200)
	rand.Read(junk)
	if _, err := censortest.QUICClientHello(junk); err == nil || openGFWSNI([][]byte{junk}) != "" {
		t.Errorf("random datagram: censortest %v, OpenGFW %q", err, openGFWSNI([][]byte{junk}))
	}
}

func rfc9001Initial(t *testing.T) []byte {
	b, err := os.ReadFile("testdata/rfc9001-client-initial.hex")
	if err != nil {
		t.Fatal(err)
	}
	p, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// firstTCPFlight is the first read of a listener an https client dials.
func firstTCPFlight(t *testing.T) []byte {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		n, _ := c.Read(buf)
		got <- buf[:n]
	}()
	first := make(chan []byte, 1)
	dialAndFail(t, &https.Transport{}, ln.Addr().String(), func() { first <- <-got })
	return <-first
}

// firstUDPFlight is the first datagrams (up to 4, as they come within a
// short wait) an h3 client sends to a silent address.
func firstUDPFlight(t *testing.T) [][]byte {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got := make(chan [][]byte, 1)
	go func() {
		var ds [][]byte
		buf := make([]byte, 64<<10)
		for len(ds) < 4 {
			pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				break
			}
			ds = append(ds, bytes.Clone(buf[:n]))
		}
		got <- ds
	}()
	captured := make(chan [][]byte, 1)
	dialAndFail(t, h3.New(), pc.LocalAddr().String(), func() { captured <- <-got })
	ds := <-captured
	if len(ds) == 0 {
		t.Fatal("the h3 client sent nothing")
	}
	return ds
}

// dialAndFail dials addr, where a capture runs, and gives up once wait,
// which waits for the capture, has returned.
func dialAndFail(t *testing.T, tr transport.Transport, addr string, wait func()) {
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	go func() { wait(); cancel() }()
	key := make([]byte, transport.KeySize)
	pin := make([]byte, 32)
	if c, err := tr.Dial(ctx, transport.Endpoint{Transport: tr.Name(), Addr: addr, SNI: relaySNI,
		Path: relayPath, Key: key, CertSHA256: pin}); err == nil {
		c.Close()
		t.Fatal("dial to a capturing listener succeeded")
	}
}

func chromium(t *testing.T) map[string][]byte {
	caps, err := censortest.ChromiumCaptures()
	if err != nil {
		t.Fatal(err)
	}
	return caps
}
