package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/censortest/netns"
)

// TestUpstreamRelay: relay X sits inside a censored network. Its own
// links come from 127.0.0.3, and nftables in the test's namespace drop
// everything from there to home relay B (TCP and UDP); X is given relay U
// as its upstream. A message sent via X reaches B through a tunnel via U,
// and the owner receives through X too (X's tunnel runs inside U's). U
// splices bytes and never sees the mailbox.
func TestUpstreamRelay(t *testing.T) {
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
	defer b.stop()
	u := startRelay(t, bin, filepath.Join(dir, "u"))
	defer u.stop()
	const censored = "127.0.0.3"
	netns.Apply(t, netns.Blackhole("tcp", censored, addrB), netns.Blackhole("udp", censored, addrB))
	assertBlocked(t, censored, addrB)

	cfg := filepath.Join(dir, "x.json")
	data, _ := json.Marshal(map[string]any{"upstreams": []string{filepath.Join(u.dir, "descriptor")}, "link_bind": censored})
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	x := startRelay(t, bin, filepath.Join(dir, "x"), "--config", cfg)
	defer x.stop()

	base, bob, card, parsed := newOwner(t, bin, dir, b)
	viaX := filepath.Join(x.dir, "descriptor")
	msg := []byte("from behind the censor, via an upstream\x00\xff")
	runOK(t, bin, base, msg, "send", "--anonymous", "--to", card, "--via", viaX)
	got := recvUntil(t, bin, base, bob, 1)
	if len(got) != 1 || !bytes.Equal(got[0].body, msg) {
		t.Fatalf("received %+v", got)
	}
	msg2 := []byte("received through X's tunnel inside U's")
	runOK(t, bin, base, msg2, "send", "--anonymous", "--to", card)
	got = recvUntil(t, bin, base, bob, 1, "--via", viaX)
	if len(got) != 1 || !bytes.Equal(got[0].body, msg2) {
		t.Fatalf("recv --via X: %+v", got)
	}

	mailbox := []needle{bytesNeedle("mailbox id", parsed.Mailbox[:])}
	for _, rp := range []*relayProc{u, x} {
		for _, where := range []struct {
			name string
			hay  []byte
		}{{"logs", []byte(rp.logs())}, {"data", dataDirBytes(t, rp.dir)}, {"metrics", metricsText(t, rp)}} {
			if l := findLeaks(filepath.Base(rp.dir)+"'s "+where.name, where.hay, mailbox); len(l) > 0 {
				t.Errorf("%v", l)
			}
		}
	}
}

// assertBlocked checks at kernel level that src cannot open a TCP
// connection to dst: the SYN is dropped, so the dial times out.
func assertBlocked(t *testing.T, src, dst string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", dst)
	if err == nil {
		c.Close()
		t.Fatalf("%s reaches %s: the nftables block is not in place", src, dst)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !os.IsTimeout(err) {
		t.Fatalf("dial from %s: %v, want a timeout (blackhole)", src, err)
	}
}

// newOwner makes bob's identity under dir/home and one mailbox on the
// relays homes (a card naming them all); it returns the environment for
// the CLI, bob's identity file, his card and the parsed card.
func newOwner(t *testing.T, bin, dir string, homes ...*relayProc) (base []string, bob, card string, parsed *envelope.Card) {
	t.Helper()
	state := filepath.Join(dir, "home")
	base = []string{"POSTERN_HOME=" + state}
	bob = filepath.Join(state, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	args := []string{"mailbox", "create", "--id", bob}
	for _, h := range homes {
		args = append(args, "--relay", filepath.Join(h.dir, "descriptor"))
	}
	card = strings.TrimSpace(string(runOK(t, bin, base, nil, args...)))
	parsed, err := envelope.ParseCard(card)
	if err != nil {
		t.Fatal(err)
	}
	return base, bob, card, parsed
}
