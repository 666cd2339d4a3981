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
// a new source is refused while all of them have spent some, and taken
// once one has grown back whole, which is then dropped; the accounts are
// looked through at most once in the time an operation takes to grow
// back.
func TestOpLimiterBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newOpLimiter(2, 2*time.Hour, func() time.Time { return now })
	for i := range maxOpSources {
		if !l.take([16]byte{byte(i), byte(i >> 8), 0xff}) {
			t.Fatalf("source %d refused", i)
		}
	}
	fresh := [16]byte{1, 2, 3}
	now = now.Add(30 * time.Minute)
	if l.take(fresh) {
		t.Fatal("a new source taken beyond maxOpSources accounts")
	}
	if len(l.left) != maxOpSources {
		t.Fatalf("%d accounts, want %d", len(l.left), maxOpSources)
	}
	// The others have grown back whole, but the last look for them was
	// half an hour ago: not again before an hour (an operation's time).
	now = now.Add(30 * time.Minute)
	if l.take(fresh) {
		t.Fatal("the accounts looked through again before an operation grew back")
	}
	now = now.Add(30 * time.Minute)
	if !l.take(fresh) {
		t.Fatal("a new source refused once the others grew back")
	}
	if len(l.left) != 1 {
		t.Fatalf("%d accounts after the others grew back, want 1", len(l.left))
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
