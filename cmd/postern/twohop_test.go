package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
)

// dataDirBytes concatenates every file under dir.
func dataDirBytes(t *testing.T, dir string) []byte {
	var all []byte
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			all = append(all, b...)
		}
		return nil
	})
	return all
}

// recvUntil runs recv (with extra flags) until want messages arrived or a
// minute passed.
func recvUntil(t *testing.T, bin string, envv []string, idFile string, want int, extra ...string) []message {
	var got []message
	deadline := time.Now().Add(time.Minute)
	for len(got) < want && time.Now().Before(deadline) {
		got = append(got, parseRecv(t, runOK(t, bin, envv, nil, append([]string{"recv", "--id", idFile}, extra...)...))...)
		if len(got) < want {
			time.Sleep(200 * time.Millisecond)
		}
	}
	return got
}

// TestTwoHopSend: three relay processes, A (entry), B (the recipient's home
// relay) and C. A client on 127.0.0.2 sends to a mailbox on B through A
// over https and over h3; the owner receives every message byte for byte.
// B's logs, metrics and data directory never see 127.0.0.2; A's never see
// the mailbox id. The owner on 127.0.0.2 also receives through a tunnel
// via A (`recv --via A`) over https and h3. Killing A with messages in its
// outbox and restarting it loses nothing and duplicates nothing.
//
// Not yet shown here: a kernel-level block of B for the client (the netns
// and nftables part of issue #10).
func TestTwoHopSend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	addrB := freePort(t)
	b := startRelay(t, bin, filepath.Join(dir, "b"), "--https", addrB, "--h3", addrB)
	a := startRelay(t, bin, filepath.Join(dir, "a"))
	c := startRelay(t, bin, filepath.Join(dir, "c"))
	defer c.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(b.dir, "descriptor"))))
	parsed, err := envelope.ParseCard(card)
	if err != nil {
		t.Fatal(err)
	}
	viaA := filepath.Join(a.dir, "descriptor")
	client := append(base, "POSTERN_BIND=127.0.0.2")

	var sent [][]byte
	for _, tr := range []string{"https", "h3"} {
		msg := []byte("through the entry relay over " + tr + "\x00\xff")
		runOK(t, bin, append(client, "POSTERN_TRANSPORT="+tr), msg, "send", "--anonymous", "--to", card, "--via", viaA)
		sent = append(sent, msg)
	}
	got := recvUntil(t, bin, base, bob, len(sent))
	if len(got) != len(sent) {
		t.Fatalf("received %d of %d", len(got), len(sent))
	}
	for i := range sent {
		if !bytes.Equal(got[i].body, sent[i]) {
			t.Fatalf("message %d differs", i)
		}
	}

	// Receiving through a tunnel: A splices, B serves the session.
	for _, tr := range []string{"https", "h3"} {
		msg := []byte("received through a tunnel over " + tr + "\x00\xff")
		runOK(t, bin, base, msg, "send", "--anonymous", "--to", card)
		got := recvUntil(t, bin, append(client, "POSTERN_TRANSPORT="+tr), bob, 1, "--via", viaA)
		if len(got) != 1 || !bytes.Equal(got[0].body, msg) {
			t.Fatalf("recv --via over %s: %+v", tr, got)
		}
	}

	// No loss: B down, A acks and queues, A is killed and restarted, B
	// comes back: the message arrives exactly once.
	b.stop()
	runOK(t, bin, client, []byte("queued while B is down"), "send", "--anonymous", "--to", card, "--via", viaA)
	a.kill()
	a = startRelay(t, bin, a.dir)
	defer a.stop()
	b = startRelay(t, bin, b.dir, "--https", addrB, "--h3", addrB)
	defer b.stop()
	got = recvUntil(t, bin, base, bob, 1)
	if len(got) != 1 || string(got[0].body) != "queued while B is down" {
		t.Fatalf("after the restarts: %+v", got)
	}
	time.Sleep(500 * time.Millisecond)
	if again := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", bob)); len(again) != 0 {
		t.Fatalf("delivered twice: %+v", again)
	}

	// No metadata across relays.
	needles := []needle{addrNeedle("client address", "127.0.0.2")}
	for _, where := range []struct {
		name string
		hay  []byte
	}{{"B's logs", []byte(b.logs())}, {"B's data", dataDirBytes(t, b.dir)}, {"B's metrics", metricsText(t, b)}} {
		if l := findLeaks(where.name, where.hay, needles); len(l) > 0 {
			t.Errorf("%v", l)
		}
	}
	mailbox := []needle{bytesNeedle("mailbox id", parsed.Mailbox[:])}
	for _, where := range []struct {
		name string
		hay  []byte
	}{{"A's logs", []byte(a.logs())}, {"A's data", dataDirBytes(t, a.dir)}, {"A's metrics", metricsText(t, a)}} {
		if l := findLeaks(where.name, where.hay, mailbox); len(l) > 0 {
			t.Errorf("%v", l)
		}
	}
}

// metricsText is the relay's /metrics page.
func metricsText(t *testing.T, rp *relayProc) []byte {
	_, raw := scrape(t, metricsAddr(t, rp))
	return raw
}

// TestHomeRelayKilledWhileForwarding: the home relay is killed with
// SIGKILL while an entry relay is forwarding to it; once it is back, every
// message the entry relay acked arrives exactly once.
func TestHomeRelayKilledWhileForwarding(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	addrB := freePort(t)
	b := startRelay(t, bin, filepath.Join(dir, "b"), "--https", addrB, "--h3", addrB)
	a := startRelay(t, bin, filepath.Join(dir, "a"))
	defer a.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(b.dir, "descriptor"))))
	viaA := filepath.Join(a.dir, "descriptor")
	const n = 12
	for i := 0; i < n; i++ {
		if i == n/3 {
			b.kill()
		}
		runOK(t, bin, base, []byte(fmt.Sprintf("message %02d", i)), "send", "--anonymous", "--to", card, "--via", viaA)
	}
	b = startRelay(t, bin, b.dir, "--https", addrB, "--h3", addrB)
	defer b.stop()
	got := recvUntil(t, bin, base, bob, n)
	seen := map[string]int{}
	for _, m := range got {
		seen[string(m.body)]++
	}
	for i := 0; i < n; i++ {
		if c := seen[fmt.Sprintf("message %02d", i)]; c != 1 {
			t.Errorf("message %02d delivered %d times", i, c)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if again := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", bob)); len(again) != 0 {
		t.Fatalf("%d delivered again", len(again))
	}
}
