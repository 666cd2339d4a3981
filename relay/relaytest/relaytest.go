// Package relaytest runs a relay server in process for tests, in the style
// of net/http/httptest: a memory store, sessions over loopback TCP, and
// helpers for mailboxes and envelopes. It is for tests only.
package relaytest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// Pipe returns both ends of a loopback TCP connection; *net.TCPConn is a
// transport.Conn.
func Pipe(t testing.TB) (transport.Conn, transport.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := <-ch
	if c2 == nil {
		t.Fatal("accept failed")
	}
	return c1.(*net.TCPConn), c2.(*net.TCPConn)
}

// Relay is a server on a memory store, stopped when the test ends.
type Relay struct {
	Server *server.Server
	Store  store.Store
	Ctx    context.Context
	wg     sync.WaitGroup
}

// New starts a relay with a memory store of opts; cfg.Store is set for
// the caller, and a zero HelloTimeout becomes 5 s.
func New(t testing.TB, opts store.Options, cfg server.Config) *Relay {
	t.Helper()
	return NewWithStore(t, store.NewMemory(opts), cfg)
}

// NewWithStore is New with the store st, closed when the test ends.
func NewWithStore(t testing.TB, st store.Store, cfg server.Config) *Relay {
	t.Helper()
	cfg.Store = st
	if cfg.HelloTimeout == 0 {
		cfg.HelloTimeout = 5 * time.Second
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{Server: srv, Store: st, Ctx: ctx}
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
		st.Close()
	})
	return r
}

// Serve serves one session on conn in the background.
func (r *Relay) Serve(conn transport.Conn, transportName string) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.Server.ServeConn(r.Ctx, conn, transportName)
	}()
}

// ServeTCP serves every connection to a new loopback TCP listener, named
// transportName, and returns the listener's address; the listener closes
// when the test ends.
func (r *Relay) ServeTCP(t testing.TB, transportName string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.Serve(c.(*net.TCPConn), transportName)
		}
	}()
	return ln.Addr().String()
}

// Connect opens a session and returns its client side, closed when the
// test ends.
func (r *Relay) Connect(t testing.TB) *client.Client {
	t.Helper()
	cc, sc := Pipe(t)
	r.Serve(sc, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, cc, client.WithRelayKey(r.Server.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Mailbox is a mailbox created on a relay with a fresh identity.
type Mailbox struct {
	ID    [32]byte
	Owner ed25519.PrivateKey
	Ident *envelope.Identity
	Card  *envelope.Card
}

// NewMailbox creates a mailbox through c; capv is its send-capability
// verifier or nil.
func NewMailbox(t testing.TB, c *client.Client, capv []byte) *Mailbox {
	t.Helper()
	_, owner, _ := ed25519.GenerateKey(nil)
	var id [32]byte
	rand.Read(id[:])
	ident, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMailbox(context.Background(), owner, id, capv); err != nil {
		t.Fatal(err)
	}
	return &Mailbox{ID: id, Owner: owner, Ident: ident, Card: ident.Card(id, nil, nil)}
}

// Seal seals an anonymous message to the mailbox in the smallest bucket.
func (m *Mailbox) Seal(t testing.TB, msg string) []byte {
	t.Helper()
	env, err := envelope.Seal(m.Card, nil, []byte(msg), &envelope.Options{Suite: envelope.SuiteX25519})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// WaitStalled fails the test unless the session c ends with a stall
// (transport.ErrStalled) before ctx does.
func WaitStalled(t testing.TB, ctx context.Context, c *client.Client) {
	t.Helper()
	select {
	case <-c.Done():
		if !errors.Is(c.Err(), transport.ErrStalled) {
			t.Fatalf("the session ended with %v, want a stall", c.Err())
		}
	case <-ctx.Done():
		t.Fatal("the session never stalled")
	}
}

// Store seals msg to the mailbox (anonymous, X25519; in 64 KiB envelopes
// when a 16 KiB one does not hold it) and stores it through c.
func (m *Mailbox) Store(t testing.TB, c *client.Client, msg []byte) {
	t.Helper()
	envs, err := envelope.SealMessage(m.Card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519})
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range envs {
		if _, err := c.Send(context.Background(), env, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// Inbox returns an inbox of the mailbox that appends the messages it
// takes to got.
func (m *Mailbox) Inbox(t testing.TB, got *[][]byte) *client.Inbox {
	t.Helper()
	in, err := client.NewInbox(client.InboxConfig{Identity: m.Ident, Take: func(msg client.Message) error {
		*got = append(*got, msg.Payload)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return in
}
