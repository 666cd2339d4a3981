package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
)

// TestRecvHoldsFragments: `recv` prints only whole messages and leaves the
// fragments of an unfinished one on the relay, so a message whose fragments
// arrive across several runs is still delivered, once.
func TestRecvHoldsFragments(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	card, err := envelope.ParseCard(strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line))))
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 150<<10)
	rand.Read(big)
	frags, err := envelope.SealMessage(card, nil, big, nil)
	if err != nil || len(frags) != 3 {
		t.Fatalf("%d fragments, %v", len(frags), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := dialRelay(ctx, &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}, rp.line)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(env []byte) {
		if _, err := c.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	small, _ := envelope.Seal(card, nil, []byte("small one"), nil)
	send(frags[0])
	send(small)
	send(frags[2])

	got := parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", bob))
	if len(got) != 1 || string(got[0].body) != "small one" {
		t.Fatalf("first recv: %d messages", len(got))
	}
	// Again, with the fragments still incomplete: nothing printed, nothing lost.
	if got := parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", bob)); len(got) != 0 {
		t.Fatalf("second recv printed %d messages", len(got))
	}
	send(frags[1])
	got = parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", bob))
	if len(got) != 1 || !bytes.Equal(got[0].body, big) {
		t.Fatalf("third recv: %d messages", len(got))
	}
	// Everything was acked.
	if got := parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", bob)); len(got) != 0 {
		t.Fatalf("fourth recv printed %d messages", len(got))
	}
	mb, err := loadMailbox(bob)
	if err != nil {
		t.Fatal(err)
	}
	if ds, err := c.Fetch(ctx, mb.owner(), mb.id(), 0); err != nil || len(ds) != 0 {
		t.Fatalf("relay still holds %d envelopes, %v", len(ds), err)
	}
}
