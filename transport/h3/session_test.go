package h3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

func TestEchoRoundTrip(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	for _, size := range []int{0, 1, 1200, 100 << 10, 16 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			c := dialT(t, r.ep)
			transporttest.EchoRoundTrip(t, c, pattern(size, byte(size)))
		})
	}
	if got := r.obs.Get(transport.OutcomeOK); got != 5 {
		t.Errorf("Observe(ok) called %d times, want 5", got)
	}
}

func TestConcurrentSessions(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	const sessions = 30
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				c := dialT(t, r.ep)
				transporttest.EchoRoundTrip(t, c, pattern(64<<10+i, byte(i)))
			})
		})
	}
	wg.Wait()
}

func TestCloseUnblocks(t *testing.T) {
	for _, side := range []string{"client", "relay"} {
		t.Run(side, func(t *testing.T) {
			r := startRelay(t, nil, nil)
			c := dialT(t, r.ep)
			s, err := r.ln.Accept(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			local, peer := c, s
			if side == "relay" {
				local, peer = s, c
			}
			readErr := make(chan error, 1)
			go func() {
				_, err := local.Read(make([]byte, 10))
				readErr <- err
			}()
			if err := local.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			select {
			case err := <-readErr:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Read after Close: %v, want an error wrapping net.ErrClosed", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Read still blocked 10s after Close")
			}
			if _, err := local.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close: %v, want net.ErrClosed", err)
			}
			// The peer learns the session ended.
			if _, err := io.Copy(io.Discard, peer); err != nil && transport.ClassOf(err) == transport.ClassUnknown {
				t.Errorf("peer read after remote Close: unclassified error %v", err)
			}
		})
	}
}

func TestCloseUnblocksWrite(t *testing.T) {
	r := startRelay(t, nil, nil)
	c := dialT(t, r.ep)
	s, err := r.ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads on the client: the relay's writes fill flow control
	// windows and block; Close must unblock them.
	writeErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		for range 64 { // 64 MiB, far above quic-go's windows
			if _, err := s.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	s.Close()
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("64 MiB written to a peer that never reads")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write still blocked 10s after Close")
	}
	_ = c
}

