package server_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestSendBytesPerSource: below half of the store's quota nothing is
// refused, however much one source sends; from half on, a source past
// its allowance of envelope bytes (Config.SendBytes) is told "busy", each
// counted as rejected for "source_limit", while another source sends its
// own allowance; what a source sent while nothing was refused counts
// against it (down to none, not below), and the allowance grows back
// evenly over the day.
func TestSendBytesPerSource(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const per = 64 << 10 // the least allowance: one envelope of the largest bucket
	obs := &sendsObserver{}
	r := relaytest.New(t, store.Options{MaxStoreBytes: -1},
		server.Config{Observer: obs, Now: clock, SendBytes: per, StoreBytes: 64 * 4096})
	addr := r.ServeTCP(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	from := func(ip string) *client.Client {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Skipf("no %s here: %v", ip, err)
		}
		c, err := client.New(ctx, conn.(*net.TCPConn), client.WithRelayKey(r.Server.PublicKey()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := from("127.0.0.2"), from("127.0.0.3")
	mb := relaytest.NewMailbox(t, a, nil)
	env := mb.Seal(t, "x")
	if len(env) != 4096 {
		t.Fatalf("the smallest envelope is %d bytes; the test counts in 4096", len(env))
	}
	// sends sends up to n envelopes from c, each a new one, and returns
	// how many were taken before the first refusal, which must be busy.
	sends := func(c *client.Client, n int) int {
		t.Helper()
		for i := range n {
			if _, err := c.Send(ctx, mb.Seal(t, "x"), nil); err != nil {
				if !errors.Is(err, relay.ErrBusy) {
					t.Fatalf("send %d: %v, want busy", i+1, err)
				}
				return i
			}
		}
		return n
	}
	// Half the store (32 envelopes) from one source whose allowance is 16.
	if got := sends(a, 32); got != 32 {
		t.Fatalf("%d of 32 sends taken below half of the store, want all", got)
	}
	if got := sends(a, 1); got != 0 {
		t.Fatal("the store half full, a source past its allowance was not refused")
	}
	if got := sends(b, 20); got != per/4096 {
		t.Fatalf("another source sent %d envelopes with the store half full, want its allowance, %d", got, per/4096)
	}
	if n := obs.limited.Load(); n != 2 {
		t.Fatalf("%d sends counted as source_limit, want 2", n)
	}
	mu.Lock()
	now = now.Add(6 * time.Hour) // a quarter of the allowance grows back
	mu.Unlock()
	if got := sends(a, 10); got != per/4096/4 {
		t.Fatalf("six hours on, the source that sent the most sent %d, want a quarter of its allowance, %d", got, per/4096/4)
	}
	if st := r.Store.Stats(); st.Envelopes != 32+per/4096+per/4096/4 {
		t.Fatalf("%d envelopes stored, want %d", st.Envelopes, 32+per/4096+per/4096/4)
	}
}

// sendsObserver counts envelopes rejected for the source's allowance.
type sendsObserver struct {
	limited atomic.Int64
}

func (*sendsObserver) SessionOpened(string)       {}
func (*sendsObserver) SessionClosed(string)       {}
func (*sendsObserver) SendDuration(time.Duration) {}
func (o *sendsObserver) Envelope(result, reason string) {
	if result == "rejected" && reason == "source_limit" {
		o.limited.Add(1)
	}
}
