package store_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/relay/store"
)

// TestSealForward: a forward opens with its old id only, to the new id and
// verifier sealed; another id, a flipped byte, or a mailbox's envelope key
// opens nothing, with an error naming no id.
func TestSealForward(t *testing.T) {
	k, err := store.NewKeys(bytes.Repeat([]byte{7}, store.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	var oldID, newID [store.IDSize]byte
	copy(oldID[:], bytes.Repeat([]byte{0x11}, store.IDSize))
	copy(newID[:], bytes.Repeat([]byte{0x22}, store.IDSize))
	for _, capv := range [][]byte{nil, []byte("a verifier of 32 bytes.........!")} {
		sealed := k.SealForward(oldID, newID, capv)
		if len(sealed) != store.SealOverhead+store.IDSize+len(capv) || bytes.Contains(sealed, newID[:8]) {
			t.Fatalf("sealed forward: %d bytes, or holds the new id", len(sealed))
		}
		to, v, err := k.OpenForward(oldID, sealed)
		if err != nil || to != newID || !bytes.Equal(v, capv) {
			t.Fatalf("OpenForward = to the new id %v, %q, %v", to == newID, v, err)
		}
		bad := slices.Clone(sealed)
		bad[len(bad)/2] ^= 1
		for name, try := range map[string]func() error{
			"another id":       func() error { _, _, err := k.OpenForward(newID, sealed); return err },
			"a flipped byte":   func() error { _, _, err := k.OpenForward(oldID, bad); return err },
			"the envelope key": func() error { _, err := k.Open(oldID, store.Ref{}, sealed); return err },
			"the mailbox keys": func() error { _, err := k.OpenMailbox(oldID, sealed); return err },
		} {
			err := try()
			if err == nil || strings.Contains(strings.ToLower(err.Error()), hex.EncodeToString(oldID[:4])) {
				t.Fatalf("opening with %s: %v", name, err)
			}
		}
	}
}

// TestSealMailboxKeys: a mailbox's keys open with its id only, whole
// (owner, verifier, chain); another id or a flipped byte opens nothing.
func TestSealMailboxKeys(t *testing.T) {
	k, err := store.NewKeys(bytes.Repeat([]byte{8}, store.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	id := [store.IDSize]byte{3}
	owner := ed25519.PublicKey(bytes.Repeat([]byte{0xAB}, ed25519.PublicKeySize))
	for _, m := range []store.MailboxKeys{
		{Owner: owner},
		{Owner: owner, SendCap: []byte("verifier"), Chain: []uint32{20000, 20001, 1 << 31}},
	} {
		sealed := k.SealMailbox(id, m)
		if bytes.Contains(sealed, owner[:8]) {
			t.Fatal("the sealed keys hold the owner key")
		}
		got, err := k.OpenMailbox(id, sealed)
		if err != nil || !got.Owner.Equal(m.Owner) || !bytes.Equal(got.SendCap, m.SendCap) || !slices.Equal(got.Chain, m.Chain) {
			t.Fatalf("OpenMailbox = %+v, %v; want %+v", got, err, m)
		}
		bad := slices.Clone(sealed)
		bad[len(bad)-1] ^= 1
		if _, err := k.OpenMailbox([store.IDSize]byte{4}, sealed); err == nil {
			t.Fatal("opened with another id")
		}
		if _, err := k.OpenMailbox(id, bad); err == nil {
			t.Fatal("opened with a flipped byte")
		}
	}
}
