package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
)

// freePort returns a loopback address whose port is free for TCP and UDP,
// for a relay the test starts (or restarts) on it. The port is drawn below
// the kernel's ephemeral range where it can: a port the kernel picked for
// a listener could be given, once closed, as the source port of any
// connection made before the relay binds it (the relays the test already
// runs, the commands it starts), which then fails with EADDRINUSE.
func freePort(t *testing.T) string {
	t.Helper()
	lo := 32768 // Linux's default start of net.ipv4.ip_local_port_range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				lo = v
			}
		}
	}
	for range 200 {
		port := 0 // the kernel's choice, if there is no room below the range
		if lo > 11024 {
			port = 10000 + mathrand.IntN(lo-11024)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken
		}
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return l.Addr().String()
	}
	t.Fatal("no loopback port free for both TCP and UDP in 200 tries")
	return ""
}

// TestRecvFollowReconnects: `recv --follow` prints messages as they arrive,
// survives a relay restart (reconnecting with backoff) and exits cleanly on
// SIGTERM.
func TestRecvFollowReconnects(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freePort(t)
	relayDir := filepath.Join(dir, "relay")
	rp := startRelay(t, bin, relayDir, "--https", addr, "--h3", addr)
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))

	f := startFollow(t, bin, envv, bob)
	msgs, stderr := f.msgs, &f.stderr
	expect := func(want string) {
		t.Helper()
		select {
		case m, ok := <-msgs:
			if !ok || m != want {
				t.Fatalf("got %q (open %v), want %q; stderr:\n%s", m, ok, want, stderr.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no message %q; stderr:\n%s", want, stderr.String())
		}
	}
	for i := 0; i < 3; i++ {
		m := fmt.Sprintf("live %d", i)
		runOK(t, bin, envv, []byte(m), "send", "--anonymous", "--to", card)
		expect(m)
	}
	// Restart the relay on the same ports; the follower reconnects.
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}
	rp = startRelay(t, bin, relayDir, "--https", addr, "--h3", addr)
	runOK(t, bin, envv, []byte("after restart"), "send", "--anonymous", "--to", card)
	expect("after restart")
	f.stop()
}

// followMessages parses what `recv --follow` prints on out ("== from … (N
// bytes) …" headers, each followed by its message and a newline) into its
// messages, closing the channel at the end of out; a line that is not a
// header where one must be comes through as "bad header …" and ends it.
func followMessages(out io.Reader) <-chan string {
	msgs := make(chan string, 64)
	go func() {
		defer close(msgs)
		br := bufio.NewReader(out)
		for {
			hdr, err := br.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(hdr)
			if len(f) != 5 || f[0] != "==" {
				msgs <- "bad header " + hdr
				return
			}
			n, _ := strconv.Atoi(strings.TrimPrefix(f[3], "("))
			body := make([]byte, n+1)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			msgs <- string(body[:n])
		}
	}()
	return msgs
}

