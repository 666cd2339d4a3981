package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"
	"sync/atomic"
)

// KeySize is the size of the store key (Options.IDKey, a key file).
const KeySize = 32

// SealOverhead is what Keys.Seal adds to an envelope: a 12-byte random nonce
// and a 16-byte GCM tag.
const SealOverhead = 12 + 16

// Labels separating the keys derived from the store key. Changing one makes
// every existing data file unreadable.
const (
	labelMailbox = "postern/store/v1 mailbox-id"
	labelRef     = "postern/store/v1 envelope-ref"
	labelSeal    = "postern/store/v1 envelope-seal"
	labelCheck   = "postern/store/v1 key-check"
	labelFrame   = "postern/store/v1 frame-seed"
	sealAAD      = "postern/store/v1 envelope"
	labelOutbox  = "postern/store/v1 outbox-seal"
	outboxAAD    = "postern/store/v1 outbox"
	mailboxAAD   = "postern/store/v1 mailbox-keys"
	labelForward = "postern/store/v1 forward-seal"
	forwardAAD   = "postern/store/v1 forward"
)

// Keys are the secrets derived from one store key, for Store
// implementations. Every implementation replaces mailbox ids with
// MailboxHash and names envelopes with Ref; one that keeps envelopes outside
// process memory encrypts them with Seal and Open. Deriving them here means
// that one store key gives the same hashes and ciphertexts in every
// implementation and release.
//
// Keys are key material: never log them, nor anything they return. Make
// them with NewKeys; the zero value panics when used. Safe for concurrent
// use.
type Keys struct {
	mailboxKey [32]byte // HMAC key for mailbox id hashes
	refKey     [32]byte // HMAC key for envelope refs
	sealKey    [32]byte // HMAC key deriving per-mailbox envelope keys
	outboxKey  [32]byte // HMAC key deriving per-destination outbox keys
	forwardKey [32]byte // HMAC key deriving a rotated-away id's forward key
	check      [32]byte // kept beside the data to detect a wrong key
	frameKey   [32]byte // HMAC key for the log store's frame checksum seeds
	ok         bool

	// HMAC states keyed and ready, and the at-rest ciphers of recently
	// used mailboxes: deriving one costs an HMAC, an AES key schedule
	// and a GHASH table, more than sealing a 4 KiB envelope.
	mailboxMAC, refMAC macPool
	ciphers            [cipherSlots]atomic.Pointer[mailboxCipher]
}

// cipherSlots is the size of Keys' direct-mapped cipher cache, about
// 1 KB of memory per slot.
const cipherSlots = 128

// mailboxCipher is a cached at-rest cipher, named by its mailbox's hash
// (the cache keeps no mailbox id).
type mailboxCipher struct {
	hid  [32]byte
	aead cipher.AEAD
}

// macPool hands out HMAC-SHA256 states keyed with key, so that a MAC
// neither allocates nor hashes the key's pads again. A state goes back
// reset: it keeps no trace of the message.
type macPool struct {
	key  [32]byte
	pool sync.Pool
}

func (m *macPool) sum(msg []byte) (out [32]byte) {
	h, _ := m.pool.Get().(hash.Hash)
	if h == nil {
		h = hmac.New(sha256.New, m.key[:])
	}
	h.Write(msg)
	h.Sum(out[:0])
	h.Reset()
	m.pool.Put(h)
	return out
}

// NewKeys derives the keys of storeKey, which must be KeySize bytes.
func NewKeys(storeKey []byte) (*Keys, error) {
	if len(storeKey) != KeySize {
		return nil, fmt.Errorf("store key must be %d bytes, got %d", KeySize, len(storeKey))
	}
	k := &Keys{ok: true}
	k.mailboxKey = mac(storeKey, []byte(labelMailbox))
	k.refKey = mac(storeKey, []byte(labelRef))
	k.sealKey = mac(storeKey, []byte(labelSeal))
	k.outboxKey = mac(storeKey, []byte(labelOutbox))
	k.forwardKey = mac(storeKey, []byte(labelForward))
	k.check = mac(storeKey, []byte(labelCheck))
	k.frameKey = mac(storeKey, []byte(labelFrame))
	k.mailboxMAC.key, k.refMAC.key = k.mailboxKey, k.refKey
	return k, nil
}

