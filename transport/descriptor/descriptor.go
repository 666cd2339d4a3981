// Package descriptor encodes, signs and parses relay descriptors ("bridge
// lines"): everything a client needs to reach one relay, in one
// copy-pasteable line.
//
// A relay operator makes a descriptor with [Descriptor.Sign] and hands it out
// (chat, QR code, contact card). A client checks it with [Parse] and dials the
// endpoints it lists through the transport registry, using
// [Endpoint.TransportEndpoint]. The relay's Ed25519 signing key is in the
// descriptor, so a descriptor proves only that it was made by the holder of
// that key; the relay id ([Descriptor.RelayID]) names the key, and clients
// that already know a relay compare ids.
//
// # Line format
//
//	postern-relay1:<base64url without padding of body || signature>
//
// The line is one token with no inner whitespace; surrounding whitespace is
// ignored. The whole line, prefix included, is at most [MaxLineSize]
// characters.
//
// # Body layout
//
// All integers are big-endian; "len" is a one-byte length unless noted. Every
// byte is significant: there are no reserved or ignored fields, and the
// encoding of a descriptor is unique.
//
//	version          1 B   Version (1)
//	relay key len    1 B   32
//	relay key       32 B   Ed25519 public key of the relay
//	issued           8 B   Unix seconds when the descriptor was made
//	expires          8 B   Unix seconds after which it is refused; > issued
//	envelope suite   1 B   0 = no envelope key; else the envelope suite of the
//	                       key that follows (1 X-Wing, 2 X25519)
//	envelope key len 2 B   0..MaxEnvelopeKeySize; 0 exactly when suite is 0
//	envelope key     n B   the relay's HPKE public key for two-hop sealed
//	                       forwarding (X-Wing: 1216 bytes); opaque here
//	endpoint count   1 B   1..MaxEndpoints, then for each endpoint:
//	  transport len  1 B   1..16
//	  transport      n B   registry name: [a-z][a-z0-9-]*
//	  addr len       1 B   1..255
//	  addr           n B   host:port, port 1..65535 without leading zeros
//	  sni len        1 B   0..253 (0: use the host of addr)
//	  sni            n B   hostname: [A-Za-z0-9.-]
//	  path len       1 B   1..255
//	  path           n B   secret HTTP path: "/" then visible ASCII but ? and #
//	  key len        1 B   32
//	  key           32 B   session authentication key (see transport/httpsession)
//	  pin len        1 B   0 or 32
//	  pin            n B   SHA-256 of the server certificate's
//	                       SubjectPublicKeyInfo (self-signed relays)
//	  fingerprint len 1 B  0..32 (0: the transport's default)
//	  fingerprint    n B   ClientHello preset name: [a-z0-9_-]
//	  flags          1 B   bit 0: unbound (a CDN front terminates TLS);
//	                       other bits zero
//	signature       64 B   Ed25519 by the relay key over
//	                       SignatureContext || body
//
// # Versions
//
//	1  first version.
//
// A client refuses a version it does not know ([ErrVersion]) instead of
// guessing; a new format gets a new version byte and, if old clients must not
// even try, a new prefix.
package descriptor

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/postern/postern/transport"
)

const (
	// Prefix starts every descriptor line.
	Prefix = "postern-relay1:"
	// Version is the body format version this package reads and writes.
	Version = 1
	// SignatureContext domain-separates the descriptor signature.
	SignatureContext = "postern relay descriptor v1\x00"
	// MaxLineSize bounds a descriptor line, prefix included, in bytes.
	MaxLineSize = 8 << 10
	// MaxEndpoints bounds the endpoints of one descriptor.
	MaxEndpoints = 16
	// MaxEnvelopeKeySize bounds the envelope public key.
	MaxEnvelopeKeySize = 2048
	// KeySize is the size of an endpoint's session key.
	KeySize = transport.KeySize
	// PinSize is the size of a certificate pin.
	PinSize = sha256.Size

	maxTransportName = 16
	maxSNI           = 253
	maxFingerprint   = 32
	// maxUnix is the last second of year 9999: later times are refused so
	// that every accepted time formats and compares sanely.
	maxUnix = 253402300799

	flagUnbound = 1 << 0

	relayIDContext = "postern relay id"
)

