package server_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/transporttest"
)

// An idle session, after the hello and a ping, holds little of package
// server's heap: its struct with a 512-byte read buffer, timers and
// contexts, and no write buffer (2.6 KB measured; 6.9 KB when the
// read buffer held a whole 4 KiB envelope's frame). The sessions run over
// net.Pipe with the client's frames written by hand, and the heap counted
// is what allocations made from package server's functions hold, exact at
// runtime.MemProfileRate 1.
func TestIdleSessionHeap(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	const sessions = 200
	st := store.NewMemory(store.Options{})
	defer st.Close()
	srv, err := server.New(server.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	before := serverHeap()
	for range sessions {
		c, s := net.Pipe()
		defer c.Close()
		wg.Go(func() { srv.ServeConn(ctx, pipeConn{s}, "pipe") })
		if err := idleHandshake(c); err != nil {
			t.Fatal(err)
		}
	}
	per := float64(serverHeap()-before) / sessions
	t.Logf("package server's heap per idle session: %.0f B", per)
	if per > 4096 {
		t.Errorf("an idle session holds %.0f B of package server's heap, want under 4 KiB: is a buffer held while the session waits?", per)
	}
}

// serverHeap is the heap in use by allocations with a function of package
// server on their stack, after garbage collection.
func serverHeap() int64 {
	return transporttest.LiveHeap(func(fn string) bool {
		return strings.Contains(fn, "postern/relay/server.") && !strings.Contains(fn, "server_test.")
	})
}
