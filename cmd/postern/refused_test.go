package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport/censortest"
)

// TestSendPastFullEntryRelays: two entry relays whose forward queues hold
// two 64 KiB envelopes each, and whose home relay is out of their reach
// (so nothing drains), take a four-envelope message between them: the
// first one reached refuses the third envelope ("forward queue full"),
// send goes on through the other, and once the home relay is reachable
// the recipient gets the message whole, once. Until 2026-12-06 the first
// refusal ended the send, with half the message queued and another entry
// relay never tried.
func TestSendPastFullEntryRelays(t *testing.T) {
	w := newCensoredWorld(t)
	w.mb.SetRule(censortest.ResetOnConnect) // the entry relays' pumps cannot deliver
	dir := t.TempDir()
	cfg := filepath.Join(dir, "entry.json")
	// A forward of a 64 KiB envelope is about 66.5 KB: two fit, not three.
	if err := os.WriteFile(cfg, []byte(`{"store": "memory", "max_outbox_bytes": 150000}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var entries []*relayProc
	var args []string
	for _, name := range []string{"a", "b"} {
		p := startRelay(t, w.bin, filepath.Join(dir, name), "--config", cfg)
		defer p.stop()
		entries = append(entries, p)
		args = append(args, "--via", filepath.Join(p.dir, "descriptor"))
	}

	msg := make([]byte, 240<<10) // four 64 KiB envelopes
	rand.Read(msg)
	stderr, err := w.send(msg, args...)
	if err != nil {
		t.Fatalf("send through two entry relays with room for half the message each: %v\n%s", err, stderr)
	}
	if n := strings.Count(stderr, "refused the message for now"); n != 1 {
		t.Fatalf("%d refusals told, want 1 (test setup: each entry relay takes two envelopes):\n%s", n, stderr)
	}
	for i, p := range entries {
		m, _ := scrape(t, metricsAddr(t, p))
		if got := m[`postern_forwards_total{result="queued"}`]; got != 2 {
			t.Fatalf("entry relay %d queued %v envelopes, want 2:\n%s", i, got, stderr)
		}
	}

	w.mb.SetRule(censortest.Pass)
	got := recvUntil(t, w.bin, w.base, w.bob, 1)
	if len(got) != 1 || !bytes.Equal(got[0].body, msg) {
		t.Fatalf("received %d messages, want the one sent, whole", len(got))
	}
}

// TestSendPastFullMailboxThroughEntryRelay: the recipient's mailbox on
// their home relay holds four envelopes and has two waiting, and a known
// entry relay (`postern relays add`) can reach the home relay. A
// four-envelope message goes two to the home relay and, when it answers
// "mailbox full", two to the entry relay, which queues them until the
// recipient has made room: the recipient gets every message whole, once.
// Until 2026-12-06 send failed with half the message on the relay.
func TestSendPastFullMailboxThroughEntryRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "home.json")
	if err := os.WriteFile(cfg, []byte(`{"store": "memory", "max_mailbox_envelopes": 4}`), 0o600); err != nil {
		t.Fatal(err)
	}
	home := startRelay(t, bin, filepath.Join(dir, "home-relay"), "--config", cfg)
	defer home.stop()
	entry := startRelay(t, bin, filepath.Join(dir, "entry"))
	defer entry.stop()
	base, bob, card, _ := newOwner(t, bin, dir, home)
	runOK(t, bin, base, nil, "relays", "add", filepath.Join(entry.dir, "descriptor"))

	for _, m := range []string{"first", "second"} {
		runOK(t, bin, base, []byte(m), "send", "--anonymous", "--to", card)
	}
	msg := make([]byte, 240<<10) // four 64 KiB envelopes
	rand.Read(msg)
	_, stderr, code := runWith(t, bin, base, msg, "send", "--anonymous", "--to", card)
	if code != 0 {
		t.Fatalf("send to a mailbox with room for half the message: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "mailbox full") {
		t.Fatalf("the home relay never said its mailbox was full (test setup):\n%s", stderr)
	}
	m, _ := scrape(t, metricsAddr(t, entry))
	if got := m[`postern_forwards_total{result="queued"}`]; got != 2 {
		t.Fatalf("the entry relay queued %v envelopes, want 2:\n%s", got, stderr)
	}
	got := recvUntil(t, bin, base, bob, 3)
	if len(got) != 3 || string(got[0].body) != "first" || string(got[1].body) != "second" || !bytes.Equal(got[2].body, msg) {
		t.Fatalf("received %d messages, want the three sent, whole and in order", len(got))
	}
	if again := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", bob)); len(again) != 0 {
		t.Fatalf("%d messages received again", len(again))
	}

	// With the entry relay gone, the user is told first why the home
	// relay did not take the message, not only that no other relay
	// answered.
	entry.stop()
	for i := range 4 {
		runOK(t, bin, base, []byte{byte(i)}, "send", "--anonymous", "--to", card)
	}
	_, stderr, code = runWith(t, bin, base, []byte("one too many"), "send", "--anonymous", "--to", card)
	if code == 0 || !strings.Contains(stderr, "mailbox full") || !strings.Contains(stderr, "no other relay could be reached") {
		t.Fatalf("send to a full mailbox with the entry relay down: exit %d\n%s", code, stderr)
	}
}

// TestRefusalIsNoNetworkFact: a card names two home relays; the first
// answers "mailbox full", the second is down, and a known entry relay is
// up. The send goes through the entry relay to the second home relay
// (the first refused it), without taking the home relays for out of
// reach on this network: a home relay that answered is no censor's work,
// and until 2026-12-06 (a reviewer's find) the entry relay winning that
// dial set via_entry for a week. Once the second home relay is back, the
// recipient gets the message whole.
func TestRefusalIsNoNetworkFact(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "h0.json")
	if err := os.WriteFile(cfg, []byte(`{"store": "memory", "max_mailbox_envelopes": 1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	h0 := startRelay(t, bin, filepath.Join(dir, "h0"), "--config", cfg)
	defer h0.stop()
	h1addr := freePort(t)
	h1 := startRelay(t, bin, filepath.Join(dir, "h1"), "--https", h1addr, "--h3", h1addr)
	entry := startRelay(t, bin, filepath.Join(dir, "entry"))
	defer entry.stop()
	base, bob, card, _ := newOwner(t, bin, dir, h0, h1)
	home := filepath.Join(dir, "home")
	runOK(t, bin, base, nil, "relays", "add", filepath.Join(entry.dir, "descriptor"))
	h1.stop()
	runOK(t, bin, base, []byte("first"), "send", "--anonymous", "--to", card) // h0's mailbox is full now

	_, stderr, code := runWith(t, bin, base, []byte("second"), "send", "--anonymous", "--network", "cafe", "--to", card)
	if code != 0 || !strings.Contains(stderr, "refused the message for now") {
		t.Fatalf("send with the first home relay full and the second down: exit %d\n%s", code, stderr)
	}
	if strings.Contains(stderr, "out of reach") {
		t.Fatalf("a home relay that refused was called out of reach:\n%s", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(home, "networks")); strings.Contains(string(b), "via_entry") {
		t.Fatalf("the refusal was recorded as a fact of the network: %s", b)
	}
	m, _ := scrape(t, metricsAddr(t, entry))
	if got := m[`postern_forwards_total{result="queued"}`]; got != 1 {
		t.Fatalf("the entry relay queued %v envelopes, want 1:\n%s", got, stderr)
	}

	h1 = startRelay(t, bin, h1.dir, "--https", h1addr, "--h3", h1addr)
	defer h1.stop()
	got := recvUntil(t, bin, base, bob, 2)
	var bodies []string
	for _, g := range got {
		bodies = append(bodies, string(g.body))
	}
	if slices.Sort(bodies); strings.Join(bodies, ",") != "first,second" {
		t.Fatalf("received %q, want first and second", bodies)
	}
	// The forward went to the home relay that had not refused it.
	if m, _ := scrape(t, metricsAddr(t, h0)); m["postern_envelopes_accepted_total"] != 1 {
		t.Fatalf("the first home relay accepted %v envelopes, want 1 (the first message)", m["postern_envelopes_accepted_total"])
	}
}

// TestElsewhere: the answers that send takes to another relay are those
// that say this relay cannot take the envelope now; a refusal that holds
// on every relay (no such mailbox, a bad capability) and a failure that
// is no relay's answer are not.
func TestElsewhere(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{relay.ErrBusy, true},
		{relay.ErrOutboxFull, true},
		{&relay.Error{Code: relay.CodeRelayFull}, true},
		{&relay.Error{Code: relay.CodeMailboxFull}, true},
		{&relay.Error{Code: relay.CodeInternal}, true},
		{relay.ErrNoMailbox, false},
		{&relay.Error{Code: relay.CodeCapability}, false},
		{&relay.Error{Code: relay.CodeBadEnvelope}, false},
		{errors.New("connection reset"), false},
	} {
		if got := elsewhere(tc.err); got != tc.want {
			t.Errorf("elsewhere(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestKeepTogetherSaysWhy: when the rest of a message goes to another
// relay of the card, the user is told why the first was left: it
// refused the rest for now, or it is out of reach. Until 2026-12-07 a
// refusal (say, relay storage full mid-message) was called out of reach
// (a reviewer's find). Either way the whole message is sent again.
func TestKeepTogetherSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		refused bool
		want    string
	}{
		{true, "the relay that has 2 of 4 envelopes refused the rest for now; sending the whole message to another relay of the card"},
		{false, "the relay that has 2 of 4 envelopes is out of reach; sending the whole message to another relay of the card"},
	} {
		var stderr bytes.Buffer
		s := &sender{e: &env{stderr: &stderr}, envs: make([][]byte, 4), acked: []bool{true, true, false, false}, holder: "A"}
		if tc.refused {
			s.refused = map[string]bool{"A": true}
		}
		s.keepTogether("B")
		if !strings.Contains(stderr.String(), tc.want) || s.ackedCount() != 0 || s.holder != "" {
			t.Fatalf("refused %v: told %q, %d acked left, holder %q", tc.refused, stderr.String(), s.ackedCount(), s.holder)
		}
	}
}
