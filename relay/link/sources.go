package link

import (
	"cmp"
	"container/list"
	"hash/maphash"
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
	seed maphash.Seed // of the flows' hash
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
		items: map[itemKey]*list.Element{}, order: list.New(), fair: map[[32]byte]*fairDest{},
		seed: maphash.MakeSeed()}
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
		s.drop(old, false)
	}
	it := &shareItem{key: key, src: src, n: n, until: now.Add(s.ttl)}
	it.start = s.fairFor(key.dest).tag(s.flow(src), n)
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
			s.drop(e, true)
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
		s.drop(e, false)
	}
}

// drop forgets one counted item, delivered or not; s.mu is held.
func (s *sourceShares) drop(e *list.Element, delivered bool) {
	it := s.order.Remove(e).(*shareItem)
	delete(s.items, it.key)
	s.sub(it.src, it.n)
	if f := s.fair[it.key.dest]; f != nil && f.gone(s.flow(it.src), it.n, delivered) {
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
// fair queueing over fairFlows flows, a source's flow chosen by a keyed
// hash of it: an item's start tag is the later of the destination's
// virtual time (the start tag of the last item delivered) and the finish
// tag of its flow's item before it (start + bytes). Taken by start tag,
// the flows' items interleave by bytes, and an item waits only behind
// those with a smaller tag: with a bounded number of flows, a bounded
// set. A reviewer found the first version (ordering by the bytes a source
// had queued) let addresses with one small forward each pass an older one
// at every try, and the next found per-source tags let fresh addresses do
// the same (each started at the virtual time, which their deliveries did
// not move) while keeping a tag for every source ever seen.
type fairDest struct {
	vtime  uint64
	items  int
	finish map[uint8]uint64 // a flow's last finish tag
	count  map[uint8]int    // its items counted
}

// fairFlows is how many flows a destination's items are shared out among.
const fairFlows = 256

// flow is src's flow: a hash keyed per process, so that no one can pick
// addresses that share another's.
func (s *sourceShares) flow(src [16]byte) uint8 {
	return uint8(maphash.Bytes(s.seed, src[:]) % fairFlows)
}

// fairFor returns dest's fairDest, made if none; s.mu is held.
func (s *sourceShares) fairFor(dest [32]byte) *fairDest {
	f := s.fair[dest]
	if f == nil {
		f = &fairDest{finish: map[uint8]uint64{}, count: map[uint8]int{}}
		s.fair[dest] = f
	}
	return f
}

// tag counts an item of n bytes in flow fl and returns its start tag.
func (f *fairDest) tag(fl uint8, n int64) uint64 {
	start := max(f.vtime, f.finish[fl])
	f.finish[fl] = start + uint64(n)
	f.count[fl]++
	f.items++
	return start
}

// gone counts an item of flow fl out and reports whether the destination
// has none left (its state can go). A flow left with none keeps its
// finish tag after a delivery (one that queues again at once does not
// start over at the virtual time, ahead of those it was behind). An item
// that expired undelivered takes its bytes off its flow's tag: bytes
// never delivered are not held against the flow (a reviewer's find).
func (f *fairDest) gone(fl uint8, n int64, delivered bool) bool {
	f.items--
	if !delivered { // its bytes come off the flow's tag
		f.finish[fl] = max(f.vtime, f.finish[fl]-min(f.finish[fl], uint64(n)))
	}
	if f.count[fl]--; f.count[fl] <= 0 {
		delete(f.count, fl)
		if !delivered || f.finish[fl] <= f.vtime {
			delete(f.finish, fl)
		}
	}
	return f.items <= 0
}

// fairOrder returns the seqs of up to max items counted for dest, by start
// tag (ties: oldest first), and whether items queued before this run (seq
// below the first seq counted; they count for no one) may wait in the
// queue: those go first, oldest first, as they did before.
func (s *sourceShares) fairOrder(dest [32]byte, max int) (seqs []uint64, before uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fair[dest]
	if f == nil {
		return nil, s.firstSeq
	}
	// The max smallest (start, seq), kept sorted as the items go by: a
	// full sort of a full outbox's items took 9.5 ms under the lock.
	type tagged struct{ start, seq uint64 }
	less := func(a, b tagged) int { return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.seq, b.seq)) }
	top := make([]tagged, 0, min(max, f.items))
	for e := s.order.Front(); e != nil && max > 0; e = e.Next() {
		it := e.Value.(*shareItem)
		if it.key.dest != dest {
			continue
		}
		t := tagged{it.start, it.key.seq}
		if len(top) == max && less(t, top[len(top)-1]) >= 0 {
			continue
		}
		if len(top) == max {
			top = top[:len(top)-1]
		}
		i, _ := slices.BinarySearchFunc(top, t, less)
		top = slices.Insert(top, i, t)
	}
	seqs = make([]uint64, len(top))
	for i, t := range top {
		seqs[i] = t.seq
	}
	return seqs, s.firstSeq
}
