package envelope

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
)

const (
	flagAuth     = 1 << 0
	flagFragment = 1 << 1
	flagsKnown   = flagAuth | flagFragment

	exporterLabel = "postern sender auth v1"
	senderKeyInfo = "postern sender key v1"
	senderTagCtx  = "postern sender tag v1"
)

// Options tune Seal. A nil *Options or the zero value picks the card's
// preferred suite and the smallest bucket the payload fits in.
type Options struct {
	// Suite forces a suite; it must be one the card accepts.
	Suite Suite
	// Bucket forces a bucket size (Bucket4K, Bucket16K or Bucket64K).
	Bucket int
	// MessageID names the message (see Opened.MessageID); zero picks a
	// random one. A sender that seals a message again, into another
	// bucket after a send whose envelopes the relay may have stored, gives
	// every sealing the same MessageID: a recipient then takes the message
	// once, whichever sealing reaches it. Never give two messages the same
	// id: the second is taken for a copy of the first.
	MessageID [IDSize]byte
}

// Opened is a successfully opened envelope.
type Opened struct {
	// ID is the random envelope id; feed it to a ReplayCache.
	ID [IDSize]byte
	// Sender is the sender's authenticated X25519 public key, nil if the
	// envelope is anonymous.
	Sender []byte
	// Payload is the content.
	Payload []byte
	// Suite and Mailbox come from the outer header.
	Suite   Suite
	Mailbox [MailboxIDSize]byte
	// Fragment is set when Payload is one fragment of a longer message
	// (see SealMessage and Joiner).
	Fragment bool
	// MessageID names the message the envelope carries, or carries part
	// of: a whole envelope's ID, or its fragments' message id (unmasked,
	// see SealMessage). Every sealing of one message has the same
	// MessageID (Options.MessageID); record it once the message is taken
	// and treat an envelope whose MessageID was recorded as a replay.
	MessageID [IDSize]byte
}

// Anonymous reports whether the envelope carried no sender.
func (o *Opened) Anonymous() bool { return o.Sender == nil }

// Header is the outer header of an envelope.
type Header struct {
	Version byte
	Suite   Suite
	Mailbox [MailboxIDSize]byte
}

// ParseHeader validates an envelope's size and outer header without any
// cryptography.
func ParseHeader(env []byte) (Header, error) {
	var h Header
	if !isBucket(len(env)) {
		return h, fmt.Errorf("%w: %d bytes is not a bucket size", ErrMalformed, len(env))
	}
	if env[0] != Version {
		return h, fmt.Errorf("%w: envelope version %d, this build reads %d", ErrVersion, env[0], Version)
	}
	h.Version = env[0]
	h.Suite = Suite(env[1])
	if !h.Suite.valid() {
		return h, fmt.Errorf("%w: %d", ErrSuite, env[1])
	}
	copy(h.Mailbox[:], env[2:HeaderSize])
	return h, nil
}

// PeekMailbox is what a relay calls: it checks the size and the outer header
// and returns the recipient mailbox id, learning nothing else.
func PeekMailbox(env []byte) ([MailboxIDSize]byte, error) {
	h, err := ParseHeader(env)
	return h.Mailbox, err
}

// Seal seals payload to the card's mailbox and keys. from authenticates the
// sender (deniably, see the package documentation); nil sends anonymously.
// The result is exactly one bucket long. A payload larger than the largest
// bucket holds gives an error matching ErrPayloadTooLarge; use SealMessage.
func Seal(to *Card, from *Identity, payload []byte, opts *Options) ([]byte, error) {
	return seal(to, from, payload, 0, opts)
}

func pickSuiteBucket(to *Card, n int, opts *Options) (Suite, int, error) {
	if to == nil {
		return 0, 0, fmt.Errorf("%w: no contact card", ErrCard)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	s := o.Suite
	if s == 0 {
		if len(to.Suites) == 0 {
			return 0, 0, fmt.Errorf("%w: card lists no suite", ErrSuite)
		}
		s = to.Suites[0]
	}
	if !s.valid() || !to.Accepts(s) {
		return 0, 0, fmt.Errorf("%w: %s is not accepted by this contact", ErrSuite, s)
	}
	if o.Bucket != 0 {
		if !isBucket(o.Bucket) {
			return 0, 0, fmt.Errorf("%w: %d", ErrBadBucket, o.Bucket)
		}
		if max := MaxPayload(s, o.Bucket); n > max {
			return 0, 0, &TooLargeError{Size: n, Max: max}
		}
		return s, o.Bucket, nil
	}
	for _, b := range Buckets {
		if n <= MaxPayload(s, b) {
			return s, b, nil
		}
	}
	return 0, 0, &TooLargeError{Size: n, Max: MaxPayload(s, Bucket64K)}
}

func seal(to *Card, from *Identity, payload []byte, extraFlags byte, opts *Options) ([]byte, error) {
	s, bucket, err := pickSuiteBucket(to, len(payload), opts)
	if err != nil {
		return nil, err
	}
	pk, err := parsedPublicKey(s, to.key(s))
	if err != nil {
		return nil, fmt.Errorf("%w: invalid %s key", ErrCard, s)
	}
	enc, sender, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), s.info())
	if err != nil {
		return nil, fmt.Errorf("envelope: hpke: %w", err)
	}
	out := make([]byte, HeaderSize, bucket)
	out[0] = Version
	out[1] = byte(s)
	copy(out[2:], to.Mailbox[:])
	header := out[:HeaderSize]
	out = append(out, enc...)

	inner := make([]byte, bucket-len(out)-aeadOverhead)
	inner[0] = extraFlags
	if opts != nil && opts.MessageID != ([IDSize]byte{}) {
		copy(inner[1:1+IDSize], opts.MessageID[:])
	} else {
		rand.Read(inner[1 : 1+IDSize])
	}
	if from != nil {
		inner[0] |= flagAuth
		spub := from.AuthKey()
		copy(inner[17:49], spub)
		tag, err := senderTag(from, sender.Export, header, inner[:17], spub, to.Auth, to.Auth)
		if err != nil {
			return nil, err
		}
		copy(inner[49:81], tag)
	}
	binary.BigEndian.PutUint32(inner[81:85], uint32(len(payload)))
	copy(inner[innerFixed:], payload)
	ct, err := sender.Seal(header, inner)
	if err != nil {
		return nil, fmt.Errorf("envelope: hpke: %w", err)
	}
	out = append(out, ct...)
	if len(out) != bucket {
		panic("envelope: internal size mismatch")
	}
	return out, nil
}

