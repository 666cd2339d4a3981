package envelope

import (
	"crypto/hpke"
	"fmt"
)

// SealTo seals plaintext to a raw HPKE public key of suite s (X-Wing: 1216
// bytes, X25519: 32 bytes) in RFC 9180 base mode with the suite's KDF and
// AEAD, info and aad as given. It returns enc || ciphertext: Nenc bytes (1120
// for X-Wing, 32 for X25519), then the ciphertext with its 16-byte tag.
//
// It is the building block for layers other than the envelope itself (the
// relay forward layer); it adds no header, padding or sender
// authentication. Errors wrap ErrSuite for an unknown suite and
// ErrMalformed for a key of the wrong size or an invalid key.
func SealTo(s Suite, recipient []byte, info, aad, plaintext []byte) ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("%w: %d", ErrSuite, uint8(s))
	}
	if len(recipient) != s.publicKeySize() {
		return nil, fmt.Errorf("%w: %s public key is %d bytes, want %d", ErrMalformed, s, len(recipient), s.publicKeySize())
	}
	pk, err := parsedPublicKey(s, recipient)
	if err != nil {
		return nil, fmt.Errorf("%w: invalid %s public key", ErrMalformed, s)
	}
	enc, sender, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), info)
	if err != nil {
		return nil, fmt.Errorf("envelope: hpke: %w", err)
	}
	ct, err := sender.Seal(aad, plaintext)
	if err != nil {
		return nil, fmt.Errorf("envelope: hpke: %w", err)
	}
	out := make([]byte, 0, len(enc)+len(ct))
	return append(append(out, enc...), ct...), nil
}

// OpenFrom opens what SealTo sealed to id's public key of suite s (the
// XWing or X25519 key in id.Public()), with the same info and aad. Errors
// wrap ErrSuite for an unknown suite, ErrMalformed for input too short to
// hold an encapsulation and a tag, and ErrDecrypt for anything else (wrong
// key, info or aad, or modified bytes).
func (id *Identity) OpenFrom(s Suite, info, aad, sealed []byte) ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("%w: %d", ErrSuite, uint8(s))
	}
	if len(sealed) < s.encSize()+aeadOverhead {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a %s encapsulation and tag", ErrMalformed, len(sealed), s)
	}
	if id == nil {
		return nil, fmt.Errorf("%w: no identity", ErrDecrypt)
	}
	n := s.encSize()
	r, err := hpke.NewRecipient(sealed[:n], id.privateKey(s), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), info)
	if err != nil {
		return nil, ErrDecrypt
	}
	pt, err := r.Open(aad, sealed[n:])
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}
