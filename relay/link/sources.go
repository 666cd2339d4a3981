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
	// fair: per destination, the start tags that order its items for a
	// home relay that takes only a few a try (fairOrder)
	fair map[[32]byte]*fairDest
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
	start uint64 // its start tag (fairDest)
}

func newSourceShares(max int64, ttl time.Duration) *sourceShares {
	return &sourceShares{max: max, ttl: ttl, bytes: map[[16]byte]int64{},
		items: map[itemKey]*list.Element{}, order: list.New(), fair: map[[32]byte]*fairDest{}}
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
	it := &shareItem{key: key, src: src, n: n, until: now.Add(s.ttl)}
	it.start = s.fairFor(key.dest).tag(src, n)
	s.items[key] = s.order.PushBack(it)
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
			if f := s.fair[dest]; f != nil { // delivered: the order moves on
				f.vtime = max(f.vtime, e.Value.(*shareItem).start)
			}
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
	if f := s.fair[it.key.dest]; f != nil && f.gone(it.src) {
		delete(s.fair, it.key.dest)
	}
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

// fairDest orders the items counted for one destination by start-time
// fair queueing: an item's start tag is the later of the destination's
// virtual time (the start tag of the last item delivered) and the finish
// tag of its source's item before it (start + bytes). Taken by start tag,
// the sources' items interleave by bytes, and an item waits only behind
// those with a smaller tag, a set that items queued after it cannot join
// for ever (a reviewer's find: ordering by the bytes a source had queued
// let addresses with one small forward each pass an older one at every
// try).
type fairDest struct {
	vtime  uint64
	items  int
	finish map[[16]byte]uint64 // a source's last finish tag
	count  map[[16]byte]int    // its items counted
}

// fairFor returns dest's fairDest, made if none; s.mu is held.
func (s *sourceShares) fairFor(dest [32]byte) *fairDest {
	f := s.fair[dest]
	if f == nil {
		f = &fairDest{finish: map[[16]byte]uint64{}, count: map[[16]byte]int{}}
		s.fair[dest] = f
	}
	return f
}

// tag counts an item of n bytes from src and returns its start tag.
func (f *fairDest) tag(src [16]byte, n int64) uint64 {
	start := max(f.vtime, f.finish[src])
	f.finish[src] = start + uint64(n)
	f.count[src]++
	f.items++
	return start
}

// gone counts an item of src out and reports whether the destination has
// none left (its state can go). A source with none left keeps its finish
// tag while it is ahead of the virtual time: a source that queues again
// at once does not start over at the virtual time, ahead of those it was
// behind.
func (f *fairDest) gone(src [16]byte) bool {
	f.items--
	if f.count[src]--; f.count[src] <= 0 {
		delete(f.count, src)
		if f.finish[src] <= f.vtime {
			delete(f.finish, src)
		}
	}
	return f.items <= 0
}

// fairOrder returns the seqs of up to max items counted for dest, by start
// tag (ties: oldest first), and whether items queued before this run (seq
// below the first seq counted; they count for no one) may wait in the
// queue: those go first, oldest first, as they did before. It also drops
// the finish tags of sources with no items that the virtual time has
// passed.
func (s *sourceShares) fairOrder(dest [32]byte, max int) (seqs []uint64, before uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fair[dest]
	if f == nil {
		return nil, s.firstSeq
	}
	for src, fin := range f.finish {
		if f.count[src] == 0 && fin <= f.vtime {
			delete(f.finish, src)
		}
	}
	type tagged struct{ start, seq uint64 }
	all := make([]tagged, 0, f.items)
	for e := s.order.Front(); e != nil; e = e.Next() {
		if it := e.Value.(*shareItem); it.key.dest == dest {
			all = append(all, tagged{it.start, it.key.seq})
		}
	}
	slices.SortFunc(all, func(a, b tagged) int { return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.seq, b.seq)) })
	seqs = make([]uint64, 0, min(max, len(all)))
	for _, t := range all[:min(max, len(all))] {
		seqs = append(seqs, t.seq)
	}
	return seqs, s.firstSeq
}
