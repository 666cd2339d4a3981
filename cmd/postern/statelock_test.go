package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
)

// A `recv --follow` that renews a relay's descriptor writes the renewal
// into the mailbox file as it is on disk then: a mailbox another command
// made meanwhile stays. Before, the follower wrote back the copy it had
// loaded at its start, and the new mailbox's owner key was gone, its card
// already handed out (a reviewer's find).
func TestFollowRenewKeepsOthersChanges(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0") // a free port, kept across the restart
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	rdir := filepath.Join(dir, "relay")
	rp := startRelay(t, bin, rdir, "--https", addr, "--h3", addr)
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	alice, bob := filepath.Join(home, "alice.id"), filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	d := filepath.Join(rdir, "descriptor")
	bobCard := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", d)))
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "bob", bobCard)

	f := startFollow(t, bin, envv, bob)
	runOK(t, bin, envv, []byte("hello"), "send", "--id", alice, "--to", "bob")
	select { // the follower is subscribed
	case <-f.msgs:
	case <-time.After(time.Minute): // a deadlock guard
		t.Fatalf("the follower showed nothing:\n%s", f.stderr.String())
	}
	runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "work", "--relay", d)

	rp.stop()
	time.Sleep(1100 * time.Millisecond) // the restarted relay signs a descriptor of a later second
	startRelay(t, bin, rdir, "--https", addr, "--h3", addr)
	for end := time.Now().Add(time.Minute); !strings.Contains(f.stderr.String(), "renewed its descriptor"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the follower did not renew the relay's descriptor:\n%s", f.stderr.String())
		}
	}
	if list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob)); !strings.Contains(list, "work") {
		t.Fatalf("mailbox \"work\" is gone from the mailbox file after the follower's renewal:\n%s", list)
	}
}

// Two short commands on one identity at once each keep the other's
// change: what a command writes is its change applied to the state file
// as it is on disk then. Before, each wrote back the copy it had loaded
// when it began, so the later one dropped the other's new mailbox (its
// owner key, its card already handed out) or contact. The other postern
// runs here between the first one's loading and its write.
func TestShortCommandsKeepEachOthersChanges(t *testing.T) {
	bin := buildBinary(t)
	u := newPair(t, bin)
	envv, bob, alice, home, d := u.envv, u.bob, u.alice, u.home, u.relayDsc
	runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "spare", "--relay", d)
	inProcess := func(args ...string) { t.Helper(); runInProcess(t, home, args...) }
	meanwhile := func(args ...string) { meanwhileAt(t, 1, func() { runOK(t, bin, envv, nil, args...) }) }

	meanwhile("mailbox", "create", "--id", bob, "--name", "other", "--relay", d)
	inProcess("mailbox", "create", "--id", bob, "--name", "work", "--relay", d)
	meanwhile("mailbox", "create", "--id", bob, "--name", "later", "--relay", d)
	inProcess("mailbox", "delete", "--id", bob, "--name", "spare")
	list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob))
	for _, name := range []string{"main", "other", "work", "later"} {
		if !strings.Contains(list, name) {
			t.Errorf("mailbox %q is gone:\n%s", name, list)
		}
	}
	if strings.Contains(list, "spare") {
		t.Errorf("the deleted mailbox is still listed:\n%s", list)
	}

	// Neither named: the second takes the next default name.
	meanwhile("mailbox", "create", "--id", bob, "--relay", d)
	inProcess("mailbox", "create", "--id", bob, "--relay", d)
	list = string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob))
	if !strings.Contains(list, "mailbox5") || !strings.Contains(list, "mailbox6") {
		t.Errorf("two mailboxes made at once with default names:\n%s", list)
	}

	meanwhile("contact", "add", "--id", alice, "carol", u.bobCard)
	inProcess("contact", "add", "--id", alice, "dave", u.bobCard)
	contacts := string(runOK(t, bin, envv, nil, "contact", "list", "--id", alice))
	for _, name := range []string{"bob", "carol", "dave"} {
		if !strings.Contains(contacts, name) {
			t.Errorf("contact %q is gone:\n%s", name, contacts)
		}
	}
}

// runInProcess runs a postern command in this process (so that
// beforeUpdate applies), with POSTERN_HOME home, and returns its stderr.
func runInProcess(t *testing.T, home string, args ...string) string {
	t.Helper()
	e, errOut := homeEnv(home)
	if code := run(context.Background(), args, e); code != 0 {
		t.Fatalf("%v: exit %d:\n%s", args, code, errOut.String())
	}
	return errOut.String()
}

// homeEnv is the environment of a postern run in this process with
// POSTERN_HOME home, and its stderr.
func homeEnv(home string) (*env, *bytes.Buffer) {
	var errOut bytes.Buffer
	return &env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &errOut, getenv: func(k string) string {
		if k == "POSTERN_HOME" {
			return home
		}
		return ""
	}}, &errOut
}

// meanwhileAt runs f before the nth update of a state file in this
// process takes the lock (once), until the test ends.
func meanwhileAt(t *testing.T, nth int, f func()) {
	var calls int
	var once sync.Once
	beforeUpdate = func() {
		if calls++; calls == nth {
			once.Do(f)
		}
	}
	t.Cleanup(func() { beforeUpdate = func() {} })
}

