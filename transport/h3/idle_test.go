package h3

import (
	"context"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// http3 keeps a request as long as its stream (the stream's trailer
// parser holds it), so what an accepted session's request points to must
// not live on with the session: its headers alone were 2.6 KB per
// session. The headers, URL and TLS state are dropped once the session
// is admitted; this counts what the relay's request parsing still holds,
// exactly, at runtime.MemProfileRate 1.
func TestIdleSessionFreesRequest(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	const sessions = 16
	r := startRelay(t, nil, func(cfg *transport.ListenConfig) { cfg.MaxSessionsPerSource = 2 * sessions })
	accepted := make(chan transport.Conn, sessions+1)
	go func() {
		for {
			c, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	hold := func(n int) {
		for range n {
			dialT(t, r.ep)
		}
		for range n {
			select {
			case c := <-accepted:
				t.Cleanup(func() { c.Close() })
			case <-time.After(20 * time.Second):
				t.Fatal("a dialled session was never accepted")
			}
		}
	}
	hold(1) // the first request builds the Huffman decoder's tables, once per process
	before := requestHeap()
	hold(sessions)
	live := requestHeap() - before
	t.Logf("request parsing holds %d B per idle session", live/sessions)
	if live/sessions > 256 {
		t.Errorf("the relay's parsed requests hold %d B per idle session, want nearly nothing: a session's request lives as long as its stream", live/sessions)
	}
}

// requestHeap is the heap in use by allocations made while http3 parsed
// a request, after garbage collection.
func requestHeap() int64 {
	return transporttest.LiveHeap(transporttest.FunctionIs("http3.requestFromHeaders"))
}