// A Close'd listener refuses Accept and ends sessions.
func TestListenerClose(t *testing.T) {
	r := startRelay(t, nil, nil)
	c := dialT(t, r.ep)
	s, err := r.ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := r.ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := r.ln.Accept(t.Context()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := io.Copy(io.Discard, c); err == nil {
		t.Error("client session read EOF after listener Close, want an error")
	}
	// The port is free again.
	pc, err := net.ListenPacket("udp", r.ep.Addr)
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	pc.Close()
}

func TestMaxSessions(t *testing.T) {
	r := startRelay(t, &Transport{MaxSessions: 2}, nil)
	ended := make(chan struct{}, 8)
	go func() {
		for {
			s, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				io.Copy(s, s) // echo until the client goes away
				s.Close()     // frees the slot
				ended <- struct{}{}
			}()
		}
	}()
	a := dialT(t, r.ep)
	dialT(t, r.ep)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := New().Dial(ctx, r.ep); transport.ClassOf(err) != transport.ClassAuth {
		t.Fatalf("third session: %v, want ClassAuth (cover site)", err)
	}
	if got := r.obs.Get(transport.OutcomeOK); got != 2 {
		t.Errorf("Observe(ok) = %d, want 2", got)
	}
	if got := r.obs.Get(transport.OutcomeBusy); got != 1 {
		t.Errorf("Observe(busy) = %d, want 1", got)
	}
	a.Close()
	<-ended
	c, err := New().Dial(ctx, r.ep)
	if err != nil {
		t.Fatalf("no slot after a session ended: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("echo on the new session: %q, %v", buf, err)
	}
}

func TestRelayDeadlines(t *testing.T) {
	r := startRelay(t, nil, nil)
	c := dialT(t, r.ep)
	s, err := r.ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := s.Read(make([]byte, 1)); transport.ClassOf(err) != transport.ClassTimeout {
		t.Errorf("Read past deadline: %v, want ClassTimeout", err)
	}
	if err := c.SetDeadline(time.Now()); !errors.Is(err, transport.ErrDeadlineUnsupported) {
		t.Errorf("client SetDeadline: %v, want ErrDeadlineUnsupported", err)
	}
}

func TestDialErrors(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	tc := selfSigned(t)

	// A UDP port with nothing behind it: reserve one, then free it.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := pc.LocalAddr().String()
	pc.Close()

	wrongPin := bytes.Repeat([]byte{1}, 32)
	otherKey := bytes.Repeat([]byte{0x11}, transport.KeySize)

	tests := []struct {
		name    string
		edit    func(*transport.Endpoint)
		timeout time.Duration
		want    transport.Class
	}{
		{"nothing listening", func(ep *transport.Endpoint) { ep.Addr = deadAddr }, 500 * time.Millisecond, transport.ClassTimeout},
		{"pin mismatch", func(ep *transport.Endpoint) { ep.CertSHA256 = wrongPin }, 0, transport.ClassTLS},
		{"unknown authority", func(ep *transport.Endpoint) { ep.CertSHA256 = nil }, 0, transport.ClassTLS},
		{"wrong name", func(ep *transport.Endpoint) { ep.CertSHA256, ep.RootCAs, ep.SNI = nil, tc.pool, "other.example" }, 0, transport.ClassTLS},
		{"wrong key", func(ep *transport.Endpoint) { ep.Key = otherKey }, 0, transport.ClassAuth},
		{"wrong path", func(ep *transport.Endpoint) { ep.Path = "/elsewhere" }, 0, transport.ClassAuth},
		{"unbound token refused", func(ep *transport.Endpoint) { ep.Unbound = true }, 0, transport.ClassAuth},
		{"bad address", func(ep *transport.Endpoint) { ep.Addr = "no-port" }, 0, transport.ClassProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := r.ep
			tt.edit(&ep)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 20 * time.Second
			}
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			c, err := New().Dial(ctx, ep)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var te *transport.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %T %v is not a *transport.Error", err, err)
			}
			if te.Class != tt.want {
				t.Errorf("class %v (%v), want %v", te.Class, err, tt.want)
			}
			msg := err.Error()
			t.Logf("%v", err)
			host, port, _ := net.SplitHostPort(ep.Addr)
			for _, leak := range []string{ep.Addr, host + ":", ":" + port, testSNI, "other.example"} {
				if leak != ":" && strings.Contains(msg, leak) {
					t.Errorf("error %q contains %q", msg, leak)
				}
			}
		})
	}
	// The happy path with CA verification instead of a pin.
	t.Run("ca verified", func(t *testing.T) {
		ep := r.ep
		ep.CertSHA256, ep.RootCAs = nil, tc.pool
		transporttest.EchoRoundTrip(t, dialT(t, ep), []byte("via roots"))
	})
}

func TestDialCanceled(t *testing.T) {
	r := startRelay(t, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := New().Dial(ctx, r.ep)
	if transport.ClassOf(err) != transport.ClassCanceled {
		t.Fatalf("Dial with canceled ctx: %v, want ClassCanceled", err)
	}
}

func TestUnboundAllowed(t *testing.T) {
	r := startRelay(t, nil, func(cfg *transport.ListenConfig) { cfg.AllowUnbound = true })
	serveEcho(t, r.ln)
	ep := r.ep
	ep.Unbound = true
	transporttest.EchoRoundTrip(t, dialT(t, ep), []byte("through a front"))
	// Bound tokens keep working on such a listener.
	transporttest.EchoRoundTrip(t, dialT(t, r.ep), []byte("direct"))
}

func TestListenConfigErrors(t *testing.T) {
	tc := selfSigned(t)
	good := transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: tc.cert, Path: testPath, Key: testKey}
	tests := []struct {
		name string
		edit func(*transport.ListenConfig)
	}{
		{"no addr", func(c *transport.ListenConfig) { c.Addr = "" }},
		{"no cert", func(c *transport.ListenConfig) { c.Certificate.Certificate = nil }},
		{"relative path", func(c *transport.ListenConfig) { c.Path = "api" }},
		{"short key", func(c *transport.ListenConfig) { c.Key = c.Key[:16] }},
		{"bad addr", func(c *transport.ListenConfig) { c.Addr = "127.0.0.1:99999" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			ln, err := New().Listen(t.Context(), cfg)
			if err == nil {
				ln.Close()
				t.Fatal("Listen succeeded")
			}
			var te *transport.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %T is not a *transport.Error", err)
			}
		})
	}
}
