package envelope

import (
	"crypto/ecdh"
	"crypto/hpke"
	"fmt"
)

// Version is the envelope format version in the outer header.
const Version = 1

// Bucket sizes: every envelope is exactly one of these many bytes long.
const (
	Bucket4K  = 4 << 10
	Bucket16K = 16 << 10
	Bucket64K = 64 << 10
)

// Buckets lists the bucket sizes, smallest first.
var Buckets = [...]int{Bucket4K, Bucket16K, Bucket64K}

// Sizes of the fixed parts of the format.
const (
	HeaderSize    = 34 // version, suite, mailbox id
	MailboxIDSize = 32
	IDSize        = 16 // envelope id
	innerFixed    = 1 + IDSize + 32 + 32 + 4
	aeadOverhead  = 16
)

// Suite identifies the HPKE ciphersuite of an envelope.
type Suite uint8

const (
	// SuiteXWing is X-Wing (ML-KEM-768 + X25519), HKDF-SHA256,
	// ChaCha20-Poly1305: post-quantum confidentiality. The default.
	SuiteXWing Suite = 1
	// SuiteX25519 is DHKEM(X25519), HKDF-SHA256, ChaCha20-Poly1305: compact,
	// classical only.
	SuiteX25519 Suite = 2
)

func (s Suite) String() string {
	switch s {
	case SuiteXWing:
		return "xwing"
	case SuiteX25519:
		return "x25519"
	}
	return fmt.Sprintf("suite(%d)", uint8(s))
}

// ParseSuite maps a suite name ("xwing", "x25519") to a Suite.
func ParseSuite(name string) (Suite, error) {
	switch name {
	case "xwing":
		return SuiteXWing, nil
	case "x25519":
		return SuiteX25519, nil
	}
	return 0, fmt.Errorf("%w: %q (known: xwing, x25519)", ErrSuite, name)
}

func (s Suite) valid() bool { return s == SuiteXWing || s == SuiteX25519 }

func (s Suite) kem() hpke.KEM {
	if s == SuiteXWing {
		return hpke.MLKEM768X25519()
	}
	return hpke.DHKEM(ecdh.X25519())
}

// encSize is the size of the HPKE encapsulated key.
func (s Suite) encSize() int {
	if s == SuiteXWing {
		return 1120
	}
	return 32
}

// publicKeySize is the size of the KEM public key on a contact card.
func (s Suite) publicKeySize() int {
	if s == SuiteXWing {
		return 1216
	}
	return 32
}

func (s Suite) info() []byte {
	return []byte{'p', 'o', 's', 't', 'e', 'r', 'n', ' ', 'e', 'n', 'v', 'e', 'l', 'o', 'p', 'e', ' ', 'v', '1', Version, byte(s)}
}

// MaxPayload is the largest payload one envelope of this suite and bucket
// holds, or -1 if either is invalid.
func MaxPayload(s Suite, bucket int) int {
	if !s.valid() || !isBucket(bucket) {
		return -1
	}
	return bucket - HeaderSize - s.encSize() - aeadOverhead - innerFixed
}

func isBucket(n int) bool {
	for _, b := range Buckets {
		if n == b {
			return true
		}
	}
	return false
}