// senderTag computes the deniable sender tag. self is the identity whose
// auth private key takes part (the sender when sealing, the recipient when
// opening); peer is the other party's auth public key; spub and rpub are the
// sender's and the recipient's auth public keys.
func senderTag(self *Identity, export func(string, int) ([]byte, error), header, flagsID, spub, peer, rpub []byte) ([]byte, error) {
	dh, err := self.staticSecret(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: invalid sender key", ErrBadSender)
	}
	exp, err := export(exporterLabel, 32)
	if err != nil {
		return nil, fmt.Errorf("envelope: hpke export: %w", err)
	}
	ikm := make([]byte, 0, len(dh)+len(exp))
	ikm = append(append(ikm, dh...), exp...)
	info := make([]byte, 0, len(senderKeyInfo)+64)
	info = append(append(append(info, senderKeyInfo...), spub...), rpub...)
	key, err := hkdf.Key(sha256.New, ikm, nil, string(info), 32)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(senderTagCtx))
	m.Write(header)
	m.Write(flagsID)
	m.Write(spub)
	return m.Sum(nil), nil
}

// Open opens an envelope addressed to id. It returns an error matching
// ErrMalformed, ErrVersion, ErrSuite, ErrDecrypt or ErrBadSender; it does not
// check replays (use a ReplayCache on Opened.ID).
func Open(id *Identity, env []byte) (*Opened, error) {
	h, err := ParseHeader(env)
	if err != nil {
		return nil, err
	}
	if id == nil {
		return nil, fmt.Errorf("%w: no identity", ErrDecrypt)
	}
	header := env[:HeaderSize]
	enc := env[HeaderSize : HeaderSize+h.Suite.encSize()]
	ct := env[HeaderSize+h.Suite.encSize():]
	r, err := hpke.NewRecipient(enc, id.privateKey(h.Suite), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), h.Suite.info())
	if err != nil {
		return nil, ErrDecrypt
	}
	inner, err := r.Open(header, ct)
	if err != nil {
		return nil, ErrDecrypt
	}
	o := &Opened{Suite: h.Suite, Mailbox: h.Mailbox}
	flags := inner[0]
	if flags&^flagsKnown != 0 {
		return nil, fmt.Errorf("%w: unknown inner flags %#x", ErrMalformed, flags)
	}
	copy(o.ID[:], inner[1:17])
	o.Fragment = flags&flagFragment != 0
	n := binary.BigEndian.Uint32(inner[81:85])
	if uint64(n) > uint64(len(inner)-innerFixed) {
		return nil, fmt.Errorf("%w: payload length beyond the envelope", ErrMalformed)
	}
	for _, b := range inner[innerFixed+int(n):] {
		if b != 0 {
			return nil, fmt.Errorf("%w: non-zero padding", ErrMalformed)
		}
	}
	spub, tag := inner[17:49], inner[49:81]
	if flags&flagAuth != 0 {
		rpub := id.AuthKey()
		want, err := senderTag(id, r.Export, header, inner[:17], spub, spub, rpub)
		if err != nil {
			return nil, err
		}
		if !hmac.Equal(tag, want) {
			return nil, ErrBadSender
		}
		o.Sender = append([]byte(nil), spub...)
	} else {
		for _, b := range inner[17:81] {
			if b != 0 {
				return nil, fmt.Errorf("%w: anonymous envelope with sender fields", ErrMalformed)
			}
		}
	}
	o.Payload = inner[innerFixed : innerFixed+int(n) : innerFixed+int(n)]
	o.MessageID = o.ID
	if o.Fragment {
		if len(o.Payload) < fragmentHeader {
			return nil, fmt.Errorf("%w: fragment shorter than its header", ErrMalformed)
		}
		o.MessageID = maskMessageID([IDSize]byte(o.Payload[:IDSize]), len(env))
	}
	return o, nil
}

// Parsing an X-Wing public key expands the ML-KEM matrix, which costs about
// as much as a third of an encapsulation. Senders write to the same few
// contacts over and over, so parsed keys are kept in a small bounded cache.
var pkCache struct {
	sync.Mutex
	m map[string]hpke.PublicKey
}

const pkCacheMax = 1024

func parsedPublicKey(s Suite, key []byte) (hpke.PublicKey, error) {
	k := string(byte(s)) + string(key)
	pkCache.Lock()
	pk, ok := pkCache.m[k]
	pkCache.Unlock()
	if ok {
		return pk, nil
	}
	pk, err := s.kem().NewPublicKey(key)
	if err != nil {
		return nil, err
	}
	pkCache.Lock()
	if pkCache.m == nil || len(pkCache.m) >= pkCacheMax {
		pkCache.m = make(map[string]hpke.PublicKey)
	}
	pkCache.m[k] = pk
	pkCache.Unlock()
	return pk, nil
}
