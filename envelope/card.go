package envelope

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Contact card: what a user hands others to be reachable. One line:
//
//	postern-card1:<base64url without padding of body || checksum>
//
// body:
//
//	version   1 byte   = 1
//	mailbox   32       mailbox id on the home relay
//	nsuites   1        1..2, then per suite in preference order:
//	  suite   1        Suite
//	  keylen  2        big endian; 1216 (X-Wing) or 32 (X25519)
//	  key     keylen   KEM public key for that suite
//	auth      32       X25519 sender-authentication public key
//	nrelays   1        0..8 home-relay descriptors, each:
//	  len     2        big endian, 1..MaxDescriptorLen
//	  desc    len      printable ASCII, opaque to this package
//	caplen    1        0..MaxSendCapLen
//	sendcap   caplen   optional send capability
//
// checksum: the first 4 bytes of SHA-256(CardPrefix || body). A mistyped card
// fails with ErrChecksum instead of decoding to someone else's keys.
const (
	CardPrefix       = "postern-card1:"
	cardVersion      = 1
	MaxRelays        = 8
	MaxDescriptorLen = 8192
	MaxSendCapLen    = 64
	// MaxCardLen bounds the text form ParseCard accepts.
	MaxCardLen = 96 << 10
)

// Card is a parsed contact card.
type Card struct {
	Mailbox [MailboxIDSize]byte
	// Relays are home-relay descriptors, opaque strings here.
	Relays []string
	// Suites the recipient accepts, preferred first.
	Suites []Suite
	// XWing and X25519 are the KEM public keys for the suites listed.
	XWing, X25519 []byte
	// Auth is the recipient's X25519 sender-authentication public key.
	Auth []byte
	// SendCap is an optional send capability (see the relay).
	SendCap []byte
}

// Card builds this identity's contact card for a mailbox, accepting both
// suites with X-Wing preferred.
func (id *Identity) Card(mailbox [MailboxIDSize]byte, relays []string, sendCap []byte) *Card {
	p := id.Public()
	return &Card{
		Mailbox: mailbox,
		Relays:  append([]string(nil), relays...),
		Suites:  []Suite{SuiteXWing, SuiteX25519},
		XWing:   p.XWing, X25519: p.X25519, Auth: p.Auth,
		SendCap: append([]byte(nil), sendCap...),
	}
}

func (c *Card) key(s Suite) []byte {
	if s == SuiteXWing {
		return c.XWing
	}
	return c.X25519
}

// Accepts reports whether the card lists suite s.
func (c *Card) Accepts(s Suite) bool {
	for _, x := range c.Suites {
		if x == s {
			return true
		}
	}
	return false
}

func (c *Card) validate() error {
	if len(c.Suites) == 0 || len(c.Suites) > 2 {
		return fmt.Errorf("%w: must list 1 or 2 suites", ErrCard)
	}
	seen := map[Suite]bool{}
	for _, s := range c.Suites {
		if !s.valid() {
			return fmt.Errorf("%w: %w: %d", ErrCard, ErrSuite, s)
		}
		if seen[s] {
			return fmt.Errorf("%w: suite %s listed twice", ErrCard, s)
		}
		seen[s] = true
		k := c.key(s)
		if len(k) != s.publicKeySize() {
			return fmt.Errorf("%w: %s key is %d bytes, want %d", ErrCard, s, len(k), s.publicKeySize())
		}
		if _, err := s.kem().NewPublicKey(k); err != nil {
			return fmt.Errorf("%w: invalid %s key", ErrCard, s)
		}
	}
	if len(c.Auth) != 32 {
		return fmt.Errorf("%w: auth key is %d bytes, want 32", ErrCard, len(c.Auth))
	}
	if !usableX25519(c.Auth) {
		return fmt.Errorf("%w: invalid auth key (a low-order point)", ErrCard)
	}
	if len(c.Relays) > MaxRelays {
		return fmt.Errorf("%w: %d relays, at most %d", ErrCard, len(c.Relays), MaxRelays)
	}
	for i, r := range c.Relays {
		if len(r) == 0 || len(r) > MaxDescriptorLen {
			return fmt.Errorf("%w: relay %d: length %d not in 1..%d", ErrCard, i+1, len(r), MaxDescriptorLen)
		}
		for j := 0; j < len(r); j++ {
			if r[j] < 0x21 || r[j] > 0x7e {
				return fmt.Errorf("%w: relay %d: not printable ASCII without spaces", ErrCard, i+1)
			}
		}
	}
	if len(c.SendCap) > MaxSendCapLen {
		return fmt.Errorf("%w: send capability is %d bytes, at most %d", ErrCard, len(c.SendCap), MaxSendCapLen)
	}
	return nil
}

