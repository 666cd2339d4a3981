package borrow

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
)

func TestReplayCache(t *testing.T) {
	c := newReplayCache(2)
	tag := func(b byte) []byte { return bytes.Repeat([]byte{b}, TagSize) }
	steps := []struct {
		name    string
		w, cur  uint64
		tag     byte
		admit   bool
		windows int
	}{
		{"first", 10, 10, 1, true, 1},
		{"again", 10, 10, 1, false, 1},
		{"same tag, next window", 11, 10, 1, true, 2},
		{"second in window", 10, 10, 2, true, 2},
		{"window full", 10, 10, 3, false, 2},
		{"window 10 still verifies at 11", 10, 11, 1, false, 2},
		{"window 10 dropped at 12", 12, 12, 4, true, 2},
		{"dropped window forgets", 10, 12, 1, true, 3},
	}
	for _, s := range steps {
		if got := c.admit(s.w, s.cur, tag(s.tag)); got != s.admit {
			t.Fatalf("%s: admit = %v, want %v", s.name, got, s.admit)
		}
		if len(c.windows) != s.windows {
			t.Fatalf("%s: %d windows kept, want %d", s.name, len(c.windows), s.windows)
		}
	}
}

func TestSourceKeys(t *testing.T) {
	s := newSources(1, 1)
	addr := func(a string) net.Addr { return net.TCPAddrFromAddrPort(mustAddrPort(t, a)) }
	same := []struct{ a, b string }{
		{"127.0.0.1:1", "127.0.0.1:2"},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff::9]:2"},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1:2"},
	}
	for _, c := range same {
		if s.keyOf(addr(c.a)) != s.keyOf(addr(c.b)) {
			t.Errorf("%s and %s are different sources", c.a, c.b)
		}
	}
	if s.keyOf(addr("127.0.0.1:1")) == s.keyOf(addr("127.0.0.2:1")) ||
		s.keyOf(addr("[2001:db8:1:2::1]:1")) == s.keyOf(addr("[2001:db8:1:3::1]:1")) {
		t.Error("different sources share a key")
	}
	k := s.keyOf(addr("127.0.0.1:1"))
	if !s.acquire(k) || s.acquire(k) {
		t.Fatal("cap of 1 not applied")
	}
	s.release(k)
	if !s.acquire(k) {
		t.Fatal("slot not given back")
	}
	if !s.acquirePending(k) || s.acquirePending(k) {
		t.Fatal("pending cap of 1 not applied")
	}
	if other := s.keyOf(addr("127.0.0.2:1")); !s.acquirePending(other) {
		t.Fatal("one source's pending cap applied to another")
	}
	s.releasePending(k)
	if !s.acquirePending(k) {
		t.Fatal("pending slot not given back")
	}
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
