package boltstore

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"github.com/postern/postern/relay/store"
)

func TestRecordRoundTrip(t *testing.T) {
	owner := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	for _, cap := range [][]byte{nil, []byte("cap"), bytes.Repeat([]byte{9}, store.MaxSendCapSize)} {
		in := mailboxRecord{owner: owner, nextSeq: 1<<40 + 3, count: 7, bytes: 1 << 33, sendCap: cap}
		out, err := decodeMailbox(in.encode())
		if err != nil {
			t.Fatal(err)
		}
		if !out.owner.Equal(in.owner) || out.nextSeq != in.nextSeq || out.count != in.count ||
			out.bytes != in.bytes || !bytes.Equal(out.sendCap, in.sendCap) {
			t.Fatalf("mailbox record round trip: got %+v, want %+v", out, in)
		}
	}
	in := envelopeRecord{day: 20000, ref: store.Ref{1, 2, 3}, sealed: bytes.Repeat([]byte{5}, 4096+store.SealOverhead)}
	out, err := decodeEnvelope(in.encode())
	if err != nil {
		t.Fatal(err)
	}
	if out.day != in.day || out.ref != in.ref || !bytes.Equal(out.sealed, in.sealed) || out.plainLen() != 4096 {
		t.Fatal("envelope record round trip failed")
	}

	// Truncated, extended or mis-versioned records are refused.
	good := (&mailboxRecord{owner: owner, sendCap: []byte("cap")}).encode()
	bad := [][]byte{nil, good[:len(good)-1], append(bytes.Clone(good), 0), append([]byte{2}, good[1:]...)}
	for i, b := range bad {
		if _, err := decodeMailbox(b); err == nil {
			t.Errorf("bad mailbox record %d accepted", i)
		}
	}
	genv := in.encode()
	for i, b := range [][]byte{nil, genv[:envelopeFixed+store.SealOverhead], append([]byte{0}, genv[1:]...),
		make([]byte, envelopeFixed+store.SealOverhead+store.MaxEnvelopeSize+1)} {
		if _, err := decodeEnvelope(b); err == nil {
			t.Errorf("bad envelope record %d accepted", i)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to both on-disk record decoders: they must
// not panic, and whatever they accept must re-encode to the same bytes.
func FuzzDecode(f *testing.F) {
	owner := make([]byte, ed25519.PublicKeySize)
	f.Add((&mailboxRecord{owner: owner, nextSeq: 1}).encode())
	f.Add((&mailboxRecord{owner: owner, nextSeq: 9, count: 2, bytes: 8192, sendCap: []byte("x")}).encode())
	f.Add((&envelopeRecord{day: 1, sealed: make([]byte, 4096+store.SealOverhead)}).encode())
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeMailbox(b); err == nil {
			if len(r.owner) != ed25519.PublicKeySize || len(r.sendCap) > store.MaxSendCapSize {
				t.Fatal("decoded mailbox record out of bounds")
			}
			if !bytes.Equal(r.encode(), b) {
				t.Fatal("mailbox record does not re-encode to its input")
			}
		}
		if r, err := decodeEnvelope(b); err == nil {
			if r.plainLen() < 1 || r.plainLen() > store.MaxEnvelopeSize {
				t.Fatal("decoded envelope record out of bounds")
			}
			if !bytes.Equal(r.encode(), b) {
				t.Fatal("envelope record does not re-encode to its input")
			}
		}
	})
}
