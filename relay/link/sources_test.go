package link

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// TestSourceShares: a source's bytes count from reserve to done (or to
// cancel, or to its item's expiry), each source alone, and a source at
// zero is forgotten.
func TestSourceShares(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := newSourceShares(100, time.Hour)
	a, b := [16]byte{1}, [16]byte{2}
	dest := [32]byte{9}
	if !s.reserve(a, 60, now) || s.reserve(a, 41, now) {
		t.Fatal("a's share: 60 then 41 more of 100")
	}
	if !s.reserve(b, 100, now) {
		t.Fatal("b was counted with a")
	}
	s.cancel(b, 100)
	s.queued(a, 60, itemKey{dest, 1}, now)
	if !s.reserve(a, 40, now) {
		t.Fatal("a's last 40")
	}
	s.queued(a, 40, itemKey{dest, 2}, now.Add(time.Minute))
	if s.reserve(a, 1, now) {
		t.Fatal("a past its share")
	}
	s.done(dest, []uint64{1, 7}) // 7: not counted (queued before a restart)
	if !s.reserve(a, 60, now) || s.reserve(a, 1, now) {
		t.Fatal("a's delivered item was not given back, or given back twice")
	}
	s.cancel(a, 60)
	// Item 2 expires an hour after it was queued: given back then.
	if s.reserve(a, 61, now.Add(time.Hour)) {
		t.Fatal("an item given back before its expiry")
	}
	if !s.reserve(a, 61, now.Add(time.Hour+time.Minute)) {
		t.Fatal("an expired item was not given back")
	}
	s.cancel(a, 61)
	if n := s.sources(); n != 0 {
		t.Fatalf("%d sources remembered with nothing counted", n)
	}
	// An item delivered (done) before its Forward got round to queued
	// is not counted for a week.
	if !s.reserve(a, 30, now) {
		t.Fatal("a, with nothing counted")
	}
	s.done(dest, []uint64{9})
	s.queued(a, 30, itemKey{dest, 9}, now)
	if n := s.sources(); n != 0 || s.early != nil {
		t.Fatalf("an item done before it was queued stays counted (%d sources, %d early)", n, len(s.early))
	}
	s.done(dest, []uint64{10}) // no reservation out: nothing to remember
	if s.early != nil {
		t.Fatal("done remembered an unknown item with no reservation out")
	}
	// Items queued before a restart (seqs below this run's first) are
	// never remembered, reservations out or not.
	r := newSourceShares(100, time.Hour)
	r.reserve(a, 1, now)
	r.queued(a, 1, itemKey{dest, 100}, now)
	r.reserve(a, 1, now)
	r.done(dest, []uint64{1, 2, 3})
	if len(r.early) != 0 {
		t.Fatalf("remembered %d items older than this run's first", len(r.early))
	}
	// No limit: everything fits, and is still counted.
	s = newSourceShares(0, time.Hour)
	if !s.reserve(a, 1<<40, now) || s.sources() != 1 {
		t.Fatal("no limit")
	}
}

// TestFailureNames: what the pump logs of a failure names its kind, and a
// dial refused for a private address says which setting allows it.
func TestFailureNames(t *testing.T) {
	notPublic := &route.Error{Attempts: []route.Attempt{{Relay: "id", Transport: "https",
		Err: transport.CheckPublic("https", netip.MustParseAddr("10.0.0.1"))}}}
	for err, want := range map[error]string{
		notPublic:                "link_private_peers",
		relay.ErrMailboxFull:     relay.CodeMailboxFull.String(),
		context.DeadlineExceeded: "timeout",
	} {
		if got := failure(err); !strings.Contains(got, want) || strings.Contains(got, "10.0.0.1") {
			t.Errorf("failure(%v) = %q, want %q", err, got, want)
		}
	}
}

// TestFairOrder: items for one destination come by start tag: each
// source's first at the virtual time, each next one after its source's
// bytes before it, ties oldest first; a delivery moves the virtual time to
// its start tag, where a new source then starts; other destinations'
// items and items done are not listed.
func TestFairOrder(t *testing.T) {
	s := newSourceShares(0, time.Hour)
	now := time.Now()
	dest, other := [32]byte{1}, [32]byte{2}
	heavy, light, mid, late := [16]byte{1}, [16]byte{2}, [16]byte{3}, [16]byte{4}
	s.separate(heavy, light, mid, late)
	add := func(src [16]byte, n int64, d [32]byte, seq uint64) {
		if !s.reserve(src, n, now) {
			t.Fatal("reserve refused with no limit")
		}
		s.queued(src, n, itemKey{d, seq}, now)
	}
	for seq := uint64(1); seq <= 4; seq++ {
		add(heavy, 1000, dest, seq) // starts 0, 1000, 2000, 3000
	}
	add(mid, 600, dest, 5) // 0
	add(mid, 600, dest, 6) // 600
	add(light, 100, other, 7)
	add(light, 100, dest, 8)  // 0
	s.done(dest, []uint64{2}) // delivered: the virtual time is 1000
	add(late, 100, dest, 9)   // starts at 1000
	want := []uint64{1, 5, 8, 6, 9, 3, 4}
	got, before := s.fairOrder(dest, 10)
	if !slices.Equal(got, want) || before != 1 {
		t.Fatalf("fairOrder = %v, first seq %d; want %v, 1", got, before, want)
	}
	if got, _ := s.fairOrder(dest, 2); !slices.Equal(got, want[:2]) {
		t.Fatalf("fairOrder with max 2 = %v, want %v", got, want[:2])
	}
}
