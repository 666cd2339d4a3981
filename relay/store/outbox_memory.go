package store

import (
	"bytes"
	"context"
	"slices"
	"time"
)

// Memory's Outbox: items in the clear, in process memory, guarded by
// Memory.mu.

type memOutbox struct {
	lastSeq uint64
	dests   map[[32]byte][]memOut // ascending seq; no empty slices
	items   int
	bytes   int64
}

type memOut struct {
	seq  uint64
	day  uint32
	item []byte
}

func (m *Memory) Enqueue(ctx context.Context, dest [32]byte, item []byte) (OutboxItem, error) {
	if err := ValidateForward(item); err != nil {
		return OutboxItem{}, err
	}
	day := ExpiryDay(m.opts.Now(), m.opts.TTL)
	if err := m.lock(ctx); err != nil {
		return OutboxItem{}, err
	}
	defer m.mu.Unlock()
	o := &m.outbox
	if err := m.opts.OutboxQuota(o.bytes, len(item)); err != nil {
		return OutboxItem{}, err
	}
	if o.dests == nil {
		o.dests = make(map[[32]byte][]memOut)
	}
	o.lastSeq++
	e := memOut{seq: o.lastSeq, day: day, item: slices.Clone(item)}
	o.dests[dest] = append(o.dests[dest], e)
	o.items++
	o.bytes += int64(len(item))
	return OutboxItem{Seq: e.seq, Item: slices.Clone(item)}, nil
}

func (m *Memory) Pending(ctx context.Context, dest [32]byte, after uint64, max int) ([]OutboxItem, error) {
	if max <= 0 {
		max = DefaultFetchMax
	}
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var out []OutboxItem
	for _, e := range m.outbox.dests[dest] {
		if len(out) == max {
			break
		}
		if e.seq > after {
			out = append(out, OutboxItem{Seq: e.seq, Item: slices.Clone(e.item)})
		}
	}
	return out, nil
}

func (m *Memory) Done(ctx context.Context, dest [32]byte, seqs ...uint64) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	m.dropOut(dest, func(e memOut) bool { return slices.Contains(seqs, e.seq) })
	return nil
}

// dropOut deletes the items of dest for which drop is true, keeping the
// totals right, and returns how many it deleted. m.mu must be held.
func (m *Memory) dropOut(dest [32]byte, drop func(memOut) bool) int {
	o := &m.outbox
	n := 0
	left := slices.DeleteFunc(o.dests[dest], func(e memOut) bool {
		if !drop(e) {
			return false
		}
		o.items--
		o.bytes -= int64(len(e.item))
		n++
		return true
	})
	if len(left) == 0 {
		delete(o.dests, dest)
	} else {
		o.dests[dest] = left
	}
	return n
}

func (m *Memory) Dests(ctx context.Context) ([][32]byte, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([][32]byte, 0, len(m.outbox.dests))
	for d := range m.outbox.dests {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	return out, nil
}

// Expire deletes expired outbox items. Memory scans every item.
func (m *Memory) Expire(ctx context.Context, now time.Time) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	d := Today(now)
	n := 0
	for dest := range m.outbox.dests {
		n += m.dropOut(dest, func(e memOut) bool { return e.day <= d })
	}
	return n, nil
}

func (m *Memory) OutboxStats() OutboxStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return OutboxStats{Items: m.outbox.items, Bytes: m.outbox.bytes}
}
