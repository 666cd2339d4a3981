package h3

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/postern/postern/transport"
)

func TestName(t *testing.T) {
	if New().Name() != Name || Name != "h3" {
		t.Fatalf("Name %q", New().Name())
	}
}

// Endpoint checks come before any socket; a canceled dial is canceled.
// (transport/classes_test.go compares all classes with https.)
func TestDialEarlyFailures(t *testing.T) {
	r := startRelay(t, nil, nil)
	ep := r.ep
	ep.Key = ep.Key[:8]
	if _, err := New().Dial(t.Context(), ep); transport.ClassOf(err) != transport.ClassInvalid {
		t.Errorf("short key: %v, want ClassInvalid", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := New().Dial(ctx, r.ep); transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("canceled: %v, want ClassCanceled", err)
	}
}

func TestResolve(t *testing.T) {
	a, err := resolve(t.Context(), "localhost", "4433")
	if err != nil {
		t.Fatal(err)
	}
	if !a.IP.IsLoopback() || a.Port != 4433 {
		t.Errorf("localhost resolved to %v", a)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := resolve(ctx, "relay.invalid", "443"); err == nil {
		t.Error("lookup with a canceled context succeeded")
	}
}

func TestListenSocketErrors(t *testing.T) {
	r := startRelay(t, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	cfg := transport.ListenConfig{Addr: "127.0.0.1:0", Certificate: selfSigned(t).cert, Path: testPath, Key: testKey}
	if _, err := New().Listen(ctx, cfg); transport.ClassOf(err) != transport.ClassCanceled {
		t.Errorf("canceled Listen: %v", err)
	}
	cfg.Addr = r.ep.Addr // taken
	if ln, err := New().Listen(t.Context(), cfg); err == nil {
		ln.Close()
		t.Error("Listen on a port in use succeeded")
	}
}

// A session the relay never accepted ends with the listener.
func TestCloseWithSessionNotAccepted(t *testing.T) {
	r := startRelay(t, nil, nil)
	c := dialT(t, r.ep) // answered 200; its handler waits for Accept
	if err := r.ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err == nil {
		t.Error("session read ended cleanly after the listener closed")
	}
	if _, err := r.ln.Accept(t.Context()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}
