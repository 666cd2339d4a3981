package h3_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/postern/postern/transport/censortest"
)

// flight is what a QUIC client showed a recorder: its datagrams that
// start with an Initial packet (the first ones hold the ClientHello, which
// a censor on the path decrypts) and, from the completed handshake, its HTTP/3
// SETTINGS frame (encrypted on the wire: only the server reads it).
type flight struct {
	Initial  [][]byte // UDP payloads, in order
	Settings []byte   // SETTINGS frame payload (id, value varint pairs)
}

// recordSNI is the name the clients are pointed at; the recorder's
// certificate holds it, so a client may verify or pin it.
const recordSNI = "relay.example"

// recorder is a UDP proxy in front of a quic-go server (ALPN h3, TLS 1.3).
// It keeps the client's datagrams up to the server's first reply and the
// client's HTTP/3 control stream SETTINGS; then the server closes the
// connection, so the client's request fails.
type recorder struct {
	front, back *net.UDPConn // client side; server side
	ln          *quic.Listener
	pin         []byte // SHA-256 of the certificate's SubjectPublicKeyInfo

	mu       sync.Mutex
	client   *net.UDPAddr
	initial  [][]byte // Initial datagrams until the ClientHello is whole
	complete bool     // the ClientHello is whole: forward at once
	settings chan []byte
}

func newRecorder(t testing.TB) *recorder {
	t.Helper()
	cert, pin := recorderCert(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h3"},
		MinVersion:   tls.VersionTLS13,
	}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, ln.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{front: front, back: back, ln: ln, pin: pin, settings: make(chan []byte, 1)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); front.Close(); back.Close(); wg.Wait() })
	wg.Go(r.forward)
	wg.Go(r.reply)
	wg.Go(r.serve)
	return r
}

// Addr is the address clients dial.
func (r *recorder) Addr() string { return r.front.LocalAddr().String() }

// forward sends the client's datagrams on to the server. It holds them
// back until their Initial packets carry a whole ClientHello, so that the
// server's first reply cannot make the client switch connection IDs in the
// middle of its first flight (as on a path with a real round-trip time),
// and records them. The first sender is the client; datagrams from any
// other address are dropped.
func (r *recorder) forward() {
	buf := make([]byte, 64<<10)
	var held [][]byte
	for {
		n, from, err := r.front.ReadFromUDP(buf)
		if err != nil {
			return
		}
		d := bytes.Clone(buf[:n])
		r.mu.Lock()
		if r.client == nil {
			r.client = from
		}
		ours := from.AddrPort() == r.client.AddrPort()
		if ours && !r.complete {
			held = append(held, d)
			if isInitial(d) && len(r.initial) < maxInitials {
				r.initial = append(r.initial, d)
				_, err := censortest.QUICClientHello(r.initial...)
				r.complete = err == nil
			}
		}
		complete := r.complete
		r.mu.Unlock()
		if !ours || !complete {
			continue
		}
		if held == nil { // passing through
			r.back.Write(d)
			continue
		}
		for _, h := range held { // the ClientHello is whole: flush
			r.back.Write(h)
		}
		held = nil
	}
}

// maxInitials bounds the datagrams a recorder keeps; a ClientHello with
// a post-quantum key share fills two.
const maxInitials = 8

// isInitial reports whether d starts with a QUIC long-header packet of
// type Initial (RFC 9000, section 17.2: form and fixed bits set, type 0;
// the low four bits are under header protection).
func isInitial(d []byte) bool { return len(d) > 0 && d[0]&0xf0 == 0xc0 }

// reply sends the server's datagrams back to the client.
func (r *recorder) reply() {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.back.Read(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		client := r.client
		r.mu.Unlock()
		if client != nil {
			r.front.WriteToUDP(buf[:n], client)
		}
	}
}

// serve accepts the first connection and reads the SETTINGS frame from
// the client's control stream (RFC 9114, section 6.2.1: stream type 0x00,
// then a SETTINGS frame, type 0x04), then closes the connection.
func (r *recorder) serve() {
	c, err := r.ln.Accept(context.Background())
	if err != nil {
		return
	}
	defer c.CloseWithError(0x100, "") // H3_NO_ERROR
	for {
		str, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		br := bufio.NewReader(str)
		if typ, err := quicvarint.Read(br); err != nil || typ != 0 {
			continue // QPACK encoder/decoder or a reserved stream type
		}
		payload, err := readSettings(br)
		if err == nil {
			r.settings <- payload
		}
		return
	}
}

func readSettings(br *bufio.Reader) ([]byte, error) {
	typ, err := quicvarint.Read(br)
	if err != nil {
		return nil, err
	}
	n, err := quicvarint.Read(br)
	if err != nil {
		return nil, err
	}
	if typ != 0x04 || n > 8<<10 {
		return nil, errors.New("control stream does not start with SETTINGS")
	}
	payload := make([]byte, n)
	_, err = io.ReadFull(br, payload)
	return payload, err
}

// wait returns the flight once the client's SETTINGS arrived, or what it
// has when ctx ends.
func (r *recorder) wait(ctx context.Context) (flight, error) {
	var f flight
	select {
	case f.Settings = <-r.settings:
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	f.Initial = append([][]byte(nil), r.initial...)
	if len(f.Initial) == 0 {
		return f, errors.New("the client sent no datagram")
	}
	if f.Settings == nil {
		return f, fmt.Errorf("no HTTP/3 SETTINGS from the client (%d Initial datagrams, ClientHello whole: %v)", len(f.Initial), r.complete)
	}
	return f, nil
}

// recorderCert is a self-signed P-256 certificate for recordSNI.
func recorderCert(t testing.TB) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: recordSNI},
		DNSNames:     []string{recordSNI},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pin := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pin[:]
}
