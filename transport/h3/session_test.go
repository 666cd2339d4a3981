package h3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
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
	if s.LocalAddr().String() != r.ln.Addr().String() {
		t.Errorf("relay side LocalAddr %v, want the listener's %v", s.LocalAddr(), r.ln.Addr())
	}
	s.SetDeadline(time.Time{})
	s.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := s.Write([]byte("x")); transport.ClassOf(err) != transport.ClassTimeout {
		t.Errorf("Write past deadline: %v, want ClassTimeout", err)
	}
}

// TestDialRootCAs: without a pin the certificate is verified against
// Endpoint.RootCAs. The failures every transport shares are in
// transport/classes_test.go.
func TestDialRootCAs(t *testing.T) {
	r := startRelay(t, nil, nil)
	serveEcho(t, r.ln)
	ep := r.ep
	ep.CertSHA256, ep.RootCAs = nil, selfSigned(t).pool
	transporttest.EchoRoundTrip(t, dialT(t, ep), []byte("via roots"))
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
