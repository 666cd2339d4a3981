package link_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestLinkReconnects: a link comes up, carries requests, notices its
// session die, redials after failures and comes up again.
func TestLinkReconnects(t *testing.T) {
	peer := relaytest.New(t, store.Options{}, server.Config{})
	var down atomic.Bool
	var dials atomic.Int32
	var mu sync.Mutex
	var events []bool
	l := link.New(link.Config{
		Dial: func(ctx context.Context) (*client.Client, error) {
			dials.Add(1)
			if down.Load() {
				return nil, errors.New("peer unreachable")
			}
			cc, sc := relaytest.Pipe(t)
			peer.Serve(sc, "link")
			return client.New(ctx, cc)
		},
		Ping:       20 * time.Millisecond,
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
		Observe: func(up bool) { mu.Lock(); events = append(events, up); mu.Unlock() },
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	c, err := l.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil || !l.Up() {
		t.Fatalf("ping over the link: %v, up %v", err, l.Up())
	}
	// The peer becomes unreachable and the session dies.
	down.Store(true)
	before := dials.Load()
	c.Close()
	for dials.Load() < before+3 {
		time.Sleep(time.Millisecond)
	}
	if l.Up() {
		t.Fatal("link up with no session")
	}
	// While its last dial failed, Session says so at once.
	if _, err := l.Session(ctx); err == nil || err.Error() != "peer unreachable" {
		t.Fatalf("Session while the peer is down: %v", err)
	}
	down.Store(false)
	var c2 *client.Client
	for c2 == nil { // until the link's next dial
		if c2, err = l.Session(ctx); ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if c2 == c {
		t.Fatal("the dead session was handed out again")
	}
	if err := c2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 4 || !events[0] || events[1] || !events[2] || events[3] {
		t.Fatalf("observed %v, want up, down, up, down", events)
	}
	// Session on a stopped link waits for its context.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer scancel()
	if _, err := l.Session(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Session on a stopped link: %v", err)
	}
}

// TestLinkBacksOffShortSessions: a session that dies as soon as it is up
// (a peer, or a middlebox, that cuts links after the handshake) counts as
// a failed dial: the link waits its backoff before it dials again,
// instead of redialling as fast as it is cut. (A slow host only makes
// fewer dials.)
func TestLinkBacksOffShortSessions(t *testing.T) {
	peer := relaytest.New(t, store.Options{}, server.Config{})
	var dials atomic.Int32
	l := link.New(link.Config{
		Dial: func(ctx context.Context) (*client.Client, error) {
			dials.Add(1)
			cc, sc := relaytest.Pipe(t)
			peer.Serve(sc, "link")
			c, err := client.New(ctx, cc)
			if err == nil {
				c.Close() // cut at once
			}
			return c, err
		},
		MinBackoff: time.Second, MaxBackoff: time.Minute,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	l.Run(ctx)
	// The first redial comes half a backoff (0.5 s) after the first cut
	// at the soonest.
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials in 300 ms, with a minimum backoff of 1 s", n)
	}
}

// TestLinkSessionFailsWithDial: Session returns the error of the link's
// last dial, which failed, instead of waiting out the link's backoff.
func TestLinkSessionFailsWithDial(t *testing.T) {
	refused := errors.New("peer unreachable")
	l := link.New(link.Config{
		Dial:       func(context.Context) (*client.Client, error) { return nil, refused },
		MinBackoff: time.Hour, MaxBackoff: time.Hour,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	go l.Run(ctx)
	if _, err := l.Session(ctx); !errors.Is(err, refused) {
		t.Fatalf("Session = %v, want the dial's error", err)
	}
}
