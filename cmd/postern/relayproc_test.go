package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// relayProc is a `postern relay serve` child process.
type relayProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	line   string // descriptor
	mu     sync.Mutex
	stderr bytes.Buffer
	stdout bytes.Buffer
	exited chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startRelay runs a relay on fresh loopback ports with data in dir and
// waits until it has printed its descriptor.
func startRelay(t *testing.T, bin, dir string, extra ...string) *relayProc {
	t.Helper()
	// Metrics on a free port too (a later --metrics in extra wins), so the
	// tests pass beside a relay that holds the default 127.0.0.1:9464.
	args := append([]string{"relay", "serve", "--data", dir, "--https", "127.0.0.1:0", "--h3", "127.0.0.1:0",
		"--metrics", "127.0.0.1:0", "--log-level", "debug"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "POSTERN_HOME="+filepath.Join(dir, "home"))
	p := &relayProc{t: t, cmd: cmd, dir: dir, exited: make(chan struct{})}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = lockedWriter{&p.mu, &p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		br := bufio.NewReader(outPipe)
		first, _ := br.ReadString('\n')
		p.mu.Lock()
		p.stdout.WriteString(first)
		p.mu.Unlock()
		lines <- strings.TrimSpace(first)
		io.Copy(lockedWriter{&p.mu, &p.stdout}, br)
	}()
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case l := <-lines:
		const ready = "relay ready: descriptor in "
		if !strings.HasPrefix(l, ready) || strings.Contains(l, "postern-relay1:") {
			p.kill()
			t.Fatalf("relay printed %q, stderr:\n%s", l, p.logs())
		}
		path, _, _ := strings.Cut(strings.TrimPrefix(l, ready), " (")
		b, err := os.ReadFile(path)
		if err != nil || path != filepath.Join(dir, "descriptor") {
			p.kill()
			t.Fatalf("descriptor path %q: %v", path, err)
		}
		p.line = strings.TrimSpace(string(b))
	case <-time.After(60 * time.Second):
		p.kill()
		t.Fatalf("relay did not start; stderr:\n%s", p.logs())
	}
	return p
}

func (p *relayProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String() + p.stderr.String()
}

// stop sends SIGTERM and returns the exit code.
func (p *relayProc) stop() int {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.t.Errorf("relay did not stop on SIGTERM; logs:\n%s", p.logs())
		p.kill()
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL and waits.
func (p *relayProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.exited
}