func (k *Keys) must() {
	if !k.ok {
		panic("store: Keys used without NewKeys")
	}
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

// FrameSeed is where the checksums of a log segment's frames start: the
// first 4 bytes of HMAC-SHA256(k_frame, segment number), so that bytes a
// client chose (an owner key, a capability verifier, kept in the clear)
// cannot be made into a frame that checks in some future segment
// (relay/store/boltstore, "Recycled segments").
func (k *Keys) FrameSeed(segment uint64) uint32 {
	k.must()
	m := mac(k.frameKey[:], binary.BigEndian.AppendUint64(nil, segment))
	return binary.BigEndian.Uint32(m[:4])
}

// MailboxHash is HMAC-SHA256(k_id, id), the only form in which a store may
// keep a mailbox id.
func (k *Keys) MailboxHash(id [IDSize]byte) [32]byte {
	k.must()
	return k.mailboxMAC.sum(id[:])
}

// Ref is the ref of an envelope: HMAC-SHA256(k_ref, env).
func (k *Keys) Ref(env []byte) Ref {
	k.must()
	return Ref(k.refMAC.sum(env))
}

// Check is a value derived from the store key alone. A durable store keeps
// it beside its data so that it can refuse to open with a wrong key; it
// reveals nothing about the key or the other derived keys.
func (k *Keys) Check() [32]byte {
	k.must()
	return k.check
}

// aead returns the at-rest cipher of mailbox id. It needs the id itself, not
// its hash: the data alone cannot open envelopes.
func (k *Keys) aead(id [IDSize]byte) cipher.AEAD {
	hid := k.MailboxHash(id)
	slot := &k.ciphers[binary.LittleEndian.Uint32(hid[:])%cipherSlots]
	if c := slot.Load(); c != nil && c.hid == hid {
		return c.aead
	}
	a := newAEAD(mac(k.sealKey[:], id[:]))
	slot.Store(&mailboxCipher{hid: hid, aead: a})
	return a
}

func newAEAD(key [32]byte) cipher.AEAD {
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

// Seal encrypts envelope env of mailbox id for storage: AES-256-GCM under a
// key derived from the store key and the id (not its hash), with a random
// nonce and ref as associated data. The result is SealOverhead bytes longer
// than env.
func (k *Keys) Seal(id [IDSize]byte, ref Ref, env []byte) []byte {
	return k.Envelopes(id).Seal(ref, env)
}

// Open decrypts what Seal returned for the same id and ref. It fails, with
// an error that names no id, if anything differs or sealed was altered.
func (k *Keys) Open(id [IDSize]byte, ref Ref, sealed []byte) ([]byte, error) {
	return k.Envelopes(id).Open(ref, sealed)
}

// Envelopes returns the at-rest cipher of mailbox id's envelopes, the key
// derived once: for a caller that seals or opens several envelopes of one
// mailbox (deriving it costs an HMAC, an AES key schedule and a GHASH
// table, more than opening a 4 KiB envelope). Like Keys, it is key
// material; keep it no longer than the call that needs it.
func (k *Keys) Envelopes(id [IDSize]byte) EnvelopeCipher {
	return EnvelopeCipher{k.aead(id)}
}

// EnvelopeCipher seals and opens the envelopes of one mailbox; see
// Keys.Envelopes. Safe for concurrent use.
type EnvelopeCipher struct{ aead cipher.AEAD }

// Seal is Keys.Seal for this cipher's mailbox.
func (c EnvelopeCipher) Seal(ref Ref, env []byte) []byte {
	return c.AppendSeal(nil, ref, env)
}

// AppendSeal is Seal appending the sealed envelope to dst (which must not
// overlap env) and returning the extended slice.
func (c EnvelopeCipher) AppendSeal(dst []byte, ref Ref, env []byte) []byte {
	return c.aead.Seal(dst, nil, env, sealAD(ref))
}

// Open is Keys.Open for this cipher's mailbox.
func (c EnvelopeCipher) Open(ref Ref, sealed []byte) ([]byte, error) {
	return c.open(nil, ref, sealed)
}

// OpenInPlace is Open decrypting into sealed's own memory, which it
// overwrites whether it succeeds or fails; nothing past len(sealed) is
// touched, even where sealed's capacity reaches further. The envelope it
// returns shares that memory.
func (c EnvelopeCipher) OpenInPlace(ref Ref, sealed []byte) ([]byte, error) {
	return c.open(sealed[:0:len(sealed)], ref, sealed)
}

func (c EnvelopeCipher) open(dst []byte, ref Ref, sealed []byte) ([]byte, error) {
	env, err := c.aead.Open(dst, nil, sealed, sealAD(ref))
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

// SealOutbox encrypts outbox item item for destination relay dest for
// storage: AES-256-GCM under a key derived from the store key and dest
// with its own label, so that it never equals a mailbox's envelope key
// (even for a mailbox id equal to dest), a random nonce, and the label and
// dest as associated data. The result is SealOverhead bytes longer than
// item. Unlike an envelope, the store key and the data file together open
// it: the relay must be able to resume forwarding after a restart.
func (k *Keys) SealOutbox(dest [32]byte, item []byte) []byte {
	k.must()
	return newAEAD(mac(k.outboxKey[:], dest[:])).Seal(nil, nil, item, outboxAD(dest))
}

// OpenOutbox decrypts what SealOutbox returned for the same dest. It fails,
// with an error that names no destination, if anything differs or sealed
// was altered.
func (k *Keys) OpenOutbox(dest [32]byte, sealed []byte) ([]byte, error) {
	k.must()
	item, err := newAEAD(mac(k.outboxKey[:], dest[:])).Open(nil, nil, sealed, outboxAD(dest))
	if err != nil {
		return nil, errCorruptOutbox
	}
	return item, nil
}

var errCorruptOutbox = errors.New("store: data file corrupt: a forward outbox item failed authentication; restore from backup, or wait for the item to expire")

func outboxAD(dest [32]byte) []byte {
	return append([]byte(outboxAAD), dest[:]...)
}

// SealForward encrypts where mailbox oldID went when it was rotated away:
// the new id and the send capability verifier oldID had (empty if none).
// AES-256-GCM under a key derived from the store key and oldID itself
// (not its hash), with its own label, a random nonce and the label as
// associated data: the store key and the data together cannot open it,
// so a seized store does not link the two mailboxes by it; only a Send
// naming oldID can. The result is SealOverhead+IDSize+len(sendCap) bytes.
func (k *Keys) SealForward(oldID, newID [IDSize]byte, sendCap []byte) []byte {
	k.must()
	plain := append(newID[:len(newID):len(newID)], sendCap...)
	return newAEAD(mac(k.forwardKey[:], oldID[:])).Seal(nil, nil, plain, []byte(forwardAAD))
}

// OpenForward decrypts what SealForward returned for the same oldID. It
// fails, with an error that names no id, if anything differs or sealed
// was altered.
func (k *Keys) OpenForward(oldID [IDSize]byte, sealed []byte) (newID [IDSize]byte, sendCap []byte, err error) {
	k.must()
	plain, err := newAEAD(mac(k.forwardKey[:], oldID[:])).Open(nil, nil, sealed, []byte(forwardAAD))
	if err != nil || len(plain) < IDSize {
		return newID, nil, errCorruptForward
	}
	copy(newID[:], plain)
	if len(plain) > IDSize {
		sendCap = plain[IDSize:]
	}
	return newID, sendCap, nil
}

var errCorruptForward = errors.New("store: data file corrupt: a rotated mailbox's forward failed authentication; restore from backup")

// MailboxKeys is what a store keeps of a mailbox beside its hash and
// envelopes, sealed at rest (Keys.SealMailbox).
type MailboxKeys struct {
	Owner   ed25519.PublicKey // verifies fetch, ack, rotate and delete
	SendCap []byte            // send capability verifier; empty if none
	// Chain holds the days on which the forwards into this mailbox end
	// (Store.RotateMailbox): one for each rotation that led here and
	// forwards still, oldest first. Options.NextChain bounds it.
	Chain []uint32
}

// SealMailbox encrypts what a store keeps of mailbox id beside its hash:
// its owner key, send capability verifier and forward chain. Under the
// mailbox's envelope key (derived from the store key and the id itself),
// with a random nonce and its own associated data: the data and the store
// key together do not show the owner key, which is the same on every relay
// of a card, so two seized stores are not linked by it, nor that the
// mailbox was rotated into.
func (k *Keys) SealMailbox(id [IDSize]byte, m MailboxKeys) []byte {
	plain := append(slices.Clip(m.Owner), byte(len(m.Chain)))
	for _, d := range m.Chain {
		plain = binary.BigEndian.AppendUint32(plain, d)
	}
	plain = append(plain, m.SendCap...)
	return k.aead(id).Seal(nil, nil, plain, []byte(mailboxAAD))
}

// OpenMailbox decrypts what SealMailbox returned for the same id. It
// fails, with an error that names no id, if anything differs or sealed
// was altered.
func (k *Keys) OpenMailbox(id [IDSize]byte, sealed []byte) (MailboxKeys, error) {
	plain, err := k.aead(id).Open(nil, nil, sealed, []byte(mailboxAAD))
	if err != nil || len(plain) < ed25519.PublicKeySize+1 {
		return MailboxKeys{}, errCorruptMailbox
	}
	m := MailboxKeys{Owner: ed25519.PublicKey(plain[:ed25519.PublicKeySize:ed25519.PublicKeySize])}
	n := int(plain[ed25519.PublicKeySize])
	rest := plain[ed25519.PublicKeySize+1:]
	if len(rest) < 4*n {
		return MailboxKeys{}, errCorruptMailbox
	}
	for i := range n {
		m.Chain = append(m.Chain, binary.BigEndian.Uint32(rest[4*i:]))
	}
	if rest = rest[4*n:]; len(rest) > 0 {
		m.SendCap = rest
	}
	return m, nil
}

var errCorruptMailbox = errors.New("store: data file corrupt: a mailbox's keys failed authentication; restore from backup or delete the mailbox")
