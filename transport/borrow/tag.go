package borrow

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	utls "github.com/refraction-networking/utls"
)

// Tag parameters. See the package documentation, "Tag".
const (
	// TagSize is the size of the tag: the whole legacy_session_id.
	TagSize = 32
	// KeySize is the size of the secret a tag key is derived from: the
	// endpoint's session key (transport.KeySize).
	KeySize = 32
	// Window is the time bucket a tag binds; the listener also accepts the
	// windows on either side of its own.
	Window = 2 * time.Minute

	tagLabel   = "postern-borrow-v1"
	keyInfo    = "postern borrow tag key v1"
	replayKeyN = 16 // bytes of a tag the replay cache keeps
)

// ErrKeySize is returned for a secret that is not KeySize bytes.
var ErrKeySize = fmt.Errorf("borrow: the tag secret must be %d bytes (the endpoint's session key); check the relay descriptor or configuration", KeySize)

// ErrNotBuilt is returned by TagHello for a UConn whose ClientHello has not
// been built yet.
var ErrNotBuilt = errors.New("borrow: the ClientHello is not built: call BuildHandshakeState before TagHello")

// tagKey is the HMAC key of tags, derived from the endpoint's session key.
type tagKey [32]byte

func deriveKey(secret []byte) (tagKey, error) {
	var k tagKey
	if len(secret) != KeySize {
		return k, ErrKeySize
	}
	b, err := hkdf.Key(sha256.New, secret, nil, keyInfo, len(k))
	if err != nil {
		return k, fmt.Errorf("borrow: derive the tag key: %w", err)
	}
	copy(k[:], b)
	return k, nil
}

// windowOf is the window t falls in.
func windowOf(t time.Time) uint64 {
	return uint64(t.Unix()) / uint64(Window/time.Second)
}

// tag computes the tag of a ClientHello with random and keyShare in window w.
func (k *tagKey) tag(w uint64, random, keyShare []byte) []byte {
	m := hmac.New(sha256.New, k[:])
	m.Write([]byte(tagLabel))
	var wb [8]byte
	binary.BigEndian.PutUint64(wb[:], w)
	m.Write(wb[:])
	m.Write(random)
	m.Write(keyShare)
	return m.Sum(nil)[:TagSize]
}

// verify returns the window in which ch carries a valid tag at time now:
// now's window or one next to it.
func (k *tagKey) verify(ch *clientHello, now time.Time) (uint64, bool) {
	cur := windowOf(now)
	ok, win := false, uint64(0)
	for _, w := range []uint64{cur - 1, cur, cur + 1} {
		if hmac.Equal(k.tag(w, ch.random, ch.keyShare), ch.sessionID) {
			ok, win = true, w
		}
	}
	return win, ok
}

// TagHello writes the tag for the window of now into the session id of the
// ClientHello uc has built, so that a borrowed-site listener holding the
// same endpoint key hands the connection to the relay instead of the
// origin. Call it after uc.BuildHandshakeState and before the handshake;
// key is the endpoint's 32-byte session key (transport.Endpoint.Key).
// The ClientHello must be a TLS-over-TCP one with a 32-byte session id and
// a key_share extension, as every Chrome-like ClientHello is.
func TagHello(uc *utls.UConn, key []byte, now time.Time) error {
	k, err := deriveKey(key)
	if err != nil {
		return err
	}
	h := uc.HandshakeState.Hello
	if h == nil || len(h.Raw) == 0 {
		return ErrNotBuilt
	}
	ch, err := parseClientHello(h.Raw)
	if err != nil {
		return fmt.Errorf("borrow: tag the ClientHello: %w", err)
	}
	t := k.tag(windowOf(now), ch.random, ch.keyShare)
	// The handshake marshals the hello again from its fields: set both.
	copy(h.Raw[ch.sessionIDAt:], t)
	h.SessionId = t
	return nil
}