// Descriptor describes one relay.
type Descriptor struct {
	// RelayKey is the relay's Ed25519 signing key. Sign sets it.
	RelayKey ed25519.PublicKey
	// EnvelopeSuite is the envelope suite of EnvelopeKey (1 X-Wing, 2
	// X25519); zero when EnvelopeKey is empty.
	EnvelopeSuite uint8
	// EnvelopeKey is the relay's HPKE public key for two-hop sealed
	// forwarding, or empty for a relay that does not forward.
	EnvelopeKey []byte
	// Endpoints are the ways to reach the relay, in the operator's order
	// of preference. At least one, at most MaxEndpoints.
	Endpoints []Endpoint
	// Issued and Expires bound the descriptor's validity, to the second.
	Issued  time.Time
	Expires time.Time
	// Line is the signed line Parse or ParseStale read this descriptor
	// from (surrounding whitespace removed), to hand on to another relay;
	// empty for a descriptor built in memory. Sign ignores it.
	Line string
}

// Endpoint is one way to reach a relay: a transport at an address.
type Endpoint struct {
	// Transport is the transport registry name, for example "https".
	Transport string
	// Addr is host:port.
	Addr string
	// SNI is the TLS server name; empty means the host of Addr.
	SNI string
	// Path is the secret HTTP path of relay sessions, starting with "/".
	Path string
	// Key is the 32-byte session authentication key.
	Key []byte
	// CertSHA256 optionally pins the SHA-256 of the server certificate's
	// SubjectPublicKeyInfo; empty means verify against system roots.
	CertSHA256 []byte
	// Fingerprint names the ClientHello preset; empty means the
	// transport's default.
	Fingerprint string
	// Unbound is set when a TLS-terminating front (a CDN) sits between
	// client and relay, so session tokens cannot be bound to TLS.
	Unbound bool
}

// TransportEndpoint converts e to the dialing type of package transport. The
// result shares no memory with e.
func (e Endpoint) TransportEndpoint() transport.Endpoint {
	return transport.Endpoint{
		Transport:   e.Transport,
		Addr:        e.Addr,
		SNI:         e.SNI,
		Path:        e.Path,
		Key:         clone(e.Key),
		CertSHA256:  clone(e.CertSHA256),
		Fingerprint: e.Fingerprint,
		Unbound:     e.Unbound,
	}
}

// RelayID returns the relay id of d.RelayKey; see RelayIDOf.
func (d *Descriptor) RelayID() string { return RelayIDOf(d.RelayKey) }

// RelayIDOf returns the relay id of an Ed25519 public key: the first 16
// bytes of SHA-256("postern relay id" || key) as 26 lower-case base32
// characters. It is safe to show and log; it names a relay, not a user.
func RelayIDOf(key ed25519.PublicKey) string {
	h := sha256.New()
	h.Write([]byte(relayIDContext))
	h.Write(key)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil)[:16]))
}

// Sign sets d.RelayKey to the public half of priv, checks d and returns the
// signed descriptor line. It fails with the same errors Parse would.
func (d *Descriptor) Sign(priv ed25519.PrivateKey) (string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", fail(ErrKeySize, ": signing key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	d.RelayKey = priv.Public().(ed25519.PublicKey)
	if err := d.validate(); err != nil {
		return "", err
	}
	body := d.appendBody(nil)
	out := append(body, ed25519.Sign(priv, signedMessage(body))...)
	line := Prefix + base64.RawURLEncoding.EncodeToString(out)
	if len(line) > MaxLineSize {
		return "", fail(ErrTooLarge, ": %d characters, the limit is %d; list fewer endpoints", len(line), MaxLineSize)
	}
	return line, nil
}

// Parse checks a descriptor line and returns the descriptor it carries. It
// refuses anything malformed, not signed by the key it carries, or expired at
// now (normally time.Now()). Every error matches one of the package's Err
// sentinels with errors.Is, and its message says what to do. There is
// deliberately no way to parse without verifying: an expired descriptor's
// error names its relay id and expiry date, which is what a user needs to ask
// for a fresh one.
func Parse(line string, now time.Time) (*Descriptor, error) {
	d, err := parse(line)
	if err != nil {
		return nil, err
	}
	d.Line = strings.TrimSpace(line)
	if !now.Before(d.Expires) {
		return nil, fail(ErrExpired, " on %s: ask the relay operator for a fresh one (relay %s)",
			d.Expires.Format("2006-01-02 15:04 UTC"), d.RelayID())
	}
	return d, nil
}

