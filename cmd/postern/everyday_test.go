package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// runWith runs the binary with stdin and returns stdout, stderr and the
// exit code.
func runWith(t *testing.T, bin string, envv []string, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), envv...)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// field returns the value after "key:" in command output.
func field(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// recvFrom receives on idFile and checks it got exactly one message, body
// from sender from.
func recvFrom(t *testing.T, bin string, envv []string, idFile, from, body string) string {
	t.Helper()
	out, errOut, code := runWith(t, bin, envv, nil, "recv", "--id", idFile)
	if code != 0 {
		t.Fatalf("recv: exit %d: %s", code, errOut)
	}
	got := parseRecv(t, []byte(out))
	if len(got) != 1 || got[0].from != from || string(got[0].body) != body {
		t.Fatalf("recv got %+v, want one message %q from %s; stderr:\n%s", got, body, from, errOut)
	}
	return errOut
}

// TestEverydayUse drives the built binary as two people would: cards
// exchanged and verified, messages shown with contact names, a mailbox on
// two relays, rotated (the contact's postern learns the new card from the
// rotation message), a second mailbox deleted, and delivery with the
// first relay of the card stopped.
func TestEverydayUse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	r1 := startRelay(t, bin, filepath.Join(dir, "r1"))
	r2 := startRelay(t, bin, filepath.Join(dir, "r2"))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	alice, bob, carol := filepath.Join(home, "alice.id"), filepath.Join(home, "bob.id"), filepath.Join(home, "carol.id")
	for _, id := range []string{alice, bob, carol} {
		runOK(t, bin, envv, nil, "id", "new", "--out", id)
	}
	d1, d2 := filepath.Join(r1.dir, "descriptor"), filepath.Join(r2.dir, "descriptor")
	aliceCard := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", alice, "--relay", d2)))
	bobCard := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", d1, "--relay", d2)))
	if c, err := envelope.ParseCard(bobCard); err != nil || len(c.Relays) != 2 {
		t.Fatalf("bob's card: %v, %d relays; want 2", err, len(c.Relays))
	}

	// Cards exchanged, contacts added, safety numbers compared.
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "bob", bobCard)
	runOK(t, bin, envv, nil, "contact", "add", "--id", bob, "alice", aliceCard)
	onAlice := string(runOK(t, bin, envv, nil, "contact", "show", "--id", alice, "bob"))
	onBob := string(runOK(t, bin, envv, nil, "contact", "show", "--id", bob, "alice"))
	if sn := field(onAlice, "safety number"); sn == "" || sn != field(onBob, "safety number") {
		t.Fatalf("safety numbers differ:\n%s\n%s", onAlice, onBob)
	}
	if field(onAlice, "their key") != field(onBob, "your key") || field(onAlice, "your key") != field(onBob, "their key") {
		t.Fatalf("fingerprints differ:\n%s\n%s", onAlice, onBob)
	}

	// Messages named by contact, by card, unknown and anonymous.
	runOK(t, bin, envv, []byte("hello bob"), "send", "--id", alice, "--to", "bob")
	recvFrom(t, bin, envv, bob, "alice", "hello bob")
	runOK(t, bin, envv, []byte("hi alice"), "send", "--id", bob, "--to", "alice")
	recvFrom(t, bin, envv, alice, "bob", "hi alice")
	carolKey := field(string(runOK(t, bin, envv, nil, "id", "show", "--id", carol)), "sender-key")
	runOK(t, bin, envv, []byte("from a stranger"), "send", "--id", carol, "--to", bobCard)
	if errOut := recvFrom(t, bin, envv, bob, carolKey, "from a stranger"); !strings.Contains(errOut, "unknown sender "+carolKey) {
		t.Fatalf("recv does not say unknown sender:\n%s", errOut)
	}
	runOK(t, bin, envv, []byte("tip"), "send", "--anonymous", "--to", bobCard)
	recvFrom(t, bin, envv, bob, "anonymous", "tip")

	newCard := checkRotation(t, bin, envv, alice, bob, bobCard)

	// A second mailbox, listed, then deleted.
	spare := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "spare", "--relay", d2)))
	if list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob)); !strings.Contains(list, "main") || !strings.Contains(list, "spare") {
		t.Fatalf("mailbox list:\n%s", list)
	}
	runOK(t, bin, envv, nil, "mailbox", "delete", "--id", bob, "--name", "spare")
	if list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob)); strings.Contains(list, "spare") {
		t.Fatalf("mailbox list after delete:\n%s", list)
	}
	if _, errOut, code := runWith(t, bin, envv, []byte("x"), "send", "--anonymous", "--to", spare); code != 1 ||
		!strings.Contains(errOut, "has no such mailbox: they moved it (rotated) or deleted it") {
		t.Fatalf("send to the deleted mailbox: exit %d: %s", code, errOut)
	}

	// The first relay of bob's card stops: the second still delivers.
	if c, err := envelope.ParseCard(newCard); err != nil || len(c.Relays) != 2 {
		t.Fatalf("rotated card: %v", err)
	}
	r1.stop()
	runOK(t, bin, envv, []byte("relay one is down"), "send", "--id", alice, "--to", "bob")
	recvFrom(t, bin, envv, bob, "alice", "relay one is down")
}

// runRecvQuiet receives on idFile, expecting no message, and returns
// stderr.
func runRecvQuiet(t *testing.T, bin string, envv []string, idFile string) string {
	t.Helper()
	out, errOut, code := runWith(t, bin, envv, nil, "recv", "--id", idFile)
	if code != 0 || out != "" {
		t.Fatalf("recv: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}
	return errOut
}

// checkRotation rotates bob's mailbox with a message waiting: it is
// moved, alice's postern applies the new card from the rotation message,
// her next message arrives, and the old card is refused. It returns the
// new card.
func checkRotation(t *testing.T, bin string, envv []string, alice, bob, bobCard string) string {
	t.Helper()
	// Rotation: a message waiting is moved, alice's postern applies the
	// new card, and her next message arrives; one to the old card too.
	runOK(t, bin, envv, []byte("waiting"), "send", "--id", alice, "--to", "bob")
	out, errOut, code := runWith(t, bin, envv, nil, "mailbox", "rotate", "--id", bob)
	if code != 0 || !strings.Contains(errOut, "told 1 of 1 contact(s)") || strings.TrimSpace(out) == bobCard {
		t.Fatalf("rotate: exit %d, card changed %v:\n%s", code, strings.TrimSpace(out) != bobCard, errOut)
	}
	recvFrom(t, bin, envv, bob, "alice", "waiting")
	if errOut := runRecvQuiet(t, bin, envv, alice); !strings.Contains(errOut, "bob's card changed") {
		t.Fatalf("alice's recv did not apply the card update:\n%s", errOut)
	}
	runOK(t, bin, envv, []byte("after the rotation"), "send", "--id", alice, "--to", "bob")
	recvFrom(t, bin, envv, bob, "alice", "after the rotation")
	// The old card still reaches the new mailbox for the relay's TTL
	// (a contact without the update, a forward queued elsewhere).
	runOK(t, bin, envv, []byte("to the old card"), "send", "--id", alice, "--to", bobCard)
	recvFrom(t, bin, envv, bob, "alice", "to the old card")

	return strings.TrimSpace(out)
}
