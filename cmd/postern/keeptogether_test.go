package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// freezeProxy forwards loopback TCP to a relay. Armed, it freezes every
// connection after limit bytes from the client (the connection stays
// open, nothing more goes through); with cut also set, the first frozen
// connection is the last: the proxy stops listening, and the relay is out
// of reach.
type freezeProxy struct {
	ln     net.Listener
	target string
	limit  int64
	armed  atomic.Bool
	cut    atomic.Bool
}

func newFreezeProxy(t *testing.T, target string, limit int64) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target, limit: limit}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		go func() { io.Copy(c, up); c.Close() }()
		go func() {
			if !p.armed.Load() {
				io.Copy(up, c)
				up.Close()
				return
			}
			io.CopyN(up, c, p.limit)
			if p.cut.Load() {
				p.ln.Close()
			}
			io.Copy(io.Discard, c) // frozen: read and drop until the client gives up
			up.Close()
		}()
	}
}

// TestSendKeepsMessageOnOneRelay: a card with two relays, A behind a
// censor that freezes each flow after 150 KiB. A 200 KB message (four
// envelopes) starts on A, which stalls; the route memory then puts A's
// way in last, yet the rest of the message must go to A while A can be
// reached, so that A alone holds it whole. When A cannot be reached
// after the stall, the whole message goes to B, which then holds it
// whole.
func TestSendKeepsMessageOnOneRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, tc := range []struct {
		name      string
		cut       bool // A is out of reach after the first stall
		keptOn    string
		wantNotes []string
	}{
		{"holder reachable", false, "A", []string{"stalled after"}},
		{"holder out of reach", true, "B", []string{"stalled after", "sending the whole message to another relay"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := buildBinary(t)
			dir := t.TempDir()
			aHTTPS := freePort(t)
			proxy := newFreezeProxy(t, aHTTPS, 150<<10)
			relayA := startRelay(t, bin, filepath.Join(dir, "relay-a"), "--https", aHTTPS, "--h3", "off",
				"--config", writeConfig(t, dir, proxy.addr()))
			relayB := startRelay(t, bin, filepath.Join(dir, "relay-b"))
			home := filepath.Join(dir, "home")
			base := []string{"POSTERN_HOME=" + home}
			bob := filepath.Join(home, "bob.id")
			runOK(t, bin, base, nil, "id", "new", "--out", bob)
			card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob,
				"--relay", filepath.Join(relayA.dir, "descriptor"), "--relay", filepath.Join(relayB.dir, "descriptor"))))

			proxy.cut.Store(tc.cut)
			proxy.armed.Store(true)
			msg := make([]byte, 200<<10)
			rand.Read(msg)
			cmd := exec.Command(bin, "send", "--anonymous", "--network", "cafe", "--timeout", "2m", "--to", card)
			cmd.Env = append(os.Environ(), append(base, "POSTERN_STALL=500ms")...)
			cmd.Stdin = bytes.NewReader(msg)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("send: %v\n%s", err, stderr.String())
			}
			for _, note := range tc.wantNotes {
				if !strings.Contains(stderr.String(), note) {
					t.Fatalf("send never said %q (test setup):\n%s", note, stderr.String())
				}
			}
			t.Logf("send said:\n%s", stderr.String())
			// Only the relay that should hold the message answers recv.
			proxy.armed.Store(false)
			if tc.keptOn == "A" {
				relayB.stop()
			} else {
				relayA.stop()
			}
			out, errOut, _ := runWith(t, bin, base, nil, "recv", "--id", bob)
			if got := parseRecv(t, []byte(out)); len(got) != 1 || !bytes.Equal(got[0].body, msg) {
				t.Fatalf("relay %s alone gave %d whole messages, want 1; send said:\n%s\nrecv said:\n%s",
					tc.keptOn, len(got), stderr.String(), errOut)
			}
		})
	}
}
