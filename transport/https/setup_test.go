package https

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

var (
	certOnce sync.Once
	testCert tls.Certificate
	certErr  error
)

// cert returns one self-signed certificate for 127.0.0.1 shared by all tests.
func cert(t testing.TB) tls.Certificate {
	certOnce.Do(func() { testCert, certErr = SelfSigned("127.0.0.1", "relay.test") })
	if certErr != nil {
		t.Fatal(certErr)
	}
	return testCert
}

func pin(t testing.TB) []byte {
	p, err := CertPin(cert(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type outcomes = transporttest.Outcomes

type relay struct {
	ln  transport.Listener
	ep  transport.Endpoint
	cfg transport.ListenConfig
	obs *outcomes
}

const testPath = "/api/v2/sync"

// startRelay starts a listener on 127.0.0.1 and returns it with a matching
// endpoint. mod may adjust the config before Listen.
func startRelay(t testing.TB, tr *Transport, mod func(*transport.ListenConfig)) *relay {
	t.Helper()
	key := make([]byte, transport.KeySize)
	rand.Read(key)
	obs := &outcomes{}
	cfg := transport.ListenConfig{
		Addr:        "127.0.0.1:0",
		Certificate: cert(t),
		Path:        testPath,
		Key:         key,
		Observe:     obs.Observe,
	}
	if mod != nil {
		mod(&cfg)
	}
	ln, err := tr.Listen(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &relay{
		ln:  ln,
		cfg: cfg,
		obs: obs,
		ep: transport.Endpoint{
			Transport:  Name,
			Addr:       ln.Addr().String(),
			SNI:        "relay.test",
			Path:       testPath,
			Key:        key,
			CertSHA256: pin(t),
		},
	}
}

// serveEcho accepts sessions and echoes each until the client half-closes,
// then half-closes and closes.
func serveEcho(ln transport.Listener) {
	go func() {
		for {
			c, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				c.CloseWrite()
			}()
		}
	}()
}

func dial(t testing.TB, ep transport.Endpoint) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := (&Transport{}).Dial(ctx, ep)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

// tlsDial opens a plain crypto/tls connection to addr.
func tlsDial(t testing.TB, addr string, protos ...string) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(cert(t).Leaf)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "relay.test", NextProtos: protos})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func isClosedErr(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe))
}

// within fails the test if ch does not deliver in a generous time; it
// guards against hangs, it does not measure anything.
func within[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: still blocked after 20s", what)
		panic("unreachable")
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
