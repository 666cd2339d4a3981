package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSendBytesRefused: a relay whose store is half full refuses a send
// from an address past its send_bytes_per_source (set here: the default
// for this store would be the least, 65536) as "relay storage full" (the
// sender is told, the refusal counted for "source_limit"), and takes it
// again once the store is below half: here, when the recipient has
// received. Neither the relay's log (debug) nor what the sender was told
// names the client's address or the mailbox.
func TestSendBytesRefused(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfg, []byte(`{"max_store_bytes": 262144, "send_bytes_per_source": 196608}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--config", cfg, "--h3", "off")
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home, "POSTERN_BIND=127.0.0.2"}
	bob, alice := filepath.Join(home, "bob.id"), filepath.Join(home, "alice.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(rp.dir, "descriptor"))))
	runOK(t, bin, envv, nil, "contact", "add", "--id", alice, "bob", card)
	mb, err := loadMailbox(bob)
	if err != nil {
		t.Fatal(err)
	}

	big := bytes.Repeat([]byte("b"), 100_000) // two 64 KiB envelopes: half the store
	runOK(t, bin, envv, big, "send", "--id", alice, "--to", "bob")
	maddr := metricsAddr(t, rp)
	if m, _ := scrape(t, maddr); m["postern_store_bytes"] != 131072 {
		t.Fatalf("the store holds %v bytes, want 131072", m["postern_store_bytes"])
	}
	runOK(t, bin, envv, []byte("small"), "send", "--id", alice, "--to", "bob") // 4 KiB of the 64 KiB left
	_, stderr, code := runWith(t, bin, envv, big, "send", "--id", alice, "--to", "bob")
	if code == 0 || !strings.Contains(stderr, "relay storage full: retry later or use another relay (a relay half full or more also limits how much one address sends a day") {
		t.Fatalf("a send past the allowance with the store half full: exit %d:\n%s", code, stderr)
	}
	if m, _ := scrape(t, maddr); m[`postern_envelopes_rejected_total{reason="source_limit"}`] < 1 || m["postern_store_bytes"] != 131072+4096 {
		t.Fatalf("after the refusal: source_limit %v, store bytes %v", m[`postern_envelopes_rejected_total{reason="source_limit"}`], m["postern_store_bytes"])
	}
	if got := runOK(t, bin, envv, nil, "recv", "--id", bob); !bytes.Contains(got, big) {
		t.Fatalf("recv printed %d bytes, want the first message", len(got))
	}
	runOK(t, bin, envv, []byte("one more"), "send", "--id", alice, "--to", "bob")
	if got := runOK(t, bin, envv, nil, "recv", "--id", bob); !bytes.Contains(got, []byte("one more")) {
		t.Fatalf("recv printed %q", got)
	}
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	needles := []needle{addrNeedle("client address", "127.0.0.2"), bytesNeedle("mailbox id", mb.ID)}
	leaks := append(findLeaks("relay log", []byte(rp.logs()), needles), findLeaks("the refused sender's stderr", []byte(stderr), needles)...)
	if len(leaks) > 0 || !strings.Contains(rp.logs(), "session ended") {
		t.Fatalf("leaks %v, or debug logging was off:\n%s", leaks, rp.logs())
	}
}

// TestSendBytesDefaultFromTTL: a relay's default allowance follows its
// store's quota and TTL (a quarter of the quota over the TTL and a day:
// for 1 GiB and 3 days, 64 MiB), as its start-up log says.
func TestSendBytesDefaultFromTTL(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfg, []byte(`{"ttl": "72h", "max_store_bytes": 1073741824}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--config", cfg, "--h3", "off")
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	if want := `msg="send allowance" bytes_per_source_a_day=67108864 from_store_bytes=536870912`; !strings.Contains(rp.logs(), want) {
		t.Fatalf("the log does not say %s:\n%s", want, rp.logs())
	}
}

// TestSendBytesOff: send_bytes_per_source -1 turns the allowance off (a
// relay reached only through its operator's own entry relays): with the
// store half full, a send that the least allowance (64 KiB a day, this
// store's default) would refuse is taken, and the start-up log says there
// is no limit. mailbox_ops_per_source -1 is a valid config too.
func TestSendBytesOff(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfg, []byte(`{"max_store_bytes": 524288, "send_bytes_per_source": -1, "mailbox_ops_per_source": -1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--config", cfg, "--h3", "off")
	envv, _, card, _ := newOwner(t, bin, dir, rp)
	big := bytes.Repeat([]byte("b"), 100_000) // two 64 KiB envelopes
	for range 3 {                             // the third with the store half full
		runOK(t, bin, envv, big, "send", "--anonymous", "--to", card)
	}
	if m, _ := scrape(t, metricsAddr(t, rp)); m["postern_store_bytes"] != 3*131072 {
		t.Fatalf("the store holds %v bytes, want %d", m["postern_store_bytes"], 3*131072)
	}
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	if want := `msg="send allowance" bytes_per_source_a_day="no limit"`; !strings.Contains(rp.logs(), want) {
		t.Fatalf("the log does not say %s:\n%s", want, rp.logs())
	}
}

// TestQUICGoLogSilenced: with QUIC_GO_LOG_LEVEL set, quic-go writes its
// debug log (client addresses among it) through the standard logger; a
// relay's stderr still has only its own slog lines, and no client
// address, after a send over h3. Until 2026-12-07 quic-go's lines went
// to the relay's stderr (an audit's find).
func TestQUICGoLogSilenced(t *testing.T) {
	t.Setenv("QUIC_GO_LOG_LEVEL", "debug")
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--https", "off")
	envv, _, card, _ := newOwner(t, bin, dir, rp)
	runOK(t, bin, append(envv, "POSTERN_BIND=127.0.0.2"), []byte("over h3"), "send", "--anonymous", "--to", card)
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	logs := rp.logs()
	// The standard logger's lines begin with its date, 2026/12/07 18:30:00.
	if m := regexp.MustCompile(`(?m)^\d{4}/\d\d/\d\d \d\d:`).FindString(logs); m != "" {
		t.Fatalf("the standard logger's lines on the relay's stderr:\n%s", logs)
	}
	if leaks := findLeaks("relay log", []byte(logs), []needle{addrNeedle("client address", "127.0.0.2")}); len(leaks) > 0 || !strings.Contains(logs, "session ended") {
		t.Fatalf("leaks %v, or debug logging was off:\n%s", leaks, logs)
	}
}
