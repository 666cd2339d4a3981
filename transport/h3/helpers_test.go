package h3

import (
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
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

func TestMain(m *testing.M) {
	// This machine cannot raise UDP buffer sizes; quic-go would print a
	// warning through the standard logger once per process.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	os.Exit(m.Run())
}

var (
	testKey  = bytes.Repeat([]byte{0x5a}, transport.KeySize)
	testPath = "/api/v2/sync"
	testSNI  = "relay.example"
)

type testCert struct {
	cert tls.Certificate
	pin  []byte // SHA-256 of the SubjectPublicKeyInfo
	pool *x509.CertPool
}

var (
	certOnce sync.Once
	certVal  testCert
)

// selfSigned returns a self-signed certificate for testSNI and 127.0.0.1,
// made once per test binary.
func selfSigned(t testing.TB) testCert {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: testSNI},
			DNSNames:     []string{testSNI},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		certVal = testCert{
			cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
			pin:  sum[:],
			pool: pool,
		}
	})
	return certVal
}

// testCover is a small static cover site used by most tests.
var testCover = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "404 page not found\n")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=600")
	io.WriteString(w, "<!doctype html><title>Field notes</title><p>Nothing new today.</p>\n")
})

type outcomes = transporttest.Outcomes

type relay struct {
	ln  transport.Listener
	ep  transport.Endpoint
	obs *outcomes
}

// startRelay starts an h3 listener on 127.0.0.1 and returns it with a
// matching client endpoint (pinned certificate). edit may change cfg.
func startRelay(t testing.TB, tr *Transport, edit func(*transport.ListenConfig)) *relay {
	t.Helper()
	tc := selfSigned(t)
	obs := &outcomes{}
	cfg := transport.ListenConfig{
		Addr:        "127.0.0.1:0",
		Certificate: tc.cert,
		Path:        testPath,
		Key:         testKey,
		Cover:       testCover,
		Observe:     obs.Observe,
	}
	if edit != nil {
		edit(&cfg)
	}
	if tr == nil {
		tr = New()
	}
	ln, err := tr.Listen(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return &relay{
		ln:  ln,
		obs: obs,
		ep: transport.Endpoint{
			Transport:  Name,
			Addr:       ln.Addr().String(),
			SNI:        testSNI,
			Path:       testPath,
			Key:        testKey,
			CertSHA256: tc.pin,
		},
	}
}

// serveEcho accepts sessions until the listener closes and echoes each one:
// everything read is written back; at end of input the write side is closed.
func serveEcho(t testing.TB, ln transport.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { ln.Close() }) // runs before wg.Wait
	wg.Go(func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Accept: %v", err)
				}
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				c.CloseWrite()
			})
		}
	})
}

func dialT(t testing.TB, ep transport.Endpoint) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := New().Dial(ctx, ep)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pattern returns n deterministic, non-repeating-looking bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// envCount is the positive integer in the environment variable name, or
// def.
func envCount(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// plainDial dials addr over qt as a plain HTTP/3 client of the test relay
// (no session: a browser, a prober) with conf.
func plainDial(ctx context.Context, qt *quic.Transport, addr string, conf *quic.Config) (*quic.Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	return qt.Dial(ctx, raddr, &tls.Config{ServerName: testSNI, InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}}, conf)
}
