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
	down.Store(false)
	c2, err := l.Session(ctx)
	if err != nil {
		t.Fatal(err)
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
