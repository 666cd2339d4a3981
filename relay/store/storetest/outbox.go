package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

// OutboxFactory returns a new, empty outbox configured with opts. If the
// outbox has a Close() error method, the suite closes it (closing twice
// must be harmless).
type OutboxFactory func(t *testing.T, opts store.Options) store.Outbox

// RunOutbox runs the conformance suite of store.Outbox against outboxes
// made by newOutbox.
func RunOutbox(t *testing.T, newOutbox OutboxFactory) {
	tests := []struct {
		name string
		fn   func(*testing.T, OutboxFactory)
	}{
		{"EnqueuePending", testOutboxOrder},
		{"DoneIdempotent", testOutboxDone},
		{"DestIsolation", testOutboxIsolation},
		{"Invalid", testOutboxInvalid},
		{"Full", testOutboxFull},
		{"Expire", testOutboxExpire},
		{"ConcurrentEnqueues", testOutboxConcurrent},
		{"ContextCanceled", testOutboxCanceled},
		{"Closed", testOutboxClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newOutbox) })
	}
}

type closer interface{ Close() error }

func openOutbox(t *testing.T, f OutboxFactory, opts store.Options) store.Outbox {
	t.Helper()
	o := f(t, opts)
	if c, ok := o.(closer); ok {
		t.Cleanup(func() { c.Close() })
	}
	return o
}

// Dest returns a deterministic destination relay hash for tests.
func Dest(n int) [32]byte {
	var d [32]byte
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), 'd', 'e', 's', 't'})
	r.Read(d[:])
	return d
}

// Forward returns a deterministic forward layer of size bytes that
// depends on n.
func Forward(size, n int) []byte {
	b := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(size >> 8), byte(size), 'f'})
	r.Read(b)
	return b
}

func mustEnqueue(t *testing.T, o store.Outbox, dest [32]byte, item []byte) store.OutboxItem {
	t.Helper()
	it, err := o.Enqueue(context.Background(), dest, item)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if !bytes.Equal(it.Item, item) {
		t.Fatal("Enqueue returned other bytes than it was given")
	}
	return it
}

func pending(t *testing.T, o store.Outbox, dest [32]byte) []store.OutboxItem {
	t.Helper()
	items, err := o.Pending(context.Background(), dest, 0, 1<<20)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return items
}

// wantPending checks that dest holds exactly want, in order.
func wantPending(t *testing.T, o store.Outbox, dest [32]byte, want ...store.OutboxItem) {
	t.Helper()
	got := pending(t, o, dest)
	if len(got) != len(want) {
		t.Fatalf("%d items pending, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Seq != want[i].Seq || !bytes.Equal(got[i].Item, want[i].Item) {
			t.Fatalf("pending item %d is seq %d, want seq %d (or its bytes differ)", i, got[i].Seq, want[i].Seq)
		}
	}
}

func wantOutboxStats(t *testing.T, o store.Outbox, items int, size int64) {
	t.Helper()
	if st := o.OutboxStats(); st.Items != items || st.Bytes != size {
		t.Fatalf("OutboxStats = %d items, %d bytes; want %d, %d", st.Items, st.Bytes, items, size)
	}
}

func wantDests(t *testing.T, o store.Outbox, want ...[32]byte) {
	t.Helper()
	got, err := o.Dests(context.Background())
	if err != nil {
		t.Fatalf("Dests: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Dests lists %d destinations, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("Dests[%d] is not the destination expected (byte order)", i)
		}
	}
}

// noDest checks that an error message reveals no destination.
func noDest(t *testing.T, err error, dests ...[32]byte) {
	t.Helper()
	msg := strings.ToLower(err.Error())
	for _, d := range dests {
		if strings.Contains(msg, string(d[:])) || strings.Contains(msg, fmt.Sprintf("%x", d[:4])) || strings.Contains(msg, fmt.Sprint(d)) {
			t.Fatalf("error message contains a destination: %q", msg)
		}
	}
}

