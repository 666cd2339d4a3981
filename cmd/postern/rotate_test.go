package main

import (
	"context"
	"errors"
	"os"
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

// TestRotateBusyWaits: a relay that answers a rotation busy (its
// allowance of mailbox changes for this address spent for the day) is
// not left out of the new card: rotate fails, says why and to run it
// again, and changes nothing; run again once the relay takes it (here:
// restarted with a larger allowance), it finishes on both relays, and
// the message waiting on the busy one is received (a reviewer's find:
// the relay was dropped from the card for good, exit 0).
func TestRotateBusyWaits(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	one := filepath.Join(dir, "one.json")
	if err := os.WriteFile(one, []byte(`{"mailbox_ops_per_source": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startRelay(t, bin, filepath.Join(dir, "a"))
	bAddr := freePort(t) // the same address after its restart: the card names it
	b := startRelay(t, bin, filepath.Join(dir, "b"), "--config", one, "--https", bAddr, "--h3", "off")
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob, alice := filepath.Join(home, "bob.id"), filepath.Join(home, "alice.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob,
		"--relay", filepath.Join(a.dir, "descriptor"), "--relay", filepath.Join(b.dir, "descriptor"))))
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "bob", card)
	runOK(t, bin, envv, []byte("waiting for bob"), "send", "--id", alice, "--to", "bob")

	out, stderr, code := runWith(t, bin, envv, nil, "mailbox", "rotate", "--id", bob)
	if code == 0 || strings.TrimSpace(out) != "" || !strings.Contains(stderr, "relay 2 of 2: relay: relay busy; retry later (it limits how many mailboxes one address creates or rotates a day") ||
		!strings.Contains(stderr, "run `postern mailbox rotate` again then to finish") {
		t.Fatalf("rotate with relay 2 busy: exit %d, card %q:\n%s", code, out, stderr)
	}
	if strings.Contains(stderr, "left out of the new card") {
		t.Fatalf("a busy relay left out of the card:\n%s", stderr)
	}
	_, stderr, code = runWith(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "two", "--relay", filepath.Join(b.dir, "descriptor"))
	if code == 0 || !strings.Contains(stderr, "relay busy; retry later (it limits how many mailboxes one address creates or rotates a day: try again in a few minutes") {
		t.Fatalf("a create on the busy relay: exit %d:\n%s", code, stderr)
	}

	b.stop()
	b = startRelay(t, bin, b.dir, "--https", bAddr, "--h3", "off")
	out, stderr, code = runWith(t, bin, envv, nil, "mailbox", "rotate", "--id", bob)
	c, err := envelope.ParseCard(strings.TrimSpace(out))
	if code != 0 || err != nil || len(c.Relays) != 2 || strings.TrimSpace(out) == card || !strings.Contains(stderr, "interrupted") {
		t.Fatalf("rotate again: exit %d, card %q (%v):\n%s", code, out, err, stderr)
	}
	if got := runOK(t, bin, envv, nil, "recv", "--id", bob); !strings.Contains(string(got), "waiting for bob") {
		t.Fatalf("after the rotation, recv printed %q", got)
	}
}
