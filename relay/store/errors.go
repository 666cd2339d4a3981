package store

// Code classifies a store error so the session protocol can map it to a
// wire error code.
type Code uint8

// Error codes.
const (
	CodeNoMailbox Code = iota + 1
	CodeMailboxExists
	CodeMailboxFull
	CodeStoreFull
	CodeInvalid
	CodeClosed
	CodeRotatedOften
)

// Error is a store error with a code and a message fit to show a user. It
// never contains an id, a key or a ref. The package's sentinels are *Error
// values; test for them with errors.Is and read the code with errors.As.
type Error struct {
	Code Code
	msg  string
}

func (e *Error) Error() string { return "store: " + e.msg }

// Sentinel errors.
var (
	ErrNoMailbox = &Error{CodeNoMailbox,
		"no such mailbox: check the contact card, or create the mailbox first"}
	ErrMailboxExists = &Error{CodeMailboxExists,
		"mailbox already exists: pick a new random id"}
	ErrMailboxFull = &Error{CodeMailboxFull,
		"mailbox full: the recipient has reached the limit of undelivered envelopes; retry after they fetch"}
	ErrStoreFull = &Error{CodeStoreFull,
		"relay storage full: retry later or use another relay"}
	// ErrDiskFull is a write that failed because the relay's disk (or the
	// operator's disk quota) is full (ENOSPC, EDQUOT). It has CodeStoreFull,
	// like the store quota: to a client both mean "this relay takes nothing
	// more now; retry later or use another relay". It is a different value
	// so the relay can tell the operator; Stats.DiskFull says whether
	// writes are failing for this reason right now.
	ErrDiskFull = &Error{CodeStoreFull,
		"relay disk full: retry later or use another relay"}
	ErrInvalid = &Error{CodeInvalid,
		"invalid request: owner key must be 32 bytes, send capability at most 1024 bytes, envelope 1 to 65536 bytes"}
	// ErrRotatedOften refuses a rotation of a mailbox that
	// MaxForwardChain rotations within the TTL still forward into.
	ErrRotatedOften = &Error{CodeRotatedOften,
		"mailbox rotated too often: the last rotations still forward to it; rotate again once the oldest of them has ended (within the relay's ttl)"}
	ErrClosed = &Error{CodeClosed,
		"store closed: the relay is shutting down; retry later"}
)
