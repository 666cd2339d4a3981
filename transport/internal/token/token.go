// Package token makes and checks the session tokens of Postern's HTTP
// transports. It is internal to transport/: only the session layer
// (transport/httpsession) and tests use it.
//
// A relay session starts as an HTTP request to the descriptor's secret path
// carrying a token in the cookie named [Cookie]. The token proves knowledge
// of the descriptor's 32-byte key without revealing it, is fresh (a time
// window), single-use (a nonce kept in a replay cache) and, when the client
// talks TLS directly to the relay, bound to this very TLS session through an
// RFC 5705/8446 exporter, so a token seen by a TLS-terminating middlebox is
// useless on any other connection.
//
// Wire layout, base64url without padding in the cookie value (76 characters):
//
//	flags   1 byte   bit 0: bound to the TLS exporter; other bits zero
//	minute  8 bytes  big-endian Unix time in minutes when it was made
//	nonce  16 bytes  random
//	mac    32 bytes  HMAC-SHA256(key, Label || flags || minute || nonce ||
//	                 uint16(len(path)) || path || binding)
//
// binding is the 32-byte TLS exporter value for label [ExporterLabel] and no
// context when bit 0 is set, and empty otherwise.
package token

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/postern/postern/transport"
)

const (
	// Cookie is the cookie that carries the session token.
	Cookie = "sid"
	// Label domain-separates the token MAC.
	Label = "postern session token v1"
	// ExporterLabel is the TLS exporter label for channel binding.
	ExporterLabel = "EXPORTER-postern-session-v1"
	// ExporterLen is the length of the channel binding value.
	ExporterLen = 32
	// Size is the decoded size of a token.
	Size = 1 + 8 + 16 + 32
	// Skew is how far a token's minute may be from the verifier's clock.
	Skew = 2 * time.Minute
	// ReplayCacheSize bounds the nonces a verifier remembers. When full of
	// live nonces, new unbound tokens are refused rather than old nonces
	// forgotten; bound tokens are still accepted (see Verify).
	ReplayCacheSize = 1 << 16

	flagBound = 1
)

// Make returns a fresh session token for path. binding is the TLS
// exporter value (ExporterLen bytes) or nil for an unbound token.
func Make(key []byte, path string, binding []byte, now time.Time) (string, error) {
	if len(key) != transport.KeySize {
		return "", errors.New("session key must be 32 bytes")
	}
	if binding != nil && len(binding) != ExporterLen {
		return "", errors.New("channel binding must be 32 bytes")
	}
	var tok [Size]byte
	if binding != nil {
		tok[0] = flagBound
	}
	binary.BigEndian.PutUint64(tok[1:9], uint64(now.Unix()/60))
	rand.Read(tok[9:25])
	copy(tok[25:], tokenMAC(key, path, tok[:25], binding))
	return base64.RawURLEncoding.EncodeToString(tok[:]), nil
}

func tokenMAC(key []byte, path string, head, binding []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(Label))
	m.Write(head)
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(path)))
	m.Write(l[:])
	m.Write([]byte(path))
	m.Write(binding)
	return m.Sum(nil)
}

// Verifier checks session tokens and remembers their nonces. Create it
// with NewVerifier; it is safe for concurrent use.
type Verifier struct {
	key          []byte
	path         string
	allowUnbound bool
	now          func() time.Time

	mu    sync.Mutex
	seen  map[[16]byte]time.Time // nonce -> forget after
	order [][16]byte             // insertion order, for expiry
}

// NewVerifier returns a verifier for tokens made with key for path.
// now may be nil for time.Now.
func NewVerifier(key []byte, path string, allowUnbound bool, now func() time.Time) (*Verifier, error) {
	if len(key) != transport.KeySize {
		return nil, errors.New("session key must be 32 bytes")
	}
	if now == nil {
		now = time.Now
	}
	return &Verifier{
		key: append([]byte(nil), key...), path: path, allowUnbound: allowUnbound, now: now,
		seen: make(map[[16]byte]time.Time),
	}, nil
}

// Verify checks tok against binding (the exporter value of the connection the
// token arrived on, or nil where none is available) and returns transport.OutcomeOK,
// transport.OutcomeAuthFailed or transport.OutcomeReplay. Only a valid token is recorded.
func (v *Verifier) Verify(tok string, binding []byte) transport.Outcome {
	if len(tok) != base64.RawURLEncoding.EncodedLen(Size) {
		return transport.OutcomeAuthFailed
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != Size {
		return transport.OutcomeAuthFailed
	}
	flags := raw[0]
	switch flags {
	case 0:
		if !v.allowUnbound {
			return transport.OutcomeAuthFailed
		}
		binding = nil
	case flagBound:
		if len(binding) != ExporterLen {
			return transport.OutcomeAuthFailed
		}
	default:
		return transport.OutcomeAuthFailed
	}
	if !hmac.Equal(raw[25:], tokenMAC(v.key, v.path, raw[:25], binding)) {
		return transport.OutcomeAuthFailed
	}
	now := v.now()
	made := time.Unix(int64(binary.BigEndian.Uint64(raw[1:9]))*60, 0)
	if d := now.Sub(made); d > Skew+time.Minute || d < -Skew {
		return transport.OutcomeAuthFailed
	}
	var nonce [16]byte
	copy(nonce[:], raw[9:25])
	v.mu.Lock()
	defer v.mu.Unlock()
	v.expireLocked(now)
	if _, ok := v.seen[nonce]; ok {
		return transport.OutcomeReplay
	}
	if len(v.seen) >= ReplayCacheSize {
		// Full of live nonces: somebody with the key is flooding. A bound
		// token is useless on any other TLS connection, so it is accepted
		// without being remembered (a reuse on its own connection gains its
		// owner nothing); an unbound token (CDN) must be refused, since it
		// could not be recognised if replayed.
		if flags == flagBound {
			return transport.OutcomeOK
		}
		return transport.OutcomeReplay
	}
	// A token stays acceptable for at most Skew+1m after its minute
	// (and was made at most Skew ahead of our clock): remember it that long.
	v.seen[nonce] = made.Add(Skew + 2*time.Minute)
	v.order = append(v.order, nonce)
	return transport.OutcomeOK
}

func (v *Verifier) expireLocked(now time.Time) {
	i := 0
	for ; i < len(v.order); i++ {
		n := v.order[i]
		if now.Before(v.seen[n]) {
			break
		}
		delete(v.seen, n)
	}
	if i > 0 {
		v.order = append(v.order[:0], v.order[i:]...)
	}
}
