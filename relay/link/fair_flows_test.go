package link

import (
	"hash/maphash"
	"slices"
	"testing"
	"time"
)

// fairAdd queues one counted item of n bytes from src for dest.
func fairAdd(t *testing.T, s *sourceShares, dest [32]byte, seq *uint64, src [16]byte, n int64, now time.Time) uint64 {
	t.Helper()
	*seq++
	if !s.reserve(src, n, now) {
		t.Fatal("refused")
	}
	s.queued(src, n, itemKey{dest, *seq}, now)
	return *seq
}

// TestFairFreshAddressesWait: as TestFairOrderNewcomersWait, but the
// attacker uses a fresh address for each small forward (one address per
// layer the home relay takes a try). A reviewer found per-source tags let
// each newcomer start at the virtual time, which stayed at 0 (every item
// delivered started at 0), so the user's second forward (start tag 4400)
// was passed at every try; with a bounded number of flows at most one
// item of each starts below it.
func TestFairFreshAddressesWait(t *testing.T) {
	const small, perTry, tries = 4400, 4, 100
	now := time.Now()
	s := newSourceShares(0, time.Hour)
	dest := [32]byte{1}
	var seq uint64
	user := [16]byte{0xff}
	mine := []uint64{fairAdd(t, s, dest, &seq, user, small, now), fairAdd(t, s, dest, &seq, user, small, now)}
	fresh := 0
	for try := range tries {
		for range perTry {
			fresh++
			fairAdd(t, s, dest, &seq, [16]byte{0xaa, byte(fresh), byte(fresh >> 8), byte(fresh >> 16)}, small, now)
		}
		order, _ := s.fairOrder(dest, pumpWindow)
		got := order[:perTry]
		mine = slices.DeleteFunc(mine, func(q uint64) bool { return slices.Contains(got, q) })
		if len(mine) == 0 {
			return
		}
		s.done(dest, got)
		if try == tries-1 {
			s.mu.Lock()
			f := s.fair[dest]
			t.Logf("vtime %d, finish tags %d, sources with items %d", f.vtime, len(f.finish), len(f.count))
			s.mu.Unlock()
		}
	}
	t.Fatalf("the user's forward %v was not among the %d layers taken in %d tries: "+
		"addresses new at each try passed it", mine, perTry*tries, tries)
}

// TestFairFlowsBounded: a home relay with one forward always queued (a
// full mailbox) keeps at most a finish tag per flow, whatever number of
// sources queued for it: a reviewer found 20,000 one-shot sources, each
// delivered, left 20,000 tags with per-source tags.
func TestFairFlowsBounded(t *testing.T) {
	const small, sources = 4400, 20000
	now := time.Now()
	s := newSourceShares(0, time.Hour)
	dest := [32]byte{1}
	var seq uint64
	fairAdd(t, s, dest, &seq, [16]byte{0xff}, small, now) // stays queued
	for i := range sources {
		q := fairAdd(t, s, dest, &seq, [16]byte{0xaa, byte(i), byte(i >> 8), byte(i >> 16)}, small, now)
		s.done(dest, []uint64{q})
	}
	s.fairOrder(dest, pumpWindow) // even a fair try's prune
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fair[dest]
	if len(f.finish) > fairFlows {
		t.Fatalf("%d finish tags kept for a home relay with %d item(s) queued from %d source(s) (vtime %d)",
			len(f.finish), f.items, len(f.count), f.vtime)
	}
}

// TestFairExpiredNotCharged: a source whose forwards all expired
// undelivered (the home relay full for their TTL) is not charged for
// them: a reviewer found its next forward waited behind every other
// source's until the virtual time had covered those bytes.
func TestFairExpiredNotCharged(t *testing.T) {
	const small, perTry = 4400, 4
	now := time.Now()
	s := newSourceShares(0, time.Hour)
	dest := [32]byte{1}
	var seq uint64
	victim := [16]byte{0xff}
	s.separate(victim, [16]byte{0}, [16]byte{1}, [16]byte{2}, [16]byte{3})
	// four steady sources with one forward each, re-queued once delivered
	theirs := map[int]uint64{}
	for a := range perTry {
		theirs[a] = fairAdd(t, s, dest, &seq, [16]byte{byte(a)}, small, now)
	}
	later := now.Add(30 * time.Minute)
	for range 200 { // the victim's burst, none delivered
		fairAdd(t, s, dest, &seq, victim, small, now)
	}
	// the victim's burst expires; the steady sources' forwards are renewed
	for a := range perTry {
		s.done(dest, []uint64{theirs[a]})
		theirs[a] = fairAdd(t, s, dest, &seq, [16]byte{byte(a)}, small, later)
	}
	later = now.Add(61 * time.Minute)
	s.reserve([16]byte{0xee}, 1, later) // runs expire
	s.cancel([16]byte{0xee}, 1)
	mine := fairAdd(t, s, dest, &seq, victim, small, later)
	for try := range 20 {
		order, _ := s.fairOrder(dest, pumpWindow)
		got := order[:perTry]
		if slices.Contains(got, mine) {
			return
		}
		s.done(dest, got)
		for a, q := range theirs {
			if slices.Contains(got, q) {
				theirs[a] = fairAdd(t, s, dest, &seq, [16]byte{byte(a)}, small, later)
			}
		}
		_ = try
	}
	t.Fatal("a source whose 200 forwards expired undelivered waited 20 tries for its next: charged for bytes never delivered")
}

// TestFairExpiredOffSharedFlow: forwards that expired undelivered take
// their bytes off the flow they shared with another source: that source's
// next forward is not held behind them.
func TestFairExpiredOffSharedFlow(t *testing.T) {
	const small, perTry = 4400, 4
	now := time.Now()
	s := newSourceShares(0, time.Hour)
	dest := [32]byte{1}
	var seq uint64
	victim, mate := [16]byte{0xff}, [16]byte{0xfe}
	for s.flow(victim) != s.flow(mate) { // the two share a flow
		s.seed = maphash.MakeSeed()
	}
	others := [][16]byte{{0}, {1}, {2}, {3}}
	s.separate(append([][16]byte{victim}, others...)...)
	for range 200 { // the victim's burst, none delivered
		fairAdd(t, s, dest, &seq, victim, small, now)
	}
	theirs := map[int]uint64{} // four steady sources, re-queued once delivered
	for a, src := range others {
		theirs[a] = fairAdd(t, s, dest, &seq, src, small, now.Add(30*time.Minute))
	}
	fairAdd(t, s, dest, &seq, mate, small, now.Add(30*time.Minute)) // keeps the flow's count up
	later := now.Add(61 * time.Minute)
	s.reserve([16]byte{0xee}, 1, later) // runs expire: the burst goes
	s.cancel([16]byte{0xee}, 1)
	mine := fairAdd(t, s, dest, &seq, mate, small, later)
	for range 20 {
		order, _ := s.fairOrder(dest, pumpWindow)
		got := order[:min(perTry, len(order))]
		if slices.Contains(got, mine) {
			return
		}
		s.done(dest, got)
		for a, q := range theirs {
			if slices.Contains(got, q) {
				theirs[a] = fairAdd(t, s, dest, &seq, others[a], small, later)
			}
		}
	}
	t.Fatal("a source sharing a flow with 200 forwards that expired undelivered waited 20 tries for its next")
}
