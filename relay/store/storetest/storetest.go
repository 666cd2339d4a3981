// Package storetest is the conformance suite every store.Store
// implementation must pass. Run it from the implementation's tests:
//
//	storetest.Run(t, func(t *testing.T, opts store.Options) store.Store {
//		return store.NewMemory(opts)
//	})
package storetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

// Factory returns a new, empty store configured with opts. The suite closes
// it (closing twice must be harmless).
type Factory func(t *testing.T, opts store.Options) store.Store

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"Mailboxes", testMailboxes},
		{"UnknownMailbox", testUnknownMailbox},
		{"Rotate", testRotate},
		{"PutFetchAck", testPutFetchAck},
		{"Holds", testHolds},
		{"PutKeepsNoEnvelope", testPutKeepsNoEnvelope},
		{"FetchAfter", testFetchAfter},
		{"SeqsOfAMailboxMadeAgain", testSeqsMadeAgain},
		{"RetiredIDs", testRetiredIDs},
		{"Forwards", testForwards},
		{"ForwardChain", testForwardChain},
		{"QuotaMailboxes", testQuotaMailboxes},
		{"QuotaRetiredIDs", testQuotaRetired},
		{"Duplicate", testDuplicate},
		{"InvalidEnvelope", testInvalidEnvelope},
		{"QuotaMailboxCount", testQuotaCount},
		{"QuotaMailboxBytes", testQuotaBytes},
		{"QuotaStoreBytes", testQuotaStore},
		{"Sweep", testSweep},
		{"Notify", testNotify},
		{"ConcurrentPuts", testConcurrentPuts},
		{"ContextCanceled", testContextCanceled},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

func open(t *testing.T, f Factory, opts store.Options) store.Store {
	t.Helper()
	s := f(t, opts)
	t.Cleanup(func() { s.Close() })
	return s
}

// ID returns a deterministic mailbox id for tests.
func ID(n int) [store.IDSize]byte {
	var id [store.IDSize]byte
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), 'i', 'd'})
	r.Read(id[:])
	return id
}

// Owner returns a deterministic owner key for tests.
func Owner(n int) ed25519.PublicKey {
	seed := make([]byte, ed25519.SeedSize)
	binary.BigEndian.PutUint64(seed, uint64(n)+1)
	return ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
}

// Envelope returns a deterministic envelope of size bytes addressed to id,
// shaped like a sealed envelope: version, suite, the 32-byte mailbox id,
// then pseudo-random ciphertext that depends on n.
func Envelope(id [store.IDSize]byte, size, n int) []byte {
	env := make([]byte, size)
	env[0], env[1] = 1, 1
	copy(env[2:], id[:])
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(size >> 8), 'e'})
	r.Read(env[2+store.IDSize:])
	return env
}

func mustCreate(t *testing.T, s store.Store, id [store.IDSize]byte, owner int) {
	t.Helper()
	if err := s.CreateMailbox(context.Background(), id, Owner(owner), []byte("cap")); err != nil {
		t.Fatalf("CreateMailbox: %v", err)
	}
}

func mustPut(t *testing.T, s store.Store, id [store.IDSize]byte, env []byte) store.Ref {
	t.Helper()
	ref, err := s.Put(context.Background(), id, env)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return ref
}

func fetchAll(t *testing.T, s store.Store, id [store.IDSize]byte) []store.Item {
	t.Helper()
	items, err := s.Fetch(context.Background(), id, 1<<20)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return items
}

// wantItems checks that mailbox id holds exactly envs, in order.
func wantItems(t *testing.T, s store.Store, id [store.IDSize]byte, envs ...[]byte) {
	t.Helper()
	items := fetchAll(t, s, id)
	if len(items) != len(envs) {
		t.Fatalf("mailbox holds %d envelopes, want %d", len(items), len(envs))
	}
	for i, it := range items {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("envelope %d differs from what was put", i)
		}
	}
}

