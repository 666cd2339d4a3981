package envelope

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
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
	var b bytes.Buffer
	b.WriteByte(cardVersion)
	b.Write(c.Mailbox[:])
	b.WriteByte(byte(len(c.Suites)))
	for _, s := range c.Suites {
		b.WriteByte(byte(s))
		b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(c.key(s)))))
		b.Write(c.key(s))
	}
	b.Write(c.Auth)
	b.WriteByte(byte(len(c.Relays)))
	for _, r := range c.Relays {
		b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(r))))
		b.WriteString(r)
	}
	b.WriteByte(byte(len(c.SendCap)))
	b.Write(c.SendCap)
	sum := cardChecksum(b.Bytes())
	b.Write(sum[:])
	return CardPrefix + base64.RawURLEncoding.EncodeToString(b.Bytes()), nil
}

func cardChecksum(body []byte) [4]byte {
	h := sha256.New()
	h.Write([]byte(CardPrefix))
	h.Write(body)
	var out [4]byte
	copy(out[:], h.Sum(nil))
	return out
}

// ParseCard parses a contact card line. Surrounding whitespace is ignored;
// everything else must be exact. Errors wrap ErrCard (ErrChecksum for a
// checksum mismatch, ErrVersion for an unknown version).
func ParseCard(s string) (*Card, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxCardLen {
		return nil, fmt.Errorf("%w: %d characters, longer than any card", ErrCard, len(s))
	}
	if !strings.HasPrefix(s, CardPrefix) {
		if strings.HasPrefix(s, "postern-card") {
			return nil, fmt.Errorf("%w: %w: prefix %q, this build reads %q; upgrade postern", ErrCard, ErrVersion, strings.SplitN(s, ":", 2)[0]+":", CardPrefix)
		}
		return nil, fmt.Errorf("%w: does not start with %q", ErrCard, CardPrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(s[len(CardPrefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: invalid characters (copy the whole line again): %v", ErrCard, err)
	}
	if len(raw) < 5 {
		return nil, fmt.Errorf("%w: too short (truncated?)", ErrCard)
	}
	body, sum := raw[:len(raw)-4], raw[len(raw)-4:]
	want := cardChecksum(body)
	if !bytes.Equal(sum, want[:]) {
		return nil, ErrChecksum
	}
	r := reader{b: body}
	if v := r.byte(); v != cardVersion {
		if r.err != nil {
			return nil, fmt.Errorf("%w: truncated", ErrCard)
		}
		return nil, fmt.Errorf("%w: %w: card version %d, this build reads %d", ErrCard, ErrVersion, v, cardVersion)
	}
	c := &Card{}
	copy(c.Mailbox[:], r.bytes(MailboxIDSize))
	ns := int(r.byte())
	if r.err == nil && (ns < 1 || ns > 2) {
		return nil, fmt.Errorf("%w: %d suites, want 1 or 2", ErrCard, ns)
	}
	for i := 0; i < ns && r.err == nil; i++ {
		st := Suite(r.byte())
		kl := int(r.uint16())
		key := r.bytes(kl)
		if r.err != nil {
			break
		}
		if !st.valid() {
			return nil, fmt.Errorf("%w: %w: %d", ErrCard, ErrSuite, st)
		}
		if c.Accepts(st) {
			return nil, fmt.Errorf("%w: suite %s listed twice", ErrCard, st)
		}
		c.Suites = append(c.Suites, st)
		if st == SuiteXWing {
			c.XWing = key
		} else {
			c.X25519 = key
		}
	}
	c.Auth = r.bytes(32)
	nr := int(r.byte())
	if r.err == nil && nr > MaxRelays {
		return nil, fmt.Errorf("%w: %d relays, at most %d", ErrCard, nr, MaxRelays)
	}
	for i := 0; i < nr && r.err == nil; i++ {
		l := int(r.uint16())
		c.Relays = append(c.Relays, string(r.bytes(l)))
	}
	cl := int(r.byte())
	c.SendCap = r.bytes(cl)
	if r.err != nil {
		return nil, fmt.Errorf("%w: truncated", ErrCard)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d unexpected bytes at the end", ErrCard, len(r.b))
	}
	if len(c.SendCap) == 0 {
		c.SendCap = nil
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// reader is a small strict cursor; after the first short read every call
// returns zero values and err stays set.
type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || len(r.b) < n {
		r.err = ErrMalformed
		return nil
	}
	out := append([]byte(nil), r.b[:n]...)
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) uint16() uint16 {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
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