// ParseStale is Parse for a descriptor that may have expired: it verifies
// everything Parse does and returns an expired descriptor too, with stale
// true. A relay re-signs its descriptor before expiry without changing its
// keys, so a stale descriptor still reaches it; use ParseStale only to
// dial, then fetch the relay's current descriptor in-session and check it
// names the same relay (SameRelay).
func ParseStale(line string, now time.Time) (d *Descriptor, stale bool, err error) {
	d, err = parse(line)
	if err != nil {
		return nil, false, err
	}
	d.Line = strings.TrimSpace(line)
	return d, !now.Before(d.Expires), nil
}

// SameRelay reports whether two descriptors were signed by the same relay
// key.
func SameRelay(a, b *Descriptor) bool { return a.RelayKey.Equal(b.RelayKey) }

// parse does everything Parse does except the expiry check.
func parse(line string) (*Descriptor, error) {
	line = strings.TrimSpace(line)
	if len(line) > MaxLineSize {
		return nil, fail(ErrTooLarge, ": %d characters, the limit is %d", len(line), MaxLineSize)
	}
	if !strings.HasPrefix(line, Prefix) {
		if strings.HasPrefix(line, "postern-relay") {
			return nil, fail(ErrVersion, ": the line is for another version of postern (it reads %q lines); upgrade postern", Prefix)
		}
		return nil, fail(ErrPrefix, ": a relay descriptor starts with %q; copy the whole line", Prefix)
	}
	enc := line[len(Prefix):]
	for i := 0; i < len(enc); i++ {
		if !isBase64URL(enc[i]) {
			if enc[i] <= ' ' {
				return nil, fail(ErrEncoding, ": the line contains spaces or line breaks; paste it as one line")
			}
			return nil, fail(ErrEncoding, ": not valid base64url; copy the whole line again without changes")
		}
	}
	if len(enc)%4 == 1 {
		// No base64 text has this length: characters are missing (or,
		// rarely, were added) at the end.
		return nil, fail(ErrTruncated, ": the line is incomplete; copy the whole line again")
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, fail(ErrEncoding, ": not valid base64url; copy the whole line again without changes")
	}
	d, rest, err := decodeBody(raw)
	if err != nil {
		return nil, err
	}
	switch {
	case len(rest) < ed25519.SignatureSize:
		return nil, fail(ErrTruncated, " in the signature: the line is incomplete; copy the whole line again")
	case len(rest) > ed25519.SignatureSize:
		return nil, fail(ErrTrailing, ": %d extra bytes after the signature; copy exactly one line", len(rest)-ed25519.SignatureSize)
	}
	// Lenient decoding ignores unused bits in the last character; a
	// descriptor has exactly one spelling. (Checked after the structure so
	// that a line cut short is reported as such.)
	if base64.RawURLEncoding.EncodeToString(raw) != enc {
		return nil, fail(ErrEncoding, ": the last character was altered; copy the whole line again without changes")
	}
	body := raw[:len(raw)-len(rest)]
	if !ed25519.Verify(d.RelayKey, signedMessage(body), rest) {
		return nil, fail(ErrSignature, ": the line was altered or damaged; get it again from the relay operator")
	}
	return d, nil
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func signedMessage(body []byte) []byte {
	return append([]byte(SignatureContext), body...)
}

// decodeBody reads a body from the front of b and returns what follows it.
func decodeBody(b []byte) (*Descriptor, []byte, error) {
	s := cryptobyte.String(b)
	d, err := decodeHead(&s)
	if err != nil {
		return nil, nil, err
	}
	for i := range d.Endpoints {
		if err := decodeEndpoint(&s, &d.Endpoints[i], i+1); err != nil {
			return nil, nil, err
		}
	}
	if err := d.validate(); err != nil {
		return nil, nil, err
	}
	return d, s, nil
}

// decodeHead reads the fields before the endpoints and returns a descriptor
// with room for as many endpoints as the body announces. The validity period
// is checked only once the whole head is read, so a line cut short is
// reported as such.
func decodeHead(s *cryptobyte.String) (*Descriptor, error) {
	var v uint8
	if !s.ReadUint8(&v) {
		return nil, truncated("the version")
	}
	if v != Version {
		return nil, fail(ErrVersion, " %d: this postern reads version %d; upgrade postern", v, Version)
	}
	d := &Descriptor{}
	key, err := readFixed(s, ed25519.PublicKeySize, "the relay key", "relay key")
	if err != nil {
		return nil, err
	}
	d.RelayKey = ed25519.PublicKey(key)
	var issued, expires uint64
	if !s.ReadUint64(&issued) || !s.ReadUint64(&expires) {
		return nil, truncated("the validity period")
	}
	var envelopeKey cryptobyte.String
	if !s.ReadUint8(&d.EnvelopeSuite) || !s.ReadUint16LengthPrefixed(&envelopeKey) {
		return nil, truncated("the envelope key")
	}
	d.EnvelopeKey = clone(envelopeKey)
	var n uint8
	if !s.ReadUint8(&n) {
		return nil, truncated("the endpoint list")
	}
	if err := checkValidity(issued, expires); err != nil {
		return nil, err
	}
	d.Issued, d.Expires = time.Unix(int64(issued), 0).UTC(), time.Unix(int64(expires), 0).UTC()
	if n == 0 {
		return nil, fail(ErrNoEndpoints, ": the descriptor lists no way to reach the relay; ask the relay operator")
	}
	if n > MaxEndpoints {
		return nil, fail(ErrTooManyEndpoints, ": %d endpoints, the limit is %d", n, MaxEndpoints)
	}
	d.Endpoints = make([]Endpoint, n)
	return d, nil
}

// decodeEndpoint reads endpoint number n (1-based) into e. Only the flags
// are checked here; validate checks the fields.
func decodeEndpoint(s *cryptobyte.String, e *Endpoint, n int) error {
	where := fmt.Sprintf("endpoint %d", n)
	var transportName, addr, sni, path cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&transportName) || !s.ReadUint8LengthPrefixed(&addr) ||
		!s.ReadUint8LengthPrefixed(&sni) || !s.ReadUint8LengthPrefixed(&path) {
		return truncated(where)
	}
	key, err := readFixed(s, KeySize, where, "session key of "+where)
	if err != nil {
		return err
	}
	var pin, fingerprint cryptobyte.String
	var flags uint8
	if !s.ReadUint8LengthPrefixed(&pin) || !s.ReadUint8LengthPrefixed(&fingerprint) || !s.ReadUint8(&flags) {
		return truncated(where)
	}
	if flags&^flagUnbound != 0 {
		return fail(ErrFlags, ": endpoint %d has unknown flags %#02x; upgrade postern", n, flags)
	}
	*e = Endpoint{
		Transport:   string(transportName),
		Addr:        string(addr),
		SNI:         string(sni),
		Path:        string(path),
		Key:         key,
		CertSHA256:  clone(pin),
		Fingerprint: string(fingerprint),
		Unbound:     flags&flagUnbound != 0,
	}
	return nil
}

