package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

	cmd := exec.Command(bin, "recv", "--follow", "--id", bob)
	cmd.Env = append(os.Environ(), envv...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	msgs := make(chan string, 16)
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
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("recv --follow exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("recv --follow ignored SIGTERM")
	}
}
