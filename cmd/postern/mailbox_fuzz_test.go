package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoadMailbox writes arbitrary bytes as an identity's mailbox state
// file (mode 0600) and loads it. Invariants: no panic; every error names the
// file; an accepted state has a 32-byte mailbox id and an Ed25519 seed that
// makes an owner key, and written back as `mailbox create` writes it loads
// to the same state.
func FuzzLoadMailbox(f *testing.F) {
	good := mailboxState{
		Relay:   "postern-relay1:AAAA",
		ID:      bytes.Repeat([]byte{1}, 32),
		Owner:   bytes.Repeat([]byte{2}, ed25519.SeedSize),
		SendCap: bytes.Repeat([]byte{3}, 32),
		Card:    "postern-card2:AAAA",
	}
	if out, err := json.MarshalIndent(good, "", "  "); err == nil {
		f.Add(append(out, '\n'))
	}
	f.Add([]byte(`{"id": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "owner": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}`))
	f.Add([]byte(`{"id": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "owner": "AgIC"}`))
	f.Add([]byte(`{"id": null, "owner": null}`))
	f.Add([]byte(`{"ID": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "Owner": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", "id": "AQ=="}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	dir := f.TempDir()
	idPath := filepath.Join(dir, "alice.id")
	idAgain := filepath.Join(dir, "again.id")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(mailboxPath(idPath), data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := loadMailbox(idPath)
		if err != nil {
			if m != nil {
				t.Fatal("error with a state")
			}
			if !strings.Contains(err.Error(), mailboxPath(idPath)) {
				t.Fatalf("error does not name the file %s: %v", mailboxPath(idPath), err)
			}
			return
		}
		if len(m.ID) != 32 || len(m.Owner) != ed25519.SeedSize {
			t.Fatalf("accepted a state with a %d-byte id and a %d-byte owner seed", len(m.ID), len(m.Owner))
		}
		if id := m.id(); !bytes.Equal(id[:], m.ID) {
			t.Fatal("id() differs from the stored id")
		}
		owner := m.owner()
		if !bytes.Equal(owner.Seed(), m.Owner) {
			t.Fatal("owner key does not come from the stored seed")
		}
		sig := ed25519.Sign(owner, []byte("postern"))
		if !ed25519.Verify(owner.Public().(ed25519.PublicKey), []byte("postern"), sig) {
			t.Fatal("owner key does not sign")
		}
		out, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mailboxPath(idAgain), append(out, '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
		back, err := loadMailbox(idAgain)
		if err != nil {
			t.Fatalf("accepted state written back is rejected: %v", err)
		}
		if back.Relay != m.Relay || !bytes.Equal(back.ID, m.ID) || !bytes.Equal(back.Owner, m.Owner) ||
			!bytes.Equal(back.SendCap, m.SendCap) || back.Card != m.Card {
			t.Fatal("accepted state does not survive a round trip")
		}
	})
}
