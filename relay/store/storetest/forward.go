package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

// wantForward checks Forwarded(id): to and verifier, or ErrNoMailbox if
// to is nil.
func wantForward(t *testing.T, s store.Store, what string, id [store.IDSize]byte, to *[store.IDSize]byte, verifier string) {
	t.Helper()
	got, v, err := s.Forwarded(context.Background(), id)
	if to == nil {
		if !errors.Is(err, store.ErrNoMailbox) {
			t.Fatalf("%s: Forwarded = %v, want ErrNoMailbox", what, err)
		}
		noIDs(t, err, id)
		return
	}
	if err != nil || got != *to || string(v) != verifier {
		t.Fatalf("%s: Forwarded = (to the wanted id: %v, verifier %q), %v; want verifier %q", what, got == *to, v, err, verifier)
	}
}

// testForwards: a rotated-away id forwards to the mailbox it went to, with
// the capability verifier it had, for the store's TTL (day-coarse) and
// no longer; a deleted id, a mailbox, an unknown id forward nowhere; a
// chain of rotations keeps each hop; a store that does not retire ids
// keeps no forward.
func testForwards(t *testing.T, f Factory) {
	ctx := context.Background()
	var c clock
	t0 := time.Date(2026, 12, 7, 15, 30, 0, 0, time.UTC)
	c.set(t0)
	ttl := 3 * 24 * time.Hour
	s := open(t, f, store.Options{Now: c.now, TTL: ttl, Retire: 30 * 24 * time.Hour})
	a, b, cc, d, e := ID(1), ID(2), ID(3), ID(4), ID(5)
	if err := s.CreateMailbox(ctx, a, Owner(1), []byte("cap-a")); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "a mailbox", a, nil, "")
	wantForward(t, s, "an unknown id", b, nil, "")
	if _, err := s.RotateMailbox(ctx, a, b, Owner(2), []byte("cap-b")); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "rotated away", a, &b, "cap-a")
	wantForward(t, s, "the new mailbox", b, nil, "")
	if _, err := s.RotateMailbox(ctx, b, cc, Owner(3), nil); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "first hop after a second rotation", a, &b, "cap-a")
	wantForward(t, s, "second hop", b, &cc, "cap-b")
	if err := s.DeleteMailbox(ctx, cc); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "a deleted id", cc, nil, "")
	if err := s.CreateMailbox(ctx, d, Owner(4), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateMailbox(ctx, d, e, Owner(5), nil); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "no capability", d, &e, "")

	// The forward ends on the first day boundary at or after TTL: the
	// day before, it holds, even past a Sweep; on that day it is gone,
	// before a Sweep and after, and the id stays retired.
	end := nextDay(t0.Add(ttl))
	c.set(end.Add(-time.Second))
	if _, err := s.Sweep(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "the last second", a, &b, "cap-a")
	c.set(end)
	wantForward(t, s, "its day begun", a, nil, "")
	if _, err := s.Sweep(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	wantForward(t, s, "after the Sweep", d, nil, "")
	c.set(t0)
	wantForward(t, s, "a swept forward with the clock back", a, nil, "")
	err := s.CreateMailbox(ctx, a, Owner(9), nil)
	wantErr(t, "creating an id whose forward ended", err, store.ErrMailboxExists)

	// Without retirement an id is free at once: it forwards nowhere.
	free := open(t, f, store.Options{Now: c.now, TTL: ttl, Retire: -1})
	mustCreate(t, free, a, 1)
	if _, err := free.RotateMailbox(ctx, a, b, Owner(2), nil); err != nil {
		t.Fatal(err)
	}
	wantForward(t, free, "not retired", a, nil, "")
}

// testForwardChain: a mailbox that MaxForwardChain rotations within the
// TTL still forward into is not rotated again (ErrRotatedOften, nothing
// changed), and every id of the chain reaches it; as the oldest forwards
// end, rotations are allowed again, one for each that ended.
func testForwardChain(t *testing.T, f Factory) {
	ctx := context.Background()
	var c clock
	t0 := time.Date(2026, 12, 7, 15, 30, 0, 0, time.UTC)
	c.set(t0)
	ttl := 3 * 24 * time.Hour
	s := open(t, f, store.Options{Now: c.now, TTL: ttl, Retire: 30 * 24 * time.Hour})
	const n = store.MaxForwardChain
	ids := make([][store.IDSize]byte, 0, 2*n)
	for i := range 2 * n {
		ids = append(ids, ID(100+i))
	}
	rotate := func(i int) error {
		_, err := s.RotateMailbox(ctx, ids[i], ids[i+1], Owner(i+1), nil)
		return err
	}
	mustCreate(t, s, ids[0], 0)
	for i := range n {
		if i == n/2 {
			c.set(t0.Add(24 * time.Hour)) // the second half a day later
		}
		if err := rotate(i); err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
	}
	to := ids[0]
	for hop := range n {
		next, _, err := s.Forwarded(ctx, to)
		if err != nil || next != ids[hop+1] {
			t.Fatalf("hop %d of the chain: to the next id %v, %v", hop+1, next == ids[hop+1], err)
		}
		to = next
	}
	err := rotate(n)
	wantErr(t, "one rotation past the chain", err, store.ErrRotatedOften)
	noIDs(t, err, ids[n], ids[n+1])
	if mb, err := s.Mailbox(ctx, ids[n]); err != nil || !mb.Owner.Equal(Owner(n)) {
		t.Fatalf("the mailbox after a refused rotation: %v", err)
	}
	wantForward(t, s, "the id a refused rotation named", ids[n+1], nil, "")

	// The first half's forwards end: that many rotations again, no more.
	c.set(nextDay(t0.Add(ttl)))
	for i := n; i < n+n/2; i++ {
		if err := rotate(i); err != nil {
			t.Fatalf("rotation %d after the oldest forwards ended: %v", i+1, err)
		}
	}
	wantErr(t, "one more", rotate(n+n/2), store.ErrRotatedOften)
	if err := s.CreateMailbox(ctx, ids[n+n/2+1], Owner(9), nil); err != nil {
		t.Fatalf("the id a refused rotation named was taken: %v", err)
	}
}
