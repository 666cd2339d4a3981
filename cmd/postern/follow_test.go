package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
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

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		t.Skipf("port %s free for TCP but not UDP", l.Addr())
	}
	u.Close()
	return l.Addr().String()
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
