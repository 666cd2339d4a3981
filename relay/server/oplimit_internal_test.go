package server

import (
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

// TestOpLimiter: a source may spend per operations at once, then one
// each period/per as they grow back, never more than per saved; sources
// are apart; no limit with per 0.
func TestOpLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newOpLimiter(3, 3*time.Hour, func() time.Time { return now })
	a, b := [16]byte{1}, [16]byte{2}
	for i := range 3 {
		if !l.take(a) {
			t.Fatalf("operation %d of 3 refused", i+1)
		}
	}
	if l.take(a) {
		t.Fatal("a fourth operation at once taken")
	}
	if !l.take(b) {
		t.Fatal("another source refused")
	}
	now = now.Add(59 * time.Minute)
	if l.take(a) {
		t.Fatal("an operation taken before one grew back")
	}
	now = now.Add(time.Minute)
	if !l.take(a) || l.take(a) {
		t.Fatal("not exactly one operation an hour later")
	}
	now = now.Add(30 * 24 * time.Hour)
	for i := range 3 {
		if !l.take(a) {
			t.Fatalf("after a month, operation %d refused", i+1)
		}
	}
	if l.take(a) {
		t.Fatal("more than per saved")
	}
	none := newOpLimiter(0, time.Hour, nil)
	for range 1000 {
		if !none.take(a) {
			t.Fatal("refused with no limit")
		}
	}
}

// TestOpLimiterBounded: the limiter keeps at most maxOpSources accounts;
// while that many have spent some, new sources share one account of
// per a period, so that neither are they all kept out (the first
// version) nor can a few get more than that by coming back (the second
// put out the account with the most left: three sources took 604
// operations of an allowance of 12); accounts grown back whole are
// dropped, at most once in the time an operation takes to grow back.
// (A source that spent from the shared account and then finds room gets
// an account of its own, whole: at most one allowance more, once.)
func TestOpLimiterBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newOpLimiter(4, 4*time.Hour, func() time.Time { return now })
	src := func(i int) [16]byte { return [16]byte{byte(i), byte(i >> 8), 0xff} }
	for i := range maxOpSources {
		if !l.take(src(i)) || !l.take(src(i)) || !l.take(src(i)) {
			t.Fatalf("source %d refused", i)
		}
	}
	taken := 0
	for range 100 {
		for n := range 3 {
			if l.take([16]byte{1, 2, 3, byte(n)}) {
				taken++
			}
		}
	}
	if taken != 4 {
		t.Fatalf("three new sources beside a full table took %d operations, want the 4 of their shared account", taken)
	}
	if len(l.left) != maxOpSources {
		t.Fatalf("%d accounts, want %d", len(l.left), maxOpSources)
	}
	// An hour on, the shared account has one more; the others three
	// of four, not whole.
	now = now.Add(time.Hour)
	if !l.take([16]byte{7}) || l.take([16]byte{8}) {
		t.Fatal("not exactly one more operation for new sources an hour on")
	}
	// Two more hours: the table's accounts have grown back whole and go
	// at the next scan, which comes an hour after the last.
	now = now.Add(2 * time.Hour)
	if !l.take([16]byte{9}) || len(l.left) != 1 {
		t.Fatalf("after the accounts grew back whole: %d accounts, want 1", len(l.left))
	}
}

// TestMailboxOpsDefault: a server's zero Config allows DefaultMailboxOps
// operations a source.
func TestMailboxOpsDefault(t *testing.T) {
	st := store.NewMemory(store.Options{})
	defer st.Close()
	s, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	src := [16]byte{7}
	for i := range DefaultMailboxOps {
		if !s.ops.take(src) {
			t.Fatalf("operation %d of %d refused", i+1, DefaultMailboxOps)
		}
	}
	if s.ops.take(src) {
		t.Fatalf("operation %d taken", DefaultMailboxOps+1)
	}
}

// TestSendLimiterDefault: the send allowance is a quarter of the store's
// quota over an envelope's life (its TTL and a day) by default, never
// less than the largest envelope, and none without a quota or when
// negative.
func TestSendLimiterDefault(t *testing.T) {
	st := store.NewMemory(store.Options{})
	defer st.Close()
	for _, tc := range []struct {
		store, send int64
		want        float64
	}{
		{0, 0, 0},
		{0, 1 << 20, 0},
		{1 << 30, 0, 32 << 20}, // 7 days' TTL: a quarter of the store over 8 days
		{256 << 10, 0, store.MaxEnvelopeSize},
		{1 << 30, 1000, store.MaxEnvelopeSize},
		{1 << 30, 5 << 20, 5 << 20},
		{1 << 30, -1, 0},
	} {
		s, err := New(Config{Store: st, StoreBytes: tc.store, SendBytes: tc.send})
		if err != nil {
			t.Fatal(err)
		}
		if s.sends.per != tc.want {
			t.Errorf("store quota %d, send_bytes %d: allowance %v, want %v", tc.store, tc.send, s.sends.per, tc.want)
		}
	}
	// A day's TTL: a quarter of the store over two days.
	s, err := New(Config{Store: st, StoreBytes: 1 << 30, StoreTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if s.sends.per != 128<<20 {
		t.Errorf("a day's TTL: allowance %v, want %v", s.sends.per, 128<<20)
	}
}

// TestGiveBack: what takeN spent goes back whole, never past the
// allowance; spent without refusal, what a source had (not what it
// asked) goes back; a source with no account gets none from it.
func TestGiveBack(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter(100, 100*time.Hour, time.Hour, func() time.Time { return now })
	a, b, c := [16]byte{1}, [16]byte{2}, [16]byte{3}
	whole := func(src [16]byte) bool { // exactly the allowance left
		if _, ok := l.takeN(src, 100, true); !ok {
			return false
		}
		_, ok := l.takeN(src, 1, true)
		return !ok
	}
	if spent, ok := l.takeN(a, 30, true); !ok || spent != 30 {
		t.Fatalf("took %v, %v", spent, ok)
	}
	l.giveBack(a, 30)
	if !whole(a) {
		t.Fatal("30 given back: not the whole allowance")
	}
	l.giveBack(a, 100)
	l.giveBack(a, 50)
	if !whole(a) {
		t.Fatal("given back past the allowance")
	}
	if spent, ok := l.takeN(b, 150, false); !ok || spent != 100 {
		t.Fatalf("unrefused, took %v (%v), want the 100 it had", spent, ok)
	}
	l.giveBack(b, 100)
	if !whole(b) {
		t.Fatal("what it had given back: not whole")
	}
	n := len(l.left)
	l.giveBack(c, 10)
	if len(l.left) != n {
		t.Fatalf("a source with no account: %d accounts (was %d)", len(l.left), n)
	}
}