// TestRecvFollowSeveralMailboxesAndRelays: `recv --follow` on an identity
// with two mailboxes, one of them on two relays, prints every message
// once, whichever mailbox and relay it came through, with each message
// whole after its header while sessions deliver at once; a message whose
// envelopes are on both relays of the first mailbox (as a sender that
// sends the whole message again to another relay leaves them) is printed
// once; a relay that stops and comes back is followed again, and the
// other relay's deliveries go on meanwhile.
func TestRecvFollowSeveralMailboxesAndRelays(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	addrA, addrB := freePort(t), freePort(t)
	for addrB == addrA {
		addrB = freePort(t)
	}
	relayA := startRelay(t, bin, filepath.Join(dir, "relayA"), "--https", addrA, "--h3", addrA)
	relayB := startRelay(t, bin, filepath.Join(dir, "relayB"), "--https", addrB, "--h3", addrB)
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	both := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob,
		"--relay", relayA.line, "--relay", relayB.line)))
	onB := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob,
		"--name", "second", "--relay", relayB.line)))

	f := startFollow(t, bin, envv, bob)
	msgs, stderr := f.msgs, &f.stderr
	seen := map[string]int{}
	// expect waits for want (a set of messages), counting every message
	// that comes meanwhile: each must come once.
	expect := func(want ...string) {
		t.Helper()
		left := map[string]bool{}
		for _, w := range want {
			left[w] = true
		}
		for len(left) > 0 {
			select {
			case m, ok := <-msgs:
				if !ok || strings.HasPrefix(m, "bad header ") {
					t.Fatalf("recv --follow output ended or broke (%q) waiting for %d message(s); stderr:\n%s", m, len(left), stderr.String())
				}
				if seen[m]++; seen[m] > 1 {
					t.Fatalf("%q printed %d times; stderr:\n%s", m[:min(len(m), 28)], seen[m], stderr.String())
				}
				delete(left, m)
			case <-time.After(90 * time.Second): // past Follow's longest backoff, a minute
				var short []string
				for m := range left {
					short = append(short, m[:min(len(m), 28)])
				}
				t.Fatalf("still waiting for %d message(s) (%q); stderr:\n%s", len(left), short, stderr.String())
			}
		}
	}
	// Senders to both mailboxes at once: the sessions of both relays
	// deliver side by side.
	var want []string
	errs := make(chan error, 12)
	for i := range 6 {
		for k, card := range []string{both, onB} {
			m := fmt.Sprintf("message %d to mailbox %d %s", i, k, strings.Repeat("x", 3000*k+100*i))
			want = append(want, m)
			go func() {
				cmd := exec.Command(bin, "send", "--anonymous", "--timeout", "60s", "--to", card)
				cmd.Env = append(os.Environ(), envv...)
				cmd.Stdin = strings.NewReader(m)
				o, err := cmd.CombinedOutput()
				if err != nil {
					err = fmt.Errorf("send: %v: %s", err, o)
				}
				errs <- err
			}()
		}
	}
	for range 12 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	expect(want...)

	// The same envelopes on both relays of the first mailbox: a message
	// in one envelope and one in two, each sealed once and sent to A and
	// to B.
	card, err := envelope.ParseCard(both)
	if err != nil {
		t.Fatal(err)
	}
	sender := &env{stderr: io.Discard, getenv: func(k string) string {
		return map[string]string{"POSTERN_HOME": filepath.Join(dir, "sender")}[k]
	}}
	sendTo := func(line string, envs ...[]byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := dialRelay(ctx, sender, line)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, e := range envs {
			if _, err := c.Send(ctx, e, card.SendCap); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, m := range []string{"on both relays", "on both relays, in two envelopes " + strings.Repeat("y", 70<<10)} {
		envs, err := envelope.SealMessage(card, nil, []byte(m), nil)
		if err != nil {
			t.Fatal(err)
		}
		sendTo(relayA.line, envs...)
		sendTo(relayB.line, envs...)
		expect(m)
	}
	// A message whole on B and in part on A, as a sender that lost A part
	// way leaves it: shown once, from B; A's part, which comes later, is
	// acked (the relay keeps none of it), not held for a message that can
	// never complete there.
	partial := "whole on B, a part on A " + strings.Repeat("z", 70<<10)
	envs, err := envelope.SealMessage(card, nil, []byte(partial), nil)
	if err != nil || len(envs) < 2 {
		t.Fatalf("sealed %d envelopes (%v), want 2 or more", len(envs), err)
	}
	sendTo(relayB.line, envs...)
	expect(partial)
	sendTo(relayA.line, envs[0])
	maddr := metricsAddr(t, relayA)
	emptyA := func(what string) {
		t.Helper()
		for guard := time.Now(); ; time.Sleep(50 * time.Millisecond) {
			m, _ := scrape(t, maddr)
			if m["postern_store_envelopes"] == 0 {
				return
			}
			if time.Since(guard) > 30*time.Second { // follow pings, and looks again, each minute
				t.Fatalf("relay A still stores %v envelope(s): %s; stderr:\n%s", m["postern_store_envelopes"], what, stderr.String())
			}
		}
	}
	emptyA("the part of a message shown from B was not acked")
	// The other way round: a part on A comes first and is held there,
	// until the whole message comes from B. A's part is then given up
	// and acked at once, not held while the session lasts.
	first := "a part on A first, then whole on B " + strings.Repeat("w", 70<<10)
	if envs, err = envelope.SealMessage(card, nil, []byte(first), nil); err != nil || len(envs) < 2 {
		t.Fatalf("sealed %d envelopes (%v), want 2 or more", len(envs), err)
	}
	marker, err := envelope.SealMessage(card, nil, []byte("after the part on A"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sendTo(relayA.line, envs[0], marker[0])
	expect("after the part on A") // so A's part was handled before it
	sendTo(relayB.line, envs...)
	expect(first)
	emptyA("the part held before its message was shown from B was not given up")

	// Relay A stops: the first mailbox's messages go through B, and the
	// second mailbox's go on.
	if code := relayA.stop(); code != 0 {
		t.Fatalf("relay A exit %d", code)
	}
	runOK(t, bin, envv, []byte("while A is down, first"), "send", "--anonymous", "--to", both)
	runOK(t, bin, envv, []byte("while A is down, second"), "send", "--anonymous", "--to", onB)
	expect("while A is down, first", "while A is down, second")
	// A comes back and B stops: the follower opens A's session again,
	// and survives losing B's.
	relayA = startRelay(t, bin, filepath.Join(dir, "relayA"), "--https", addrA, "--h3", addrA)
	if code := relayB.stop(); code != 0 {
		t.Fatalf("relay B exit %d", code)
	}
	runOK(t, bin, envv, []byte("through A again"), "send", "--anonymous", "--to", both)
	expect("through A again")

	f.stop()
}

// lockedBuffer is a bytes.Buffer a command's output is copied into while
// the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// follower is a `postern recv --follow` process: its messages as they
// are printed (followMessages) and its stderr.
type follower struct {
	t      *testing.T
	cmd    *exec.Cmd
	msgs   <-chan string
	stderr lockedBuffer
}

// startFollow starts `postern recv --follow --id id`, with extra flags.
func startFollow(t *testing.T, bin string, envv []string, id string, extra ...string) *follower {
	t.Helper()
	f := &follower{t: t, cmd: exec.Command(bin, append([]string{"recv", "--follow", "--id", id}, extra...)...)}
	f.cmd.Env = append(os.Environ(), envv...)
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	f.cmd.Stderr = &f.stderr
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cmd.Process.Kill() })
	f.msgs = followMessages(out)
	return f
}

// expectMsg waits for the follower's next message, which must be want
// (what names it in a failure), for a minute at most.
func (f *follower) expectMsg(want []byte, what string) {
	f.t.Helper()
	select {
	case m := <-f.msgs:
		if m != string(want) {
			f.t.Fatalf("%s: not the message sent; stderr:\n%s", what, f.stderr.String())
		}
	case <-time.After(time.Minute): // a deadlock guard
		f.t.Fatalf("%s: no message; stderr:\n%s", what, f.stderr.String())
	}
}

// waitStderr waits until the follower's stderr says want, and fails the
// test if it does not within a minute.
func (f *follower) waitStderr(want string) {
	f.t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(f.stderr.String(), want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) { // a deadlock guard
			f.t.Fatalf("recv --follow never said %q:\n%s", want, f.stderr.String())
		}
	}
}

// stop ends the follower with SIGTERM, which it must exit cleanly on,
// and fails the test on anything it printed after the last message the
// test waited for (a copy printed late).
func (f *follower) stop() {
	t := f.t
	t.Helper()
	f.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- f.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("recv --follow exited with %v; stderr:\n%s", err, f.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("recv --follow ignored SIGTERM")
	}
	for m := range f.msgs {
		t.Errorf("after the last message, %q; stderr:\n%s", m[:min(len(m), 28)], f.stderr.String())
	}
}
