package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// TestUnsentRecords: entries are found only for the same bytes to the
// same mailbox from the same sender, hold the message id masked, and the
// newest is the one found; taking one out keeps the others; entries older
// than unsentTTL, or a damaged file, find nothing (and a damaged file is
// written over); the last entry gone, the file goes. Without a state
// directory, and for a card update, nothing is recorded.
func TestUnsentRecords(t *testing.T) {
	e, _ := homeEnv(t.TempDir())
	alice, _ := envelope.NewIdentity()
	bob, _ := envelope.NewIdentity()
	toBob, toCarol := bob.Card([32]byte{1}, nil, nil), bob.Card([32]byte{2}, nil, nil)
	msg := []byte("meet at the station")
	u := openUnsent(e, toBob, alice, msg)
	id1 := [envelope.IDSize]byte{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}
	id2 := [envelope.IDSize]byte{8}
	if _, err := u.add(id1); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(u.path); strings.Contains(string(data), hex.EncodeToString(id1[:])) {
		t.Fatalf("the file holds the message id in clear:\n%s", data)
	}
	u.add(id2)
	if got, ok := openUnsent(e, toBob, alice, msg).lookup(); !ok || got != id2 {
		t.Fatalf("the same message again: %x, %v; want the newest entry", got, ok)
	}
	for name, other := range map[string]*unsentStore{
		"another message":   openUnsent(e, toBob, alice, []byte("meet at the station.")),
		"another recipient": openUnsent(e, toCarol, alice, msg),
		"anonymous":         openUnsent(e, toBob, nil, msg),
	} {
		if _, ok := other.lookup(); ok {
			t.Errorf("%s found the entries", name)
		}
	}
	if left, err := u.remove(id2); err != nil || left != 1 {
		t.Fatalf("after taking one of two out: %d left, %v", left, err)
	}
	if got, ok := u.lookup(); !ok || got != id1 {
		t.Fatal("taking one entry out lost the other")
	}

	// Older than unsentTTL: not found, and dropped at the next write.
	all := u.read()
	all[u.key][0].Day -= 8
	data, _ := json.Marshal(all)
	os.WriteFile(u.path, data, 0o600)
	if _, ok := u.lookup(); ok {
		t.Fatal("an entry of 8 days ago was found")
	}
	u.add(id2)
	if rs := u.read()[u.key]; len(rs) != 1 {
		t.Fatalf("%d entries after a write, want the fresh one only", len(rs))
	}
	u.remove(id2)
	if _, err := os.Stat(u.path); !os.IsNotExist(err) {
		t.Fatalf("the file outlived its last entry: %v", err)
	}

	os.WriteFile(u.path, []byte("{not json"), 0o600)
	if _, ok := u.lookup(); ok {
		t.Fatal("a damaged file gave an entry")
	}
	if _, err := u.add(id1); err != nil {
		t.Fatal(err)
	}
	if got, ok := u.lookup(); !ok || got != id1 {
		t.Fatal("a damaged file was not written over")
	}
	if st, _ := os.Stat(u.path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}

	// Without a state directory nothing is recorded, and nothing fails
	// (a send without one panicked in the first version: a reviewer's find).
	bare := &env{stderr: io.Discard, getenv: func(string) string { return "" }}
	if openUnsent(bare, toBob, alice, msg) != nil {
		t.Fatal("a record without a state directory")
	}
	s := &sender{e: bare, card: toBob, from: alice, msg: msg}
	sr := beginRecord(s, true)
	sr.start(s)
	sr.finish(s, nil)
	// A card update is not recorded: the user cannot send it again.
	s = &sender{e: e, card: toBob, from: alice, msg: cardUpdate{card: "postern-card1:x"}.encode()}
	if r := beginRecord(s, false); r.u != nil {
		t.Fatal("a control message would be recorded")
	}
}

// TestSendRecordsInEveryOrder: what sends of one message leave for
// `send --again`, in the orders two reviewers found wrong: each send takes
// out only its own id, once delivered or if nothing went out, and says
// whether an entry remains (the advice to use --again).
func TestSendRecordsInEveryOrder(t *testing.T) {
	bob, _ := envelope.NewIdentity()
	card := bob.Card([32]byte{1}, nil, nil)
	msg := []byte("ok")
	failedAfterSending := errors.New("stalled")
	type run struct {
		s *sender
		r *sendRecord
	}
	e, _ := homeEnv(t.TempDir())
	begin := func(again bool) run {
		s := &sender{e: e, card: card, msg: msg}
		r := beginRecord(s, again)
		if s.message == ([envelope.IDSize]byte{}) {
			rand.Read(s.message[:]) // as sealing would
		}
		r.start(s)
		return run{s, r}
	}
	end := func(x run, issued bool, err error) bool {
		x.s.issued = issued
		x.r.finish(x.s, err)
		return x.s.recorded
	}
	u := openUnsent(e, card, nil, msg)
	entries := func() int { return len(u.read()[u.key]) }

	// Gave up after sending; a plain send that sends nothing must still
	// advise --again (the first one's entry remains).
	f := begin(false)
	if !end(f, true, failedAfterSending) || entries() != 1 {
		t.Fatal("a send that failed after sending left no entry")
	}
	p := begin(false)
	if !end(p, false, failedAfterSending) || entries() != 1 {
		t.Fatalf("a plain send that sent nothing: advice --again %v, %d entries; want true, 1", p.s.recorded, entries())
	}
	// --again that sends nothing keeps the entry, with its day.
	day := u.read()[u.key][0].Day
	a := begin(true)
	if a.s.message != f.s.message || !end(a, false, failedAfterSending) || entries() != 1 || u.read()[u.key][0].Day != day {
		t.Fatal("a --again that sent nothing changed the entry")
	}
	// --again delivered: nothing left.
	if end(begin(true), true, nil) || entries() != 0 {
		t.Fatalf("delivered by --again: %d entries left", entries())
	}

	// Two at once, both delivered: nothing left (a stale entry would
	// make a later --again drop a message).
	x, y := begin(false), begin(false)
	end(x, true, nil)
	end(y, true, nil)
	if entries() != 0 {
		t.Fatalf("two sends delivered at once left %d entries", entries())
	}
	// Two at once, the first started fails after sending, the other is
	// delivered: the failed one's entry remains, for --again.
	y, x = begin(false), begin(false)
	end(x, true, failedAfterSending)
	if !end(y, true, nil) {
		t.Fatal("the delivered send says no entry remains")
	}
	if got, ok := u.lookup(); !ok || got != x.s.message {
		t.Fatal("the failed send's entry was lost")
	}
}

// TestSendErrorAdvice: a failed send says to use --again whenever an
// entry of the message remains (its own, or an earlier send's while it
// sent nothing itself), and not otherwise.
func TestSendErrorAdvice(t *testing.T) {
	failed := errors.New("no way in")
	for _, tc := range []struct {
		issued, recorded bool
		again            bool
	}{
		{false, false, false},
		{false, true, true}, // an earlier send's entry remains
		{true, true, true},
		{true, false, false}, // no state directory
	} {
		s := &sender{issued: tc.issued, recorded: tc.recorded}
		msg := sendError(t.Context(), 0, s, failed).Error()
		if strings.Contains(msg, "--again") != tc.again || !strings.Contains(msg, failed.Error()) {
			t.Errorf("issued %v, recorded %v: %q", tc.issued, tc.recorded, msg)
		}
	}
}
