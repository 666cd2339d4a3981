package envelope

import (
	"errors"
	"fmt"
)

// Errors returned by this package. Every failure wraps one of them, so callers
// can test with errors.Is; messages never contain keys or mailbox ids.
var (
	// ErrMalformed: the bytes are not an envelope (wrong size or header).
	ErrMalformed = errors.New("envelope: malformed")
	// ErrVersion: the envelope or file uses a version this build does not know.
	ErrVersion = errors.New("envelope: unknown version")
	// ErrSuite: the suite is unknown, or not one the recipient accepts.
	ErrSuite = errors.New("envelope: unsupported suite")
	// ErrDecrypt: the envelope is not for this identity, or was modified.
	ErrDecrypt = errors.New("envelope: cannot open (not for this identity, or modified)")
	// ErrBadSender: the sender tag does not verify for the claimed sender key.
	ErrBadSender = errors.New("envelope: sender authentication failed")
	// ErrPayloadTooLarge: the payload does not fit the largest bucket; split it
	// (SealMessage does) and send several envelopes.
	ErrPayloadTooLarge = errors.New("envelope: payload too large")
	// ErrBadBucket: the requested bucket size is not one of the bucket sizes.
	ErrBadBucket = errors.New("envelope: not a bucket size")
	// ErrReplay: the envelope id was seen before.
	ErrReplay = errors.New("envelope: replayed envelope")
	// ErrCard: a contact card could not be parsed.
	ErrCard = errors.New("contact card")
	// ErrChecksum: a contact card's checksum does not match (likely mistyped
	// or truncated while copying).
	ErrChecksum = errors.New("contact card: checksum mismatch (mistyped or truncated? copy it again)")
	// ErrIdentity: an identity file could not be used.
	ErrIdentity = errors.New("identity")
	// ErrFragment: a fragment is inconsistent with others of its message.
	ErrFragment = errors.New("envelope: bad fragment")
)

// TooLargeError says by how much a payload is too large for one envelope.
// It matches ErrPayloadTooLarge.
type TooLargeError struct {
	Size, Max int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("envelope: payload of %d bytes exceeds the %d bytes one envelope holds; split it (envelope.SealMessage does)", e.Size, e.Max)
}

func (e *TooLargeError) Is(target error) bool { return target == ErrPayloadTooLarge }

// ErrPermissions: a secret file is readable or writable by group or others.
var ErrPermissions = errors.New("identity: file permissions too open")
