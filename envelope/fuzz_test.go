package envelope

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Every decoder has a fuzz target. Seeds are golden files plus edge cases;
// `go test` runs the seeds, `go test -fuzz=FuzzX` explores. Each target checks
// that no input panics and that every failure matches a package sentinel.

func isOurs(err error, sentinels ...error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func addGoldenEnvelopes(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.env"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{Version, byte(SuiteXWing)})
	f.Add(make([]byte, Bucket4K))
}

func FuzzParseHeader(f *testing.F) {
	addGoldenEnvelopes(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if !isOurs(err, ErrMalformed, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if !isBucket(len(b)) || h.Version != Version || !h.Suite.valid() {
			t.Fatalf("accepted invalid envelope header %+v len %d", h, len(b))
		}
	})
}

func FuzzOpen(f *testing.F) {
	addGoldenEnvelopes(f)
	recipient, err := ParseIdentity(mustReadF(f, "recipient.id"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := Open(recipient, b)
		if err != nil {
			if !isOurs(err, ErrMalformed, ErrVersion, ErrSuite, ErrDecrypt, ErrBadSender) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if len(o.Payload) > MaxPayload(o.Suite, len(b)) {
			t.Fatal("payload larger than the bucket allows")
		}
	})
}

func FuzzParseCard(f *testing.F) {
	if raw, err := os.ReadFile(filepath.Join(goldenDir, "manifest.json")); err == nil {
		var m goldenManifest
		if json.Unmarshal(raw, &m) == nil {
			f.Add(m.Card)
		}
	}
	id, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(id.Card([32]byte{1}, []string{"postern-relay1:x"}, []byte{1, 2}).String())
	f.Add(CardPrefix)
	f.Add("postern-card2:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCard(s)
		if err != nil {
			if !isOurs(err, ErrCard, ErrChecksum, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		again, err := ParseCard(c.String())
		if err != nil || again.Mailbox != c.Mailbox {
			t.Fatalf("accepted card does not re-encode: %v", err)
		}
	})
}

// FuzzParseCardBody reaches the card decoder behind the checksum: the fuzzer
// supplies the body and the harness appends a valid checksum, which random
// mutation would almost never find. An accepted body must re-encode to
// exactly the same line (the encoding is unique).
func FuzzParseCardBody(f *testing.F) {
	id, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	x := id.Card([32]byte{2}, []string{"a", "postern-relay1:x"}, []byte("cap"))
	x.Suites = []Suite{SuiteX25519}
	for _, c := range []*Card{id.Card([32]byte{1}, nil, nil), x} {
		raw, err := base64.RawURLEncoding.DecodeString(c.String()[len(CardPrefix):])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw[:len(raw)-4])
	}
	f.Add([]byte{})
	f.Add([]byte{cardVersion})
	f.Fuzz(func(t *testing.T, body []byte) {
		line := encodeRaw(body)
		c, err := ParseCard(line)
		if err != nil {
			if !isOurs(err, ErrCard, ErrChecksum, ErrVersion, ErrSuite) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if again := c.String(); again != line {
			t.Fatalf("accepted body does not re-encode to itself:\n in  %s\n out %s", line, again)
		}
	})
}

func FuzzParseIdentity(f *testing.F) {
	f.Add(mustReadF(f, "recipient.id"))
	f.Add([]byte("postern-identity v1\n"))
	f.Add([]byte("postern-identity v9\nxwing AAAA\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err != nil {
			if !isOurs(err, ErrIdentity, ErrVersion) {
				t.Fatalf("unmatched error %v", err)
			}
			return
		}
		if _, err := id.Marshal(); err != nil {
			t.Fatal(err)
		}
	})
}

func mustReadF(f *testing.F, name string) []byte {
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		f.Fatal(err)
	}
	return b
}
