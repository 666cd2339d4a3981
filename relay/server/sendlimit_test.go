package server_test

import (
	"context"
	"errors"
	"net"
	"sync"
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
// its allowance of envelope bytes (Config.SendBytes) is told "relay
// storage full", each counted as rejected for "source_limit", while
// another source sends its own allowance; what a source sent while nothing was refused counts
// against it (down to none, not below), and the allowance grows back
// evenly over the day.
func TestSendBytesPerSource(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const per = 64 << 10 // the least allowance: one envelope of the largest bucket
	obs := &limitsObserver{}
	r := relaytest.New(t, store.Options{MaxStoreBytes: -1},
		server.Config{Observer: obs, Now: clock, SendBytes: per, StoreBytes: 64 * 4096})
	addr := r.ServeTCP(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := dialFrom(ctx, t, r, addr, "127.0.0.2"), dialFrom(ctx, t, r, addr, "127.0.0.3")
	mb := relaytest.NewMailbox(t, a, nil)
	env := mb.Seal(t, "x")
	if len(env) != 4096 {
		t.Fatalf("the smallest envelope is %d bytes; the test counts in 4096", len(env))
	}
	// sends sends up to n envelopes from c, each a new one, and returns
	// how many were taken before the first refusal, which must be relay
	// full.
	sends := func(c *client.Client, n int) int {
		t.Helper()
		for i := range n {
			if _, err := c.Send(ctx, mb.Seal(t, "x"), nil); err != nil {
				if !errors.Is(err, relay.ErrRelayFull) {
					t.Fatalf("send %d: %v, want relay full", i+1, err)
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

// TestSendBytesRefusedFree: an envelope the store refuses (here: its
// mailbox full) costs its source nothing: with the store half full, a
// source that sends twenty to a full mailbox is told "mailbox full" each
// time, never relay full, and still has its allowance for a mailbox with room
// (a reviewer's find: the charge stayed, and an entry relay retrying a
// layer for a full mailbox spent its whole allowance on it).
func TestSendBytesRefusedFree(t *testing.T) {
	r := relaytest.New(t, store.Options{MaxStoreBytes: -1, MaxMailboxEnvelopes: 2},
		server.Config{SendBytes: 64 << 10, StoreBytes: 8 * 4096})
	c := r.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full, other, room := relaytest.NewMailbox(t, c, nil), relaytest.NewMailbox(t, c, nil), relaytest.NewMailbox(t, c, nil)
	for _, m := range []*relaytest.Mailbox{full, full, other, other} { // half the store, 16 KiB of 64 spent
		if _, err := c.Send(ctx, m.Seal(t, "x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if _, err := c.Send(ctx, full.Seal(t, "x"), nil); !errors.Is(err, relay.ErrMailboxFull) {
			t.Fatalf("send %d to a full mailbox: %v, want mailbox full", i+1, err)
		}
	}
	for i := range 2 {
		if _, err := c.Send(ctx, room.Seal(t, "x"), nil); err != nil {
			t.Fatalf("send %d to a mailbox with room: %v", i+1, err)
		}
	}
}

// TestSendBytesOneSourceLeavesAQuarter: one source sending all it may
// every day, for an envelope's whole life (the default TTL, 7 days, and
// a day), holds at most three quarters of the store with the default
// allowance, and another source's send is taken (a reviewer's find: with
// the first default, an eighth of the store a day, one source filled it
// in four days).
func TestSendBytesOneSourceLeavesAQuarter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const quota = 8 << 20 // a default allowance of 256 KiB a day: 64 envelopes
	r := relaytest.New(t, store.Options{MaxStoreBytes: quota, MaxMailboxBytes: -1, MaxMailboxEnvelopes: -1},
		server.Config{Now: clock, StoreBytes: quota})
	addr := r.ServeTCP(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := dialFrom(ctx, t, r, addr, "127.0.0.2")
	mb := relaytest.NewMailbox(t, c, nil)
	for range 8 {
		for i := 0; ; i++ {
			if i > quota/4096 {
				t.Fatal("no refusal in a day's sends")
			}
			if _, err := c.Send(ctx, mb.Seal(t, "x"), nil); err != nil {
				if !errors.Is(err, relay.ErrRelayFull) {
					t.Fatalf("send: %v, want relay full", err)
				}
				break
			}
		}
		mu.Lock()
		now = now.Add(24 * time.Hour)
		mu.Unlock()
	}
	if held := r.Store.Stats().Bytes; held > quota*3/4 {
		t.Fatalf("one source holds %d bytes of %d after 8 days", held, quota)
	}
	other := dialFrom(ctx, t, r, addr, "127.0.0.3")
	if _, err := other.Send(ctx, relaytest.NewMailbox(t, other, nil).Seal(t, "y"), nil); err != nil {
		t.Fatalf("another source's send: %v", err)
	}
}

// dialFrom opens a session to r's TCP listener at addr from ip.
func dialFrom(ctx context.Context, t *testing.T, r *relaytest.Relay, addr, ip string) *client.Client {
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

// TestSendBytesRefundByError: what a source spent on an envelope comes
// back when the store refused it (its disk full: the failed write is
// undone), and not when the Put failed in a way that may come after the
// envelope was stored (the session ended while it waited for the commit,
// which goes on; the store closing): else a source that hangs up after
// each Send stores without limit (a reviewer's find: 48 of 48 stored
// where 16 were allowed).
func TestSendBytesRefundByError(t *testing.T) {
	for _, tc := range []struct {
		err     error
		stored  bool
		limited int64 // sends of 48 refused at the allowance (16 envelopes)
	}{
		{context.Canceled, true, 32},
		{store.ErrClosed, true, 32},
		{store.ErrDiskFull, false, 0},
	} {
		obs := &limitsObserver{}
		st := failingPuts{store.NewMemory(store.Options{MaxStoreBytes: -1}), tc.err, tc.stored}
		r := relaytest.NewWithStore(t, st, server.Config{Observer: obs, SendBytes: 64 << 10, StoreBytes: 64 * 4096})
		c := r.Connect(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		mb := relaytest.NewMailbox(t, c, nil)
		for r.Store.Stats().Bytes < 32*4096 { // half the store, from others
			if _, err := st.Store.Put(ctx, mb.ID, mb.Seal(t, "o")); err != nil {
				t.Fatal(err)
			}
		}
		for range 48 {
			if _, err := c.Send(ctx, mb.Seal(t, "x"), nil); err == nil {
				t.Fatal("the failing Put succeeded")
			}
		}
		if n := obs.limited.Load(); n != tc.limited {
			t.Errorf("Puts failing with %v (stored %v): %d of 48 sends refused at the allowance, want %d", tc.err, tc.stored, n, tc.limited)
		}
	}
}

// failingPuts is a store whose Put fails with err, having stored the
// envelope or not.
type failingPuts struct {
	store.Store
	err    error
	stores bool
}

func (f failingPuts) Put(ctx context.Context, id [store.IDSize]byte, env []byte) (store.Ref, error) {
	if f.stores {
		if _, err := f.Store.Put(ctx, id, env); err != nil {
			return store.Ref{}, err
		}
	}
	return store.Ref{}, f.err
}
