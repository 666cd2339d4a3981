package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/transport/censortest"
)

// TestSendThroughFreezingCensor: a censor that freezes every TCP flow to
// the relay after 150 KiB (the TSPU behaviour, scaled up so a TLS handshake
// and two 64 KiB envelopes fit) cannot stop a 200 KB message (four
// envelopes): send notices each
// stall within its window, reconnects and resumes with the first envelope
// not yet acked, and the message arrives whole, once.
func TestSendThroughFreezingCensor(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	relayHTTPS := freePort(t)
	// The middlebox listens first, so the relay can publish its address.
	mb := censortest.NewMiddlebox(t, relayHTTPS)
	mb.SetRule(censortest.FreezeAfter(150 << 10))
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--https", relayHTTPS, "--h3", "off", "--config", writeConfig(t, dir, mb.Addr()))
	defer rp.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(rp.dir, "descriptor"))))

	msg := make([]byte, 200<<10)
	rand.Read(msg)
	cmd := exec.Command(bin, "send", "--anonymous", "--to", card)
	cmd.Env = append(os.Environ(), append(base, "POSTERN_STALL=500ms")...)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("send through the freezing censor: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stalled after") {
		t.Fatalf("the censor never froze the flow (test setup):\n%s", stderr.String())
	}
	mb.SetRule(censortest.Pass)
	got := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", bob))
	if len(got) != 1 || !bytes.Equal(got[0].body, msg) {
		t.Fatalf("received %d messages", len(got))
	}
}

// writeConfig writes a relay config that publishes public as the https
// address (the middlebox in front of the relay).
func writeConfig(t *testing.T, dir, public string) string {
	p := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(p, []byte(`{"public_https": "`+public+`", "store": "memory"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
