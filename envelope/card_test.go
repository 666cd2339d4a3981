package envelope

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestCardRoundTrip(t *testing.T) {
	id := newID(t)
	for _, tc := range []struct {
		name   string
		relays []string
		cap    []byte
		suites []Suite
	}{
		{name: "bare"},
		{name: "relays", relays: []string{"postern-relay1:AAAA", "postern-relay1:BBBB"}},
		{name: "cap", cap: []byte("0123456789abcdef")},
		{name: "x25519 only", suites: []Suite{SuiteX25519}},
		{name: "x25519 first", suites: []Suite{SuiteX25519, SuiteXWing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := id.Card(randMailbox(t), tc.relays, tc.cap)
			if tc.suites != nil {
				c.Suites = tc.suites
			}
			line := c.String()
			if !strings.HasPrefix(line, CardPrefix) || strings.ContainsAny(line, " \n\t") {
				t.Fatalf("not one prefixed line: %.40q", line)
			}
			got, err := ParseCard("  " + line + "\n")
			if err != nil {
				t.Fatal(err)
			}
			if got.Mailbox != c.Mailbox || !bytes.Equal(got.Auth, c.Auth) || len(got.Suites) != len(c.Suites) {
				t.Fatal("fields differ")
			}
			for i, s := range c.Suites {
				if got.Suites[i] != s || !bytes.Equal(got.key(s), c.key(s)) {
					t.Fatalf("suite %d differs", i)
				}
			}
			if strings.Join(got.Relays, ",") != strings.Join(c.Relays, ",") || !bytes.Equal(got.SendCap, c.SendCap) {
				t.Fatal("relays or capability differ")
			}
			if got.String() != line {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

// TestCardMistyped changes each character of a card to another valid
// base64url character: every change must be caught as a checksum mismatch
// (or, for the last characters whose low bits base64 ignores, a decode error).
func TestCardMistyped(t *testing.T) {
	id := newID(t)
	line := id.Card(randMailbox(t), []string{"postern-relay1:xyz"}, nil).String()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	body := line[len(CardPrefix):]
	for i := 0; i < len(body); i += 7 {
		c := body[i]
		r := alphabet[(strings.IndexByte(alphabet, c)+1)%len(alphabet)]
		mod := line[:len(CardPrefix)+i] + string(r) + body[i+1:]
		_, err := ParseCard(mod)
		if err == nil {
			t.Fatalf("mistyped character %d accepted", i)
		}
		if i < len(body)-2 && !errors.Is(err, ErrChecksum) {
			t.Fatalf("character %d: want checksum mismatch, got %v", i, err)
		}
		if !errors.Is(err, ErrCard) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("character %d: error not matchable: %v", i, err)
		}
	}
	if _, err := ParseCard(line[:len(line)-10]); err == nil {
		t.Fatal("truncated card accepted")
	}
	if _, err := ParseCard(line + "AAAA"); err == nil {
		t.Fatal("extended card accepted")
	}
}

// encodeRaw builds a card line around an arbitrary body with a valid
// checksum, to test the parser behind the checksum.
func encodeRaw(body []byte) string {
	sum := cardChecksum(body)
	return CardPrefix + base64.RawURLEncoding.EncodeToString(append(bytes.Clone(body), sum[:]...))
}

func TestCardStrict(t *testing.T) {
	id := newID(t)
	good, err := base64.RawURLEncoding.DecodeString(id.Card(randMailbox(t), nil, nil).String()[len(CardPrefix):])
	if err != nil {
		t.Fatal(err)
	}
	body := good[:len(good)-4]
	cases := []struct {
		name string
		line string
		want error
	}{
		{"empty", "", ErrCard},
		{"other prefix", "hello:" + body64(body), ErrCard},
		{"future version prefix", "postern-card2:AAAA", ErrVersion},
		{"bad characters", CardPrefix + "!!!!", ErrCard},
		{"version 2 body", encodeRaw(append([]byte{2}, body[1:]...)), ErrVersion},
		{"truncated body", encodeRaw(body[:100]), ErrCard},
		{"trailing bytes", encodeRaw(append(bytes.Clone(body), 0)), ErrCard},
		{"zero suites", encodeRaw(append(append(bytes.Clone(body[:33]), 0), body[34:]...)), ErrCard},
		{"unknown suite", encodeRaw(append(append(bytes.Clone(body[:34]), 7), body[35:]...)), ErrSuite},
		{"too long", CardPrefix + strings.Repeat("A", MaxCardLen), ErrCard},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCard(tc.line)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// An invalid key behind a valid checksum is refused.
	bad := bytes.Clone(body)
	for i := 0; i < 32; i++ {
		bad[len(bad)-34+i] = 0 // the auth key, before nrelays and caplen
	}
	if _, err := ParseCard(encodeRaw(bad)); err == nil {
		t.Fatal("all-zero auth key accepted")
	}
}

func body64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestCardValidate(t *testing.T) {
	id := newID(t)
	c := id.Card(randMailbox(t), nil, nil)
	c.SendCap = make([]byte, MaxSendCapLen+1)
	if _, err := c.Encode(); !errors.Is(err, ErrCard) {
		t.Fatalf("oversize capability: %v", err)
	}
	c = id.Card(randMailbox(t), []string{"has space"}, nil)
	if _, err := c.Encode(); !errors.Is(err, ErrCard) {
		t.Fatalf("relay with space: %v", err)
	}
	c = id.Card(randMailbox(t), nil, nil)
	c.XWing = c.XWing[:100]
	if _, err := c.Encode(); !errors.Is(err, ErrCard) {
		t.Fatalf("short key: %v", err)
	}
}

// TestCardStructure feeds ParseCard bodies with a valid checksum but a broken
// structure: each must be refused with ErrCard, say where the problem is and
// say what to do.
func TestCardStructure(t *testing.T) {
	id := newID(t)
	good, err := base64.RawURLEncoding.DecodeString(id.Card(randMailbox(t), []string{"r1"}, []byte("cap")).String()[len(CardPrefix):])
	if err != nil {
		t.Fatal(err)
	}
	body := good[:len(good)-4]
	// Offsets in body: both suites, X-Wing first, one relay, a 3-byte capability.
	const (
		offSuites  = 1 + MailboxIDSize
		offSuite2  = offSuites + 1 + 1 + 2 + 1216
		offAuth    = offSuite2 + 1 + 2 + 32
		offRelays  = offAuth + 32
		offRelay1  = offRelays + 1
		offCap     = offRelay1 + 2 + 2
		bodyLength = offCap + 1 + 3
	)
	if len(body) != bodyLength {
		t.Fatalf("body is %d bytes, the offsets assume %d", len(body), bodyLength)
	}
	set := func(off int, v ...byte) []byte {
		b := bytes.Clone(body)
		copy(b[off:], v)
		return b
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	const newCard = "ask its owner for a new card"
	const upgrade = "upgrade postern"
	cases := []struct {
		name string
		body []byte
		want error
		says []string
	}{
		{"cut in mailbox", body[:10], ErrCard, []string{"truncated in the mailbox id", newCard}},
		{"cut before suites", body[:offSuites], ErrCard, []string{"truncated in the suite list", newCard}},
		{"cut in suite 1", body[:offSuites+3], ErrCard, []string{"truncated in suite 1", newCard}},
		{"cut in suite 2", body[:offSuite2+5], ErrCard, []string{"truncated in suite 2", newCard}},
		{"cut in auth key", body[:offAuth+5], ErrCard, []string{"truncated in the auth key", newCard}},
		{"cut before relays", body[:offRelays], ErrCard, []string{"truncated in the relay list", newCard}},
		{"cut in relay 1", body[:offRelay1+3], ErrCard, []string{"truncated in relay 1", newCard}},
		{"cut before capability", body[:offCap], ErrCard, []string{"truncated in the send capability", newCard}},
		{"cut in capability", body[:offCap+2], ErrCard, []string{"truncated in the send capability", newCard}},
		{"trailing byte", append(bytes.Clone(body), 0), ErrCard, []string{"1 unexpected bytes at the end", newCard}},
		{"version 0", set(0, 0), ErrVersion, []string{"card version 0", upgrade}},
		{"three suites", set(offSuites, 3), ErrCard, []string{"3 suites, want 1 or 2", newCard}},
		{"unknown suite", set(offSuites+1, 7), ErrSuite, []string{"suite 7", "xwing and x25519", upgrade}},
		{"suite listed twice", set(offSuite2, byte(SuiteXWing)), ErrCard, []string{"suite xwing listed twice", newCard}},
		{"nine relays", set(offRelays, MaxRelays+1), ErrCard, []string{"9 relays, at most 8", newCard}},
		{"relay with a space", set(offRelay1+2, ' '), ErrCard, []string{"relay 1: not printable", newCard}},
		{"empty relay", cat(body[:offRelay1], []byte{0, 0}, body[offCap:]), ErrCard, []string{"relay 1: length 0", newCard}},
		{"short x25519 key", cat(body[:offSuite2+1], []byte{0, 31}, body[offSuite2+3:offAuth-1], body[offAuth:]), ErrCard, []string{"x25519 key is 31 bytes", newCard}},
		{"capability too long", cat(body[:offCap], []byte{MaxSendCapLen + 1}, make([]byte, MaxSendCapLen+1)), ErrCard, []string{"send capability is 65 bytes", newCard}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCard(encodeRaw(tc.body))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
	// ParseCard never hands decodeCard an empty body (the checksum needs at
	// least one byte before it), but decodeCard must not assume so.
	if _, err := decodeCard(nil); !errors.Is(err, ErrCard) || !strings.Contains(err.Error(), "truncated in the version") {
		t.Errorf("empty body: %v", err)
	}
}

// TestCardEncodeRefuses checks that Encode refuses every kind of invalid
// card with ErrCard instead of writing one ParseCard would refuse.
func TestCardEncodeRefuses(t *testing.T) {
	id := newID(t)
	for _, tc := range []struct {
		name   string
		change func(c *Card)
		says   string
	}{
		{"no suites", func(c *Card) { c.Suites = nil }, "must list 1 or 2 suites"},
		{"three suites", func(c *Card) { c.Suites = []Suite{SuiteXWing, SuiteX25519, SuiteXWing} }, "must list 1 or 2 suites"},
		{"unknown suite", func(c *Card) { c.Suites = []Suite{9} }, "unsupported suite"},
		{"suite twice", func(c *Card) { c.Suites = []Suite{SuiteX25519, SuiteX25519} }, "listed twice"},
		{"short auth key", func(c *Card) { c.Auth = c.Auth[:31] }, "auth key is 31 bytes"},
		{"nine relays", func(c *Card) { c.Relays = make([]string, MaxRelays+1) }, "9 relays, at most 8"},
		{"empty relay", func(c *Card) { c.Relays = []string{""} }, "relay 1: length 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := id.Card(randMailbox(t), nil, nil)
			tc.change(c)
			_, err := c.Encode()
			if !errors.Is(err, ErrCard) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want ErrCard saying %q", err, tc.says)
			}
			defer func() {
				if recover() == nil {
					t.Error("String did not panic on an invalid card")
				}
			}()
			_ = c.String()
		})
	}
}

// A parsed card's byte fields do not share capacity with each other: an
// append to one leaves the others as they were.
func TestParsedCardFieldsCapped(t *testing.T) {
	c, err := ParseCard(newID(t).Card(randMailbox(t), nil, []byte("0123456789abcdef")).String())
	if err != nil {
		t.Fatal(err)
	}
	fields := [][]byte{c.XWing, c.X25519, c.Auth, c.SendCap}
	before := make([][]byte, len(fields))
	for i, f := range fields {
		before[i] = bytes.Clone(f)
	}
	for i, f := range fields {
		_ = append(f, bytes.Repeat([]byte{0xee}, 64)...)
		for j := range fields {
			if !bytes.Equal(fields[j], before[j]) {
				t.Fatalf("appending to field %d changed field %d", i, j)
			}
		}
	}
}
