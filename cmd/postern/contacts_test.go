package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// runIn runs one command in process and returns its exit status, stdout
// and stderr.
func runIn(t *testing.T, home string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
		getenv: func(k string) string {
			if k == "POSTERN_HOME" {
				return home
			}
			return ""
		}}
	code := run(context.Background(), args, e)
	return code, out.String(), errOut.String()
}

// newCardFile makes an identity at dir/name.id and a card file for it.
func newCardFile(t *testing.T, dir, name string) (idPath, cardPath string, id *envelope.Identity) {
	t.Helper()
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	idPath = filepath.Join(dir, name+".id")
	if err := id.WriteFile(idPath); err != nil {
		t.Fatal(err)
	}
	line, err := id.Card([32]byte{1, 2, 3}, nil, nil).Encode()
	if err != nil {
		t.Fatal(err)
	}
	cardPath = filepath.Join(dir, name+".card")
	os.WriteFile(cardPath, []byte(line+"\n"), 0o644)
	return idPath, cardPath, id
}

// TestContacts: two people add each other and see the same safety number;
// names are checked, duplicates need --replace, the file is 0600, and
// every refusal says what to do.
func TestContacts(t *testing.T) {
	dir := t.TempDir()
	aliceID, aliceCard, alice := newCardFile(t, dir, "alice")
	bobID, bobCard, bob := newCardFile(t, dir, "bob")

	if code, _, e := runIn(t, dir, "contact", "add", "--id", aliceID, "bob", bobCard); code != 0 {
		t.Fatal(e)
	}
	if code, _, e := runIn(t, dir, "contact", "add", "--id", bobID, "alice", aliceCard); code != 0 {
		t.Fatal(e)
	}
	_, fromAlice, _ := runIn(t, dir, "contact", "show", "--id", aliceID, "bob")
	_, fromBob, _ := runIn(t, dir, "contact", "show", "--id", bobID, "alice")
	safety := func(s string) string {
		for _, l := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(l, "safety number: "); ok {
				return v
			}
		}
		t.Fatalf("no safety number in %q", s)
		return ""
	}
	if safety(fromAlice) == "" || safety(fromAlice) != safety(fromBob) {
		t.Fatalf("the two sides see different safety numbers:\n%s\n%s", fromAlice, fromBob)
	}
	if !strings.Contains(fromAlice, fingerprint(bob.Public())) || !strings.Contains(fromAlice, fingerprint(alice.Public())) {
		t.Fatalf("contact show does not print both fingerprints as `id show` does:\n%s", fromAlice)
	}
	if _, list, _ := runIn(t, dir, "contact", "list", "--id", aliceID); !strings.Contains(list, "bob") || !strings.Contains(list, fingerprint(bob.Public())) {
		t.Fatalf("list: %q", list)
	}
	if fi, err := os.Stat(contactsPath(aliceID)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("contacts file mode: %v %v", fi.Mode(), err)
	}
	if _, card, _ := runIn(t, dir, "card", "show", bobCard); !strings.Contains(card, fingerprint(bob.Public())) ||
		!strings.Contains(card, "capability:  no") || !strings.Contains(card, "X-Wing") {
		t.Fatalf("card show: %q", card)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"contact", "add", "--id", aliceID, "bob", bobCard}, 1, "pass --replace"},
		{[]string{"contact", "add", "--id", aliceID, "b b", bobCard}, 2, "no spaces"},
		{[]string{"contact", "add", "--id", aliceID, "postern-x", bobCard}, 2, `not starting with "postern-"`},
		{[]string{"contact", "add", "--id", aliceID, "anonymous", bobCard}, 2, "choose another"},
		{[]string{"contact", "show", "--id", aliceID, "carol"}, 1, "`postern contact list` shows yours"},
		{[]string{"contact", "add", "--id", aliceID, "carol", filepath.Join(dir, "missing.card")}, 1, "neither a postern-card1:"},
	} {
		code, _, e := runIn(t, dir, tc.args...)
		if code != tc.code || !strings.Contains(e, tc.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", tc.args, code, e, tc.code, tc.want)
		}
	}
	if code, _, e := runIn(t, dir, "contact", "add", "--replace", "--id", aliceID, "bob", aliceCard); code != 0 {
		t.Fatalf("--replace: %s", e)
	}
	os.WriteFile(contactsPath(aliceID), []byte("{not json"), 0o600)
	if code, _, e := runIn(t, dir, "contact", "list", "--id", aliceID); code != 1 || !strings.Contains(e, "damaged") {
		t.Fatalf("damaged contacts file: exit %d, %q", code, e)
	}
}

// TestSafetyNumberSymmetric: the safety number does not depend on who
// computes it, and differs for another pair.
func TestSafetyNumberSymmetric(t *testing.T) {
	a, b, c := "AAAA BBBB", "CCCC DDDD", "EEEE FFFF"
	if safetyNumber(a, b) != safetyNumber(b, a) {
		t.Fatal("not symmetric")
	}
	if safetyNumber(a, b) == safetyNumber(a, c) {
		t.Fatal("the same for another contact")
	}
	if n := len(strings.Fields(safetyNumber(a, b))); n != 6 {
		t.Fatalf("%d groups", n)
	}
}
