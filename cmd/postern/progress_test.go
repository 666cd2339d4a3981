package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProgressLine: lines written while a count shows go above it, the
// count drawn again below them; an unfinished line is not broken by the
// count; end leaves the last count on a line of its own even after an
// unfinished line or a failed write, and shows nothing after it.
func TestProgressLine(t *testing.T) {
	var out bytes.Buffer // the terminal, stdout and stderr alike
	p := &progressLine{w: &out}
	stdout := aboveWriter{p, &out}
	clear1 := "\r" + strings.Repeat(" ", len("received 1 message(s)")) + "\r"
	clear2 := "\r" + strings.Repeat(" ", len("received 2 message(s)")) + "\r"
	fmt.Fprintln(p, "before any count")
	p.show("received 1 message(s)")
	fmt.Fprintln(p, "a notice")
	fmt.Fprint(stdout, "a message\n")
	p.show("received 2 message(s)")
	fmt.Fprint(p, "half a line, ")
	p.show("received 3 message(s)") // waits for the line's end
	fmt.Fprintln(p, "its end")
	p.end()
	p.end()                         // once is enough
	p.show("received 4 message(s)") // after the end: nothing
	want := "before any count\n" +
		"\rreceived 1 message(s)" +
		clear1 + "a notice\nreceived 1 message(s)" +
		clear1 + "a message\nreceived 1 message(s)" +
		"\rreceived 2 message(s)" +
		clear2 + "half a line, " +
		"its end\nreceived 3 message(s)" +
		"\n"
	if got := out.String(); got != want {
		t.Fatalf("terminal got\n%q\nwant\n%q", got, want)
	}

	// A write that fails part-way: end still leaves the count below it.
	out.Reset()
	p = &progressLine{w: &out}
	p.show("sent 1/2 envelopes")
	bad := aboveWriter{p, failAfter{&out, 3}}
	if _, err := fmt.Fprint(bad, "abcdef\n"); err == nil {
		t.Fatal("the failing writer did not fail")
	}
	p.show("sent 2/2 envelopes")
	p.end()
	clear := "\r" + strings.Repeat(" ", len("sent 1/2 envelopes")) + "\r"
	want = "\rsent 1/2 envelopes" + clear + "abc" + "\nsent 2/2 envelopes" + "\n"
	if got := out.String(); got != want {
		t.Fatalf("after a failed write, terminal got\n%q\nwant\n%q", got, want)
	}

	// A count that gets shorter (send's, when it seals the message
	// again) leaves nothing of the longer one.
	out.Reset()
	p = &progressLine{w: &out}
	p.show("sent 10/20 envelopes")
	p.show("sent 1/20 envelopes")
	fmt.Fprintln(p, "a notice")
	p.end()
	want = "\rsent 10/20 envelopes" + "\rsent 1/20 envelopes " +
		"\r" + strings.Repeat(" ", len("sent 10/20 envelopes")) + "\r" + "a notice\nsent 1/20 envelopes" + "\n"
	if got := out.String(); got != want {
		t.Fatalf("a shorter count: terminal got\n%q\nwant\n%q", got, want)
	}
}

// failAfter writes n bytes of a write to w and fails.
type failAfter struct {
	w io.Writer
	n int
}

func (f failAfter) Write(b []byte) (int, error) {
	n, _ := f.w.Write(b[:min(len(b), f.n)])
	return n, errors.New("write failed")
}

