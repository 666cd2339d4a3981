package client

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/relay"
)

// TestWidenCountsWhatWasGiven: the sessions beside the first open as
// the first probe finds a 20 KiB envelope (16 KiB of it left to fetch)
// if the caller gave envelopes of 12 KiB or more in all (LanesConfig.Have:
// what came of a page it left, a trial's part), whole or in part: 32 KiB
// found, each counted once at its size; not for the inbox's copies of
// what it holds, nor for less, nor with the envelope found counted
// twice, or hidden by an entry of size 0.
func TestWidenCountsWhatWasGiven(t *testing.T) {
	part := func(seq uint64, n int) Begun { return Begun{Seq: seq, Total: 64 << 10, Data: make([]byte, n)} }
	short := func(seq uint64) Begun { return Begun{Seq: seq, Total: 4 << 10, Data: make([]byte, 4<<10)} }
	for _, tc := range []struct {
		name         string
		kept, caller []Begun
		widen        bool
	}{
		{"nothing given", nil, nil, false},
		{"a part of the next", nil, []Begun{part(2, 16<<10)}, true},
		{"three short ones, whole", nil, []Begun{short(2), short(3), short(4)}, true},
		{"two short ones, whole", nil, []Begun{short(2), short(3)}, false},
		{"the same one thrice", nil, []Begun{short(2), short(2), short(2)}, false},
		{"a little of a large one", nil, []Begun{part(2, 1<<10)}, true},
		{"three short ones, and one of size 0 at the one found", nil, []Begun{{Seq: 1}, short(2), short(3), short(4)}, true},
		{"what came of the one found, counted once", nil, []Begun{{Seq: 1, Total: 20 << 10, Data: make([]byte, 8<<10)}}, false},
		{"the inbox's copies", []Begun{part(2, 64<<10), part(3, 64<<10)}, nil, false},
		{"longer than its size", nil, []Begun{{Seq: 2, Total: 40 << 10, Data: make([]byte, 40<<10+1)}}, false},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		var dials atomic.Int64
		d := &laneDrain{cfg: LanesConfig{Lanes: 4}, ctx: ctx, slots: map[uint64]*laneSlot{}, endSeq: math.MaxUint64,
			have: map[uint64]Begun{}, held: map[Ref]int{}, dial: func(context.Context) (*Client, error) {
				dials.Add(1)
				return nil, errors.New("refused")
			}}
		d.cond = sync.NewCond(&d.mu)
		d.give(tc.kept, tc.caller)
		d.mu.Lock()
		d.probe = 2 // as the first probe's answer sets it
		d.found(relay.Part{Seq: 1, Total: 20 << 10, Data: make([]byte, 4<<10)})
		widened := d.widened
		d.mu.Unlock()
		d.wg.Wait()
		cancel()
		if widened != tc.widen || (dials.Load() > 0) != tc.widen {
			t.Errorf("%s: widened %v (%d dials), want %v", tc.name, widened, dials.Load(), tc.widen)
		}
	}
}
