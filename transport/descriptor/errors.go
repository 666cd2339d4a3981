package descriptor

import (
	"errors"
	"fmt"
)

// Errors returned by Parse and Sign. Each error carries one of these,
// wrapped with what exactly is wrong and what to do; test with errors.Is.
var (
	ErrPrefix           = errors.New("descriptor: not a relay descriptor")
	ErrVersion          = errors.New("descriptor: unsupported version")
	ErrEncoding         = errors.New("descriptor: damaged encoding")
	ErrTooLarge         = errors.New("descriptor: too large")
	ErrTruncated        = errors.New("descriptor: truncated")
	ErrTrailing         = errors.New("descriptor: trailing data")
	ErrKeySize          = errors.New("descriptor: wrong key size")
	ErrValidity         = errors.New("descriptor: bad validity period")
	ErrEnvelopeKey      = errors.New("descriptor: bad envelope key")
	ErrNoEndpoints      = errors.New("descriptor: no endpoints")
	ErrTooManyEndpoints = errors.New("descriptor: too many endpoints")
	ErrTransportName    = errors.New("descriptor: bad transport name")
	ErrAddress          = errors.New("descriptor: bad address")
	ErrSNI              = errors.New("descriptor: bad server name")
	ErrPath             = errors.New("descriptor: bad path")
	ErrFingerprint      = errors.New("descriptor: bad fingerprint name")
	ErrFlags            = errors.New("descriptor: unknown flags")
	ErrSignature        = errors.New("descriptor: bad signature")
	ErrExpired          = errors.New("descriptor: expired")
)

// fail wraps sentinel with a detail that continues its message.
func fail(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w"+format, append([]any{sentinel}, args...)...)
}
