package forward

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/cryptobyte"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// Format constants.
const (
	// Magic starts every layer; its last byte is the layer version.
	Magic = "PFW1"
	// HeaderSize is magic, suite, epoch and relay hash.
	HeaderSize = len(Magic) + 1 + 4 + sha256.Size
	// MaxCapLen bounds the send capability; it equals relay.MaxCapLen.
	MaxCapLen = 64
	// MaxLayer is the size of the largest layer: an X-Wing layer around a
	// Bucket64K envelope.
	MaxLayer = HeaderSize + encXWing + tagSize + plainFixed + envelope.Bucket64K

	encXWing   = 1120 // X-Wing encapsulation
	encX25519  = 32   // DHKEM(X25519) encapsulation
	tagSize    = 16   // ChaCha20-Poly1305 tag
	plainFixed = 1 + MaxCapLen
	infoLabel  = "postern forward layer v1"
)

// header is the parsed header of a layer.
type header struct {
	suite  envelope.Suite
	epoch  uint32
	relay  [32]byte
	sealed []byte
}

// encSize returns the encapsulation size of a suite, 0 if it is unknown.
func encSize(s envelope.Suite) int {
	switch s {
	case envelope.SuiteXWing:
		return encXWing
	case envelope.SuiteX25519:
		return encX25519
	}
	return 0
}

// validSealedLen reports whether n is the sealed length of a layer of suite
// s around one whole envelope.
func validSealedLen(s envelope.Suite, n int) bool {
	for _, b := range envelope.Buckets {
		if n == encSize(s)+tagSize+plainFixed+b {
			return true
		}
	}
	return false
}

// parseHeader checks a layer's header and length without cryptography.
func parseHeader(layer []byte) (header, error) {
	var h header
	if len(layer) > MaxLayer {
		return h, fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(layer), MaxLayer)
	}
	s := cryptobyte.String(layer)
	var magic, relay []byte
	var suite uint8
	if !s.ReadBytes(&magic, len(Magic)) || !s.ReadUint8(&suite) ||
		!s.ReadUint32(&h.epoch) || !s.ReadBytes(&relay, len(h.relay)) {
		return h, fmt.Errorf("%w: %d bytes is shorter than a header", ErrMalformed, len(layer))
	}
	if string(magic) != Magic {
		return h, fmt.Errorf("%w: bad magic (not a forward layer, or a newer version)", ErrMalformed)
	}
	h.suite = envelope.Suite(suite)
	if encSize(h.suite) == 0 {
		return h, fmt.Errorf("%w: unknown suite %d", ErrMalformed, suite)
	}
	if !validSealedLen(h.suite, len(s)) {
		return h, fmt.Errorf("%w: %d bytes is not the length of a layer around one envelope", ErrMalformed, len(layer))
	}
	copy(h.relay[:], relay)
	h.sealed = s
	return h, nil
}

// Dest returns the relay hash a layer is addressed to: SHA-256 of the home
// relay's Ed25519 key (compare with RelayHash). This is all an entry relay
// needs to pass the layer on. Errors wrap ErrMalformed.
func Dest(layer []byte) ([32]byte, error) {
	h, err := parseHeader(layer)
	return h.relay, err
}

// RelayHash returns the value Dest reports for layers to the relay with
// this Ed25519 key.
func RelayHash(relayKey ed25519.PublicKey) [32]byte { return sha256.Sum256(relayKey) }

func layerInfo(relayKey ed25519.PublicKey, epoch uint32) []byte {
	b := make([]byte, 0, len(infoLabel)+ed25519.PublicKeySize+4)
	b = append(append(b, infoLabel...), relayKey...)
	return binary.BigEndian.AppendUint32(b, epoch)
}

// checkSend validates a send capability and an envelope for a layer.
func checkSend(sendCap, env []byte) error {
	if len(sendCap) > MaxCapLen {
		return fmt.Errorf("%w: send capability is %d bytes, the limit is %d", ErrMalformed, len(sendCap), MaxCapLen)
	}
	if _, err := envelope.ParseHeader(env); err != nil {
		return fmt.Errorf("%w: not one whole envelope: %w", ErrMalformed, err)
	}
	return nil
}

// Seal seals a Send (the recipient's send capability, possibly empty, and
// one envelope) for the home relay described by home, in its forward epoch
// epoch. The descriptor must carry an envelope key of a known suite. Errors
// wrap ErrDescriptor or ErrMalformed.
func Seal(home *descriptor.Descriptor, epoch uint32, sendCap, env []byte) ([]byte, error) {
	if home == nil {
		return nil, fmt.Errorf("%w: no descriptor", ErrDescriptor)
	}
	if len(home.RelayKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: relay key is %d bytes, want %d", ErrDescriptor, len(home.RelayKey), ed25519.PublicKeySize)
	}
	if len(home.EnvelopeKey) == 0 {
		return nil, fmt.Errorf("%w: relay %s publishes no envelope key, so it cannot receive forwarded sends; send to it directly or ask its operator for a descriptor with an envelope key", ErrDescriptor, home.RelayID())
	}
	suite := envelope.Suite(home.EnvelopeSuite)
	if encSize(suite) == 0 {
		return nil, fmt.Errorf("%w: relay %s uses envelope suite %d, which this build does not know; upgrade postern", ErrDescriptor, home.RelayID(), home.EnvelopeSuite)
	}
	if err := checkSend(sendCap, env); err != nil {
		return nil, err
	}
	hdr := make([]byte, 0, HeaderSize)
	hdr = append(hdr, Magic...)
	hdr = append(hdr, byte(suite))
	hdr = binary.BigEndian.AppendUint32(hdr, epoch)
	relay := RelayHash(home.RelayKey)
	hdr = append(hdr, relay[:]...)

	plain := make([]byte, plainFixed, plainFixed+len(env))
	plain[0] = byte(len(sendCap))
	copy(plain[1:], sendCap)
	plain = append(plain, env...)
	sealed, err := envelope.SealTo(suite, home.EnvelopeKey, layerInfo(home.RelayKey, epoch), hdr, plain)
	if err != nil {
		return nil, fmt.Errorf("%w: relay %s: envelope key: %w", ErrDescriptor, home.RelayID(), err)
	}
	return append(hdr, sealed...), nil
}

// parsePlain splits an opened plaintext into capability and envelope.
func parsePlain(plain []byte) (sendCap, env []byte, err error) {
	if len(plain) < plainFixed {
		return nil, nil, fmt.Errorf("%w: plaintext too short", ErrMalformed)
	}
	n := int(plain[0])
	if n > MaxCapLen {
		return nil, nil, fmt.Errorf("%w: capability length %d over the limit %d", ErrMalformed, n, MaxCapLen)
	}
	for _, b := range plain[1+n : plainFixed] {
		if b != 0 {
			return nil, nil, fmt.Errorf("%w: non-zero capability padding", ErrMalformed)
		}
	}
	sendCap = plain[1 : 1+n : 1+n]
	env = plain[plainFixed:]
	if err := checkSend(sendCap, env); err != nil {
		return nil, nil, err
	}
	return sendCap, env, nil
}