// testOutboxOrder: items come back in order with increasing seqs, paged
// by the after cursor and max, and the store keeps its own copy.
func testOutboxOrder(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	ctx := context.Background()
	d := Dest(1)
	wantDests(t, o)
	if items := pending(t, o, d); len(items) != 0 {
		t.Fatalf("empty outbox has %d pending items", len(items))
	}
	var want []store.OutboxItem
	var total int64
	for i := range 70 {
		size := 1 + i*937%store.MaxForwardSize
		if i == 69 {
			size = store.MaxForwardSize
		}
		item := Forward(size, i)
		it := mustEnqueue(t, o, d, item)
		item[0] ^= 0xff    // the store must not alias the caller's slice
		it.Item[0] ^= 0xff // nor the one it returned
		if len(want) > 0 && it.Seq <= want[len(want)-1].Seq {
			t.Fatalf("seq %d after seq %d: not increasing", it.Seq, want[len(want)-1].Seq)
		}
		want = append(want, store.OutboxItem{Seq: it.Seq, Item: Forward(size, i)})
		total += int64(size)
	}
	wantPending(t, o, d, want...)
	wantOutboxStats(t, o, len(want), total)
	wantDests(t, o, d)
	// Default max, paging with after.
	page, err := o.Pending(ctx, d, 0, 0)
	if err != nil || len(page) != store.DefaultFetchMax {
		t.Fatalf("Pending(max 0) = %d items, %v; want %d", len(page), err, store.DefaultFetchMax)
	}
	page[0].Item[0] ^= 0xff // nor alias what it returns
	page, err = o.Pending(ctx, d, want[9].Seq, 3)
	if err != nil || len(page) != 3 || page[0].Seq != want[10].Seq || page[2].Seq != want[12].Seq {
		t.Fatalf("Pending(after item 9, max 3) = %v, %v", len(page), err)
	}
	if page, _ := o.Pending(ctx, d, ^uint64(0), 10); len(page) != 0 {
		t.Fatal("Pending after the largest seq returned items")
	}
	wantPending(t, o, d, want...)
}

// testOutboxDone: Done deletes, ignores unknown and repeated seqs, drops
// the destination once empty, and seqs are never reused afterwards.
func testOutboxDone(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	ctx := context.Background()
	d := Dest(1)
	var items []store.OutboxItem
	for i := range 4 {
		items = append(items, mustEnqueue(t, o, d, Forward(1000, i)))
	}
	if err := o.Done(ctx, d, items[1].Seq, items[1].Seq, 1<<40); err != nil {
		t.Fatal(err)
	}
	wantPending(t, o, d, items[0], items[2], items[3])
	wantOutboxStats(t, o, 3, 3000)
	for range 2 {
		if err := o.Done(ctx, d, items[1].Seq, items[3].Seq); err != nil {
			t.Fatalf("Done again: %v", err)
		}
	}
	wantPending(t, o, d, items[0], items[2])
	if err := o.Done(ctx, d); err != nil {
		t.Fatalf("Done with no seqs: %v", err)
	}
	if err := o.Done(ctx, d, items[0].Seq, items[2].Seq); err != nil {
		t.Fatal(err)
	}
	wantPending(t, o, d)
	wantOutboxStats(t, o, 0, 0)
	wantDests(t, o)
	if err := o.Done(ctx, Dest(9), 1); err != nil {
		t.Fatalf("Done for a destination with nothing pending: %v", err)
	}
	next := mustEnqueue(t, o, d, Forward(10, 99))
	if next.Seq <= items[3].Seq {
		t.Fatalf("seq %d reused after Done (last was %d)", next.Seq, items[3].Seq)
	}
	wantPending(t, o, d, next)
}

