// Command capture records the TLS ClientHello that a locally installed
// Chromium sends, so that transport/browser's profile can be checked against it.
//
// It is a maintenance tool, not part of any build: CI never runs it. Usage:
//
//	go run ./transport/censortest/testdata/capture -n 3 -out transport/censortest/testdata
//
// For each capture it listens on 127.0.0.1 on a fresh port, starts Chromium
// headless against https://relay.example:PORT/ with relay.example mapped to
// 127.0.0.1 (so the ClientHello carries SNI, as for a real domain), reads the
// first TLS record from the first connection, writes it as hex to
// OUT/chromium-VERSION-N.hex, and kills Chromium. Each run is bounded by -timeout.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 3, "number of captures")
	out := flag.String("out", ".", "directory for the captures")
	bin := flag.String("chromium", "chromium", "Chromium binary")
	host := flag.String("host", "relay.example", "host name Chromium connects to (mapped to 127.0.0.1)")
	timeout := flag.Duration("timeout", 30*time.Second, "time limit for one capture")
	flag.Parse()

	version, err := chromiumVersion(*bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
	major := version
	if i := strings.IndexByte(version, '.'); i > 0 {
		major = version[:i]
	}
	fmt.Printf("chromium %s\n", version)
	for i := 1; i <= *n; i++ {
		rec, args, err := captureOnce(*bin, *host, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "capture %d: %v\n", i, err)
			os.Exit(1)
		}
		name := filepath.Join(*out, fmt.Sprintf("chromium-%s-%d.hex", major, i))
		if err := os.WriteFile(name, []byte(hex.EncodeToString(rec)+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "capture:", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s (%d bytes)\n", name, len(rec))
		if i == 1 {
			fmt.Printf("command: %s %s\n", *bin, strings.Join(args, " "))
		}
	}
}

var versionRE = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`)

func chromiumVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w (install it with apt-get install chromium)", bin, err)
	}
	v := versionRE.FindString(string(out))
	if v == "" {
		return "", fmt.Errorf("no version in %q", strings.TrimSpace(string(out)))
	}
	return v, nil
}

// captureOnce runs one Chromium against a fresh loopback listener and returns
// the first TLS record it sends, header included.
func captureOnce(bin, host string, timeout time.Duration) ([]byte, []string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	profile, err := os.MkdirTemp("", "capture-chromium-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(profile)

	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile,
		"--host-resolver-rules=MAP " + host + " 127.0.0.1",
		"https://" + host + ":" + strconv.Itoa(port) + "/",
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = io.Discard
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start chromium: %w", err)
	}
	// Chromium forks helpers into its process group; end the whole group.
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()

	type result struct {
		rec []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		rec, err := readRecord(bufio.NewReader(c))
		done <- result{rec, err}
	}()
	select {
	case r := <-done:
		return r.rec, args, r.err
	case <-ctx.Done():
		ln.Close()
		return nil, nil, errors.New("timed out waiting for chromium's ClientHello")
	}
}

func readRecord(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("read record header: %w", err)
	}
	if hdr[0] != 22 {
		return nil, fmt.Errorf("first record has content type %d, want 22 (handshake)", hdr[0])
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read record body: %w", err)
	}
	return append(hdr, body...), nil
}
