package store

import (
	"context"
	"crypto/ed25519"
	"slices"
	"sync"
	"time"
)

// Memory is a Store held in process memory, for tests and `--dev`. Nothing
// survives Close. Put is "durable" as soon as it returns.
type Memory struct {
	opts  Options
	keys  *Keys
	notes Notifier

	mu     sync.Mutex
	closed bool
	boxes  map[[32]byte]*memBox // by mailbox id hash
	// retired: hashes of deleted or rotated-away ids -> day they are free
	retired map[[32]byte]uint32
	// forwards: hashes of rotated-away ids -> where they went (see
	// Store.RotateMailbox), sealed as a durable store keeps them
	forwards map[[32]byte]memForward
	envs     int
	bytes    int64
	outbox   memOutbox
}

type memBox struct {
	owner   ed25519.PublicKey
	sendCap []byte
	chain   []uint32 // MailboxKeys.Chain
	nextSeq uint64
	bytes   int64
	items   []*memEnv // ascending seq
	refs    map[Ref]*memEnv
}

type memForward struct {
	until  uint32 // Unix day it ends
	sealed []byte // Keys.SealForward
}

type memEnv struct {
	seq uint64
	day uint32
	ref Ref
	env []byte
}

var (
	_ Store  = (*Memory)(nil)
	_ Outbox = (*Memory)(nil)
)

// NewMemory returns an empty in-memory store. It panics if opts.IDKey is
// set but not KeySize bytes long.
func NewMemory(opts Options) *Memory {
	opts = opts.WithDefaults()
	key := opts.IDKey
	if key == nil {
		key = randomKey()
	}
	k, err := NewKeys(key)
	if err != nil {
		// A wrong-sized key is a programming error in the caller.
		panic("store.NewMemory: " + err.Error())
	}
	return &Memory{opts: opts, keys: k, boxes: make(map[[32]byte]*memBox), retired: make(map[[32]byte]uint32),
		forwards: make(map[[32]byte]memForward)}
}

