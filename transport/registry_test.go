package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// fakeTransport records what it was asked to dial and returns a net.Pipe.
type fakeTransport struct {
	name string
	err  error

	mu     sync.Mutex
	dialed []Endpoint
}

func (f *fakeTransport) Name() string { return f.name }

func (f *fakeTransport) Dial(ctx context.Context, ep Endpoint) (Conn, error) {
	f.mu.Lock()
	f.dialed = append(f.dialed, ep)
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	a, b := net.Pipe()
	b.Close()
	return pipeConn{a}, nil
}

func (f *fakeTransport) Listen(context.Context, ListenConfig) (Listener, error) {
	return nil, errors.New("fake: no listener")
}

type pipeConn struct{ net.Conn }

func (pipeConn) CloseWrite() error { return nil }

func TestRegistryRegisterAndGet(t *testing.T) {
	var r Registry // zero value is ready
	if names := r.Names(); len(names) != 0 {
		t.Fatalf("empty registry lists %v", names)
	}
	https := &fakeTransport{name: "https"}
	h3 := &fakeTransport{name: "h3"}
	for _, tr := range []*fakeTransport{https, h3} {
		if err := r.Register(tr); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := r.Get("https"); err != nil || got != https {
		t.Fatalf("Get(https) = %v, %v", got, err)
	}
	if got, err := r.Get("h3"); err != nil || got != h3 {
		t.Fatalf("Get(h3) = %v, %v", got, err)
	}
	if got := fmt.Sprint(r.Names()); got != "[h3 https]" {
		t.Fatalf("Names = %s, want sorted [h3 https]", got)
	}
}

func TestRegistryDuplicate(t *testing.T) {
	var r Registry
	first := &fakeTransport{name: "https"}
	if err := r.Register(first); err != nil {
		t.Fatal(err)
	}
	err := r.Register(&fakeTransport{name: "https"})
	if err == nil {
		t.Fatal("registering https twice succeeded")
	}
	if !strings.Contains(err.Error(), `"https"`) {
		t.Errorf("duplicate error %q does not name the transport", err)
	}
	if got, _ := r.Get("https"); got != first {
		t.Error("the second registration replaced the first")
	}
}

func TestRegistryUnknown(t *testing.T) {
	var r Registry
	_, err := r.Get("meek")
	if !errors.Is(err, ErrUnknownTransport) {
		t.Fatalf("Get on empty registry: %v", err)
	}
	r.Register(&fakeTransport{name: "https"})
	r.Register(&fakeTransport{name: "h3"})
	_, err = r.Get("obfs4")
	if !errors.Is(err, ErrUnknownTransport) {
		t.Fatalf("Get(obfs4): %v is not ErrUnknownTransport", err)
	}
	for _, want := range []string{"obfs4", "h3", "https"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestRegistryDial(t *testing.T) {
	var r Registry
	https := &fakeTransport{name: "https"}
	broken := &fakeTransport{name: "h3", err: &Error{Class: ClassTimeout, Op: "dial", Transport: "h3", Err: errors.New("no answer")}}
	r.Register(https)
	r.Register(broken)

	ep := Endpoint{Transport: "https", Addr: "127.0.0.1:443", Path: "/x", Key: make([]byte, KeySize)}
	c, err := r.Dial(context.Background(), ep)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(https.dialed) != 1 || https.dialed[0].Addr != ep.Addr || https.dialed[0].Path != ep.Path {
		t.Fatalf("https transport was dialed with %+v", https.dialed)
	}
	if len(broken.dialed) != 0 {
		t.Fatal("the wrong transport was dialed")
	}

	// The transport's typed error comes back unchanged.
	ep.Transport = "h3"
	_, err = r.Dial(context.Background(), ep)
	if !errors.Is(err, ErrTimeout) || ClassOf(err) != ClassTimeout {
		t.Fatalf("Dial via broken h3: %v", err)
	}

	// An unknown transport is an invalid-class *Error (a misconfigured
	// endpoint) that still says what was unknown and what is known, and no
	// address.
	ep.Transport = "meek"
	_, err = r.Dial(context.Background(), ep)
	var te *Error
	if !errors.As(err, &te) || te.Class != ClassInvalid || te.Op != "dial" || te.Transport != "meek" {
		t.Fatalf("Dial(meek) = %#v", err)
	}
	if !errors.Is(err, ErrUnknownTransport) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("Dial(meek) = %v: not ErrUnknownTransport and ErrInvalid", err)
	}
	if msg := err.Error(); strings.Contains(msg, ep.Addr) || !strings.Contains(msg, "https") {
		t.Fatalf("Dial(meek) message %q", msg)
	}
}

func TestRegistryConcurrent(t *testing.T) {
	var r Registry
	var wg sync.WaitGroup
	const n = 8
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func(i int) {
			defer wg.Done()
			errs <- r.Register(&fakeTransport{name: fmt.Sprintf("t%d", i)})
		}(i)
		go func(i int) {
			defer wg.Done()
			// Either registered already or not yet: never anything else.
			if _, err := r.Get(fmt.Sprintf("t%d", i)); err != nil && !errors.Is(err, ErrUnknownTransport) {
				errs <- err
			}
			r.Names()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(r.Names()) != n {
		t.Fatalf("Names = %v", r.Names())
	}
}