func wantStats(t *testing.T, s store.Store, boxes, envs int, size int64) {
	t.Helper()
	st := s.Stats()
	if st.Mailboxes != boxes || st.Envelopes != envs || st.Bytes != size {
		t.Fatalf("Stats = %d mailboxes, %d envelopes, %d bytes; want %d, %d, %d",
			st.Mailboxes, st.Envelopes, st.Bytes, boxes, envs, size)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

// noIDs checks that an error message reveals no mailbox id.
func noIDs(t *testing.T, err error, ids ...[store.IDSize]byte) {
	t.Helper()
	msg := err.Error()
	for _, id := range ids {
		if strings.Contains(msg, string(id[:])) || strings.Contains(strings.ToLower(msg), hex.EncodeToString(id[:])) ||
			strings.Contains(msg, fmt.Sprint(id)) {
			t.Fatalf("error message contains a mailbox id: %q", msg)
		}
	}
}

func testMailboxes(t *testing.T, f Factory) {
	ctx := context.Background()
	// Retired ids are testRetiredIDs' subject; here a deleted id is free.
	s := open(t, f, store.Options{Retire: -1})
	a, b := ID(1), ID(2)
	if err := s.CreateMailbox(ctx, a, Owner(1), []byte("send-cap")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, b, Owner(2), nil); err != nil {
		t.Fatal(err)
	}
	err := s.CreateMailbox(ctx, a, Owner(3), nil)
	wantErr(t, "create twice", err, store.ErrMailboxExists)
	noIDs(t, err, a)

	mb, err := s.Mailbox(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if !mb.Owner.Equal(Owner(1)) || string(mb.SendCap) != "send-cap" || mb.Pending != 0 {
		t.Fatalf("Mailbox(a) = %+v, want owner 1, send-cap, 0 pending", mb)
	}
	mb, err = s.Mailbox(ctx, b)
	if err != nil || !mb.Owner.Equal(Owner(2)) || len(mb.SendCap) != 0 {
		t.Fatalf("Mailbox(b) = %+v, %v; want owner 2 and no send capability", mb, err)
	}

	wantErr(t, "short owner key", s.CreateMailbox(ctx, ID(9), Owner(9)[:31], nil), store.ErrInvalid)
	wantErr(t, "huge send cap", s.CreateMailbox(ctx, ID(9), Owner(9), make([]byte, store.MaxSendCapSize+1)), store.ErrInvalid)

	e1, e2 := Envelope(a, 4096, 1), Envelope(a, 16384, 2)
	mustPut(t, s, a, e1)
	mustPut(t, s, a, e2)
	mustPut(t, s, b, Envelope(b, 4096, 3))
	wantStats(t, s, 2, 3, 4096+16384+4096)
	mb, _ = s.Mailbox(ctx, a)
	if mb.Pending != 2 || mb.PendingBytes != 4096+16384 {
		t.Fatalf("Mailbox(a) pending = %d, %d bytes; want 2, %d", mb.Pending, mb.PendingBytes, 4096+16384)
	}

	if err := s.DeleteMailbox(ctx, a); err != nil {
		t.Fatal(err)
	}
	_, err = s.Mailbox(ctx, a)
	wantErr(t, "Mailbox after delete", err, store.ErrNoMailbox)
	wantErr(t, "delete twice", s.DeleteMailbox(ctx, a), store.ErrNoMailbox)
	wantStats(t, s, 1, 1, 4096)

	// Re-created, the mailbox starts empty: the old envelopes are gone.
	mustCreate(t, s, a, 1)
	wantItems(t, s, a)
	e3 := Envelope(a, 4096, 4)
	mustPut(t, s, a, e3)
	wantItems(t, s, a, e3)
	wantItems(t, s, b, Envelope(b, 4096, 3))
	// The deleted envelope can be stored again: nothing stale dedupes it.
	mustPut(t, s, a, e1)
	wantItems(t, s, a, e3, e1)
}

func testUnknownMailbox(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	id := ID(7)
	_, err := s.Mailbox(ctx, id)
	wantErr(t, "Mailbox", err, store.ErrNoMailbox)
	noIDs(t, err, id)
	_, err = s.Put(ctx, id, Envelope(id, 4096, 1))
	wantErr(t, "Put", err, store.ErrNoMailbox)
	_, err = s.Fetch(ctx, id, 1)
	wantErr(t, "Fetch", err, store.ErrNoMailbox)
	_, err = s.Ack(ctx, id, store.Ref{1})
	wantErr(t, "Ack", err, store.ErrNoMailbox)
	wantErr(t, "DeleteMailbox", s.DeleteMailbox(ctx, id), store.ErrNoMailbox)
	_, err = s.RotateMailbox(ctx, id, ID(8), Owner(8), nil)
	wantErr(t, "RotateMailbox", err, store.ErrNoMailbox)
	wantStats(t, s, 0, 0, 0)
	var se *store.Error
	if !errors.As(err, &se) || se.Code != store.CodeNoMailbox {
		t.Fatalf("errors.As(%v) did not give CodeNoMailbox", err)
	}
}

// testHolds: Holds says which refs a mailbox still holds: not those acked
// or never put, nor another mailbox's; a mailbox that does not exist is
// ErrNoMailbox.
func testHolds(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	a, b := ID(1), ID(2)
	mustCreate(t, s, a, 1)
	mustCreate(t, s, b, 2)
	var refs []store.Ref
	for i := range 4 {
		refs = append(refs, mustPut(t, s, a, Envelope(a, 1024, i)))
	}
	other := mustPut(t, s, b, Envelope(b, 1024, 9))
	if _, err := s.Ack(ctx, a, refs[0], refs[2]); err != nil {
		t.Fatal(err)
	}
	held, err := s.Holds(ctx, a, append(slices.Clone(refs), other, store.Ref{7}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, false, true, false, false}; !slices.Equal(held, want) {
		t.Fatalf("Holds = %v, want %v", held, want)
	}
	if _, err := s.Holds(ctx, ID(3), refs); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("Holds on no mailbox: %v", err)
	}
}

func testRotate(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	oldID, newID, other := ID(1), ID(2), ID(3)
	mustCreate(t, s, oldID, 1)
	mustCreate(t, s, other, 3)
	var envs [][]byte
	var refs []store.Ref
	for i := range 3 {
		e := Envelope(oldID, 4096, i)
		envs = append(envs, e)
		refs = append(refs, mustPut(t, s, oldID, e))
	}
	mustPut(t, s, other, Envelope(other, 4096, 99))

	_, err := s.RotateMailbox(ctx, oldID, other, Owner(2), nil)
	wantErr(t, "rotate onto an existing mailbox", err, store.ErrMailboxExists)
	wantItems(t, s, oldID, envs...)

	ch, cancel := s.Notify(newID)
	defer cancel()
	moved, err := s.RotateMailbox(ctx, oldID, newID, Owner(2), []byte("new-cap"))
	if err != nil || moved != 3 {
		t.Fatalf("RotateMailbox = %d, %v; want 3, nil", moved, err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("rotating envelopes into a mailbox did not wake its subscriber")
	}
	_, err = s.Mailbox(ctx, oldID)
	wantErr(t, "old mailbox after rotate", err, store.ErrNoMailbox)
	mb, err := s.Mailbox(ctx, newID)
	if err != nil || !mb.Owner.Equal(Owner(2)) || string(mb.SendCap) != "new-cap" || mb.Pending != 3 {
		t.Fatalf("new mailbox = %+v, %v", mb, err)
	}
	items := fetchAll(t, s, newID)
	for i, it := range items {
		if it.Ref != refs[i] || !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("rotated envelope %d changed", i)
		}
	}
	wantItems(t, s, newID, envs...)
	wantStats(t, s, 2, 4, 4*4096)

	// The moved envelopes keep working: ack, dedupe, new puts after them.
	if n, err := s.Ack(ctx, newID, refs[0]); n != 1 || err != nil {
		t.Fatalf("Ack after rotate = %d, %v", n, err)
	}
	if r := mustPut(t, s, newID, envs[1]); r != refs[1] {
		t.Fatal("duplicate of a rotated envelope got a new ref")
	}
	e4 := Envelope(newID, 4096, 4)
	mustPut(t, s, newID, e4)
	wantItems(t, s, newID, envs[1], envs[2], e4)

	// An empty mailbox rotates too.
	empty := ID(4)
	mustCreate(t, s, empty, 4)
	if moved, err := s.RotateMailbox(ctx, empty, ID(5), Owner(5), nil); moved != 0 || err != nil {
		t.Fatalf("rotate empty = %d, %v", moved, err)
	}
	wantItems(t, s, ID(5))
	wantErr(t, "short owner key", func() error { _, err := s.RotateMailbox(ctx, ID(5), ID(6), nil, nil); return err }(), store.ErrInvalid)
}

// Put keeps no reference to the caller's buffer: one buffer reused for
// every Put (as the relay reuses Send frames) leaves each envelope whole.
func testPutKeepsNoEnvelope(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, s, id, 1)
	buf := make([]byte, 4096)
	var want [][]byte
	for i := range 8 {
		e := Envelope(id, len(buf), i)
		copy(buf, e)
		mustPut(t, s, id, buf)
		want = append(want, e)
	}
	clear(buf)
	items, err := s.Fetch(ctx, id, 0)
	if err != nil || len(items) != len(want) {
		t.Fatalf("Fetch = %d items, %v; want %d", len(items), err, len(want))
	}
	for i, it := range items {
		if !bytes.Equal(it.Envelope, want[i]) {
			t.Fatalf("envelope %d changed when the buffer it was put from was reused", i)
		}
	}
}

func testPutFetchAck(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, s, id, 1)
	sizes := []int{4096, 16384, 65536, 4096, 4096}
	var envs [][]byte
	var refs []store.Ref
	var total int64
	for i, n := range sizes {
		e := Envelope(id, n, i)
		envs = append(envs, e)
		refs = append(refs, mustPut(t, s, id, e))
		total += int64(n)
	}
	wantStats(t, s, 1, 5, total)
	for i := range refs {
		for j := range i {
			if refs[i] == refs[j] {
				t.Fatal("different envelopes got the same ref")
			}
		}
	}

	items, err := s.Fetch(ctx, id, 2)
	if err != nil || len(items) != 2 || items[0].Ref != refs[0] || items[1].Ref != refs[1] {
		t.Fatalf("Fetch(2) = %d items, %v; want the first two", len(items), err)
	}
	items, err = s.Fetch(ctx, id, 0)
	if err != nil || len(items) != 5 {
		t.Fatalf("Fetch(0) = %d items, %v; want 5", len(items), err)
	}
	// Fetch returns copies: scribbling on them changes nothing stored.
	items[0].Envelope[100] ^= 0xff
	wantItems(t, s, id, envs...)

	n, err := s.Ack(ctx, id, refs[1], refs[3], store.Ref{0xee})
	if err != nil || n != 2 {
		t.Fatalf("Ack = %d, %v; want 2", n, err)
	}
	wantItems(t, s, id, envs[0], envs[2], envs[4])
	wantStats(t, s, 1, 3, total-16384-4096)
	if n, err := s.Ack(ctx, id, refs[1], refs[3]); n != 0 || err != nil {
		t.Fatalf("Ack twice = %d, %v; want 0", n, err)
	}
	if n, err := s.Ack(ctx, id); n != 0 || err != nil {
		t.Fatalf("Ack() = %d, %v; want 0", n, err)
	}
	// Acking the same ref twice in one call counts once.
	if n, err := s.Ack(ctx, id, refs[0], refs[0]); n != 1 || err != nil {
		t.Fatalf("Ack(r, r) = %d, %v; want 1", n, err)
	}
	// Refs of another mailbox do not ack here.
	other := ID(2)
	mustCreate(t, s, other, 2)
	if n, err := s.Ack(ctx, other, refs[2], refs[4]); n != 0 || err != nil {
		t.Fatalf("Ack in the wrong mailbox = %d, %v; want 0", n, err)
	}
	if n, err := s.Ack(ctx, id, refs[2], refs[4]); n != 2 || err != nil {
		t.Fatalf("Ack rest = %d, %v; want 2", n, err)
	}
	wantItems(t, s, id)
	wantStats(t, s, 2, 0, 0)
	// Envelopes put after acks come after in order.
	e := Envelope(id, 4096, 10)
	mustPut(t, s, id, e)
	wantItems(t, s, id, e)
}

func testDuplicate(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{MaxMailboxEnvelopes: 2})
	id := ID(1)
	mustCreate(t, s, id, 1)
	e := Envelope(id, 4096, 1)
	r1 := mustPut(t, s, id, e)
	r2 := mustPut(t, s, id, slices.Clone(e))
	if r1 != r2 {
		t.Fatal("duplicate Put returned a different ref")
	}
	wantItems(t, s, id, e)
	wantStats(t, s, 1, 1, 4096)

	// A duplicate is accepted even when the mailbox is full: it is
	// already stored.
	mustPut(t, s, id, Envelope(id, 4096, 2))
	if r := mustPut(t, s, id, e); r != r1 {
		t.Fatal("duplicate Put into a full mailbox returned a different ref")
	}
	wantStats(t, s, 1, 2, 8192)

	// Once acked, the same bytes are a new envelope again.
	if n, _ := s.Ack(ctx, id, r1); n != 1 {
		t.Fatal("ack failed")
	}
	if r := mustPut(t, s, id, e); r != r1 {
		t.Fatal("ref of an envelope changed")
	}
	wantItems(t, s, id, Envelope(id, 4096, 2), e)
}

