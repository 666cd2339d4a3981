package token

import (
	"encoding/base64"
	"encoding/binary"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

var update = flag.Bool("update", false, "rewrite testdata/token.golden")

// goldenToken builds the bound and the unbound token from fixed inputs:
// key 0x00..0x1f, path "/s3cret", minute of 2026-01-02 03:04 UTC, nonce
// 0x40..0x4f (bound) or 0x50..0x5f (unbound), binding 0x80..0x9f.
func goldenToken(bound bool) (tok string, at time.Time, binding []byte) {
	key := make([]byte, transport.KeySize)
	for i := range key {
		key[i] = byte(i)
	}
	at = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	var head [25]byte
	binary.BigEndian.PutUint64(head[1:9], uint64(at.Unix()/60))
	nonce := byte(0x50)
	if bound {
		nonce = 0x40
	}
	for i := range 16 {
		head[9+i] = nonce + byte(i)
	}
	if bound {
		head[0] = flagBound
		binding = make([]byte, ExporterLen)
		for i := range binding {
			binding[i] = 0x80 + byte(i)
		}
	}
	raw := append(head[:], tokenMAC(key, "/s3cret", head[:], binding)...)
	return base64.RawURLEncoding.EncodeToString(raw), at, binding
}

// TestGoldenToken pins the token's bytes: changing the MAC label, the
// field order or the widths fails here, and the pinned tokens verify.
func TestGoldenToken(t *testing.T) {
	bound, at, binding := goldenToken(true)
	unbound, _, _ := goldenToken(false)
	got := "bound " + bound + "\nunbound " + unbound + "\n"
	if *update {
		if err := os.WriteFile("testdata/token.golden", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/token.golden")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("tokens changed:\n got %s\nwant %s", got, want)
	}
	key := make([]byte, transport.KeySize)
	for i := range key {
		key[i] = byte(i)
	}
	v, err := NewVerifier(key, "/s3cret", true, func() time.Time { return at.Add(30 * time.Second) })
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(want)), "\n") {
		name, tok, _ := strings.Cut(line, " ")
		b := binding
		if name == "unbound" {
			b = nil
		}
		if o := v.Verify(tok, b); o != transport.OutcomeOK {
			t.Fatalf("golden %s token: %s", name, o)
		}
	}
}