// A rotation's last write keeps what another postern wrote between its
// first and last: a mailbox made, a mailbox's card. And if the rotated
// mailbox itself was deleted from the file meanwhile (by a delete that
// asked the relays with the old keys only, so that the relays still hold
// it under the new ones), it is kept under its new keys: the envelope
// waiting in it is still received. Before, the rotation's write failed
// and the new keys were nowhere (a reviewer's find).
func TestRotationKeepsOthersChanges(t *testing.T) {
	bin := buildBinary(t)
	u := newPair(t, bin)
	envv, alice, bob, home, d := u.envv, u.alice, u.bob, u.home, u.relayDsc
	runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "work", "--relay", d)
	workCard := func() string {
		return strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "show", "--id", bob, "--name", "work")))
	}
	before := workCard()
	meanwhileAt(t, 2, func() { runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--name", "later", "--relay", d) })
	runInProcess(t, home, "mailbox", "rotate", "--id", bob, "--name", "main")
	list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob))
	for _, name := range []string{"main", "work", "later"} {
		if !strings.Contains(list, name) {
			t.Errorf("mailbox %q is gone after the rotation:\n%s", name, list)
		}
	}
	if after := workCard(); after != before {
		t.Errorf("mailbox work's card changed:\n%s\n%s", before, after)
	}

	meanwhileAt(t, 2, func() {
		ms, err := loadMailboxes(bob)
		if err != nil {
			t.Error(err)
			return
		}
		id, _ := envelope.LoadIdentity(bob)
		if err := ms.update(id, func(disk *mailboxes) error {
			m, err := disk.find("work")
			if err == nil {
				disk.remove(m)
			}
			return err
		}); err != nil {
			t.Error(err)
		}
	})
	stderr := runInProcess(t, home, "mailbox", "rotate", "--id", bob, "--name", "work")
	if !strings.Contains(stderr, "deleted from") {
		t.Errorf("the rotation does not say the mailbox was deleted meanwhile:\n%s", stderr)
	}
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "--replace", "bob", workCard())
	runOK(t, bin, envv, []byte("to the rotated work"), "send", "--id", alice, "--to", "bob")
	if got := string(runOK(t, bin, envv, nil, "recv", "--id", bob)); !strings.Contains(got, "to the rotated work") {
		t.Errorf("the rotated mailbox, deleted from the file meanwhile, cannot be read: recv printed %q", got)
	}

	// A delete during which another postern rotated the mailbox (here:
	// its keys in the file replaced, as a rotation's last write does)
	// leaves it: the relays hold it under keys only the file has.
	meanwhileAt(t, 1, func() {
		ms, _ := loadMailboxes(bob)
		id, _ := envelope.LoadIdentity(bob)
		if err := ms.update(id, func(disk *mailboxes) error {
			m, err := disk.find("later")
			if err == nil {
				nm := newMailbox("later", m.relays(), false)
				m.ID, m.Owner = nm.ID, nm.Owner
			}
			return err
		}); err != nil {
			t.Error(err)
		}
	})
	e, errOut := homeEnv(home)
	if code := run(context.Background(), []string{"mailbox", "delete", "--id", bob, "--name", "later"}, e); code == 0 || !strings.Contains(errOut.String(), "meanwhile") {
		t.Errorf("a delete beside a rotation: exit %d:\n%s", code, errOut.String())
	}
	if list := string(runOK(t, bin, envv, nil, "mailbox", "list", "--id", bob)); !strings.Contains(list, "later") {
		t.Errorf("the mailbox rotated during a delete is gone:\n%s", list)
	}
}

// Deleting a mailbox whose rotation was interrupted after the relays
// moved it deletes it under its new keys too. Before, the relay's "no
// such mailbox" for the old keys counted as deleted, and the file lost
// the new keys: the relay kept a mailbox nobody could read or delete.
func TestDeleteAfterInterruptedRotation(t *testing.T) {
	bin := buildBinary(t)
	u := newPair(t, bin)
	envv, bob, home := u.envv, u.bob, u.home
	saveRotated = func(*mailboxes, *envelope.Identity, func(*mailboxes) error) error {
		return errors.New("no space left on device (test)")
	}
	defer func() { saveRotated = (*mailboxes).update }()
	e, _ := homeEnv(home)
	if code := run(context.Background(), []string{"mailbox", "rotate", "--id", bob}, e); code == 0 {
		t.Fatal("the rotation whose last write fails succeeded")
	}
	ms, err := loadMailboxes(bob)
	if err != nil || ms.list[0].Next == nil {
		t.Fatalf("no interrupted rotation in the file: %v", err)
	}
	next, line := ms.list[0].Next, ms.list[0].relays()[0]
	runOK(t, bin, envv, nil, "mailbox", "delete", "--id", bob)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dialRelay(ctx, e, line)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Fetch(ctx, next.owner(), next.id(), 1); !errors.Is(err, relay.ErrNoMailbox) {
		t.Fatalf("the relay still holds the mailbox under its new keys (fetch: %v)", err)
	}
}