func testInvalidEnvelope(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, s, id, 1)
	for _, n := range []int{0, store.MaxEnvelopeSize + 1} {
		_, err := s.Put(ctx, id, make([]byte, n))
		wantErr(t, fmt.Sprintf("Put of %d bytes", n), err, store.ErrInvalid)
	}
	wantStats(t, s, 1, 0, 0)
}

// fill puts envelopes into id until Put fails and returns what was stored
// and the error.
func fill(t *testing.T, s store.Store, id [store.IDSize]byte, size, seed, limit int) ([][]byte, error) {
	t.Helper()
	var stored [][]byte
	for i := range limit {
		e := Envelope(id, size, seed+i)
		if _, err := s.Put(context.Background(), id, e); err != nil {
			return stored, err
		}
		stored = append(stored, e)
	}
	t.Fatalf("%d puts of %d bytes never hit a quota", limit, size)
	return nil, nil
}

func testQuotaCount(t *testing.T, f Factory) {
	s := open(t, f, store.Options{MaxMailboxEnvelopes: 3})
	a, b := ID(1), ID(2)
	mustCreate(t, s, a, 1)
	mustCreate(t, s, b, 2)
	stored, err := fill(t, s, a, 4096, 0, 10)
	wantErr(t, "4th put", err, store.ErrMailboxFull)
	noIDs(t, err, a, b)
	if len(stored) != 3 {
		t.Fatalf("stored %d envelopes before the quota, want 3", len(stored))
	}
	var se *store.Error
	if !errors.As(err, &se) || se.Code != store.CodeMailboxFull {
		t.Fatalf("errors.As(%v) did not give CodeMailboxFull", err)
	}
	wantItems(t, s, a, stored...)
	// Other mailboxes are not affected.
	mustPut(t, s, b, Envelope(b, 4096, 50))
	// Acking makes room again.
	items := fetchAll(t, s, a)
	if n, err := s.Ack(context.Background(), a, items[0].Ref); n != 1 || err != nil {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	e := Envelope(a, 4096, 100)
	mustPut(t, s, a, e)
	wantItems(t, s, a, stored[1], stored[2], e)
}

func testQuotaBytes(t *testing.T, f Factory) {
	s := open(t, f, store.Options{MaxMailboxBytes: 2*16384 + 4096})
	a := ID(1)
	mustCreate(t, s, a, 1)
	stored, err := fill(t, s, a, 16384, 0, 10)
	wantErr(t, "3rd 16 KiB put", err, store.ErrMailboxFull)
	if len(stored) != 2 {
		t.Fatalf("stored %d envelopes before the quota, want 2", len(stored))
	}
	// A smaller envelope still fits exactly.
	e := Envelope(a, 4096, 100)
	mustPut(t, s, a, e)
	_, err = s.Put(context.Background(), a, Envelope(a, 4096, 101))
	wantErr(t, "put past the byte quota", err, store.ErrMailboxFull)
	wantItems(t, s, a, stored[0], stored[1], e)
	wantStats(t, s, 1, 3, 2*16384+4096)
}

func testQuotaStore(t *testing.T, f Factory) {
	s := open(t, f, store.Options{MaxStoreBytes: 3 * 4096})
	a, b := ID(1), ID(2)
	mustCreate(t, s, a, 1)
	mustCreate(t, s, b, 2)
	ea, err := fill(t, s, a, 4096, 0, 10)
	wantErr(t, "filling a", err, store.ErrStoreFull)
	noIDs(t, err, a, b)
	if len(ea) != 3 {
		t.Fatalf("stored %d envelopes before the store quota, want 3", len(ea))
	}
	_, err = s.Put(context.Background(), b, Envelope(b, 4096, 50))
	wantErr(t, "put into b", err, store.ErrStoreFull)
	var se *store.Error
	if !errors.As(err, &se) || se.Code != store.CodeStoreFull {
		t.Fatalf("errors.As(%v) did not give CodeStoreFull", err)
	}
	wantItems(t, s, a, ea...)
	wantItems(t, s, b)
	wantStats(t, s, 2, 3, 3*4096)
	// Deleting a mailbox frees store space.
	if err := s.DeleteMailbox(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	eb := Envelope(b, 4096, 51)
	mustPut(t, s, b, eb)
	wantItems(t, s, b, eb)
}

// clock is an injectable time source.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }
func dayStart(t time.Time) time.Time { return t.Truncate(24 * time.Hour) }
func nextDay(t time.Time) time.Time  { return dayStart(t).Add(24 * time.Hour) }

func testSweep(t *testing.T, f Factory) {
	ctx := context.Background()
	var c clock
	t0 := time.Date(2026, 3, 10, 15, 30, 0, 0, time.UTC)
	c.set(t0)
	ttl := store.DefaultTTL
	s := open(t, f, store.Options{Now: c.now})
	id, other := ID(1), ID(2)
	mustCreate(t, s, id, 1)
	mustCreate(t, s, other, 2)

	old := Envelope(id, 4096, 1)
	mustPut(t, s, id, old)
	acked := Envelope(id, 4096, 2)
	ackedRef := mustPut(t, s, id, acked)
	moved := Envelope(other, 4096, 3)
	mustPut(t, s, other, moved)
	c.add(3 * 24 * time.Hour)
	young := Envelope(id, 4096, 4)
	mustPut(t, s, id, young)
	if n, _ := s.Ack(ctx, id, ackedRef); n != 1 {
		t.Fatal("ack failed")
	}
	// Rotation keeps the expiry day.
	rotated := ID(3)
	if _, err := s.RotateMailbox(ctx, other, rotated, Owner(3), nil); err != nil {
		t.Fatal(err)
	}

	// Before the TTL has passed, nothing expires.
	for _, now := range []time.Time{t0, t0.Add(ttl - time.Second), nextDay(t0.Add(ttl)).Add(-time.Second)} {
		n, err := s.Sweep(ctx, now)
		if err != nil || n != 0 {
			t.Fatalf("Sweep(%v) = %d, %v; want 0 expired", now, n, err)
		}
	}
	wantStats(t, s, 2, 3, 3*4096)

	// From the first day boundary after t0+TTL, the first envelopes go;
	// the one put three days later survives.
	n, err := s.Sweep(ctx, nextDay(t0.Add(ttl)))
	if err != nil || n != 2 {
		t.Fatalf("Sweep at the expiry day = %d, %v; want 2", n, err)
	}
	wantItems(t, s, id, young)
	wantItems(t, s, rotated)
	wantStats(t, s, 2, 1, 4096)
	mb, _ := s.Mailbox(ctx, id)
	if mb.Pending != 1 || mb.PendingBytes != 4096 {
		t.Fatalf("Mailbox after sweep: %d pending, %d bytes", mb.Pending, mb.PendingBytes)
	}
	if n, err := s.Sweep(ctx, nextDay(t0.Add(ttl))); n != 0 || err != nil {
		t.Fatalf("second Sweep = %d, %v; want 0", n, err)
	}
	// The expired envelope is gone for good: putting it again stores it anew.
	mustPut(t, s, id, old)
	wantItems(t, s, id, young, old)

	n, err = s.Sweep(ctx, t0.Add(100*24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("Sweep far in the future = %d, %v; want 2", n, err)
	}
	wantStats(t, s, 2, 0, 0)

	// A custom TTL is rounded up to a day boundary too.
	var c2 clock
	c2.set(t0)
	s2 := open(t, f, store.Options{Now: c2.now, TTL: time.Hour})
	mustCreate(t, s2, id, 1)
	mustPut(t, s2, id, old)
	if n, _ := s2.Sweep(ctx, t0.Add(time.Hour)); n != 0 {
		t.Fatal("envelope expired before its day began")
	}
	if n, _ := s2.Sweep(ctx, nextDay(t0.Add(time.Hour))); n != 1 {
		t.Fatal("envelope did not expire when its day began")
	}
}

func testNotify(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	a, b := ID(1), ID(2)
	mustCreate(t, s, a, 1)
	mustCreate(t, s, b, 2)
	ch, cancel := s.Notify(a)
	ch2, cancel2 := s.Notify(a)
	defer cancel2()

	woke := make(chan []store.Item)
	go func() {
		<-ch // wait for the arrival, then fetch like a session would
		items, _ := s.Fetch(ctx, a, 0)
		woke <- items
	}()
	e := Envelope(a, 4096, 1)
	mustPut(t, s, a, e)
	select {
	case items := <-woke:
		if len(items) != 1 || !bytes.Equal(items[0].Envelope, e) {
			t.Fatalf("woken waiter fetched %d envelopes, want the one put", len(items))
		}
	case <-time.After(time.Minute):
		t.Fatal("Put did not wake the subscriber")
	}
	select {
	case <-ch2:
	default:
		t.Fatal("second subscriber was not woken")
	}

	// Puts to another mailbox, and duplicates, wake nobody here.
	mustPut(t, s, b, Envelope(b, 4096, 2))
	mustPut(t, s, a, e)
	select {
	case <-ch:
		t.Fatal("subscriber woken by a put that stored nothing new for it")
	default:
	}
	// Wakes coalesce: many puts leave one pending signal.
	mustPut(t, s, a, Envelope(a, 4096, 3))
	mustPut(t, s, a, Envelope(a, 4096, 4))
	<-ch
	select {
	case <-ch:
		t.Fatal("more than one wake buffered")
	default:
	}
	// After cancel, no more wakes.
	cancel()
	cancel()
	mustPut(t, s, a, Envelope(a, 4096, 5))
	select {
	case <-ch:
		t.Fatal("woken after unsubscribing")
	default:
	}
	// Close closes live subscriptions.
	<-ch2
	s.Close()
	if _, ok := <-ch2; ok {
		t.Fatal("Close did not close a subscription")
	}
}

func testConcurrentPuts(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1})
	const workers, each, boxes = 16, 20, 4
	for i := range boxes {
		mustCreate(t, s, ID(i), i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	refs := make([][]store.Ref, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				// Workers 2k and 2k+1 put the same envelope half of
				// the time, so duplicates race.
				id, seed := ID((w+i)%boxes), w*each+i
				if i%2 == 0 {
					id, seed = ID((w/2+i)%boxes), (w/2)*each+i
				}
				ref, err := s.Put(ctx, id, Envelope(id, 4096, 1000+seed))
				if err != nil {
					errs <- err
					return
				}
				refs[w] = append(refs[w], ref)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Put: %v", err)
	}
	unique := make(map[store.Ref]bool)
	for _, rs := range refs {
		for _, r := range rs {
			unique[r] = true
		}
	}
	got := 0
	for i := range boxes {
		items := fetchAll(t, s, ID(i))
		for _, it := range items {
			if !unique[it.Ref] {
				t.Fatal("fetched an envelope no Put returned, or one twice")
			}
			delete(unique, it.Ref)
		}
		got += len(items)
	}
	if len(unique) != 0 {
		t.Fatalf("%d acknowledged envelopes missing", len(unique))
	}
	wantStats(t, s, boxes, got, int64(got)*4096)
	if got >= workers*each {
		t.Fatalf("%d envelopes stored for %d puts with duplicates", got, workers*each)
	}
}

func testContextCanceled(t *testing.T, f Factory) {
	s := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, s, id, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	check := func(what string, err error) {
		t.Helper()
		wantErr(t, what, err, context.Canceled)
	}
	_, err := s.Put(ctx, id, Envelope(id, 4096, 1))
	check("Put", err)
	_, err = s.Fetch(ctx, id, 1)
	check("Fetch", err)
	_, err = s.Ack(ctx, id, store.Ref{})
	check("Ack", err)
	_, err = s.Mailbox(ctx, id)
	check("Mailbox", err)
	_, _, err = s.Forwarded(ctx, id)
	check("Forwarded", err)
	check("CreateMailbox", s.CreateMailbox(ctx, ID(2), Owner(2), nil))
	check("DeleteMailbox", s.DeleteMailbox(ctx, id))
	_, err = s.RotateMailbox(ctx, id, ID(3), Owner(3), nil)
	check("RotateMailbox", err)
	_, err = s.Sweep(ctx, time.Now().Add(1000*time.Hour))
	check("Sweep", err)
	// Nothing happened.
	wantStats(t, s, 1, 0, 0)
	if _, err := s.Mailbox(context.Background(), ID(2)); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatal("canceled CreateMailbox created a mailbox")
	}
}

func testClosed(t *testing.T, f Factory) {
	ctx := context.Background()
	s := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, s, id, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := s.Put(ctx, id, Envelope(id, 4096, 1))
	wantErr(t, "Put after Close", err, store.ErrClosed)
	_, err = s.Fetch(ctx, id, 1)
	wantErr(t, "Fetch after Close", err, store.ErrClosed)
	_, _, err = s.Forwarded(ctx, id)
	wantErr(t, "Forwarded after Close", err, store.ErrClosed)
	wantErr(t, "CreateMailbox after Close", s.CreateMailbox(ctx, ID(2), Owner(2), nil), store.ErrClosed)
	ch, cancel := s.Notify(id)
	defer cancel()
	if _, ok := <-ch; ok {
		t.Fatal("Notify after Close returned an open channel")
	}
}

// testFetchAfter: sequence numbers increase in acceptance order and page
// through a mailbox, skipping acked envelopes, without re-reading earlier
// ones.
func testFetchAfter(t *testing.T, f Factory) {
	s := open(t, f, store.Options{})
	ctx := context.Background()
	id := ID(1)
	mustCreate(t, s, id, 1)
	var envs [][]byte
	for i := 0; i < 7; i++ {
		e := Envelope(id, 4096, 100+i)
		envs = append(envs, e)
		mustPut(t, s, id, e)
	}
	all, err := s.FetchAfter(ctx, id, 0, 0)
	if err != nil || len(all) != 7 {
		t.Fatalf("FetchAfter(0) = %d items, %v", len(all), err)
	}
	for i := range all {
		if !bytes.Equal(all[i].Envelope, envs[i]) {
			t.Fatalf("item %d out of order", i)
		}
		if all[i].Seq == 0 || (i > 0 && all[i].Seq <= all[i-1].Seq) {
			t.Fatalf("sequence numbers not increasing: %d after %d", all[i].Seq, all[max(i-1, 0)].Seq)
		}
	}
	// Page through three at a time.
	var got [][]byte
	var after uint64
	for {
		page, err := s.FetchAfter(ctx, id, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, it := range page {
			got = append(got, it.Envelope)
			after = it.Seq
		}
	}
	if len(got) != 7 {
		t.Fatalf("paging saw %d envelopes, want 7", len(got))
	}
	// Acked envelopes are skipped; a cursor in the middle still works.
	if _, err := s.Ack(ctx, id, all[3].Ref, all[4].Ref); err != nil {
		t.Fatal(err)
	}
	rest, err := s.FetchAfter(ctx, id, all[2].Seq, 0)
	if err != nil || len(rest) != 2 || !bytes.Equal(rest[0].Envelope, envs[5]) || rest[0].Seq != all[5].Seq {
		t.Fatalf("FetchAfter past acked = %d items, %v", len(rest), err)
	}
	if none, err := s.FetchAfter(ctx, id, all[6].Seq, 0); err != nil || len(none) != 0 {
		t.Fatalf("FetchAfter(last) = %d items, %v", len(none), err)
	}
	if none, err := s.FetchAfter(ctx, id, ^uint64(0), 0); err != nil || len(none) != 0 {
		t.Fatalf("FetchAfter(max) = %d items, %v", len(none), err)
	}
	// A new envelope gets a larger sequence number than any before it,
	// acked or not, and the mailbox says so.
	if _, err := s.Ack(ctx, id, all[5].Ref, all[6].Ref); err != nil {
		t.Fatal(err)
	}
	if mb, err := s.Mailbox(ctx, id); err != nil || mb.NextSeq <= all[6].Seq {
		t.Fatalf("NextSeq %d (%v) after envelopes up to %d", mb.NextSeq, err, all[6].Seq)
	}
	mustPut(t, s, id, Envelope(id, 4096, 200))
	fresh, err := s.FetchAfter(ctx, id, all[6].Seq, 0)
	if err != nil || len(fresh) != 1 || fresh[0].Seq <= all[6].Seq {
		t.Fatalf("new envelope after the cursor: %d items, %v", len(fresh), err)
	}
	if mb, err := s.Mailbox(ctx, id); err != nil || mb.NextSeq <= fresh[0].Seq {
		t.Fatalf("NextSeq %d (%v) after an envelope at %d", mb.NextSeq, err, fresh[0].Seq)
	}
	if _, err := s.FetchAfter(ctx, ID(99), 0, 0); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("unknown mailbox: %v", err)
	}
}

// testSeqsMadeAgain: a mailbox made again in a new store (the relay lost
// the old one) numbers its envelopes in another range than the old one's
// (store.FirstSeq), so a client's cursor from the old one (a
// SubscribeAfter) is not past some of its envelopes and before others.
func testSeqsMadeAgain(t *testing.T, f Factory) {
	old := open(t, f, store.Options{})
	id := ID(1)
	mustCreate(t, old, id, 1)
	for i := range 3 {
		mustPut(t, old, id, Envelope(id, 4096, i))
	}
	items := fetchAll(t, old, id)
	last := items[len(items)-1].Seq
	again := open(t, f, store.Options{})
	mustCreate(t, again, id, 1)
	mustPut(t, again, id, Envelope(id, 4096, 9))
	if got := fetchAll(t, again, id); len(got) != 1 || got[0].Seq == items[0].Seq || got[0].Seq == last {
		t.Fatalf("the mailbox made again numbers its first envelope %d, the one before %d to %d", got[0].Seq, items[0].Seq, last)
	}
}

// testRetiredIDs: a deleted or rotated-away id cannot be created again
// (by anyone) until its retirement ends, so contacts holding an old card
// get "no such mailbox" instead of a stranger's mailbox.
func testRetiredIDs(t *testing.T, f Factory) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	s := open(t, f, store.Options{Now: func() time.Time { return now }, Retire: 30 * 24 * time.Hour})
	ctx := context.Background()
	a, b, c := ID(1), ID(2), ID(3)
	mustCreate(t, s, a, 1)
	mustCreate(t, s, b, 2)
	if err := s.DeleteMailbox(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, a, Owner(9), nil); !errors.Is(err, store.ErrMailboxExists) {
		t.Fatalf("re-creating a deleted id: %v", err)
	}
	if _, err := s.RotateMailbox(ctx, b, c, Owner(3), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, b, Owner(9), nil); !errors.Is(err, store.ErrMailboxExists) {
		t.Fatalf("re-creating a rotated-away id: %v", err)
	}
	if _, err := s.RotateMailbox(ctx, c, a, Owner(3), nil); !errors.Is(err, store.ErrMailboxExists) {
		t.Fatalf("rotating onto a retired id: %v", err)
	}
	if _, err := s.Mailbox(ctx, a); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("a retired id looks like a mailbox: %v", err)
	}
	// Still retired the day before it ends; free after.
	if _, err := s.Sweep(ctx, now.Add(29*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, a, Owner(9), nil); !errors.Is(err, store.ErrMailboxExists) {
		t.Fatalf("retirement ended early: %v", err)
	}
	if _, err := s.Sweep(ctx, now.Add(31*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateMailbox(ctx, a, Owner(9), nil); err != nil {
		t.Fatalf("after retirement: %v", err)
	}
	wantStats(t, s, 2, 0, 0)
}

// testQuotaRetired: retired ids count against MaxMailboxes beside the
// mailboxes: a Create, or a Rotate that would retire one more, beyond it
// fails with ErrStoreFull and changes nothing; a Delete (one mailbox
// for one retired id) still works, and the ids freed by a Sweep make
// room again.
func testQuotaRetired(t *testing.T, f Factory) {
	now := time.Unix(1_700_000_000, 0)
	opts := store.Options{MaxMailboxes: 3, Now: func() time.Time { return now }, Retire: 30 * 24 * time.Hour}
	s := open(t, f, opts)
	ctx := context.Background()
	mustCreate(t, s, ID(1), 1)
	if _, err := s.RotateMailbox(ctx, ID(1), ID(2), Owner(2), nil); err != nil {
		t.Fatal(err) // one mailbox, one retired
	}
	mustCreate(t, s, ID(3), 3) // two and one: full
	if err := s.CreateMailbox(ctx, ID(4), Owner(4), nil); !errors.Is(err, store.ErrStoreFull) {
		t.Fatalf("a mailbox beyond two and a retired id: %v", err)
	}
	if _, err := s.RotateMailbox(ctx, ID(3), ID(4), Owner(4), nil); !errors.Is(err, store.ErrStoreFull) {
		t.Fatalf("a rotation that would retire a second id beyond the cap: %v", err)
	}
	if _, err := s.Fetch(ctx, ID(3), 10); err != nil {
		t.Fatalf("the mailbox a refused rotation left: %v", err)
	}
	if _, err := s.Fetch(ctx, ID(4), 10); !errors.Is(err, store.ErrNoMailbox) {
		t.Fatalf("a refused rotation made its new mailbox: %v", err)
	}
	if err := s.DeleteMailbox(ctx, ID(3)); err != nil {
		t.Fatalf("a delete at the cap: %v", err)
	}
	if err := s.CreateMailbox(ctx, ID(5), Owner(5), nil); !errors.Is(err, store.ErrStoreFull) {
		t.Fatalf("a mailbox beside one and two retired ids: %v", err)
	}
	if _, err := s.Sweep(ctx, now.Add(31*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, ID(5), 5)
	mustCreate(t, s, ID(6), 6)
}

func testQuotaMailboxes(t *testing.T, f Factory) {
	s := open(t, f, store.Options{MaxMailboxes: 2, Retire: -1})
	ctx := context.Background()
	mustCreate(t, s, ID(1), 1)
	mustCreate(t, s, ID(2), 2)
	err := s.CreateMailbox(ctx, ID(3), Owner(3), nil)
	if !errors.Is(err, store.ErrStoreFull) {
		t.Fatalf("third mailbox: %v", err)
	}
	if err := s.DeleteMailbox(ctx, ID(1)); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, ID(3), 3)
	// With Retire < 0 a deleted id is free at once.
	if err := s.DeleteMailbox(ctx, ID(3)); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, ID(3), 3)
}
