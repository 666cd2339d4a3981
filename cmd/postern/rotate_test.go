package main

import (
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
	u := newPair(t, bin)
	envv, alice, bob, bobCard, home := u.envv, u.alice, u.bob, u.bobCard, u.home
	runOK(t, bin, envv, []byte("waiting for bob"), "send", "--id", alice, "--to", "bob")

	saveRotated = func(*mailboxes, *envelope.Identity, func(*mailboxes) error) error {
		return errors.New("no space left on device (test)")
	}
	e, errOut := homeEnv(home)
	code := run(context.Background(), []string{"mailbox", "rotate", "--id", bob}, e)
	saveRotated = (*mailboxes).update
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

// pair is alice and bob on one relay: bob has a mailbox there, and alice
// has bob as a contact (and bob alice, with both).
type pair struct {
	rp                           *relayProc
	home, alice, bob             string
	envv                         []string
	aliceCard, bobCard, relayDsc string
}

func newPair(t *testing.T, bin string, both ...bool) *pair {
	t.Helper()
	dir := t.TempDir()
	u := &pair{rp: startRelay(t, bin, filepath.Join(dir, "relay")), home: filepath.Join(dir, "home")}
	u.envv = []string{"POSTERN_HOME=" + u.home}
	u.alice, u.bob = filepath.Join(u.home, "alice.id"), filepath.Join(u.home, "bob.id")
	runOK(t, bin, u.envv, nil, "id", "new", "--out", u.alice)
	runOK(t, bin, u.envv, nil, "id", "new", "--out", u.bob)
	u.relayDsc = filepath.Join(u.rp.dir, "descriptor")
	if len(both) > 0 && both[0] {
		u.aliceCard = strings.TrimSpace(string(runOK(t, bin, u.envv, nil, "mailbox", "create", "--id", u.alice, "--relay", u.relayDsc)))
	}
	u.bobCard = strings.TrimSpace(string(runOK(t, bin, u.envv, nil, "mailbox", "create", "--id", u.bob, "--relay", u.relayDsc)))
	runOK(t, bin, u.envv, nil, "contact", "add", "--id", u.alice, "bob", u.bobCard)
	if u.aliceCard != "" {
		runOK(t, bin, u.envv, nil, "contact", "add", "--id", u.bob, "alice", u.aliceCard)
	}
	return u
}
