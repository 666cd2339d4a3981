package relay

import "fmt"

// Code is a protocol error code, carried in Result frames.
type Code uint16

const (
	CodeOK            Code = 0
	CodeBadFrame      Code = 1  // malformed frame
	CodeUnknownFrame  Code = 2  // frame type not known
	CodeUnauthorized  Code = 3  // bad owner signature
	CodeNoMailbox     Code = 4  // no such mailbox
	CodeMailboxExists Code = 5  // mailbox id taken
	CodeMailboxFull   Code = 6  // mailbox quota reached
	CodeRelayFull     Code = 7  // relay storage quota reached
	CodeBadEnvelope   Code = 8  // not an envelope (size or header)
	CodeCapability    Code = 9  // send capability missing or wrong
	CodeUnsupported   Code = 10 // known but not supported here (Forward)
	CodeInternal      Code = 11 // relay-side failure; retry later
	CodeVersion       Code = 12 // no common protocol version
	CodeBusy          Code = 13 // too many requests; slow down
	CodeReplay        Code = 14 // this forward layer was received before
	CodeOutboxFull    Code = 15 // the entry relay's forward queue is full
)

var codeText = map[Code]string{
	CodeOK:            "ok",
	CodeBadFrame:      "malformed frame",
	CodeUnknownFrame:  "unknown frame type",
	CodeUnauthorized:  "signature does not verify: not the mailbox owner, or not an authenticated relay link",
	CodeNoMailbox:     "no such mailbox: check the contact card, or create the mailbox first",
	CodeMailboxExists: "mailbox already exists: pick a new random id",
	CodeMailboxFull:   "mailbox full: the recipient has too many undelivered envelopes; retry later",
	CodeRelayFull:     "relay storage full: retry later or use another relay",
	CodeBadEnvelope:   "not a valid envelope (size or header)",
	CodeCapability:    "this mailbox needs a valid send capability: ask the recipient for a fresh contact card",
	CodeUnsupported:   "not supported by this relay",
	CodeInternal:      "relay error; retry later",
	CodeVersion:       "no common protocol version: upgrade postern",
	CodeBusy:          "relay busy; retry later",
	CodeReplay:        "forward layer already received",
	CodeOutboxFull:    "this relay's forward queue is full: retry later or use another entry relay",
}

// String returns the code's short human message.
func (c Code) String() string {
	if s, ok := codeText[c]; ok {
		return s
	}
	return fmt.Sprintf("error code %d", uint16(c))
}

// Error is a protocol error returned by the relay. Match it with errors.Is
// against the Err* sentinels, or read Code with errors.As.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string {
	if e.Msg == "" || e.Msg == e.Code.String() {
		return "relay: " + e.Code.String()
	}
	return "relay: " + e.Code.String() + ": " + e.Msg
}

// Is matches any *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrBadFrame      = &Error{Code: CodeBadFrame}
	ErrUnknownFrame  = &Error{Code: CodeUnknownFrame}
	ErrUnauthorized  = &Error{Code: CodeUnauthorized}
	ErrNoMailbox     = &Error{Code: CodeNoMailbox}
	ErrMailboxExists = &Error{Code: CodeMailboxExists}
	ErrMailboxFull   = &Error{Code: CodeMailboxFull}
	ErrRelayFull     = &Error{Code: CodeRelayFull}
	ErrBadEnvelope   = &Error{Code: CodeBadEnvelope}
	ErrCapability    = &Error{Code: CodeCapability}
	ErrUnsupported   = &Error{Code: CodeUnsupported}
	ErrInternal      = &Error{Code: CodeInternal}
	ErrVersion       = &Error{Code: CodeVersion}
	ErrBusy          = &Error{Code: CodeBusy}
	ErrReplay        = &Error{Code: CodeReplay}
	ErrOutboxFull    = &Error{Code: CodeOutboxFull}
)
