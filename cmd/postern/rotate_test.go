package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/envelope"
)

// A rotation the relays carried out but whose mailbox file could not be
// written (a full disk, a crash just before) is finished by rotating
// again: the new keys were written before any relay moved the mailbox,
// so the message waiting in it is still received. Before, the new owner
// key lived only in memory: the mailbox and what waited in it were lost.
func TestRotateInterruptedIsFinished(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	alice, bob := filepath.Join(home, "alice.id"), filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	d := filepath.Join(rp.dir, "descriptor")
	bobCard := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", d)))
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "bob", bobCard)
	runOK(t, bin, envv, []byte("waiting for bob"), "send", "--id", alice, "--to", "bob")

	saveRotated = func(*mailboxes, *envelope.Identity) error { return errors.New("no space left on device (test)") }
	var out, errOut bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(k string) string {
		if k == "POSTERN_HOME" {
			return home
		}
		return ""
	}}
	code := run(context.Background(), []string{"mailbox", "rotate", "--id", bob}, e)
	saveRotated = (*mailboxes).save
	if code == 0 || !strings.Contains(errOut.String(), "rotate` again") {
		t.Fatalf("rotate with the final write failing: exit %d:\n%s", code, errOut.String())
	}
	_, recvErr, _ := runWith(t, bin, envv, nil, "recv", "--id", bob)
	if !strings.Contains(recvErr, "rotation of it was interrupted") {
		t.Errorf("recv on the half-rotated mailbox does not say how to finish:\n%s", recvErr)
	}
	newCard, finishErr, code := runWith(t, bin, envv, nil, "mailbox", "rotate", "--id", bob)
	if code != 0 || !strings.Contains(finishErr, "interrupted") || strings.TrimSpace(newCard) == bobCard {
		t.Fatalf("finishing the rotation: exit %d:\n%s", code, finishErr)
	}
	if got := runOK(t, bin, envv, nil, "recv", "--id", bob); !strings.Contains(string(got), "waiting for bob") {
		t.Fatalf("after the rotation was finished, recv printed %q", got)
	}
}