// TestRecvProgressKeepsNoticesApart runs recv in-process with a terminal
// for stderr on two messages from a sender not in the contacts: each
// "unknown sender" notice goes on a line of its own above the count.
func TestRecvProgressKeepsNoticesApart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob, alice := filepath.Join(home, "bob.id"), filepath.Join(home, "alice.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	runOK(t, bin, envv, nil, "id", "new", "--out", alice)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))
	for _, m := range []string{"one", "two"} {
		runOK(t, bin, envv, []byte(m), "send", "--id", alice, "--to", card)
	}
	old := isTerminal
	isTerminal = func(any) bool { return true }
	defer func() { isTerminal = old }()
	getenv := func(k string) string { return map[string]string{"POSTERN_HOME": home}[k] }
	var stdout, stderr bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: getenv}
	if code := run(context.Background(), []string{"recv", "--id", bob}, e); code != 0 {
		t.Fatalf("recv: exit %d: %s", code, stderr.String())
	}
	notice := "unknown sender "
	got := stderr.String()
	i := strings.Index(got, notice)
	j := strings.LastIndex(got, notice)
	if i < 0 || i == j {
		t.Fatalf("want two unknown-sender notices, stderr %q", got)
	}
	line := got[i : strings.IndexByte(got[i:], '\n')+i+1]
	clear := "\r" + strings.Repeat(" ", len("received 1 message(s)")) + "\r"
	// Each notice, and the second message (stdout on the same terminal),
	// goes above the count.
	want := line + "\rreceived 1 message(s)" +
		clear + line + "received 1 message(s)" +
		clear + "received 1 message(s)" +
		"\rreceived 2 message(s)\n"
	if got != want {
		t.Fatalf("stderr\n%q\nwant\n%q", got, want)
	}
	if got := parseRecv(t, stdout.Bytes()); len(got) != 2 {
		t.Fatalf("%d messages, want 2", len(got))
	}
}

// TestSendProgressKeepsNoticesApart runs send in-process with a terminal
// for stderr, through a censor that freezes the flow after 150 KiB: the
// count of envelopes is showing when the sender says the connection
// stalled, and that notice must go on a line of its own above the count,
// which ends on a line of its own before the closing summary.
func TestSendProgressKeepsNoticesApart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	port := freePort(t)
	proxy := newFreezeProxy(t, port, 150<<10)
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--https", port, "--h3", "off",
		"--config", writeConfig(t, dir, proxy.addr()))
	home := filepath.Join(dir, "home")
	envv := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, envv, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, envv, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))

	old := isTerminal
	isTerminal = func(any) bool { return true }
	defer func() { isTerminal = old }()
	vars := map[string]string{"POSTERN_HOME": home, "POSTERN_STALL": "500ms"}
	var stdout, stderr bytes.Buffer
	msg := make([]byte, 200<<10)
	rand.Read(msg)
	e := &env{stdin: bytes.NewReader(msg), stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return vars[k] }}
	proxy.armed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a deadlock guard
	defer cancel()
	if code := run(ctx, []string{"send", "--anonymous", "--network", "cafe", "--to", card}, e); code != 0 {
		t.Fatalf("send: exit %d: %q", code, stderr.String())
	}
	got := stderr.String()
	notice := strings.Index(got, "the connection stalled after ")
	count := strings.Index(got, "\rsent ")
	if notice < 0 || count < 0 || count > notice {
		t.Fatalf("want a count showing before the stall notice (test setup), stderr %q", got)
	}
	screen := terminalLines(got)
	want := []string{
		"type the message, end with Ctrl-D", // stdin is a "terminal" too
		"the connection stalled after ",     // then its count and the rest of the notice
		fmt.Sprintf("sent %d/%d envelopes", 4, 4),
		fmt.Sprintf("sent %d bytes in %d envelope(s)", len(msg), 4),
	}
	if len(screen) != len(want) {
		t.Fatalf("the terminal shows %q, want %d lines like %q; stderr %q", screen, len(want), want, got)
	}
	for i, w := range want {
		if !strings.HasPrefix(screen[i], w) || (i == 1 && !strings.HasSuffix(screen[i], "; reconnecting")) {
			t.Fatalf("terminal line %d is %q, want %q…; the terminal shows %q", i, screen[i], w, screen)
		}
	}
}

// terminalLines is what a terminal shows after it is written out: a
// carriage return goes back to the line's start, where what follows
// overwrites it; trailing spaces are dropped, as is an empty last line.
func terminalLines(out string) []string {
	var lines []string
	var cur []byte
	col := 0
	for _, c := range []byte(out) {
		switch c {
		case '\r':
			col = 0
		case '\n':
			lines = append(lines, strings.TrimRight(string(cur), " "))
			cur, col = cur[:0], 0
		default:
			if col < len(cur) {
				cur[col] = c
			} else {
				cur = append(cur, c)
			}
			col++
		}
	}
	if s := strings.TrimRight(string(cur), " "); s != "" {
		lines = append(lines, s)
	}
	return lines
}
