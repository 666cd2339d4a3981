package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

type message struct {
	from string
	body []byte
}

var headerRE = regexp.MustCompile(`^== from (\S+) \((\d+) bytes\)\n`)

// parseRecv splits `postern recv` output into messages, byte-exact.
func parseRecv(t *testing.T, out []byte) []message {
	t.Helper()
	var msgs []message
	for len(out) > 0 {
		m := headerRE.FindSubmatch(out)
		if m == nil {
			t.Fatalf("unexpected recv output at %q", out[:min(len(out), 80)])
		}
		n, _ := strconv.Atoi(string(m[2]))
		out = out[len(m[0]):]
		if len(out) < n+1 || out[n] != '\n' {
			t.Fatalf("message body shorter than announced %d bytes", n)
		}
		msgs = append(msgs, message{from: string(m[1]), body: bytes.Clone(out[:n])})
		out = out[n+1:]
	}
	return msgs
}

type user struct {
	name, idFile, card, senderKey string
}

func runOK(t *testing.T, bin string, envv []string, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), envv...)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("postern %s: %v\nstderr: %s", strings.Join(args, " "), err, e.String())
	}
	return o.Bytes()
}

// TestEndToEnd drives the built binary as a user would: a relay process,
// two identities with a mailbox each, and messages both ways over each
// transport, checked byte for byte.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}

	users := map[string]*user{}
	for _, name := range []string{"alice", "bob"} {
		u := &user{name: name, idFile: filepath.Join(home, name+".id")}
		out := runOK(t, bin, base, nil, "id", "new", "--out", u.idFile)
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "sender-key:") {
				u.senderKey = strings.TrimSpace(strings.TrimPrefix(l, "sender-key:"))
			}
		}
		u.card = strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", u.idFile, "--relay", filepath.Join(rp.dir, "descriptor"))))
		if !strings.HasPrefix(u.card, "postern-card1:") {
			t.Fatalf("mailbox create printed %q", u.card)
		}
		users[name] = u
	}
	for _, tr := range []string{"https", "h3"} {
		t.Run(tr, func(t *testing.T) {
			envv := append(base, "POSTERN_TRANSPORT="+tr)
			for _, pair := range [][2]string{{"alice", "bob"}, {"bob", "alice"}} {
				from, to := users[pair[0]], users[pair[1]]
				// Text, binary with every byte value, empty, and one large
				// enough to be split into several envelopes.
				all := make([]byte, 256)
				for i := range all {
					all[i] = byte(i)
				}
				big := make([]byte, 200<<10)
				rand.Read(big)
				msgs := [][]byte{[]byte(fmt.Sprintf("hello %s from %s over %s\n", to.name, from.name, tr)), all, {}, big}
				for _, m := range msgs {
					runOK(t, bin, envv, m, "send", "--id", from.idFile, "--to", to.card)
				}
				runOK(t, bin, envv, []byte("anonymous tip"), "send", "--anonymous", "--to", to.card)
				got := parseRecv(t, runOK(t, bin, envv, nil, "recv", "--id", to.idFile))
				if len(got) != len(msgs)+1 {
					t.Fatalf("%s received %d messages, want %d", to.name, len(got), len(msgs)+1)
				}
				for i, m := range msgs {
					if !bytes.Equal(got[i].body, m) {
						t.Fatalf("message %d differs (%d bytes, want %d)", i, len(got[i].body), len(m))
					}
					if got[i].from != from.senderKey {
						t.Fatalf("message %d from %q, want %q", i, got[i].from, from.senderKey)
					}
				}
				if last := got[len(msgs)]; last.from != "anonymous" || string(last.body) != "anonymous tip" {
					t.Fatalf("anonymous message: %+v", last)
				}
				// Drained: a second recv prints nothing.
				if out := runOK(t, bin, envv, nil, "recv", "--id", to.idFile); len(out) != 0 {
					t.Fatalf("second recv printed %q", out)
				}
			}
		})
	}
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exited %d on SIGTERM; logs:\n%s", code, rp.logs())
	}
	if !strings.Contains(rp.logs(), "relay stopped") {
		t.Fatalf("no clean stop in logs:\n%s", rp.logs())
	}
}
