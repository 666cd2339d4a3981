package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
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
	envv := append(append([]string(nil), w.base...), "POSTERN_STALL=2s")
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

// TestPartsFollowWaits: recv --follow drains in parts after a cut session;
// a drain that shows nothing new (an unfinished message's fragments, cut
// in every subscription) makes the next one wait (10 s, doubling), and
// one that shows a message lets the next run at once. Until 2026-12-06
// (a reviewer's find) every cut re-fetched the held fragments at once.
func TestPartsFollowWaits(t *testing.T) {
	p := &printer{}
	drains := 0
	show := false
	f := &partsFollow{e: &env{stderr: io.Discard}, p: p, due: true,
		t: recvTarget{dial: func(context.Context) (*client.Client, error) { return nil, errors.New("no relay here") }},
		drain: func(context.Context) error {
			drains++
			if show {
				p.mu.Lock()
				p.count++
				p.mu.Unlock()
			}
			return nil
		}}
	f.dial(context.Background())
	if drains != 1 || f.wait != minPartsWait {
		t.Fatalf("after a drain that showed nothing: %d drains, wait %s", drains, f.wait)
	}
	// The next cut: the drain waits its turn (a cancelled context ends
	// the wait without draining).
	f.lost(transport.ErrStalled, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.dial(ctx); !errors.Is(err, context.Canceled) || drains != 1 {
		t.Fatalf("the second drain did not wait: %v, %d drains", err, drains)
	}
	f.wait, show = 0, true // as if the wait had passed
	f.dial(context.Background())
	if drains != 2 || f.wait != 0 {
		t.Fatalf("after a drain that showed a message: %d drains, wait %s", drains, f.wait)
	}
}

// TestFollowIdleNeverStalls: `recv --follow` over https and over h3 with a
// 1 s stall window sits idle for five windows (the session's TLS tickets,
// HTTP/2 or QUIC control frames and pings come and go) and is never taken
// for a frozen flow, then prints a message sent meanwhile. A session now
// also stalls on a TLS record or HTTP/2 frame begun and not ended
// (transport.Arrivals); one that misread an idle session would reconnect
// for ever.
func TestFollowIdleNeverStalls(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	defer rp.stop()
	base, bob, card, _ := newOwner(t, bin, dir, rp)
	for _, tr := range []string{"https", "h3"} {
		f := startFollow(t, bin, append(append([]string(nil), base...), "POSTERN_STALL=1s", "POSTERN_TRANSPORT="+tr), bob)
		time.Sleep(5 * time.Second) // five stall windows, idle
		msg := "after an idle while over " + tr
		runOK(t, bin, base, []byte(msg), "send", "--anonymous", "--to", card)
		select {
		case got := <-f.msgs:
			if got != msg {
				t.Fatalf("%s: printed %q", tr, got)
			}
		case <-time.After(time.Minute): // a deadlock guard
			t.Fatalf("%s: the message never came; stderr:\n%s", tr, f.stderr.String())
		}
		if s := f.stderr.String(); strings.Contains(s, "connection lost") {
			t.Fatalf("%s: an idle session was lost:\n%s", tr, s)
		}
		f.stop()
	}
}
