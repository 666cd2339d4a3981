package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport/censortest"
)

// TestRecvThroughFreezingCensor: a message sealed in 64 KiB envelopes
// (its sender was on a free network) waits on the relay, and the
// recipient is behind a censor that freezes every flow after 16 KiB. recv
// stalls inside the first envelope, takes the message in parts over as
// many connections as it takes, and remembers with --network what a
// connection carries there: the next recv goes by parts at once, with no
// stall. `recv --follow` on another network gets a third such message the
// same way. Until 2026-12-06 every session stalled inside the first
// envelope, and the message never arrived.
func TestRecvThroughFreezingCensor(t *testing.T) {
	w := newCensoredWorld(t)
	envv := append(append([]string(nil), w.base...), "POSTERN_STALL=500ms")
	sendWhole := func() []byte {
		t.Helper()
		w.mb.SetRule(censortest.Pass)
		msg := make([]byte, 100<<10) // two 64 KiB envelopes
		rand.Read(msg)
		if stderr, err := w.send(msg); err != nil {
			t.Fatalf("send: %v\n%s", err, stderr)
		}
		w.mb.SetRule(censortest.FreezeAfter(16 << 10))
		return msg
	}
	recv := func(msg []byte) string {
		t.Helper()
		out, stderr, code := runWith(t, w.bin, envv, nil, "recv", "--id", w.bob, "--network", "cafe")
		got := parseRecv(t, []byte(out))
		if code != 0 || len(got) != 1 || !bytes.Equal(got[0].body, msg) {
			t.Fatalf("recv through the censor: exit %d, %d messages\n%s", code, len(got), stderr)
		}
		return stderr
	}

	stderr := recv(sendWhole())
	if !strings.Contains(stderr, "receiving in parts") || !strings.Contains(stderr, "a connection carries about") {
		t.Fatalf("recv did not take the message in parts (test setup?):\n%s", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(w.home, "networks")); !strings.Contains(string(b), "recv_budget") {
		t.Fatalf("nothing remembered for the network: %s", b)
	}
	if stderr := recv(sendWhole()); strings.Contains(stderr, "was cut") || strings.Contains(stderr, "carries about") {
		t.Fatalf("the second recv on the network stalled again:\n%s", stderr)
	}

	msg := sendWhole()
	f := startFollow(t, w.bin, envv, w.bob, "--network", "train")
	select {
	case got := <-f.msgs:
		if got != string(msg) {
			t.Fatalf("recv --follow printed %d bytes, want the %d sent", len(got), len(msg))
		}
	case <-time.After(time.Minute): // a deadlock guard
		t.Fatalf("recv --follow never printed the message; stderr:\n%s", f.stderr.String())
	}
	f.stop()
}
