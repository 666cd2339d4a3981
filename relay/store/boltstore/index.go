package boltstore

import (
	"cmp"
	"crypto/ed25519"
	"encoding/binary"
	"maps"
	"os"
	"slices"

	"github.com/postern/postern/relay/store"
)

// The index is what the log says, in memory: mailboxes with their pending
// envelopes (where each record lies), retired ids, outbox items, and how
// many live bytes each segment holds. Open builds it by replaying every
// segment; the committer keeps it up to date. Replaying a record and
// applying the write that made it go through the same methods.

// loc is where a record starts: segment number and file offset.
type loc struct {
	seg uint64
	off int64
}

// entry is one pending envelope: 64 bytes. (Which commit wrote it is
// kept per mailbox: see mailbox.newFrom.)
type entry struct {
	seq  uint64
	ref  store.Ref
	day  uint32
	size uint32 // record bytes in the log
	at   loc
}

func (e *entry) plainLen() int64 {
	return int64(e.size) - recHeader - envelopeBody - store.SealOverhead
}

// sealed returns where the sealed envelope lies and its length.
func (e *entry) sealed() (loc, int) {
	return loc{e.at.seg, e.at.off + recHeader + envelopeBody}, int(e.size) - recHeader - envelopeBody
}

// mailbox is a mailbox and its pending envelopes, by seq. During replay a
// mailbox whose record has not been seen yet (its record was carried past
// its envelopes by compaction) exists only as a placeholder.
type mailbox struct {
	exists bool
	// keys is the owner key and send capability verifier sealed
	// (store.Keys.SealMailbox), as the log holds them; nil for a mailbox
	// whose record has them in the clear (written before 2026-12-07, or
	// migrated), which owner and sendCap then hold.
	keys    []byte
	owner   ed25519.PublicKey
	sendCap []byte
	nextSeq uint64
	bytes   int64
	envs    []entry
	refs    refIndex
	at      loc // its latest mailbox record
	size    uint32

	// The envelopes from seq newFrom on were added by commit newBatch;
	// readers skip them until it is durable. Seqs only grow and one commit
	// is built at a time, so they are the tail of envs.
	newFrom, newBatch uint64
}

// visible reports whether readers may see e, the last commit durable.
func (b *mailbox) visible(e *entry, durable uint64) bool {
	return b.newBatch <= durable || e.seq < b.newFrom
}

// find returns the entry of envelope seq.
func (b *mailbox) find(seq uint64) *entry {
	if i, found := slices.BinarySearchFunc(b.envs, seq, bySeq); found {
		return &b.envs[i]
	}
	return nil
}

// refIndex finds a pending envelope's seq by its ref. Refs are keyed
// hashes (HMAC-SHA256), so their first 8 bytes are as good as random:
// short maps those to the seq (16 bytes a slot instead of 40 for the
// whole ref), and the rare ref whose prefix another pending envelope of
// the mailbox holds goes to long, keyed by the whole ref.
type refIndex struct {
	short map[uint64]uint64
	long  map[store.Ref]uint64
}

func refPrefix(ref store.Ref) uint64 { return binary.BigEndian.Uint64(ref[:]) }

// seq returns the seq of the pending envelope ref in b.
func (r *refIndex) seq(b *mailbox, ref store.Ref) (uint64, bool) {
	if seq, ok := r.short[refPrefix(ref)]; ok {
		if e := b.find(seq); e != nil && e.ref == ref {
			return seq, true
		}
	}
	seq, ok := r.long[ref]
	return seq, ok
}

func (r *refIndex) add(ref store.Ref, seq uint64) {
	p := refPrefix(ref)
	if _, taken := r.short[p]; !taken {
		if r.short == nil {
			r.short = map[uint64]uint64{}
		}
		r.short[p] = seq
		return
	}
	if r.long == nil {
		r.long = map[store.Ref]uint64{}
	}
	r.long[ref] = seq
}

// remove forgets envelope seq, whose ref is ref.
func (r *refIndex) remove(ref store.Ref, seq uint64) {
	if p := refPrefix(ref); r.short[p] == seq {
		delete(r.short, p)
		return
	}
	delete(r.long, ref)
}

type retirement struct {
	day  uint32
	at   loc
	size uint32
}

// forward is where a rotated-away id went (store.Store.RotateMailbox),
// until its day: the sealed bytes of its record, which only the old id
// opens.
type forward struct {
	until  uint32
	sealed []byte
}

// outItem is one outbox item.
type outItem struct {
	seq   uint64
	day   uint32
	size  uint32
	at    loc
	batch uint64
}

func (it *outItem) plainLen() int64 {
	return int64(it.size) - recHeader - outboxBody - store.SealOverhead
}

func (it *outItem) sealed() (loc, int) {
	return loc{it.at.seg, it.at.off + recHeader + outboxBody}, int(it.size) - recHeader - outboxBody
}

