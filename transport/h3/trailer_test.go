package h3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// A session's client sends no trailers, but http3 parses a HEADERS frame
// on the session stream into the request's Trailer (up to the server's
// header limit, 1 MiB), which would live as long as the session: the
// session's Read drops it. (A reviewer measured 788 KB held per session
// for a 619 KB trailer frame before.)
func TestSessionTrailersNotKept(t *testing.T) {
	transporttest.RecordEveryAllocation(t)
	r := startRelay(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for i := range 600 {
		enc.WriteField(qpack.HeaderField{Name: fmt.Sprintf("x-t%d", i), Value: strings.Repeat("v", 1000)})
	}
	frame := append(appendFrameHeader(nil, frameHeaders, block.Len()), block.Bytes()...)
	trailers := func() int64 { return transporttest.LiveHeap(transporttest.FunctionIs("http3.parseTrailers")) }
	before := trailers()
	c := dialT(t, r.ep).(*clientConn)
	defer c.Close()
	sc, err := r.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	wrote := make(chan error, 1)
	go func() { _, err := c.str.Write(frame); wrote <- err }() // flow control: the relay reads meanwhile
	// The relay's Read returns nothing once it has parsed the trailers.
	for {
		n, err := sc.Read(make([]byte, 64))
		if err != nil {
			t.Fatalf("session read: %v", err)
		}
		if n == 0 {
			break
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if held := trailers() - before; held > 64<<10 {
		t.Fatalf("the session holds %d KB of parsed trailers", held>>10)
	}
}

// A cover response the client never reads (no flow-control credit) ends
// after coverSendTimeout: its handler returns, so the request no longer
// keeps the connection busy (out of the idle timeout) for good.
func TestCoverResponseWriteBounded(t *testing.T) {
	old := coverSendTimeout
	coverSendTimeout = 200 * time.Millisecond
	t.Cleanup(func() { coverSendTimeout = old })
	ended := make(chan error, 1)
	big := bytes.Repeat([]byte("cover "), 2<<20/6) // far past the client's stream window
	r := startRelay(t, nil, func(cfg *transport.ListenConfig) {
		cfg.Cover = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, err := w.Write(big)
			ended <- err
		})
	})
	qc, err := quicFrom(t, net.IPv4(127, 0, 0, 1), r.ep.Addr, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://"+testSNI+"/", nil) // outlives the guard below
	res, err := (&http3.Transport{}).NewClientConn(qc).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close() // never read
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the whole response was written to a client that read none of it")
		}
	case <-time.After(30 * time.Second): // a deadlock guard
		t.Fatal("the cover handler is still writing to a client that reads nothing")
	}
}

// A session takes its request stream over: the cover's write bound does
// not apply to it.
func TestSessionWritesOutliveCoverTimeout(t *testing.T) {
	old := coverSendTimeout
	coverSendTimeout = 50 * time.Millisecond
	t.Cleanup(func() { coverSendTimeout = old })
	r := startRelay(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	c := dialT(t, r.ep)
	defer c.Close()
	sc, err := r.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	time.Sleep(4 * coverSendTimeout)
	if _, err := sc.Write([]byte("late")); err != nil {
		t.Fatalf("a session's write after the cover's bound: %v", err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "late" {
		t.Fatalf("client read %q, %v", b, err)
	}
}
