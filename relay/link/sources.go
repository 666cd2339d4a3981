package link

import (
	"cmp"
	"container/list"
	"slices"
	"sync"
	"time"
)

// sourceShares keeps, in memory only, how many bytes of the outbox each
// source (as the server counts it, truncated here) has queued in this
// run, so that one source cannot fill the outbox for everyone: every
// other client's two-hop sends would be refused until its items were
// delivered or expired, a week by default.
//
// An item counts from its Enqueue until the pump deletes it from the
// queue (delivered, replayed or refused) or it has expired from the
// store (its TTL and a day, as the store's expiry is day-coarse). Items
// queued before a restart count for no one. The source prefixes are
// never logged or exported, and each is forgotten when its count is
// back to zero.
type sourceShares struct {
	max int64         // bytes a source may have queued; 0: no limit
	ttl time.Duration // how long an item can stay queued

	mu    sync.Mutex
	bytes map[[16]byte]int64
	items map[itemKey]*list.Element // of *shareItem, by queue item
	order *list.List                // the same, oldest first
	// An item can be delivered, and done, between its Enqueue and
	// queued: while reservations are out (inflight), done remembers the
	// items it does not know (early) for queued to find.
	inflight int
	early    map[itemKey]bool
	firstSeq uint64 // the first seq this run queued (0: none yet); older items count for no one
}

type itemKey struct {
	dest [32]byte
	seq  uint64
}

type shareItem struct {
	key   itemKey
	src   [16]byte
	n     int64
	until time.Time
}

func newSourceShares(max int64, ttl time.Duration) *sourceShares {
	return &sourceShares{max: max, ttl: ttl, bytes: map[[16]byte]int64{},
		items: map[itemKey]*list.Element{}, order: list.New()}
}

// reserve counts n more bytes for src, or reports false if that would
// take src past its share. The caller gives them back with cancel, or
// ties them to the queued item with queued.
func (s *sourceShares) reserve(src [16]byte, n int64, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if s.max > 0 && s.bytes[src]+n > s.max {
		return false
	}
	s.bytes[src] += n
	s.inflight++
	return true
}

// cancel gives back a reservation whose item was not queued.
func (s *sourceShares) cancel(src [16]byte, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sub(src, n)
	s.settled()
}

// queued ties a reservation to the item it queued, unless the item was
// done already.
func (s *sourceShares) queued(src [16]byte, n int64, key itemKey, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.settled()
	if s.early[key] {
		delete(s.early, key)
		s.sub(src, n)
		return
	}
	if s.firstSeq == 0 || key.seq < s.firstSeq {
		s.firstSeq = key.seq
	}
	if old := s.items[key]; old != nil { // cannot happen: seqs are not reused
		s.drop(old)
	}
	s.items[key] = s.order.PushBack(&shareItem{key: key, src: src, n: n, until: now.Add(s.ttl)})
}

// settled counts a reservation out; with none left, no item done early
// can still be queued. s.mu is held.
func (s *sourceShares) settled() {
	if s.inflight--; s.inflight == 0 {
		s.early = nil
	}
}

// done gives back the bytes of items deleted from the queue.
func (s *sourceShares) done(dest [32]byte, seqs []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seq := range seqs {
		k := itemKey{dest, seq}
		switch e := s.items[k]; {
		case e != nil:
			s.drop(e)
		case s.inflight > 0 && (s.firstSeq == 0 || seq >= s.firstSeq): // perhaps queued in a moment
			if s.early == nil {
				s.early = map[itemKey]bool{}
			}
			s.early[k] = true
		}
	}
}

// expire gives back the bytes of items the store has expired by now;
// s.mu is held.
func (s *sourceShares) expire(now time.Time) {
	for e := s.order.Front(); e != nil && !now.Before(e.Value.(*shareItem).until); e = s.order.Front() {
		s.drop(e)
	}
}

// drop forgets one counted item; s.mu is held.
func (s *sourceShares) drop(e *list.Element) {
	it := s.order.Remove(e).(*shareItem)
	delete(s.items, it.key)
	s.sub(it.src, it.n)
}

// sub takes n bytes off src's count, forgetting src at zero; s.mu is
// held.
func (s *sourceShares) sub(src [16]byte, n int64) {
	if s.bytes[src] -= n; s.bytes[src] <= 0 {
		delete(s.bytes, src)
	}
}

// sources is how many sources have bytes counted (for tests).
func (s *sourceShares) sources() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bytes)
}

// fairOrder returns the seqs of up to max items queued for dest in this
// run, in turns: each source's oldest item, then each one's next, and so
// on; within a turn, the sources with the fewest bytes queued first. A
// pump whose home relay takes only a few layers a try (its allowance for
// this relay spent) hands them over in this order, so that a few sources
// that queued much cannot hold everyone else's forwards behind theirs.
// Items queued before a restart count for no one and are not listed.
func (s *sourceShares) fairOrder(dest [32]byte, max int) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	type turn struct {
		rank  int   // the item's place among its source's
		bytes int64 // its source's bytes queued
		seq   uint64
	}
	ranks := map[[16]byte]int{}
	var turns []turn
	for e := s.order.Front(); e != nil; e = e.Next() { // oldest first: seqs ascend per source
		it := e.Value.(*shareItem)
		if it.key.dest != dest {
			continue
		}
		r := ranks[it.src]
		ranks[it.src] = r + 1
		turns = append(turns, turn{r, s.bytes[it.src], it.key.seq})
	}
	slices.SortFunc(turns, func(a, b turn) int {
		return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.bytes, b.bytes), cmp.Compare(a.seq, b.seq))
	})
	seqs := make([]uint64, 0, min(max, len(turns)))
	for _, t := range turns[:min(max, len(turns))] {
		seqs = append(seqs, t.seq)
	}
	return seqs
}
