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
// a new source takes the place of those grown back whole, or else of
// the one with the most left, and is never refused for want of room (a
// reviewer's find: refused, 65,536 addresses spending an operation each
// as they grew back kept every newcomer out).
func TestOpLimiterBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newOpLimiter(4, 4*time.Hour, func() time.Time { return now })
	src := func(i int) [16]byte { return [16]byte{byte(i), byte(i >> 8), 0xff} }
	for i := range maxOpSources {
		if !l.take(src(i)) || i > 0 && (!l.take(src(i)) || !l.take(src(i))) {
			t.Fatalf("source %d refused", i)
		}
	}
	// Source 0 has spent one, every other source three: 0 has the most left.
	for n := range 3 {
		fresh := [16]byte{1, 2, 3, byte(n)}
		if !l.take(fresh) {
			t.Fatalf("newcomer %d refused beside %d accounts", n, maxOpSources)
		}
		if len(l.left) != maxOpSources {
			t.Fatalf("%d accounts, want %d", len(l.left), maxOpSources)
		}
	}
	if _, kept := l.left[src(0)]; kept {
		t.Fatal("the account with the most left was not the one put out")
	}
	// Each newcomer, having spent one, then had the most left: put out
	// by the next; the busy ones all stay.
	if _, kept := l.left[[16]byte{1, 2, 3, 2}]; !kept {
		t.Fatal("the last newcomer's account was put out")
	}
	for i := 1; i < maxOpSources; i++ {
		if a, kept := l.left[src(i)]; !kept || a.left != 1 {
			t.Fatalf("busy source %d: kept %v, %v left", i, kept, a.left)
		}
	}
	// Three hours on, every account has grown back whole: they all go.
	now = now.Add(3 * time.Hour)
	if !l.take([16]byte{9}) {
		t.Fatal("a source refused")
	}
	if len(l.left) != 1 {
		t.Fatalf("%d accounts after all grew back whole, want 1", len(l.left))
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
