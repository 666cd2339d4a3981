package store_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mathrand "math/rand/v2"
	"strings"
	"testing"

	"github.com/postern/postern/relay/store"
)

// Golden values for store key 00 01 .. 1f, computed outside Go with
// Python's hmac module. A change here makes every existing data file
// unreadable.
const (
	goldenID    = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafa0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
	goldenHash  = "69f48ed1dd86f37b73762234078da4921c2c4e4e772c2cefe590f81e7567083d"
	goldenRef   = "1f34849f2bebe3232f90ae8bb52db9ee6bc7bf391c1eb41367354d772bcc30e3" // of "hello envelope"
	goldenCheck = "a21e6b30ba1db1084538cf960ae0467a83d40f8649d6e7c07cf35a71ee8df91a"
)

func goldenKeys(t *testing.T) (*store.Keys, []byte, [store.IDSize]byte) {
	t.Helper()
	key := make([]byte, store.KeySize)
	for i := range key {
		key[i] = byte(i)
	}
	k, err := store.NewKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	var id [store.IDSize]byte
	hex.Decode(id[:], []byte(goldenID))
	return k, key, id
}

func TestKeysGolden(t *testing.T) {
	k, _, id := goldenKeys(t)
	h, r, c := k.MailboxHash(id), k.Ref([]byte("hello envelope")), k.Check()
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"MailboxHash", h[:], goldenHash},
		{"Ref", r[:], goldenRef},
		{"Check", c[:], goldenCheck},
	} {
		if got := hex.EncodeToString(tc.got); got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestSealFormat opens a sealed envelope with the standard library alone:
// AES-256-GCM under HMAC(HMAC(key, seal label), id), nonce first, with the
// label and the ref as associated data.
func TestSealFormat(t *testing.T) {
	k, key, id := goldenKeys(t)
	env := []byte("an envelope")
	ref := k.Ref(env)
	sealed := k.Seal(id, ref, env)
	if len(sealed) != len(env)+store.SealOverhead {
		t.Fatalf("sealed %d bytes into %d, want overhead %d", len(env), len(sealed), store.SealOverhead)
	}
	mac := func(k, m []byte) []byte { h := hmac.New(sha256.New, k); h.Write(m); return h.Sum(nil) }
	block, err := aes.NewCipher(mac(mac(key, []byte("postern/store/v1 envelope-seal")), id[:]))
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	ad := append([]byte("postern/store/v1 envelope"), ref[:]...)
	plain, err := gcm.Open(nil, sealed[:12], sealed[12:], ad)
	if err != nil || !bytes.Equal(plain, env) {
		t.Fatalf("standard AES-GCM open = %q, %v", plain, err)
	}
	if again := k.Seal(id, ref, env); bytes.Equal(again, sealed) {
		t.Fatal("two seals of one envelope are equal: nonce not random")
	}
}

func TestOpenRefuses(t *testing.T) {
	k, _, id := goldenKeys(t)
	other, err := store.NewKeys(bytes.Repeat([]byte{1}, store.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	env := []byte("an envelope")
	ref := k.Ref(env)
	sealed := k.Seal(id, ref, env)
	if got, err := k.Open(id, ref, sealed); err != nil || !bytes.Equal(got, env) {
		t.Fatalf("Open = %q, %v; want the envelope", got, err)
	}
	otherID := id
	otherID[0] ^= 1
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name   string
		keys   *store.Keys
		id     [store.IDSize]byte
		ref    store.Ref
		sealed []byte
	}{
		{"other id", k, otherID, ref, sealed},
		{"other ref", k, id, store.Ref{1}, sealed},
		{"other store key", other, id, ref, sealed},
		{"altered", k, id, ref, flipped},
		{"truncated", k, id, ref, sealed[:store.SealOverhead-1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.keys.Open(tc.id, tc.ref, tc.sealed)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if msg := err.Error(); strings.Contains(msg, hex.EncodeToString(tc.id[:4])) || !strings.Contains(msg, "corrupt") {
				t.Fatalf("error %q: want a corruption error that names no id", msg)
			}
		})
	}
}

func TestNewKeysSize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := store.NewKeys(make([]byte, n)); err == nil {
			t.Errorf("NewKeys accepted a %d-byte key", n)
		}
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a zero Keys hashed an id instead of panicking")
		}
	}()
	var zero store.Keys
	zero.MailboxHash([store.IDSize]byte{})
}