// String encodes the card as one copy-pasteable line. It panics if the card
// is invalid; use Encode to get an error instead.
func (c *Card) String() string {
	s, err := c.Encode()
	if err != nil {
		panic(err)
	}
	return s
}

// Encode encodes the card as one line, or reports why it is invalid.
func (c *Card) Encode() (string, error) {
	if err := c.validate(); err != nil {
		return "", err
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddUint8(cardVersion)
	b.AddBytes(c.Mailbox[:])
	b.AddUint8(uint8(len(c.Suites)))
	for _, s := range c.Suites {
		b.AddUint8(uint8(s))
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.key(s)) })
	}
	b.AddBytes(c.Auth)
	b.AddUint8(uint8(len(c.Relays)))
	for _, r := range c.Relays {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(r)) })
	}
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.SendCap) })
	body, err := b.Bytes()
	if err != nil {
		// Unreachable: validate bounds every count and length.
		return "", fmt.Errorf("%w: %v", ErrCard, err)
	}
	sum := cardChecksum(body)
	return CardPrefix + base64.RawURLEncoding.EncodeToString(append(body, sum[:]...)), nil
}

func cardChecksum(body []byte) [4]byte {
	h := sha256.New()
	h.Write([]byte(CardPrefix))
	h.Write(body)
	var out [4]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Advice for a card whose checksum matches but whose contents do not: it
// was made that way, so copying it again does not help.
const (
	adviceNewCard = "ask its owner for a new card"
	adviceUpgrade = "upgrade postern, or ask the card's owner for a card this version reads"
)

// ParseCard parses a contact card line. Surrounding whitespace is ignored;
// everything else must be exact. Errors wrap ErrCard (ErrChecksum for a
// checksum mismatch, ErrVersion for an unknown version).
func ParseCard(s string) (*Card, error) {
	body, err := cardBody(s)
	if err != nil {
		return nil, err
	}
	c, err := decodeCard(body)
	if err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w; %s", err, adviceNewCard)
	}
	return c, nil
}

