package https

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

func TestEchoRoundTrip(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)
	for _, size := range []int{1, 1000, 100 << 10, 32 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := make([]byte, size)
			rand.Read(data)
			c := dial(t, r.ep)
			defer c.Close()
			transporttest.EchoRoundTrip(t, c, data)
		})
	}
	if got := r.obs.Get(transport.OutcomeOK); got != 4 {
		t.Errorf("Observe(ok) called %d times, want 4", got)
	}
}

func TestConcurrentSessions(t *testing.T) {
	// 50 handshakes at once on 2 shared cores under -race can take longer
	// than the default header timeout; this test is about sessions.
	r := startRelay(t, &Transport{ReadHeaderTimeout: time.Minute}, nil)
	serveEcho(r.ln)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := (&Transport{}).Dial(context.Background(), r.ep)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			data := bytes.Repeat([]byte{byte(i)}, 64<<10+i)
			go func() { c.Write(data); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("session %d: echo mismatch (%d bytes)", i, len(got))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// acceptOne dials and returns both ends of one session.
func acceptOne(t *testing.T, r *relay) (client, server transport.Conn) {
	t.Helper()
	ch := make(chan transport.Conn, 1)
	go func() {
		c, err := r.ln.Accept(context.Background())
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	client = dial(t, r.ep)
	server = within(t, "accept", ch)
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestCloseUnblocks(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)

	t.Run("client read", func(t *testing.T) {
		c, _ := acceptOne(t, r)
		done := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 10)); done <- err }()
		c.Close()
		if err := within(t, "client Read after Close", done); err == nil {
			t.Error("Read returned no error after Close")
		}
	})
	t.Run("server read", func(t *testing.T) {
		c, s := acceptOne(t, r)
		done := make(chan error, 1)
		go func() { _, err := s.Read(make([]byte, 10)); done <- err }()
		s.Close()
		if err := within(t, "server Read after Close", done); !errors.Is(err, net.ErrClosed) {
			t.Errorf("server Read after Close: %v, want net.ErrClosed", err)
		}
		// The peer sees the session end.
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("client read after server Close: %v", err)
		}
	})
	t.Run("server write to a peer that does not read", func(t *testing.T) {
		_, s := acceptOne(t, r)
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 1<<20)
			for range 64 { // far beyond HTTP/2 flow-control windows
				if _, err := s.Write(buf); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		// Wait until the writer is stuck (flow control) by closing
		// concurrently: either way Write must return.
		s.Close()
		if err := within(t, "server Write after Close", done); err == nil {
			t.Error("64 MiB written to a peer that reads nothing")
		}
	})
	t.Run("client write to a relay that does not read", func(t *testing.T) {
		c, _ := acceptOne(t, r)
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 1<<20)
			for range 64 {
				if _, err := c.Write(buf); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		c.Close()
		if err := within(t, "client Write after Close", done); err == nil {
			t.Error("64 MiB written to a relay that reads nothing")
		}
	})
}

func TestListenerCloseEndsSessions(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	c, s := acceptOne(t, r)
	readDone := make(chan error, 1)
	go func() { _, err := io.ReadAll(c); readDone <- err }()
	srvDone := make(chan error, 1)
	go func() { _, err := s.Read(make([]byte, 1)); srvDone <- err }()
	if err := r.ln.Close(); err != nil {
		t.Fatal(err)
	}
	within(t, "client read after listener Close", readDone)
	if err := within(t, "server read after listener Close", srvDone); err == nil {
		t.Error("server Read succeeded after listener Close")
	}
	if _, err := r.ln.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := (&Transport{}).Dial(context.Background(), r.ep); transport.ClassOf(err) != transport.ClassRefused {
		t.Errorf("dial closed listener: %v, want class refused", err)
	}
}

func TestDeadlinesUnsupported(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	c, s := acceptOne(t, r)
	for i, conn := range []transport.Conn{c, s} {
		for _, set := range []func(time.Time) error{conn.SetDeadline, conn.SetReadDeadline, conn.SetWriteDeadline} {
			if err := set(time.Now()); !errors.Is(err, transport.ErrDeadlineUnsupported) {
				t.Errorf("conn %d: deadline error %v, want ErrDeadlineUnsupported", i, err)
			}
		}
	}
}

// TestDialErrors covers the failures only this transport has; the ones
// every transport shares are in transport/classes_test.go.
func TestDialErrors(t *testing.T) {
	r := startRelay(t, &Transport{}, nil)
	serveEcho(r.ln)

	// An ordinary HTTPS server that only speaks HTTP/1.1.
	h1ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert(t)}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	h1 := &http.Server{Handler: http.NotFoundHandler()}
	go h1.Serve(h1ln)
	defer h1.Close()

	tests := []struct {
		name  string
		mod   func(*transport.Endpoint)
		class transport.Class
	}{
		{"http/1.1 only", func(ep *transport.Endpoint) { ep.Addr = h1ln.Addr().String() }, transport.ClassProtocol},
		{"unknown preset", func(ep *transport.Endpoint) { ep.Fingerprint = "netscape" }, transport.ClassInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ep := r.ep
			tc.mod(&ep)
			c, err := (&Transport{}).Dial(context.Background(), ep)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if got := transport.ClassOf(err); got != tc.class {
				t.Errorf("class %v, want %v (%v)", got, tc.class, err)
			}
			if strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("error reveals the address: %v", err)
			}
		})
	}

	t.Run("root CAs instead of pin", func(t *testing.T) {
		roots := x509.NewCertPool()
		roots.AddCert(cert(t).Leaf)
		ep := r.ep
		ep.CertSHA256 = nil
		ep.RootCAs = roots
		c, err := (&Transport{}).Dial(context.Background(), ep)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		transporttest.EchoRoundTrip(t, c, []byte("verified by roots"))
	})
}
