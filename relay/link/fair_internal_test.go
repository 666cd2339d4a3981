package link

import (
	"maps"
	"slices"
	"testing"
	"time"
)

// TestFairOrderNewcomersWait: four addresses that each keep one small
// forward queued for the home relay (re-queuing as theirs is delivered)
// do not pass, try after try, an older forward of a user who has two
// queued (or one 16 KiB-bucket layer). A reviewer found the first fair
// order (within a turn, the sources with the fewest bytes queued first)
// let them take every layer the home relay accepted for 100 tries: the
// user's forward would wait out its TTL.
func TestFairOrderNewcomersWait(t *testing.T) {
	const small, big = 4400, 17700 // a 4 KiB-bucket item, a 16 KiB-bucket one
	for _, c := range []struct {
		name  string
		sizes []int64
	}{{"two small", []int64{small, small}}, {"one 16K", []int64{big}}} {
		t.Run(c.name, func(t *testing.T) {
			now := time.Now()
			s := newSourceShares(0, time.Hour)
			dest := [32]byte{1}
			var seq uint64
			add := func(src [16]byte, n int64) uint64 {
				seq++
				if !s.reserve(src, n, now) {
					t.Fatal("refused")
				}
				s.queued(src, n, itemKey{dest, seq}, now)
				return seq
			}
			user := [16]byte{0xff}
			s.separate(user, [16]byte{0}, [16]byte{1}, [16]byte{2}, [16]byte{3})
			var mine []uint64
			for _, n := range c.sizes {
				mine = append(mine, add(user, n))
			}
			const perTry = 4 // what the home relay's allowance takes each try
			theirs := map[int]uint64{}
			for range 100 {
				for a := range perTry { // each attacker address keeps one small forward queued
					if _, queued := theirs[a]; !queued {
						theirs[a] = add([16]byte{byte(a)}, small)
					}
				}
				order, _ := s.fairOrder(dest, pumpWindow)
				got := order[:perTry]
				mine = slices.DeleteFunc(mine, func(seq uint64) bool { return slices.Contains(got, seq) })
				maps.DeleteFunc(theirs, func(_ int, seq uint64) bool { return slices.Contains(got, seq) })
				if len(mine) == 0 {
					return
				}
				s.done(dest, got) // taken by the home relay
			}
			t.Fatalf("the user's forwards %v were not among the layers taken in 100 tries: "+
				"four addresses with one small forward each took them all", mine)
		})
	}
}

// BenchmarkFairOrder: fairOrder under the shares lock with the outbox
// full at the default 256 MiB of the smallest items (~61,000).
func BenchmarkFairOrder(b *testing.B) {
	const items = 256 << 20 / 4400
	now := time.Now()
	for _, c := range []struct {
		name           string
		dests, sources int
	}{{"1dest-16src", 1, 16}, {"1dest-61ksrc", 1, items}, {"64dest-16src", 64, 16}} {
		b.Run(c.name, func(b *testing.B) {
			s := newSourceShares(0, 8*24*time.Hour)
			for i := range items {
				src := [16]byte{byte(i % c.sources), byte(i % c.sources >> 8), byte(i % c.sources >> 16)}
				d := [32]byte{byte(i % c.dests)}
				s.reserve(src, 4400, now)
				s.queued(src, 4400, itemKey{d, uint64(i + 1)}, now)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				_, _ = s.fairOrder([32]byte{0}, pumpWindow)
			}
		})
	}
}
