package main

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// TestUnsentRecords: a record is found only for the same bytes to the
// same mailbox from the same sender, and holds the message id masked;
// forgetting one keeps the others;
// a record older than unsentTTL, or a damaged file, finds nothing (and a
// damaged file is written over); the last record gone, the file goes.
func TestUnsentRecords(t *testing.T) {
	e, _ := homeEnv(t.TempDir())
	alice, _ := envelope.NewIdentity()
	bob, _ := envelope.NewIdentity()
	toBob, toCarol := bob.Card([32]byte{1}, nil, nil), bob.Card([32]byte{2}, nil, nil)
	msg := []byte("meet at the station")
	u := openUnsent(e, toBob, alice, msg)
	id := [envelope.IDSize]byte{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}
	if err := u.record(id); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(u.path); strings.Contains(string(data), hex.EncodeToString(id[:])) {
		t.Fatalf("the file holds the message id in clear:\n%s", data)
	}
	if got, ok := openUnsent(e, toBob, alice, msg).lookup(); !ok || got != id {
		t.Fatalf("the same message again: %x, %v", got, ok)
	}
	for name, other := range map[string]*unsentStore{
		"another message":   openUnsent(e, toBob, alice, []byte("meet at the station.")),
		"another recipient": openUnsent(e, toCarol, alice, msg),
		"anonymous":         openUnsent(e, toBob, nil, msg),
	} {
		if _, ok := other.lookup(); ok {
			t.Errorf("%s found the record", name)
		}
	}
	anon := openUnsent(e, toBob, nil, msg)
	anon.record([envelope.IDSize]byte{8})
	if err := u.forget(); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.lookup(); ok {
		t.Fatal("found after forget")
	}
	if got, ok := anon.lookup(); !ok || got != ([envelope.IDSize]byte{8}) {
		t.Fatal("forgetting one record lost another")
	}

	// Older than unsentTTL: not found, and dropped at the next write.
	all := anon.read()
	r := all[anon.key]
	r.Day -= 8
	all[anon.key] = r
	data, _ := json.Marshal(all)
	os.WriteFile(anon.path, data, 0o600)
	if _, ok := anon.lookup(); ok {
		t.Fatal("a record of 8 days ago was found")
	}
	u.record(id)
	if all := anon.read(); len(all) != 1 {
		t.Fatalf("%d records after a write, want the fresh one only", len(all))
	}
	u.forget()
	if _, err := os.Stat(u.path); !os.IsNotExist(err) {
		t.Fatalf("the file outlived its last record: %v", err)
	}

	os.WriteFile(u.path, []byte("{not json"), 0o600)
	if _, ok := u.lookup(); ok {
		t.Fatal("a damaged file gave a record")
	}
	if err := u.record(id); err != nil {
		t.Fatal(err)
	}
	if got, ok := u.lookup(); !ok || got != id {
		t.Fatal("a damaged file was not written over")
	}
	if st, _ := os.Stat(u.path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}

	// Without a state directory nothing is recorded, and nothing fails
	// (a send without one panicked in the first version: a reviewer's find).
	bare := &env{stderr: io.Discard, getenv: func(string) string { return "" }}
	none := openUnsent(bare, toBob, alice, msg)
	if none != nil || none.record(id) != nil || none.forget() != nil {
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