// cardBody checks the prefix, the encoding and the checksum of a card line
// and returns its body.
func cardBody(s string) (cryptobyte.String, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxCardLen {
		return nil, fmt.Errorf("%w: %d characters, longer than any card; copy just the line starting with %q", ErrCard, len(s), CardPrefix)
	}
	if !strings.HasPrefix(s, CardPrefix) {
		if strings.HasPrefix(s, "postern-card") {
			return nil, fmt.Errorf("%w: %w: prefix %q, this build reads %q; upgrade postern", ErrCard, ErrVersion, strings.SplitN(s, ":", 2)[0]+":", CardPrefix)
		}
		return nil, fmt.Errorf("%w: does not start with %q; copy the whole line", ErrCard, CardPrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(s[len(CardPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: invalid characters (copy the whole line again): %v", ErrCard, err)
	}
	if len(raw) < 5 {
		return nil, fmt.Errorf("%w: too short (truncated? copy the whole line again)", ErrCard)
	}
	body, sum := raw[:len(raw)-4], raw[len(raw)-4:]
	want := cardChecksum(body)
	if !bytes.Equal(sum, want[:]) {
		return nil, ErrChecksum
	}
	return body, nil
}

// decodeCard decodes a card body whose checksum matched. Fields that are
// byte slices share the body's memory (each capped at its own length), so
// the body must not be reused. Only the structure and the suites are
// checked here; validate checks the rest.
func decodeCard(body cryptobyte.String) (*Card, error) {
	var v uint8
	if !body.ReadUint8(&v) {
		return nil, cardTruncated("the version")
	}
	if v != cardVersion {
		return nil, fmt.Errorf("%w: %w: card version %d, this build reads %d; %s", ErrCard, ErrVersion, v, cardVersion, adviceUpgrade)
	}
	c := &Card{}
	if !body.CopyBytes(c.Mailbox[:]) {
		return nil, cardTruncated("the mailbox id")
	}
	if err := decodeSuites(&body, c); err != nil {
		return nil, err
	}
	if !body.ReadBytes(&c.Auth, 32) {
		return nil, cardTruncated("the auth key")
	}
	if err := decodeRelays(&body, c); err != nil {
		return nil, err
	}
	var sendCap cryptobyte.String
	if !body.ReadUint8LengthPrefixed(&sendCap) {
		return nil, cardTruncated("the send capability")
	}
	if len(sendCap) != 0 {
		c.SendCap = sendCap
	}
	if !body.Empty() {
		return nil, fmt.Errorf("%w: %d unexpected bytes at the end; %s", ErrCard, len(body), adviceNewCard)
	}
	// cryptobyte hands out slices of the body whose capacity runs on over
	// the fields after them: capped, an append to one cannot overwrite
	// the next.
	c.XWing, c.X25519, c.Auth, c.SendCap = slices.Clip(c.XWing), slices.Clip(c.X25519), slices.Clip(c.Auth), slices.Clip(c.SendCap)
	return c, nil
}

// decodeSuites reads the suite count and each suite with its KEM key.
func decodeSuites(body *cryptobyte.String, c *Card) error {
	var n uint8
	if !body.ReadUint8(&n) {
		return cardTruncated("the suite list")
	}
	if n < 1 || n > 2 {
		return fmt.Errorf("%w: %d suites, want 1 or 2; %s", ErrCard, n, adviceNewCard)
	}
	for i := 0; i < int(n); i++ {
		var st uint8
		var key cryptobyte.String
		if !body.ReadUint8(&st) || !body.ReadUint16LengthPrefixed(&key) {
			return cardTruncated(fmt.Sprintf("suite %d", i+1))
		}
		s := Suite(st)
		if !s.valid() {
			return fmt.Errorf("%w: %w: suite %d, this build knows %s and %s; %s", ErrCard, ErrSuite, st, SuiteXWing, SuiteX25519, adviceUpgrade)
		}
		if c.Accepts(s) {
			return fmt.Errorf("%w: suite %s listed twice; %s", ErrCard, s, adviceNewCard)
		}
		c.Suites = append(c.Suites, s)
		if s == SuiteXWing {
			c.XWing = key
		} else {
			c.X25519 = key
		}
	}
	return nil
}

// decodeRelays reads the relay count and each relay descriptor.
func decodeRelays(body *cryptobyte.String, c *Card) error {
	var n uint8
	if !body.ReadUint8(&n) {
		return cardTruncated("the relay list")
	}
	if n > MaxRelays {
		return fmt.Errorf("%w: %d relays, at most %d; %s", ErrCard, n, MaxRelays, adviceNewCard)
	}
	for i := 0; i < int(n); i++ {
		var r cryptobyte.String
		if !body.ReadUint16LengthPrefixed(&r) {
			return cardTruncated(fmt.Sprintf("relay %d", i+1))
		}
		c.Relays = append(c.Relays, string(r))
	}
	return nil
}

// cardTruncated reports a body that ends inside where. The checksum
// matched, so the card was made short, not cut while copying.
func cardTruncated(where string) error {
	return fmt.Errorf("%w: truncated in %s; %s", ErrCard, where, adviceNewCard)
}

// probeKey is a fixed scalar used only to detect low-order X25519 points,
// for which every Diffie-Hellman result is zero.
var probeKey, _ = ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{0x5a}, 32))

func usableX25519(pub []byte) bool {
	pk, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return false
	}
	_, err = probeKey.ECDH(pk)
	return err == nil
}