// readFixed reads a one-byte length that must be size, then a copy of that
// many bytes. where names the part of the body for a truncation error, what
// names the field for a size error.
func readFixed(s *cryptobyte.String, size int, where, what string) ([]byte, error) {
	var n uint8
	if !s.ReadUint8(&n) {
		return nil, truncated(where)
	}
	if int(n) != size {
		return nil, fail(ErrKeySize, ": the %s is %d bytes, want %d", what, n, size)
	}
	var v []byte
	if !s.ReadBytes(&v, size) {
		return nil, truncated(where)
	}
	return clone(v), nil
}

// truncated reports a body that ends inside where ("the relay key",
// "endpoint 2").
func truncated(where string) error {
	return fail(ErrTruncated, " in %s: the line is incomplete; copy the whole line again", where)
}

// appendBody appends the body encoding of a valid d to b.
func (d *Descriptor) appendBody(b []byte) []byte {
	b = append(b, Version)
	b = append(b, byte(len(d.RelayKey)))
	b = append(b, d.RelayKey...)
	b = binary.BigEndian.AppendUint64(b, uint64(d.Issued.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(d.Expires.Unix()))
	b = append(b, d.EnvelopeSuite)
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.EnvelopeKey)))
	b = append(b, d.EnvelopeKey...)
	b = append(b, byte(len(d.Endpoints)))
	for _, e := range d.Endpoints {
		for _, f := range [][]byte{[]byte(e.Transport), []byte(e.Addr), []byte(e.SNI), []byte(e.Path), e.Key, e.CertSHA256, []byte(e.Fingerprint)} {
			b = append(b, byte(len(f)))
			b = append(b, f...)
		}
		var flags byte
		if e.Unbound {
			flags |= flagUnbound
		}
		b = append(b, flags)
	}
	return b
}

