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
