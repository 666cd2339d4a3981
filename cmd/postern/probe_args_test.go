package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// cardWith writes, for a fresh identity, a card whose home relays are
// lines, to dir/name.card, and returns the path and the line.
func cardWith(t *testing.T, dir, name string, lines ...string) (path, line string) {
	t.Helper()
	id, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	line, err = id.Card([32]byte{7}, lines, nil).Encode()
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, name+".card")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, line
}

// TestProbeCardAndContact: a card names two home relays and both are
// probed, given as a file, as a line and as a contact's name; with one of
// them stopped, its rows fail and the other's stay ok.
func TestProbeCardAndContact(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	envv := []string{"POSTERN_HOME=" + dir}
	a := startRelay(t, bin, filepath.Join(dir, "a"), "--metrics", "off")
	b := startRelay(t, bin, filepath.Join(dir, "b"), "--metrics", "off")
	idA, idB := relayID(t, a.line), relayID(t, b.line)
	cardPath, cardLine := cardWith(t, dir, "bob", a.line, b.line)
	aliceID, _, _ := newCardFile(t, dir, "alice")
	if out, stderr, code := runBin(t, bin, envv, "contact", "add", "--id", aliceID, "Bob", cardPath); code != 0 {
		t.Fatalf("contact add: %d %s%s", code, out, stderr)
	}
	secret := append(relayAddrs(t, a.line), relayAddrs(t, b.line)...)
	allOK := func(t *testing.T, args ...string) {
		t.Helper()
		out, stderr, code := runBin(t, bin, envv, append([]string{"probe"}, args...)...)
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, stderr)
		}
		rows := probeRows(t, out)
		if len(rows) != 4 {
			t.Fatalf("%d rows, want 4 (two relays, two transports each):\n%s", len(rows), out)
		}
		for _, id := range []string{idA, idB} {
			for _, tr := range []string{"https", "h3"} {
				if rows[id+" "+tr] != "ok" {
					t.Errorf("%s over %s: %q\n%s", id, tr, rows[id+" "+tr], out)
				}
			}
		}
		checkNoAddr(t, out+stderr, secret)
		if strings.Contains(out+stderr, "Bob") {
			t.Errorf("the output names the contact:\n%s%s", out, stderr)
		}
	}
	t.Run("card file", func(t *testing.T) { allOK(t, cardPath) })
	t.Run("card line", func(t *testing.T) { allOK(t, cardLine) })
	t.Run("contact", func(t *testing.T) { allOK(t, "--id", aliceID, "Bob") })
	t.Run("contact and its relay again", func(t *testing.T) { allOK(t, "--id", aliceID, "Bob", b.line) })
	t.Run("one relay stopped", func(t *testing.T) {
		b.stop()
		out, stderr, code := runBin(t, bin, envv, "probe", "--timeout", "3s", "--id", aliceID, "Bob")
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
		}
		rows := probeRows(t, out)
		if rows[idA+" https"] != "ok" || rows[idA+" h3"] != "ok" || rows[idB+" https"] == "ok" || rows[idB+" h3"] == "ok" {
			t.Fatalf("rows %v", rows)
		}
		checkNoAddr(t, out+stderr, secret)
	})
}

func relayID(t *testing.T, line string) string {
	t.Helper()
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return d.RelayID()
}

// damage changes one character in the middle of a line.
func damage(line string) string {
	i := len(line) / 2
	c := byte('A')
	if line[i] == 'A' {
		c = 'B'
	}
	return line[:i] + string(c) + line[i+1:]
}

// TestProbeArgErrors: an argument that is not usable is refused before
// any probe, naming its position and saying what to do, and never
// repeating a line (lines hold keys).
func TestProbeArgErrors(t *testing.T) {
	dir := t.TempDir()
	good, _ := descriptorAt(t, "127.0.0.1:1", "https")
	_, card := cardWith(t, dir, "carol", good)
	_, noRelays := cardWith(t, dir, "nobody")
	_, badRelay := cardWith(t, dir, "badrelay", "postern-relay1:AAAA")
	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, []byte("nothing here\n"), 0o644)
	aliceID, _, _ := newCardFile(t, dir, "alice")
	garbage := strings.TrimPrefix(good, descriptor.Prefix)
	cases := []struct {
		name  string
		args  []string
		want  []string
		lines []string // must not appear, not even in part
	}{
		{"unknown contact", []string{"--id", aliceID, "dave"},
			[]string{`argument 1: no contact named "dave"`, "postern contact add dave CARD", "--id"}, nil},
		{"damaged card", []string{good, damage(card)}, []string{"argument 2: contact card: "}, []string{card}},
		{"damaged descriptor", []string{damage(good)}, []string{"argument 1 (relay descriptor): descriptor: "}, []string{good}},
		{"card with a damaged relay", []string{good, good, badRelay}, []string{"argument 3 (contact card), relay 1: descriptor: "}, []string{badRelay}},
		{"card without relays", []string{noRelays}, []string{"argument 1: contact card: the card names no relay"}, []string{noRelays}},
		{"line without its prefix", []string{good, garbage}, []string{"argument 2: not a relay descriptor (postern-relay1:...), a contact card"}, []string{good}},
		{"file without a line", []string{empty}, []string{"argument 1: " + empty + " holds no line starting with"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runIn(t, dir, append([]string{"probe", "--timeout", "1s"}, tc.args...)...)
			if code != 1 || out != "" {
				t.Fatalf("exit %d, want 1 and no table\n%s%s", code, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, l := range tc.lines {
				body := strings.TrimPrefix(strings.TrimPrefix(l, descriptor.Prefix), envelope.CardPrefix)
				for i := 0; i+12 <= len(body); i += 6 {
					if strings.Contains(stderr, body[i:i+12]) {
						t.Fatalf("stderr repeats part of a line (%q):\n%s", body[i:i+12], stderr)
					}
				}
			}
		})
	}
}
