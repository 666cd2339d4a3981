package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
)

// TestErrorMessages checks the exact text of each error the CLI gives for
// a misuse, each naming what to do next, against a real relay process.
func TestErrorMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob, alice := filepath.Join(home, "bob.id"), filepath.Join(home, "alice.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))
	cardFile := filepath.Join(dir, "bob.card")
	os.WriteFile(cardFile, []byte(card+"\n"), 0o644)
	wrapped := filepath.Join(dir, "wrapped.card")
	os.WriteFile(wrapped, []byte(card[:80]+"\n"+card[80:]+"\n"), 0o644)
	damaged := filepath.Join(dir, "damaged.card")
	os.WriteFile(damaged, []byte(card[:80]+"\n"+card[81:]+"\n"), 0o644)

	for _, tc := range []struct {
		name  string
		env   []string
		stdin []byte
		args  []string
		want  string // the whole stderr, or a regexp with re
		re    bool
	}{
		{name: "message too large", stdin: make([]byte, 10<<20), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: the message is 10.00 MiB (10485760 bytes), and one message holds at most 7.75 MiB (8126464 bytes): split it into parts of at most 7.75 MiB and send each\n"},
		{name: "empty message", args: []string{"send", "--id", alice, "--to", card},
			want: "warning: the message is empty (nothing on stdin?); sending it anyway\nsent 0 bytes in 1 envelope(s)\n"},
		{name: "unknown transport", env: []string{"POSTERN_TRANSPORT=tor"}, stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: POSTERN_TRANSPORT=tor is not a transport postern has: set it to one of h3, https, or unset it to try every transport\n"},
		{name: "bind to an address not here", env: []string{"POSTERN_BIND=203.0.113.9"}, stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: POSTERN_BIND names an address this device does not have: set it to one of this device's addresses, or unset it to let the system choose\n"},
		{name: "bind to a non-address", env: []string{"POSTERN_BIND=eth0"}, args: []string{"recv", "--id", bob},
			want: "postern recv: POSTERN_BIND is not an IP address: set it to an address of this device, or unset it to let the system choose\n"},
		{name: "stall window too short", env: []string{"POSTERN_STALL=3ns"}, stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: POSTERN_STALL=3ns is not a duration of at least 100ms (for example \"30s\"): set one, or unset it for the default\n"},
		{name: "lanes zero", env: []string{"POSTERN_LANES=0"}, stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: POSTERN_LANES=0 is not a number of connections from 1 to 16: set one (1: one at a time), or unset it for the default\n"},
		{name: "lanes too many", env: []string{"POSTERN_LANES=17"}, stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", card},
			want: "postern send: POSTERN_LANES=17 is not a number of connections from 1 to 16: set one (1: one at a time), or unset it for the default\n"},
		{name: "stall window not a duration", env: []string{"POSTERN_STALL=soon"}, args: []string{"recv", "--id", bob},
			want: "postern recv: POSTERN_STALL=soon is not a duration of at least 100ms (for example \"30s\"): set one, or unset it for the default\n"},
		{name: "id show on a card", args: []string{"id", "show", "--id", cardFile},
			want: "postern id show: " + cardFile + " is a contact card, not an identity: `postern card show " + cardFile + "` shows what it holds\n"},
		{name: "wrapped card damaged", stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", damaged},
			want: `^postern send: ` + regexp.QuoteMeta(damaged) + ` holds a postern-card1 line wrapped over 2 lines, and joined it does not parse either \(.*\): copy it again as one line\n$`, re: true},
		{name: "unknown contact", stdin: []byte("x"), args: []string{"send", "--id", alice, "--to", "carol"},
			want: "postern send: --to carol: no contact of that name and no such file: `postern contact list` shows your contacts; a card starts with postern-card1:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, _ := runWith(t, bin, append(append([]string{}, envv...), tc.env...), tc.stdin, tc.args...)
			if tc.re && !regexp.MustCompile(tc.want).MatchString(errOut) || !tc.re && errOut != tc.want {
				t.Fatalf("stderr:\n%s\nwant:\n%s", errOut, tc.want)
			}
			if strings.Contains(errOut, "unknown:") || strings.Contains(errOut, "envelope.") {
				t.Fatalf("stderr leaks an error class or a Go API:\n%s", errOut)
			}
		})
	}

	// A wrapped card is joined and accepted.
	out := string(runOK(t, bin, envv, nil, "card", "show", wrapped))
	if !strings.HasPrefix(out, "fingerprint: ") {
		t.Fatalf("card show of a wrapped card: %q", out)
	}
	checkLostMailbox(t, bin, envv, bob, rp)
}

// TestSendTimeout: a relay that accepts connections and never answers
// (stopped with SIGSTOP) makes send give up at --timeout, saying so.
func TestSendTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	envv := []string{"POSTERN_HOME=" + filepath.Join(dir, "home"), "POSTERN_TRANSPORT=https"}
	bob := filepath.Join(dir, "home", "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))
	rp.cmd.Process.Signal(syscall.SIGSTOP)
	defer rp.cmd.Process.Signal(syscall.SIGCONT)
	_, errOut, code := runWith(t, bin, envv, []byte("x"), "send", "--anonymous", "--timeout", "1s", "--to", card)
	want := "postern send: gave up after 1s (--timeout) before any envelope went out: send the message again, or give a longer --timeout\n"
	if code != 1 || errOut != want {
		t.Fatalf("exit %d, stderr:\n%s\nwant:\n%s", code, errOut, want)
	}
}

// TestPromptAndProgress runs send and recv in-process with a terminal
// for stdin and stderr: send prompts and counts envelopes acked, recv
// counts messages.
func TestPromptAndProgress(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, []string{"POSTERN_HOME=" + home}, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, []string{"POSTERN_HOME=" + home}, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))
	old := isTerminal
	isTerminal = func(any) bool { return true }
	defer func() { isTerminal = old }()
	getenv := func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }
	var stdout, stderr bytes.Buffer
	msg := bytes.Repeat([]byte("p"), 200<<10)
	e := &env{stdin: bytes.NewReader(msg), stdout: &stdout, stderr: &stderr, getenv: getenv}
	if code := run(context.Background(), []string{"send", "--anonymous", "--to", card}, e); code != 0 {
		t.Fatalf("send: exit %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stderr.String(), "type the message, end with Ctrl-D on a line of its own\n") ||
		!regexp.MustCompile(`\rsent (\d+)/(\d+) envelopes\n`).MatchString(stderr.String()) {
		t.Fatalf("send stderr:\n%q", stderr.String())
	}
	m := regexp.MustCompile(`\rsent (\d+)/(\d+) envelopes\n`).FindStringSubmatch(stderr.String())
	if m[1] != m[2] {
		t.Fatalf("last progress %s/%s", m[1], m[2])
	}
	stderr.Reset()
	e = &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: getenv}
	if code := run(context.Background(), []string{"recv", "--id", bob}, e); code != 0 {
		t.Fatalf("recv: exit %d: %s", code, stderr.String())
	}
	if got := parseRecv(t, stdout.Bytes()); len(got) != 1 || !bytes.Equal(got[0].body, msg) || stderr.String() != "\rreceived 1 message(s)\n" {
		t.Fatalf("recv: %d messages, stderr %q", len(got), stderr.String())
	}
}

// TestCardUpdateRules: a card update changes a contact only when its
// own sender key sends it for the mailbox in the contacts, with the same
// keys.
func TestCardUpdateRules(t *testing.T) {
	dir := t.TempDir()
	bob, _ := envelope.NewIdentity()
	mallory, _ := envelope.NewIdentity()
	oldID, newID := [32]byte{1}, [32]byte{2}
	oldCard := bob.Card(oldID, []string{"postern-relay1:a"}, nil).String()
	newCard := bob.Card(newID, []string{"postern-relay1:b"}, nil).String()
	book, _ := loadContacts(filepath.Join(dir, "alice.id"))
	if err := book.update(func(disk *contactBook) error { disk.Cards["bob"] = oldCard; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		sender []byte
		u      cardUpdate
		want   string
	}{
		{"anonymous", nil, cardUpdate{oldID, newCard}, "refused an anonymous card update: a card changes only by a message from its own sender key"},
		{"other sender", mallory.AuthKey(), cardUpdate{oldID, newCard}, "refused a card update from an unknown sender: add them with `postern contact add` first"},
		{"other keys", bob.AuthKey(), cardUpdate{oldID, mallory.Card(newID, []string{"postern-relay1:b"}, nil).String()},
			"refused a card update for bob: the new card holds other keys than the contact you verified; ask bob in person"},
		{"other mailbox", bob.AuthKey(), cardUpdate{newID, newCard}, "ignored a card update from bob for a mailbox that is not the one in your contacts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isCtl, u, err := parseControl(tc.u.encode())
			if !isCtl || err != nil {
				t.Fatalf("parseControl: %v, %v", isCtl, err)
			}
			if _, err := applyCardUpdate(book, tc.sender, u); err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if book.Cards["bob"] != oldCard {
				t.Fatal("the contact changed")
			}
		})
	}
	note, err := applyCardUpdate(book, bob.AuthKey(), cardUpdate{oldID, newCard})
	if err != nil || !strings.HasPrefix(note, "bob's card changed") || book.Cards["bob"] != newCard {
		t.Fatalf("a good update: %q, %v", note, err)
	}

	// The contacts on disk decide, not the copy loaded when recv began
	// (a reviewer's find): bob replaced by another identity meanwhile
	// makes his old key a stranger, and carol added meanwhile is known.
	stale, _ := loadContacts(filepath.Join(dir, "alice.id"))
	bob2, _ := envelope.NewIdentity()
	carol, _ := envelope.NewIdentity()
	carolOld, carolNew := carol.Card(oldID, []string{"postern-relay1:c"}, nil).String(), carol.Card(newID, []string{"postern-relay1:d"}, nil).String()
	other, _ := loadContacts(filepath.Join(dir, "alice.id"))
	if err := other.update(func(disk *contactBook) error {
		disk.Cards["bob"] = bob2.Card(newID, []string{"postern-relay1:e"}, nil).String()
		disk.Cards["carol"] = carolOld
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	newer := bob.Card([32]byte{3}, []string{"postern-relay1:f"}, nil).String()
	if _, err := applyCardUpdate(stale, bob.AuthKey(), cardUpdate{newID, newer}); err == nil || !strings.Contains(err.Error(), "unknown sender") {
		t.Errorf("an update from bob's old key after bob was replaced: %v", err)
	}
	if note, err := applyCardUpdate(stale, carol.AuthKey(), cardUpdate{oldID, carolNew}); err != nil || !strings.HasPrefix(note, "carol's card changed") {
		t.Errorf("an update from carol, added after the book was loaded: %q, %v", note, err)
	}
	final, _ := loadContacts(filepath.Join(dir, "alice.id"))
	if final.Cards["bob"] != other.Cards["bob"] || final.Cards["carol"] != carolNew {
		t.Errorf("contacts on disk: %v", final.Cards)
	}
	if _, _, err := parseControl(append([]byte(controlMagic), 2, 1)); err == nil || !strings.Contains(err.Error(), "upgrade postern") {
		t.Fatalf("a later version: %v", err)
	}
}

// TestMailboxFileVersion1 reads a version 1 mailbox file as one mailbox
// named main and writes it back as version 2, which a reader of version 1
// fields still understands.
func TestMailboxFileVersion1(t *testing.T) {
	dir := t.TempDir()
	idPath := filepath.Join(dir, "bob.id")
	id, _ := envelope.NewIdentity()
	v1 := `{"relay": "postern-relay1:AAAA", "id": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", ` +
		`"owner": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "send_cap": null, "card": ""}`
	os.WriteFile(mailboxPath(idPath), []byte(v1), 0o600)
	ms, err := loadMailboxes(idPath)
	if err != nil || len(ms.list) != 1 || ms.list[0].Name != "main" || ms.list[0].relays()[0] != "postern-relay1:AAAA" {
		t.Fatalf("version 1: %v", err)
	}
	if err := ms.update(id, func(disk *mailboxes) error {
		disk.list = append(disk.list, newMailbox("spare", []string{"postern-relay1:BBBB"}, true))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(mailboxPath(idPath))
	if !bytes.Contains(data, []byte(`"version": 2`)) || !bytes.Contains(data, []byte(`"relay": "postern-relay1:AAAA"`)) {
		t.Fatalf("written back:\n%s", data)
	}
	top, err := loadMailbox(idPath)
	if err != nil || top.Relay != "postern-relay1:AAAA" || len(top.Others) != 1 || top.Others[0].Name != "spare" || len(top.Others[0].SendCap) != 32 {
		t.Fatalf("version 2 read back: %v", err)
	}
}

// checkLostMailbox deletes bob's mailbox behind the CLI's back: recv says
// how to make it again, and create --again says the id is retired.
func checkLostMailbox(t *testing.T, bin string, envv []string, bob string, rp *relayProc) {
	t.Helper()
	mb, err := loadMailbox(bob)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dialRelay(ctx, &env{stdout: os.Stdout, stderr: os.Stderr, getenv: func(string) string { return "" }}, rp.line)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, mb.owner(), mb.id()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, errOut, code := runWith(t, bin, envv, nil, "recv", "--id", bob)
	want := "postern recv: relay 1 of 1 no longer has mailbox \"main\" (the relay lost it, or it was deleted): make it again there with " +
		"`postern mailbox create --again --name main --id " + bob + "`; your card stays the same\n"
	if code != 1 || errOut != want {
		t.Fatalf("recv on a lost mailbox: exit %d\n%s\nwant:\n%s", code, errOut, want)
	}
	// The relay keeps a deleted id retired: --again says so.
	_, errOut, _ = runWith(t, bin, envv, nil, "mailbox", "create", "--again", "--id", bob)
	if !strings.Contains(errOut, "make a new mailbox with `postern mailbox create`") {
		t.Fatalf("create --again on a retired id:\n%s", errOut)
	}
}
