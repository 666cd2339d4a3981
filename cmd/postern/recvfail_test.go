package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// TestRecvToFullStdoutKeepsMessage: `postern recv > /dev/full`, into a
// pipe nobody reads, or with stdout closed, fails and acks nothing, so the
// message is still there for the next recv.
func TestRecvToFullStdoutKeepsMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	defer rp.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	idFile := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", idFile)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", idFile, "--relay", filepath.Join(rp.dir, "descriptor"))))
	runOK(t, bin, base, []byte("keep me"), "send", "--anonymous", "--to", card)

	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip("no /dev/full here")
	}
	defer full.Close()
	for name, cmd := range map[string]*exec.Cmd{
		"full": exec.Command(bin, "recv", "--id", idFile),
		// A pipe nobody reads: the write fails (EPIPE, or SIGPIPE kills it).
		"broken pipe": exec.Command(bin, "recv", "--id", idFile),
		// The shell closes descriptor 1 before exec.
		"closed": exec.Command("sh", "-c", `exec "$0" recv --id "$1" >&-`, bin, idFile),
	} {
		cmd.Env = append(os.Environ(), base...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if name != "closed" {
			cmd.Stdout = full
		}
		if name == "broken pipe" {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			cmd.Stdout = w
			defer w.Close()
		}
		if err := cmd.Run(); err == nil {
			t.Fatalf("recv with stdout %s exited 0; stderr:\n%s", name, stderr.String())
		}
		if name == "closed" && !strings.Contains(stderr.String(), "standard output is closed") {
			t.Fatalf("stdout closed: stderr does not say so:\n%s", stderr.String())
		}
		if name == "full" && !strings.Contains(stderr.String(), "write message") {
			t.Fatalf("stdout %s: stderr does not say what failed:\n%s", name, stderr.String())
		}
	}
	got := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", idFile))
	if len(got) != 1 || string(got[0].body) != "keep me" {
		t.Fatalf("after the failed runs recv got %+v", got)
	}
	// A deliberate > /dev/null is not a closed stdout.
	devnull := exec.Command("sh", "-c", `exec "$0" recv --id "$1" >/dev/null`, bin, idFile)
	devnull.Env = append(os.Environ(), base...)
	if out, err := devnull.CombinedOutput(); err != nil {
		t.Fatalf("recv > /dev/null: %v\n%s", err, out)
	}
}

// syncCounter is a stdout that can be synced, counting syncs.
type syncCounter struct {
	bytes.Buffer
	syncs int
	err   error
}

func (s *syncCounter) Sync() error { s.syncs++; return s.err }

// recv prints each message without syncing stdout, and syncs it once
// when the inbox asks (before it acks a page or a batch), not once per
// message; a failed sync is a message not shown, and every later sync
// and message fails with it.
func TestPrinterSyncsPerBatch(t *testing.T) {
	out := &syncCounter{}
	p := newPrinter(&env{stdout: out, stderr: io.Discard}, nil, nil, 1)
	for i := range 3 {
		if err := p.take(client.Message{Payload: []byte(fmt.Sprint("message ", i))}); err != nil {
			t.Fatal(err)
		}
	}
	if out.syncs != 0 || !strings.Contains(out.String(), "message 2") {
		t.Fatalf("after three messages: %d syncs, printed %q", out.syncs, out.String())
	}
	if err := p.sync(); err != nil || out.syncs != 1 {
		t.Fatalf("sync = %v after %d syncs", err, out.syncs)
	}
	out.err = syscall.EINVAL // a terminal or a pipe
	if err := p.sync(); err != nil {
		t.Fatalf("sync of an unsyncable stdout = %v", err)
	}
	out.err = syscall.EIO
	if err := p.sync(); !errors.Is(err, errTake) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("a failed sync = %v, want errTake wrapping EIO", err)
	}
	// The failure stays: the kernel reports a lost write-back to one sync
	// only, and another inbox sharing stdout must not ack over it.
	out.err = nil
	if err := p.sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a sync after a failed one = %v, want the failure again", err)
	}
	if err := p.take(client.Message{Payload: []byte("after")}); !errors.Is(err, syscall.EIO) || strings.Contains(out.String(), "after") {
		t.Fatalf("a message after a failed sync: %v, printed %q", err, out.String())
	}

	// recv's inbox syncs through the printer: once for a page of three.
	r := relaytest.New(t, store.Options{}, server.Config{})
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	sender := r.Connect(t)
	for i := range 3 {
		if _, err := sender.Send(context.Background(), mb.Seal(t, fmt.Sprint("queued ", i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	out = &syncCounter{}
	p = newPrinter(&env{stdout: out, stderr: io.Discard}, nil, nil, 1)
	in, err := newReceiver(p.e, mb.Ident, nil, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Drain(context.Background(), r.Connect(t), mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	if out.syncs != 1 || strings.Count(out.String(), "== from") != 3 {
		t.Fatalf("draining three messages: %d syncs, printed %q", out.syncs, out.String())
	}
}

// TestPrinterShowsAMessageOnceAcrossSealings: two inboxes (a mailbox on
// two relays) may each hand over a message in another sealing: other
// envelope ids, one message id. recv shows it once; a message handed
// over with no message id is told apart by its envelope ids only; every
// message taken wakes every inbox, which may hold another sealing's
// fragments.
func TestPrinterShowsAMessageOnceAcrossSealings(t *testing.T) {
	out := &syncCounter{}
	p := newPrinter(&env{stdout: out, stderr: io.Discard}, nil, nil, 2)
	wakes := []<-chan struct{}{p.wake(), p.wake()}
	id := func(b byte) [16]byte { return [16]byte{b} }
	for _, m := range []client.Message{
		{Payload: []byte("sealed twice"), IDs: [][16]byte{id(1)}, ID: id(9)},
		{Payload: []byte("sealed twice"), IDs: [][16]byte{id(2), id(3)}, ID: id(9)},
		{Payload: []byte("no message id"), IDs: [][16]byte{id(4)}},
		{Payload: []byte("no message id either"), IDs: [][16]byte{id(5)}},
	} {
		if err := p.take(m); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(out.String(), "sealed twice"); n != 1 || !strings.Contains(out.String(), "no message id either") {
		t.Fatalf("shown %d times, or a message without an id dropped: %q", n, out.String())
	}
	for i, w := range wakes {
		select {
		case <-w:
		default:
			t.Fatalf("inbox %d not woken", i)
		}
	}
}