// testOutboxIsolation: one destination's items are neither listed nor
// deleted through another.
func testOutboxIsolation(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	ctx := context.Background()
	a, b, c := Dest(1), Dest(2), Dest(3)
	ia := mustEnqueue(t, o, a, Forward(100, 1))
	ib := mustEnqueue(t, o, b, Forward(100, 2))
	ia2 := mustEnqueue(t, o, a, Forward(100, 3))
	wantPending(t, o, a, ia, ia2)
	wantPending(t, o, b, ib)
	wantPending(t, o, c)
	if err := o.Done(ctx, b, ia.Seq, ia2.Seq); err != nil {
		t.Fatal(err)
	}
	if err := o.Done(ctx, c, ib.Seq); err != nil {
		t.Fatal(err)
	}
	wantPending(t, o, a, ia, ia2)
	wantPending(t, o, b, ib)
	want := [][32]byte{a, b}
	if bytes.Compare(a[:], b[:]) > 0 {
		want = [][32]byte{b, a}
	}
	wantDests(t, o, want...)
	if err := o.Done(ctx, a, ia.Seq, ia2.Seq); err != nil {
		t.Fatal(err)
	}
	wantDests(t, o, b)
}

func testOutboxInvalid(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	d := Dest(1)
	for _, n := range []int{0, store.MaxForwardSize + 1} {
		_, err := o.Enqueue(context.Background(), d, make([]byte, n))
		wantErr(t, fmt.Sprintf("Enqueue(%d bytes)", n), err, store.ErrInvalidForward)
		var se *store.Error
		if !errors.As(err, &se) || se.Code != store.CodeInvalid {
			t.Fatalf("errors.As(%v) did not give CodeInvalid", err)
		}
	}
	wantOutboxStats(t, o, 0, 0)
	wantDests(t, o)
}

// testOutboxFull: beyond MaxOutboxBytes Enqueue fails with ErrOutboxFull
// and nothing accepted is lost; Done frees the space.
func testOutboxFull(t *testing.T, f OutboxFactory) {
	const size = 4096
	o := openOutbox(t, f, store.Options{MaxOutboxBytes: 3 * size})
	ctx := context.Background()
	a, b := Dest(1), Dest(2)
	ia := []store.OutboxItem{mustEnqueue(t, o, a, Forward(size, 1)), mustEnqueue(t, o, a, Forward(size, 2))}
	ib := mustEnqueue(t, o, b, Forward(size, 3))
	for _, d := range [][32]byte{a, b} {
		_, err := o.Enqueue(ctx, d, Forward(1, 4))
		wantErr(t, "Enqueue into a full outbox", err, store.ErrOutboxFull)
		var se *store.Error
		if !errors.As(err, &se) || se.Code != store.CodeStoreFull {
			t.Fatalf("errors.As(%v) did not give CodeStoreFull", err)
		}
		if !strings.Contains(err.Error(), "retry") {
			t.Fatalf("error %q does not say what to do", err)
		}
		noDest(t, err, a, b)
	}
	wantPending(t, o, a, ia...)
	wantPending(t, o, b, ib)
	wantOutboxStats(t, o, 3, 3*size)
	if err := o.Done(ctx, a, ia[0].Seq); err != nil {
		t.Fatal(err)
	}
	ib2 := mustEnqueue(t, o, b, Forward(size, 5))
	wantPending(t, o, b, ib, ib2)

	// Negative: no limit.
	u := openOutbox(t, f, store.Options{MaxOutboxBytes: -1})
	for i := range 5 {
		mustEnqueue(t, u, a, Forward(size, i))
	}
}

// testOutboxExpire: an item lives at least TTL and is deleted on the
// first day boundary after that.
func testOutboxExpire(t *testing.T, f OutboxFactory) {
	var c clock
	t0 := time.Date(2026, 3, 10, 15, 30, 0, 0, time.UTC)
	c.set(t0)
	ttl := 2 * 24 * time.Hour
	o := openOutbox(t, f, store.Options{Now: c.now, TTL: ttl})
	ctx := context.Background()
	a, b := Dest(1), Dest(2)
	mustEnqueue(t, o, a, Forward(100, 1))
	mustEnqueue(t, o, b, Forward(100, 2))
	c.add(24 * time.Hour)
	young := mustEnqueue(t, o, a, Forward(100, 3))

	expiry := nextDay(t0.Add(ttl)) // first day boundary at or after t0+ttl
	for _, now := range []time.Time{t0, t0.Add(ttl), expiry.Add(-time.Second)} {
		if n, err := o.Expire(ctx, now); err != nil || n != 0 {
			t.Fatalf("Expire(%v) = %d, %v; want nothing expired before %v", now, n, err, expiry)
		}
	}
	wantOutboxStats(t, o, 3, 300)
	n, err := o.Expire(ctx, expiry)
	if err != nil || n != 2 {
		t.Fatalf("Expire at the expiry day = %d, %v; want 2", n, err)
	}
	wantPending(t, o, a, young)
	wantPending(t, o, b)
	wantDests(t, o, a)
	wantOutboxStats(t, o, 1, 100)
	if n, err := o.Expire(ctx, expiry.Add(24*time.Hour)); err != nil || n != 1 {
		t.Fatalf("Expire a day later = %d, %v; want 1", n, err)
	}
	wantDests(t, o)
	wantOutboxStats(t, o, 0, 0)
}

