package borrow

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
)

// TestTagVectors checks the key derivation and the tag against vectors
// computed by an independent implementation (testdata/tag-v1.txt).
func TestTagVectors(t *testing.T) {
	f, err := os.Open("testdata/tag-v1.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 6 {
			t.Fatalf("bad vector line %q", line)
		}
		h := func(i int) []byte {
			b, err := hex.DecodeString(fs[i])
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		w, err := strconv.ParseUint(fs[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		k, err := deriveKey(h(0))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k[:], h(4)) {
			t.Errorf("K = %x, want %s", k[:], fs[4])
		}
		if got := k.tag(w, h(2), h(3)); !bytes.Equal(got, h(5)) {
			t.Errorf("tag = %x, want %s", got, fs[5])
		}
		n++
	}
	if n == 0 {
		t.Fatal("no vectors")
	}
}

func TestTagHelloVerifies(t *testing.T) {
	key := bytes.Repeat([]byte{7}, KeySize)
	now := time.Unix(1_800_000_000, 0)
	uc := chromeHello(t)
	random := bytes.Clone(uc.HandshakeState.Hello.Random)
	if err := TagHello(uc, key, now); err != nil {
		t.Fatal(err)
	}
	h := uc.HandshakeState.Hello
	if !bytes.Equal(h.Random, random) {
		t.Fatal("TagHello changed the random")
	}
	// What the handshake will send: the hello marshalled again from its
	// fields, as utls does when the handshake starts.
	if err := uc.MarshalClientHello(); err != nil {
		t.Fatal(err)
	}
	k, _ := deriveKey(key)
	other, _ := deriveKey(bytes.Repeat([]byte{8}, KeySize))
	cases := []struct {
		name string
		k    *tagKey
		at   time.Time
		edit func(ch *clientHello)
		ok   bool
	}{
		{"same window", &k, now, nil, true},
		{"one window later", &k, now.Add(Window), nil, true},
		{"one window earlier", &k, now.Add(-Window), nil, true},
		{"two windows later", &k, now.Add(2 * Window), nil, false},
		{"two windows earlier", &k, now.Add(-2 * Window), nil, false},
		{"other key", &other, now, nil, false},
		{"other random", &k, now, func(ch *clientHello) { ch.random[0] ^= 1 }, false},
		{"other key share", &k, now, func(ch *clientHello) { ch.keyShare[len(ch.keyShare)-1] ^= 1 }, false},
		{"flipped tag bit", &k, now, func(ch *clientHello) { ch.sessionID[31] ^= 0x80 }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch, err := parseClientHello(bytes.Clone(h.Raw))
			if err != nil {
				t.Fatal(err)
			}
			if c.edit != nil {
				c.edit(ch)
			}
			if _, ok := c.k.verify(ch, c.at); ok != c.ok {
				t.Fatalf("verify = %v, want %v", ok, c.ok)
			}
		})
	}
}

func TestTagHelloErrors(t *testing.T) {
	key := make([]byte, KeySize)
	if err := TagHello(chromeHello(t), key[:31], time.Now()); !errors.Is(err, ErrKeySize) {
		t.Fatalf("short key: %v", err)
	}
	uc := utls.UClient(nil, &utls.Config{ServerName: "x"}, utls.HelloCustom)
	if err := TagHello(uc, key, time.Now()); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("unbuilt hello: %v", err)
	}
}
