package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/metrics"
	"github.com/postern/postern/transport/descriptor"
)

// TestDescriptorRenewal: the relay re-signs its descriptor once less than
// half its validity is left, and the new one is current everywhere: the
// file, Descriptor requests and the expiry metric.
func TestDescriptorRenewal(t *testing.T) {
	cfg := defaultRelayConfig()
	cfg.DataDir = t.TempDir()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	cfg.validity = 2 * time.Hour
	r := &relayRun{cfg: cfg, e: &env{stdout: io.Discard, stderr: io.Discard}, log: slog.New(slog.DiscardHandler),
		met: metrics.NewRelay("test")}
	if err := r.loadKeys(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.listeners = []boundListener{{name: "https", public: "127.0.0.1:8443"}}
	start := time.Now()
	if renewed, err := r.renewIfDue(start); err != nil || !renewed {
		t.Fatalf("first signature: %v %v", renewed, err)
	}
	first := r.currentDescriptor()
	if renewed, _ := r.renewIfDue(start.Add(50 * time.Minute)); renewed {
		t.Fatal("renewed with more than half the validity left")
	}
	if renewed, err := r.renewIfDue(start.Add(61 * time.Minute)); err != nil || !renewed {
		t.Fatalf("not renewed with less than half left: %v", err)
	}
	second := r.currentDescriptor()
	d1, _ := descriptor.Parse(first, start)
	d2, err := descriptor.Parse(second, start.Add(61*time.Minute))
	if err != nil || !descriptor.SameRelay(d1, d2) || !d2.Expires.After(d1.Expires) {
		t.Fatalf("renewed descriptor: %v", err)
	}
	file, _ := os.ReadFile(filepath.Join(cfg.DataDir, "descriptor"))
	if strings.TrimSpace(string(file)) != second {
		t.Fatal("DATA/descriptor is not the renewed one")
	}
}

// expiredCopy re-signs the relay's descriptor with its own key as if it had
// expired an hour ago: what an old contact card holds.
func expiredCopy(t *testing.T, dataDir, line string) string {
	t.Helper()
	sec, err := loadOrCreateSecrets(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d.Issued = time.Now().Add(-31 * 24 * time.Hour).Truncate(time.Second)
	d.Expires = time.Now().Add(-time.Hour).Truncate(time.Second)
	old, err := d.Sign(ed25519.NewKeyFromSeed(sec.SigningKey))
	if err != nil {
		t.Fatal(err)
	}
	return old
}

// TestExpiredDescriptorStillReachesRelay: a card or mailbox file whose
// relay descriptor expired still reaches the relay (its keys did not
// change); the mailbox file and card then take the relay's current one.
func TestExpiredDescriptorStillReachesRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	defer rp.stop()
	old := expiredCopy(t, rp.dir, rp.line)
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	idFile := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", idFile)

	// mailbox create with the expired descriptor: works, and the card
	// carries the current one.
	oldFile := filepath.Join(dir, "old-descriptor")
	os.WriteFile(oldFile, []byte(old+"\n"), 0o600)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", idFile, "--relay", oldFile)))
	c, err := envelope.ParseCard(card)
	if err != nil || len(c.Relays) != 1 || c.Relays[0] != rp.line {
		t.Fatalf("card after create: %v, relays %d", err, len(c.Relays))
	}

	// A sender holding a card with the expired descriptor still delivers.
	ident, err := envelope.LoadIdentity(idFile)
	if err != nil {
		t.Fatal(err)
	}
	oldCard, err := ident.Card(c.Mailbox, []string{old}, nil).Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "send", "--anonymous", "--to", oldCard)
	cmd.Env = append(os.Environ(), base...)
	cmd.Stdin = strings.NewReader("through an old card")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("send with an expired card: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "expired on") {
		t.Fatalf("no warning about the expired descriptor:\n%s", stderr.String())
	}

	// A mailbox file with the expired descriptor: recv works and the file
	// takes the current descriptor.
	mbPath := mailboxPath(idFile)
	var st mailboxState
	b, _ := os.ReadFile(mbPath)
	json.Unmarshal(b, &st)
	st.Relay = old
	b, _ = json.Marshal(st)
	os.WriteFile(mbPath, b, 0o600)
	got := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", idFile))
	if len(got) != 1 || string(got[0].body) != "through an old card" {
		t.Fatalf("recv: %+v", got)
	}
	b, _ = os.ReadFile(mbPath)
	json.Unmarshal(b, &st)
	if st.Relay != rp.line {
		t.Fatal("the mailbox file still holds the expired descriptor")
	}
	if nc, err := envelope.ParseCard(st.Card); err != nil || nc.Relays[0] != rp.line {
		t.Fatalf("the card in the mailbox file: %v", err)
	}

	// Again with a known relay to fall back to: recv then races the home
	// relay against a tunnel through it, and the race's end must not cut
	// the renewal short (the descriptor's answer is awaited past it).
	other := startRelay(t, bin, filepath.Join(dir, "other"))
	defer other.stop()
	runOK(t, bin, base, nil, "relays", "add", other.line)
	st.Relay, st.Relays = old, nil
	b, _ = json.Marshal(st)
	os.WriteFile(mbPath, b, 0o600)
	runOK(t, bin, base, nil, "recv", "--id", idFile)
	b, _ = os.ReadFile(mbPath)
	json.Unmarshal(b, &st)
	if st.Relay != rp.line || len(st.Relays) != 1 || st.Relays[0] != rp.line {
		t.Fatal("with a known relay, the mailbox file still holds the expired descriptor")
	}
}