// segment is one open segment file.
type segment struct {
	num  uint64
	path string
	f    *os.File
	size int64  // bytes written and durable (the committer's next write goes here)
	seed uint32 // where each frame's checksum starts (segHead.seed)
	live int64  // bytes of records the index still points at
}

type index struct {
	boxes   map[[32]byte]*mailbox
	retired map[[32]byte]retirement
	// forwards of retired ids (a subset of retired's keys) that have not
	// ended
	forwards map[[32]byte]forward
	out      map[[32]byte][]outItem
	outNext  uint64
	segs     map[uint64]*segment
	order    []uint64 // segment numbers, oldest first; the last is written to
}

func newIndex() *index {
	return &index{boxes: map[[32]byte]*mailbox{}, retired: map[[32]byte]retirement{},
		forwards: map[[32]byte]forward{}, out: map[[32]byte][]outItem{}, outNext: 1, segs: map[uint64]*segment{}}
}

func (ix *index) live(at loc, size uint32) {
	if s := ix.segs[at.seg]; s != nil {
		s.live += int64(size)
	}
}

func (ix *index) dead(at loc, size uint32) {
	if s := ix.segs[at.seg]; s != nil {
		s.live -= int64(size)
	}
}

func (ix *index) active() *segment { return ix.segs[ix.order[len(ix.order)-1]] }

func (ix *index) box(hid [32]byte) *mailbox {
	b := ix.boxes[hid]
	if b == nil {
		b = &mailbox{nextSeq: 1}
		ix.boxes[hid] = b
	}
	return b
}

// mailbox returns mailbox hid if it exists.
func (ix *index) mailbox(hid [32]byte) *mailbox {
	if b := ix.boxes[hid]; b != nil && b.exists {
		return b
	}
	return nil
}

// setMailbox applies a mailbox record at at: it creates mailbox hid or
// updates its owner, send capability and next seq, sealed (keys) or, for
// an older record, in the clear.
func (ix *index) setMailbox(hid [32]byte, keys, owner, sendCap []byte, nextSeq uint64, at loc, size uint32) {
	b := ix.box(hid)
	if b.exists {
		ix.dead(b.at, b.size)
	}
	b.exists, b.keys, b.owner, b.sendCap = true, slices.Clone(keys), slices.Clone(owner), slices.Clone(sendCap)
	b.nextSeq = max(b.nextSeq, nextSeq)
	b.at, b.size = at, size
	ix.live(at, size)
}

func bySeq(e entry, seq uint64) int { return cmp.Compare(e.seq, seq) }

// addEnvelope adds e to mailbox hid, or moves it if the mailbox already
// holds its seq (a record carried by a compaction that a crash cut short).
func (ix *index) addEnvelope(hid [32]byte, e entry) {
	b := ix.box(hid)
	i, found := len(b.envs), false
	if i > 0 && b.envs[i-1].seq >= e.seq {
		i, found = slices.BinarySearchFunc(b.envs, e.seq, bySeq)
	}
	ix.live(e.at, e.size)
	if found {
		ix.dead(b.envs[i].at, b.envs[i].size)
		b.envs[i].at = e.at
		return
	}
	b.envs = slices.Insert(b.envs, i, e)
	b.refs.add(e.ref, e.seq)
	b.bytes += e.plainLen()
	b.nextSeq = max(b.nextSeq, e.seq+1)
}

// removeEnvelope removes envelope seq from b and returns it.
func (ix *index) removeEnvelope(b *mailbox, seq uint64) (entry, bool) {
	i, found := slices.BinarySearchFunc(b.envs, seq, bySeq)
	if !found {
		return entry{}, false
	}
	e := b.envs[i]
	b.envs = slices.Delete(b.envs, i, i+1)
	b.refs.remove(e.ref, e.seq)
	b.bytes -= e.plainLen()
	ix.dead(e.at, e.size)
	return e, true
}

// dropMailbox removes mailbox hid with its envelopes and returns how many
// envelopes and bytes went with it.
func (ix *index) dropMailbox(hid [32]byte) (int, int64) {
	b := ix.boxes[hid]
	if b == nil {
		return 0, 0
	}
	for i := range b.envs {
		ix.dead(b.envs[i].at, b.envs[i].size)
	}
	if b.exists {
		ix.dead(b.at, b.size)
	}
	delete(ix.boxes, hid)
	return len(b.envs), b.bytes
}

func (ix *index) retire(hid [32]byte, r retirement) {
	if old, ok := ix.retired[hid]; ok {
		ix.dead(old.at, old.size)
	}
	ix.retired[hid] = r
	ix.live(r.at, r.size)
}

// endForwards ends the forwards whose day is at most last and returns
// how many.
func (ix *index) endForwards(last uint32) int {
	n := 0
	for hid, f := range ix.forwards {
		if f.until <= last {
			delete(ix.forwards, hid)
			n++
		}
	}
	return n
}

