package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Golden vectors: envelopes, a card and an identity file made once and
// committed under testdata/golden. Open must keep accepting them, so the
// wire format cannot drift silently. Regenerate only for a deliberate format
// change (which must also bump a version):
//
//	POSTERN_UPDATE_GOLDEN=1 go test ./envelope -run TestGolden
const goldenDir = "testdata/golden"

type goldenVector struct {
	File    string `json:"file"`
	Suite   string `json:"suite"`
	Bucket  int    `json:"bucket"`
	Sender  string `json:"sender"` // hex auth key, "" for anonymous
	Payload string `json:"payload"`
	ID      string `json:"id"`
	Mailbox string `json:"mailbox"`
}

type goldenManifest struct {
	Card    string         `json:"card"`
	Vectors []goldenVector `json:"vectors"`
}

func TestGolden(t *testing.T) {
	if os.Getenv("POSTERN_UPDATE_GOLDEN") == "1" {
		writeGolden(t)
	}
	raw, err := os.ReadFile(filepath.Join(goldenDir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m goldenManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	recipient, err := ParseIdentity(mustRead(t, "recipient.id"))
	if err != nil {
		t.Fatal(err)
	}
	card, err := ParseCard(m.Card)
	if err != nil {
		t.Fatalf("golden card: %v", err)
	}
	if card.String() != m.Card {
		t.Fatal("re-encoding the golden card gives another line: the card encoding changed")
	}
	if !bytes.Equal(card.XWing, recipient.Public().XWing) || !bytes.Equal(card.Auth, recipient.AuthKey()) {
		t.Fatal("golden card does not carry the golden recipient's keys")
	}
	if len(m.Vectors) != 12 {
		t.Fatalf("%d vectors, want 12", len(m.Vectors))
	}
	for _, v := range m.Vectors {
		t.Run(v.File, func(t *testing.T) {
			env := mustRead(t, v.File)
			if len(env) != v.Bucket {
				t.Fatalf("%d bytes, want %d", len(env), v.Bucket)
			}
			o, err := Open(recipient, env)
			if err != nil {
				t.Fatal(err)
			}
			if o.Suite.String() != v.Suite || hex.EncodeToString(o.Payload) != v.Payload ||
				hex.EncodeToString(o.ID[:]) != v.ID || hex.EncodeToString(o.Mailbox[:]) != v.Mailbox ||
				hex.EncodeToString(o.Sender) != v.Sender {
				t.Fatalf("opened fields differ from the manifest")
			}
			if o.Mailbox != card.Mailbox {
				t.Fatal("envelope not addressed to the golden card's mailbox")
			}
		})
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeGolden(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(goldenDir, 0o755); err != nil {
		t.Fatal(err)
	}
	recipient, sender := newID(t), newID(t)
	rb, err := recipient.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rb = append([]byte("# TEST VECTOR ONLY: this key is public, never use it.\n"), rb...)
	if err := os.WriteFile(filepath.Join(goldenDir, "recipient.id"), rb, 0o644); err != nil {
		t.Fatal(err)
	}
	card := recipient.Card(randMailbox(t), []string{"postern-relay1:golden-test-descriptor"}, []byte("cap"))
	m := goldenManifest{Card: card.String()}
	for _, s := range suites {
		for _, b := range Buckets {
			for _, anon := range []bool{false, true} {
				from := sender
				if anon {
					from = nil
				}
				payload := []byte(fmt.Sprintf("golden %s %d anon=%v", s, b, anon))
				env, err := Seal(card, from, payload, &Options{Suite: s, Bucket: b})
				if err != nil {
					t.Fatal(err)
				}
				o, err := Open(recipient, env)
				if err != nil {
					t.Fatal(err)
				}
				name := fmt.Sprintf("%s-%d-%s.env", s, b/1024, map[bool]string{true: "anon", false: "auth"}[anon])
				if err := os.WriteFile(filepath.Join(goldenDir, name), env, 0o644); err != nil {
					t.Fatal(err)
				}
				m.Vectors = append(m.Vectors, goldenVector{
					File: name, Suite: s.String(), Bucket: b, Sender: hex.EncodeToString(o.Sender),
					Payload: hex.EncodeToString(payload), ID: hex.EncodeToString(o.ID[:]),
					Mailbox: hex.EncodeToString(card.Mailbox[:]),
				})
			}
		}
	}
	out, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(goldenDir, "manifest.json"), append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
