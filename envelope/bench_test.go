package envelope

import (
	"crypto/ecdh"
	"crypto/hpke"
	"fmt"
	"testing"
)

// Benchmarks report each envelope operation beside the raw primitive cost
// measured in the same run: a bare hpke.Seal / hpke.Open of the same
// plaintext size with the same suite, and one X25519 scalar multiplication.
//
//	go test ./envelope -run '^$' -bench . -benchtime 2s

func benchSetup(b *testing.B) (*Identity, *Identity, *Card) {
	alice, err := NewIdentity()
	if err != nil {
		b.Fatal(err)
	}
	bob, err := NewIdentity()
	if err != nil {
		b.Fatal(err)
	}
	return alice, bob, bob.Card([32]byte{1}, nil, nil)
}

func BenchmarkEnvelope(b *testing.B) {
	alice, bob, card := benchSetup(b)
	for _, s := range suites {
		for _, bucket := range Buckets {
			payload := make([]byte, MaxPayload(s, bucket))
			ptLen := bucket - HeaderSize - s.encSize() - aeadOverhead
			pt := make([]byte, ptLen)
			pk, _ := s.kem().NewPublicKey(card.key(s))
			for _, mode := range []string{"auth", "anon"} {
				from := alice
				if mode == "anon" {
					from = nil
				}
				name := fmt.Sprintf("%s/%dK/%s", s, bucket>>10, mode)
				env, err := Seal(card, from, payload, &Options{Suite: s, Bucket: bucket})
				if err != nil {
					b.Fatal(err)
				}
				b.Run("Seal/"+name, func(b *testing.B) {
					b.SetBytes(int64(bucket))
					for b.Loop() {
						if _, err := Seal(card, from, payload, &Options{Suite: s, Bucket: bucket}); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run("Open/"+name, func(b *testing.B) {
					b.SetBytes(int64(bucket))
					for b.Loop() {
						if _, err := Open(bob, env); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run("SealOpen/"+name, func(b *testing.B) {
					b.SetBytes(int64(bucket))
					for b.Loop() {
						e, err := Seal(card, from, payload, &Options{Suite: s, Bucket: bucket})
						if err != nil {
							b.Fatal(err)
						}
						if _, err := Open(bob, e); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			// The raw baselines: the same HPKE suite over the same number of
			// plaintext bytes, with an already parsed public key.
			name := fmt.Sprintf("%s/%dK", s, bucket>>10)
			raw, _ := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info(), pt)
			b.Run("RawHPKESeal/"+name, func(b *testing.B) {
				b.SetBytes(int64(bucket))
				for b.Loop() {
					if _, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info(), pt); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("RawHPKEOpen/"+name, func(b *testing.B) {
				b.SetBytes(int64(bucket))
				for b.Loop() {
					if _, err := hpke.Open(bob.privateKey(s), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info(), raw); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("RawHPKESealOpen/"+name, func(b *testing.B) {
				b.SetBytes(int64(bucket))
				for b.Loop() {
					c, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info(), pt)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := hpke.Open(bob.privateKey(s), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info(), c); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkRawX25519(b *testing.B) {
	k1, _ := ecdh.X25519().GenerateKey(nil)
	k2, _ := ecdh.X25519().GenerateKey(nil)
	pub := k2.PublicKey()
	for b.Loop() {
		if _, err := k1.ECDH(pub); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealColdSender measures the first envelope between a pair of
// identities, when the static-static X25519 secret is not cached yet.
func BenchmarkSealColdSender(b *testing.B) {
	alice, _, card := benchSetup(b)
	payload := make([]byte, MaxPayload(SuiteXWing, Bucket16K))
	for b.Loop() {
		alice.mu.Lock()
		alice.dhCache = nil
		alice.mu.Unlock()
		if _, err := Seal(card, alice, payload, &Options{Bucket: Bucket16K}); err != nil {
			b.Fatal(err)
		}
	}
}
