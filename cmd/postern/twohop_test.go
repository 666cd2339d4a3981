package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/censortest/netns"
	"github.com/postern/postern/transport/descriptor"
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
// relay) and C, in a network namespace of their own where nftables drops
// every TCP and UDP packet from 127.0.0.2 to B's port (checked: a direct
// dial from there fails over both transports, and succeeds from
// 127.0.0.3). A client on 127.0.0.2 sends to a mailbox on B through A over
// https and over h3; the owner receives every message byte for byte. B's
// logs, metrics and data directory never see 127.0.0.2; A's never see the
// mailbox id. The owner on 127.0.0.2 also receives through a tunnel via A
// (`recv --via A`) over https and h3. Killing A with messages in its outbox
// and restarting it loses nothing and duplicates nothing.
//
// It needs root, ip and nft (package netns); without them it is skipped,
// or fails under CI=true.
func TestTwoHopSend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	if !netns.Run(t) {
		return
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	addrB := freePort(t)
	b := startRelay(t, bin, filepath.Join(dir, "b"), "--https", addrB, "--h3", addrB)
	netns.Apply(t, netns.Blackhole("tcp", "127.0.0.2", addrB), netns.DropUDP("127.0.0.2", addrB))
	requireBlocked(t, b.line, "127.0.0.2", "127.0.0.3")
	a := startRelay(t, bin, filepath.Join(dir, "a"))
	c := startRelay(t, bin, filepath.Join(dir, "c"))
	defer c.stop()
	base, bob, card, parsed := newOwner(t, bin, dir, b)
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

	checkTwoHopMeta(t, a, b, parsed.Mailbox[:])
}

// checkTwoHopMeta: B's logs, data and metrics hold no client address;
// A's hold no mailbox id.
func checkTwoHopMeta(t *testing.T, a, b *relayProc, mailboxID []byte) {
	needles := []needle{addrNeedle("client address", "127.0.0.2")}
	for _, where := range []struct {
		name string
		hay  []byte
	}{{"B's logs", []byte(b.logs())}, {"B's data", dataDirBytes(t, b.dir)}, {"B's metrics", metricsText(t, b)}} {
		if l := findLeaks(where.name, where.hay, needles); len(l) > 0 {
			t.Errorf("%v", l)
		}
	}
	mailbox := []needle{bytesNeedle("mailbox id", mailboxID)}
	for _, where := range []struct {
		name string
		hay  []byte
	}{{"A's logs", []byte(a.logs())}, {"A's data", dataDirBytes(t, a.dir)}, {"A's metrics", metricsText(t, a)}} {
		if l := findLeaks(where.name, where.hay, mailbox); len(l) > 0 {
			t.Errorf("%v", l)
		}
	}
}

// requireBlocked fails t unless a session to the relay described by line
// fails from blocked over every transport and succeeds from open: the
// censor's rules are in force, and are what blocks.
func requireBlocked(t *testing.T, line, blocked, open string) {
	t.Helper()
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{"https", "h3"} {
		for _, src := range []string{blocked, open} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			c, err := client.Dial(ctx, newRegistry(), client.DialOptions{Transport: tr, LocalAddr: src, PerEndpoint: 2 * time.Second}, d)
			cancel()
			if err == nil {
				c.Close()
			}
			if src == blocked && err == nil {
				t.Fatalf("a direct %s dial from the blocked client reached the relay", tr)
			}
			if src == open && err != nil {
				t.Fatalf("a direct %s dial from an unblocked address failed (the block is too wide): %v", tr, err)
			}
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