// lock takes the lock and checks ctx and closed; on error the lock is not held.
func (m *Memory) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func (m *Memory) CreateMailbox(ctx context.Context, id [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) error {
	if err := ValidateMailbox(owner, sendCap); err != nil {
		return err
	}
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	hid := m.keys.MailboxHash(id)
	if _, gone := m.retired[hid]; m.boxes[hid] != nil || gone {
		return ErrMailboxExists
	}
	if err := m.opts.MailboxQuota(len(m.boxes) + len(m.retired)); err != nil {
		return err
	}
	m.boxes[hid] = newMemBox(owner, sendCap)
	return nil
}

func newMemBox(owner ed25519.PublicKey, sendCap []byte) *memBox {
	return &memBox{
		owner:   slices.Clone(owner),
		sendCap: slices.Clone(sendCap),
		nextSeq: FirstSeq(),
		refs:    make(map[Ref]*memEnv),
	}
}

func (m *Memory) Mailbox(ctx context.Context, id [IDSize]byte) (Mailbox, error) {
	if err := m.lock(ctx); err != nil {
		return Mailbox{}, err
	}
	defer m.mu.Unlock()
	b := m.boxes[m.keys.MailboxHash(id)]
	if b == nil {
		return Mailbox{}, ErrNoMailbox
	}
	return Mailbox{
		Owner:        slices.Clone(b.owner),
		SendCap:      slices.Clone(b.sendCap),
		Pending:      len(b.items),
		PendingBytes: b.bytes,
		NextSeq:      b.nextSeq,
	}, nil
}

func (m *Memory) DeleteMailbox(ctx context.Context, id [IDSize]byte) error {
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	hid := m.keys.MailboxHash(id)
	b := m.boxes[hid]
	if b == nil {
		return ErrNoMailbox
	}
	m.envs -= len(b.items)
	m.bytes -= b.bytes
	delete(m.boxes, hid)
	m.retire(hid)
	return nil
}

func (m *Memory) RotateMailbox(ctx context.Context, oldID, newID [IDSize]byte, owner ed25519.PublicKey, sendCap []byte) (int, error) {
	if err := ValidateMailbox(owner, sendCap); err != nil {
		return 0, err
	}
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	oldH, newH := m.keys.MailboxHash(oldID), m.keys.MailboxHash(newID)
	old := m.boxes[oldH]
	if old == nil {
		m.mu.Unlock()
		return 0, ErrNoMailbox
	}
	if _, gone := m.retired[newH]; m.boxes[newH] != nil || gone {
		m.mu.Unlock()
		return 0, ErrMailboxExists
	}
	if _, retire := m.opts.RetiredUntil(m.opts.Now()); retire {
		// The old id stays retired beside the new mailbox.
		if err := m.opts.MailboxQuota(len(m.boxes) + len(m.retired)); err != nil {
			m.mu.Unlock()
			return 0, err
		}
	}
	chain, err := m.opts.NextChain(old.chain, m.opts.Now())
	if err != nil {
		m.mu.Unlock()
		return 0, err
	}
	nb := newMemBox(owner, sendCap)
	nb.chain = chain
	for _, e := range old.items {
		e.seq = nb.nextSeq
		nb.nextSeq++
		nb.items = append(nb.items, e)
		nb.refs[e.ref] = e
		nb.bytes += int64(len(e.env))
	}
	delete(m.boxes, oldH)
	m.retire(oldH)
	if until, ok := m.opts.ForwardUntil(m.opts.Now()); ok {
		m.forwards[oldH] = memForward{until, m.keys.SealForward(oldID, newID, old.sendCap)}
	}
	m.boxes[newH] = nb
	moved := len(nb.items)
	m.mu.Unlock()
	if moved > 0 {
		m.notes.Wake(newH)
	}
	return moved, nil
}

func (m *Memory) Put(ctx context.Context, id [IDSize]byte, env []byte) (Ref, error) {
	if err := ValidateEnvelope(env); err != nil {
		return Ref{}, err
	}
	ref := m.keys.Ref(env)
	day := ExpiryDay(m.opts.Now(), m.opts.TTL)
	hid := m.keys.MailboxHash(id)
	if err := m.lock(ctx); err != nil {
		return Ref{}, err
	}
	b := m.boxes[hid]
	if b == nil {
		m.mu.Unlock()
		return Ref{}, ErrNoMailbox
	}
	if b.refs[ref] != nil {
		m.mu.Unlock()
		return ref, nil
	}
	if err := m.opts.EnvelopeQuota(len(b.items), b.bytes, m.bytes, len(env)); err != nil {
		m.mu.Unlock()
		return Ref{}, err
	}
	e := &memEnv{seq: b.nextSeq, day: day, ref: ref, env: slices.Clone(env)}
	b.nextSeq++
	b.items = append(b.items, e)
	b.refs[ref] = e
	b.bytes += int64(len(env))
	m.envs++
	m.bytes += int64(len(env))
	m.mu.Unlock()
	m.notes.Wake(hid)
	return ref, nil
}

func (m *Memory) Fetch(ctx context.Context, id [IDSize]byte, max int) ([]Item, error) {
	return m.FetchAfter(ctx, id, 0, max)
}

func (m *Memory) FetchAfter(ctx context.Context, id [IDSize]byte, after uint64, max int) ([]Item, error) {
	if max <= 0 {
		max = DefaultFetchMax
	}
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	b := m.boxes[m.keys.MailboxHash(id)]
	if b == nil {
		return nil, ErrNoMailbox
	}
	if after == ^uint64(0) {
		return nil, nil
	}
	start, _ := slices.BinarySearchFunc(b.items, after+1, func(e *memEnv, seq uint64) int {
		switch {
		case e.seq < seq:
			return -1
		case e.seq > seq:
			return 1
		}
		return 0
	})
	items := b.items[start:]
	n := min(max, len(items))
	out := make([]Item, n)
	for i, e := range items[:n] {
		out[i] = Item{Ref: e.ref, Seq: e.seq, Envelope: slices.Clone(e.env)}
	}
	return out, nil
}

func (m *Memory) Holds(ctx context.Context, id [IDSize]byte, refs []Ref) ([]bool, error) {
	if err := m.lock(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	b := m.boxes[m.keys.MailboxHash(id)]
	if b == nil {
		return nil, ErrNoMailbox
	}
	held := make([]bool, len(refs))
	for i, r := range refs {
		held[i] = b.refs[r] != nil
	}
	return held, nil
}

func (m *Memory) Ack(ctx context.Context, id [IDSize]byte, refs ...Ref) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	b := m.boxes[m.keys.MailboxHash(id)]
	if b == nil {
		return 0, ErrNoMailbox
	}
	gone := make(map[*memEnv]bool)
	for _, r := range refs {
		if e := b.refs[r]; e != nil {
			gone[e] = true
			delete(b.refs, r)
		}
	}
	if len(gone) > 0 {
		m.removeFrom(b, func(e *memEnv) bool { return gone[e] })
	}
	return len(gone), nil
}

// removeFrom deletes the envelopes of b for which drop is true, keeping
// counters right. m.mu must be held.
func (m *Memory) removeFrom(b *memBox, drop func(*memEnv) bool) int {
	n := 0
	b.items = slices.DeleteFunc(b.items, func(e *memEnv) bool {
		if !drop(e) {
			return false
		}
		delete(b.refs, e.ref)
		b.bytes -= int64(len(e.env))
		m.envs--
		m.bytes -= int64(len(e.env))
		n++
		return true
	})
	return n
}

// Sweep deletes expired envelopes. Memory scans every envelope; boltstore
// keeps a per-day index.
func (m *Memory) Sweep(ctx context.Context, now time.Time) (int, error) {
	if err := m.lock(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	d := Today(now)
	n := 0
	for _, b := range m.boxes {
		n += m.removeFrom(b, func(e *memEnv) bool { return e.day <= d })
	}
	for h, until := range m.retired {
		if until <= d {
			delete(m.retired, h)
		}
	}
	for h, f := range m.forwards {
		if f.until <= d {
			delete(m.forwards, h)
		}
	}
	return n, nil
}

func (m *Memory) Forwarded(ctx context.Context, id [IDSize]byte) ([IDSize]byte, []byte, error) {
	hid := m.keys.MailboxHash(id)
	if err := m.lock(ctx); err != nil {
		return [IDSize]byte{}, nil, err
	}
	f, ok := m.forwards[hid]
	m.mu.Unlock()
	if !ok || f.until <= Today(m.opts.Now()) {
		return [IDSize]byte{}, nil, ErrNoMailbox
	}
	return m.keys.OpenForward(id, f.sealed)
}

// retire marks hid unusable until the retirement day; m.mu is held.
func (m *Memory) retire(hid [32]byte) {
	if day, ok := m.opts.RetiredUntil(m.opts.Now()); ok {
		m.retired[hid] = day
	}
}

func (m *Memory) Notify(id [IDSize]byte) (<-chan struct{}, func()) {
	return m.notes.Subscribe(m.keys.MailboxHash(id))
}

func (m *Memory) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Stats{Mailboxes: len(m.boxes), Envelopes: m.envs, Bytes: m.bytes}
}

func (m *Memory) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.boxes = nil
	m.outbox = memOutbox{}
	m.mu.Unlock()
	m.notes.Close()
	return nil
}