// freeRetired frees the retired ids whose day is at most last and
// returns how many.
func (ix *index) freeRetired(last uint32) int {
	n := 0
	for hid, r := range ix.retired {
		if r.day <= last {
			ix.dead(r.at, r.size)
			delete(ix.retired, hid)
			delete(ix.forwards, hid)
			n++
		}
	}
	return n
}

// sweep removes every envelope whose expiry day is at most last and
// returns how many and their bytes.
func (ix *index) sweep(last uint32) (n int, bytes int64) {
	for _, b := range ix.boxes {
		kept := b.envs[:0]
		for _, e := range b.envs {
			if e.day > last {
				kept = append(kept, e)
				continue
			}
			ix.dead(e.at, e.size)
			b.refs.remove(e.ref, e.seq)
			b.bytes -= e.plainLen()
			n++
			bytes += e.plainLen()
		}
		clear(b.envs[len(kept):])
		b.envs = kept
	}
	return n, bytes
}

func byOutSeq(it outItem, seq uint64) int { return cmp.Compare(it.seq, seq) }

// addOut adds outbox item it for dest, or moves it (see addEnvelope).
func (ix *index) addOut(dest [32]byte, it outItem) {
	l := ix.out[dest]
	i, found := slices.BinarySearchFunc(l, it.seq, byOutSeq)
	ix.live(it.at, it.size)
	ix.outNext = max(ix.outNext, it.seq+1)
	if found {
		ix.dead(l[i].at, l[i].size)
		l[i].at = it.at
		return
	}
	ix.out[dest] = slices.Insert(l, i, it)
}

// removeOut removes item seq of dest and returns it.
func (ix *index) removeOut(dest [32]byte, seq uint64) (outItem, bool) {
	l := ix.out[dest]
	i, found := slices.BinarySearchFunc(l, seq, byOutSeq)
	if !found {
		return outItem{}, false
	}
	it := l[i]
	ix.dead(it.at, it.size)
	if l = slices.Delete(l, i, i+1); len(l) == 0 {
		delete(ix.out, dest)
	} else {
		ix.out[dest] = l
	}
	return it, true
}

// expireOut removes the outbox items whose day is at most last and
// returns how many and their bytes.
func (ix *index) expireOut(last uint32) (n int, bytes int64) {
	for _, dest := range slices.Collect(maps.Keys(ix.out)) {
		for _, it := range slices.Clone(ix.out[dest]) {
			if it.day <= last {
				ix.removeOut(dest, it.seq)
				n++
				bytes += it.plainLen()
			}
		}
	}
	return n, bytes
}

// apply replays record r found at at.
func (ix *index) apply(r record, at loc) {
	size := uint32(r.size)
	switch r.typ {
	case recMailbox:
		ix.setMailbox(r.key, nil, r.owner, r.sendCap, r.seq, at, size)
	case recBox:
		ix.setMailbox(r.key, r.sealed, nil, nil, r.seq, at, size)
	case recDelete:
		ix.dropMailbox(r.key)
		if r.retired {
			ix.retire(r.key, retirement{r.day, at, size})
		}
	case recEnvelope:
		ix.addEnvelope(r.key, entry{seq: r.seq, ref: r.ref, day: r.day, size: size, at: at})
	case recAck:
		if b := ix.boxes[r.key]; b != nil {
			for _, seq := range r.seqs {
				ix.removeEnvelope(b, seq)
			}
		}
	case recSweep:
		ix.sweep(r.day)
		ix.freeRetired(r.day)
		ix.endForwards(r.day)
	case recRetired:
		ix.retire(r.key, retirement{r.day, at, size})
		delete(ix.forwards, r.key)
	case recForward:
		ix.retire(r.key, retirement{r.day, at, size})
		ix.forwards[r.key] = forward{r.until, slices.Clone(r.sealed)}
	case recOutbox:
		ix.addOut(r.key, outItem{seq: r.seq, day: r.day, size: size, at: at})
	case recDone:
		for _, seq := range r.seqs {
			ix.removeOut(r.key, seq)
		}
	case recExpire:
		ix.expireOut(r.day)
	}
}

// finish drops the placeholders left after a replay: envelopes of a
// mailbox that has no record (none are written that way). It also trims
// the slack that appending left in each mailbox's envelope list (up to
// half of it: 64 bytes an entry).
func (ix *index) finish() {
	for hid, b := range ix.boxes {
		if !b.exists {
			ix.dropMailbox(hid)
			continue
		}
		if cap(b.envs)-len(b.envs) > len(b.envs)/8 {
			b.envs = slices.Clone(b.envs)
		}
	}
}

// totals returns the store totals the index holds.
func (ix *index) totals() (boxes, envs, bytes, items, obytes int64) {
	for _, b := range ix.boxes {
		boxes++
		envs += int64(len(b.envs))
		bytes += b.bytes
	}
	for _, l := range ix.out {
		for i := range l {
			items++
			obytes += l[i].plainLen()
		}
	}
	return boxes, envs, bytes, items, obytes
}
