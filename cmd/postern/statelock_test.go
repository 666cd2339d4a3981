package main

import (
	"net"
	"path/filepath"
	"strings"
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