func checkValidity(issued, expires uint64) error {
	switch {
	case issued == 0 || expires > maxUnix || issued > maxUnix:
		return fail(ErrValidity, ": validity times out of range")
	case expires <= issued:
		return fail(ErrValidity, ": expires before it was issued")
	}
	return nil
}

// validate checks everything about d but its signature.
func (d *Descriptor) validate() error {
	if len(d.RelayKey) != ed25519.PublicKeySize {
		return fail(ErrKeySize, ": the relay key is %d bytes, want %d", len(d.RelayKey), ed25519.PublicKeySize)
	}
	if d.Issued.Unix() <= 0 || d.Expires.Unix() <= 0 {
		return fail(ErrValidity, ": issue and expiry times must both be set")
	}
	if err := checkValidity(uint64(d.Issued.Unix()), uint64(d.Expires.Unix())); err != nil {
		return err
	}
	switch {
	case len(d.EnvelopeKey) > MaxEnvelopeKeySize:
		return fail(ErrEnvelopeKey, ": %d bytes, the limit is %d", len(d.EnvelopeKey), MaxEnvelopeKeySize)
	case len(d.EnvelopeKey) == 0 && d.EnvelopeSuite != 0:
		return fail(ErrEnvelopeKey, ": suite %d without a key", d.EnvelopeSuite)
	case len(d.EnvelopeKey) != 0 && d.EnvelopeSuite == 0:
		return fail(ErrEnvelopeKey, ": a key without a suite")
	}
	if len(d.Endpoints) == 0 {
		return fail(ErrNoEndpoints, ": a descriptor needs at least one endpoint")
	}
	if len(d.Endpoints) > MaxEndpoints {
		return fail(ErrTooManyEndpoints, ": %d endpoints, the limit is %d", len(d.Endpoints), MaxEndpoints)
	}
	for i, e := range d.Endpoints {
		if err := e.validate(); err != nil {
			return fmt.Errorf("endpoint %d: %w", i+1, err)
		}
	}
	return nil
}

// validate checks one endpoint. Messages never repeat the address, the path
// or a key: descriptor errors may end up in logs.
func (e *Endpoint) validate() error {
	if !validName(e.Transport, maxTransportName, false) || e.Transport[0] < 'a' || e.Transport[0] > 'z' {
		return fail(ErrTransportName, ": transport names are 1 to %d characters a-z, 0-9 and '-', starting with a letter", maxTransportName)
	}
	if !validAddr(e.Addr) {
		return fail(ErrAddress, ": the address must be host:port with a port from 1 to 65535")
	}
	if e.SNI != "" && !validHostname(e.SNI) {
		return fail(ErrSNI, ": the server name must be a hostname of at most %d characters A-Z, a-z, 0-9, '.' and '-'", maxSNI)
	}
	if !validPath(e.Path) {
		return fail(ErrPath, ": the path must start with \"/\", be at most 255 characters, and hold no spaces, '?' or '#'")
	}
	if len(e.Key) != KeySize {
		return fail(ErrKeySize, ": the session key is %d bytes, want %d", len(e.Key), KeySize)
	}
	if len(e.CertSHA256) != 0 && len(e.CertSHA256) != PinSize {
		return fail(ErrKeySize, ": the certificate pin is %d bytes, want %d or none", len(e.CertSHA256), PinSize)
	}
	if e.Fingerprint != "" && !validName(e.Fingerprint, maxFingerprint, true) {
		return fail(ErrFingerprint, ": fingerprint names are at most %d characters a-z, 0-9, '-' and '_'", maxFingerprint)
	}
	return nil
}

func validName(s string, max int, underscore bool) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || underscore && c == '_') {
			return false
		}
	}
	return true
}

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > maxSNI || s[0] == '.' || s[0] == '-' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func validAddr(s string) bool {
	if len(s) == 0 || len(s) > math.MaxUint8 {
		return false
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || !validPort(port) {
		return false
	}
	if strings.Contains(host, ":") {
		// IPv6 literal: SplitHostPort only accepts it in brackets.
		return net.ParseIP(host) != nil
	}
	return validHostname(host)
}

func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 || p[0] == '0' {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n >= 1 && n <= 65535
}

func validPath(s string) bool {
	if len(s) == 0 || len(s) > math.MaxUint8 || s[0] != '/' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '?' || c == '#' {
			return false
		}
	}
	return true
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}