// testOutboxConcurrent: concurrent Enqueues to several destinations each
// get a distinct seq, and every one is pending exactly once.
func testOutboxConcurrent(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	ctx := context.Background()
	const workers, each, dests = 16, 20, 3
	type acked struct {
		dest [32]byte
		it   store.OutboxItem
	}
	var mu sync.Mutex
	var all []acked
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				d := Dest((w + i) % dests)
				it, err := o.Enqueue(ctx, d, Forward(512, w*each+i))
				if err != nil {
					t.Errorf("concurrent Enqueue: %v", err)
					return
				}
				mu.Lock()
				all = append(all, acked{d, it})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seqs := make(map[uint64]bool)
	want := make(map[[32]byte]map[uint64][]byte)
	for _, a := range all {
		if seqs[a.it.Seq] {
			t.Fatalf("seq %d given to two items", a.it.Seq)
		}
		seqs[a.it.Seq] = true
		if want[a.dest] == nil {
			want[a.dest] = make(map[uint64][]byte)
		}
		want[a.dest][a.it.Seq] = a.it.Item
	}
	for d, items := range want {
		got := pending(t, o, d)
		if len(got) != len(items) {
			t.Fatalf("%d items pending for a destination, want %d", len(got), len(items))
		}
		for i, it := range got {
			if i > 0 && it.Seq <= got[i-1].Seq {
				t.Fatal("pending items out of order")
			}
			if !bytes.Equal(items[it.Seq], it.Item) {
				t.Fatal("pending item differs from what was enqueued")
			}
		}
	}
	wantOutboxStats(t, o, workers*each, workers*each*512)
}

func testOutboxCanceled(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	d := Dest(1)
	it := mustEnqueue(t, o, d, Forward(10, 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := o.Enqueue(ctx, d, Forward(10, 2))
	wantErr(t, "Enqueue", err, context.Canceled)
	_, err = o.Pending(ctx, d, 0, 1)
	wantErr(t, "Pending", err, context.Canceled)
	wantErr(t, "Done", o.Done(ctx, d, it.Seq), context.Canceled)
	_, err = o.Dests(ctx)
	wantErr(t, "Dests", err, context.Canceled)
	_, err = o.Expire(ctx, time.Now().Add(1000*time.Hour))
	wantErr(t, "Expire", err, context.Canceled)
	wantPending(t, o, d, it)
	wantOutboxStats(t, o, 1, 10)
}

func testOutboxClosed(t *testing.T, f OutboxFactory) {
	o := openOutbox(t, f, store.Options{})
	c, ok := o.(closer)
	if !ok {
		t.Skip("the outbox has no Close method")
	}
	ctx := context.Background()
	d := Dest(1)
	it := mustEnqueue(t, o, d, Forward(10, 1))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := o.Enqueue(ctx, d, Forward(10, 2))
	wantErr(t, "Enqueue after Close", err, store.ErrClosed)
	_, err = o.Pending(ctx, d, 0, 1)
	wantErr(t, "Pending after Close", err, store.ErrClosed)
	wantErr(t, "Done after Close", o.Done(ctx, d, it.Seq), store.ErrClosed)
	_, err = o.Dests(ctx)
	wantErr(t, "Dests after Close", err, store.ErrClosed)
	_, err = o.Expire(ctx, time.Now())
	wantErr(t, "Expire after Close", err, store.ErrClosed)
}