// TestSealOutbox pins the outbox's at-rest format: AES-256-GCM under
// HMAC(HMAC(key, outbox label), dest), nonce first, with the label and dest
// as associated data; and checks that outbox and envelope keys differ even
// for a mailbox id equal to the destination.
func TestSealOutbox(t *testing.T) {
	k, key, dest := goldenKeys(t)
	item := []byte("a forward layer")
	sealed := k.SealOutbox(dest, item)
	if len(sealed) != len(item)+store.SealOverhead {
		t.Fatalf("sealed %d bytes into %d, want overhead %d", len(item), len(sealed), store.SealOverhead)
	}
	mac := func(k, m []byte) []byte { h := hmac.New(sha256.New, k); h.Write(m); return h.Sum(nil) }
	block, err := aes.NewCipher(mac(mac(key, []byte("postern/store/v1 outbox-seal")), dest[:]))
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := gcm.Open(nil, sealed[:12], sealed[12:], append([]byte("postern/store/v1 outbox"), dest[:]...))
	if err != nil || !bytes.Equal(plain, item) {
		t.Fatalf("standard AES-GCM open = %q, %v", plain, err)
	}
	if got, err := k.OpenOutbox(dest, sealed); err != nil || !bytes.Equal(got, item) {
		t.Fatalf("OpenOutbox = %q, %v", got, err)
	}
	if bytes.Equal(k.SealOutbox(dest, item), sealed) {
		t.Fatal("two seals of one item are equal: nonce not random")
	}
	// Same bytes as a mailbox id: the envelope key must not open it.
	if _, err := k.Open(dest, store.Ref{}, sealed); err == nil {
		t.Fatal("an envelope key opened an outbox item")
	}
	env := k.Seal(dest, store.Ref{}, item)
	if _, err := k.OpenOutbox(dest, env); err == nil {
		t.Fatal("the outbox key opened an envelope")
	}
	other := dest
	other[0] ^= 1
	flipped := bytes.Clone(sealed)
	flipped[20] ^= 1
	for name, tc := range map[string]struct {
		dest   [32]byte
		sealed []byte
	}{"other dest": {other, sealed}, "altered": {dest, flipped}, "truncated": {dest, sealed[:5]}} {
		_, err := k.OpenOutbox(tc.dest, tc.sealed)
		if err == nil || !strings.Contains(err.Error(), "corrupt") || strings.Contains(err.Error(), hex.EncodeToString(tc.dest[:4])) {
			t.Fatalf("%s: OpenOutbox error %v: want a corruption error naming no destination", name, err)
		}
	}
}

// TestEnvelopeCipher: a mailbox's cipher seals and opens as Keys does, in
// place too, and refuses what Keys refuses.
func TestEnvelopeCipher(t *testing.T) {
	k, _, id := goldenKeys(t)
	c := k.Envelopes(id)
	env := bytes.Repeat([]byte("envelope "), 500)
	ref := k.Ref(env)
	sealed := c.Seal(ref, env)
	if got, err := k.Open(id, ref, sealed); err != nil || !bytes.Equal(got, env) {
		t.Fatalf("Keys.Open of the cipher's Seal: %v", err)
	}
	if got, err := c.Open(ref, k.Seal(id, ref, env)); err != nil || !bytes.Equal(got, env) {
		t.Fatalf("cipher Open of Keys.Seal: %v", err)
	}
	// sealed in a larger buffer whose tail must survive.
	tail := []byte("the next item's bytes")
	buf := append(bytes.Clone(sealed), tail...)
	got, err := c.OpenInPlace(ref, buf[:len(sealed)])
	if err != nil || !bytes.Equal(got, env) {
		t.Fatalf("OpenInPlace: %v", err)
	}
	if &got[0] != &buf[0] {
		t.Fatal("OpenInPlace allocated: want the envelope in sealed's memory")
	}
	if !bytes.Equal(buf[len(sealed):], tail) {
		t.Fatal("OpenInPlace wrote past len(sealed)")
	}
	otherID := id
	otherID[0] ^= 1
	flipped := bytes.Clone(sealed)
	flipped[20] ^= 1
	for name, in := range map[string]struct {
		c      store.EnvelopeCipher
		sealed []byte
	}{
		"another mailbox's cipher": {k.Envelopes(otherID), bytes.Clone(sealed)},
		"altered":                  {c, flipped},
		"truncated":                {c, bytes.Clone(sealed[:store.SealOverhead-1])},
	} {
		got, err := in.c.OpenInPlace(ref, in.sealed)
		if err == nil || !strings.Contains(err.Error(), "corrupt") || got != nil {
			t.Fatalf("%s: OpenInPlace = %d bytes, %v; want nothing and a corruption error", name, len(got), err)
		}
	}
}

// TestKeysCipherCache: more mailboxes (512) than Keys' cipher cache has
// slots (128), used in an order that keeps evicting; each envelope opens
// with its own id, from the cache and from keys derived anew, and with no
// other.
func TestKeysCipherCache(t *testing.T) {
	key := make([]byte, store.KeySize)
	rand.Read(key)
	k, err := store.NewKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	const n = 512
	ids := make([][store.IDSize]byte, n)
	sealed := make([][]byte, n)
	for i := range ids {
		rand.Read(ids[i][:])
		env := fmt.Appendf(nil, "envelope %d", i)
		sealed[i] = k.Seal(ids[i], k.Ref(env), env)
	}
	for _, i := range mathrand.Perm(n) {
		env := fmt.Appendf(nil, "envelope %d", i)
		ref := k.Ref(env)
		fresh, err := store.NewKeys(key)
		if err != nil {
			t.Fatal(err)
		}
		for _, kk := range []*store.Keys{k, fresh} {
			got, err := kk.Open(ids[i], ref, sealed[i])
			if err != nil || !bytes.Equal(got, env) {
				t.Fatalf("mailbox %d: open = %q, %v", i, got, err)
			}
		}
		if _, err := k.Open(ids[(i+1)%n], ref, sealed[i]); err == nil {
			t.Fatalf("mailbox %d's envelope opened with mailbox %d's id", i, (i+1)%n)
		}
	}
}
