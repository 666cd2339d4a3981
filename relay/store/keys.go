package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// KeySize is the size of the store key (Options.IDKey, store.key).
const KeySize = 32

// Labels separating the keys derived from the store key.
const (
	labelMailbox = "postern/store/v1 mailbox-id"
	labelRef     = "postern/store/v1 envelope-ref"
	labelSeal    = "postern/store/v1 envelope-seal"
	labelCheck   = "postern/store/v1 key-check"
	sealAAD      = "postern/store/v1 envelope"
)

// sealOverhead is what at-rest encryption adds to an envelope: a 12-byte
// random nonce and a 16-byte GCM tag.
const sealOverhead = 12 + 16

// keys are the secrets derived from one store key.
type keys struct {
	mailboxKey [32]byte // HMAC key for mailbox id hashes
	refKey     [32]byte // HMAC key for envelope refs
	sealKey    [32]byte // HMAC key deriving per-mailbox envelope keys
	check      [32]byte // stored in the data file to detect a wrong key
}

func newKeys(idKey []byte) (*keys, error) {
	if len(idKey) != KeySize {
		return nil, fmt.Errorf("store key must be %d bytes, got %d", KeySize, len(idKey))
	}
	k := new(keys)
	k.mailboxKey = mac(idKey, []byte(labelMailbox))
	k.refKey = mac(idKey, []byte(labelRef))
	k.sealKey = mac(idKey, []byte(labelSeal))
	k.check = mac(idKey, []byte(labelCheck))
	return k, nil
}

func randomKey() []byte {
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}

func mac(key, msg []byte) (out [32]byte) {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	h.Sum(out[:0])
	return out
}

// hid is the only form in which a mailbox id is kept.
func (k *keys) hid(id [IDSize]byte) [32]byte { return mac(k.mailboxKey[:], id[:]) }

// refOf is the ref of an envelope.
func (k *keys) refOf(env []byte) Ref { return Ref(mac(k.refKey[:], env)) }

// aead returns the at-rest cipher of mailbox id. It needs the id itself, not
// its hash: the data file alone cannot open envelopes.
func (k *keys) aead(id [IDSize]byte) cipher.AEAD {
	key := mac(k.sealKey[:], id[:])
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // 32-byte key: cannot fail
	}
	a, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		panic(err)
	}
	return a
}

var errCorrupt = errors.New("store: data file corrupt: an envelope failed authentication; restore from backup or delete the mailbox")

func (k *keys) seal(id [IDSize]byte, ref Ref, env []byte) []byte {
	return k.aead(id).Seal(nil, nil, env, sealAD(ref))
}

func (k *keys) open(id [IDSize]byte, ref Ref, sealed []byte) ([]byte, error) {
	env, err := k.aead(id).Open(nil, nil, sealed, sealAD(ref))
	if err != nil {
		return nil, errCorrupt
	}
	return env, nil
}

func sealAD(ref Ref) []byte {
	ad := make([]byte, 0, len(sealAAD)+RefSize)
	ad = append(ad, sealAAD...)
	return append(ad, ref[:]...)
}
