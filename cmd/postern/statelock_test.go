package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
	inProcess := func(args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(k string) string {
			if k == "POSTERN_HOME" {
				return home
			}
			return ""
		}}
		if code := run(context.Background(), args, e); code != 0 {
			t.Fatalf("%v: exit %d:\n%s", args, code, errOut.String())
		}
	}
	meanwhile := func(args ...string) {
		beforeUpdate = sync.OnceFunc(func() { runOK(t, bin, envv, nil, args...) })
	}
	defer func() { beforeUpdate = func() {} }()

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
