package relay

import (
	"bufio"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/postern/postern/envelope"
)

// ProtocolVersion is the session protocol version this build speaks.
const ProtocolVersion = 1

// Limits.
const (
	frameHeaderSize = 5
	// MaxFrameSize bounds a frame's payload: the largest envelope plus
	// the largest fixed fields of a Send or Deliver.
	MaxFrameSize = envelope.Bucket64K + 512
	// MaxAckRefs bounds the refs one Ack carries.
	MaxAckRefs = 1024
	// MaxFetch bounds how many envelopes one Fetch returns.
	MaxFetch = 256
	// MaxUnacked bounds the envelopes a subscription pushes that the
	// session has not acked yet.
	MaxUnacked = 256
	// MaxCapLen bounds a send capability and its verifier.
	MaxCapLen = 64
	// MaxPingData bounds a Ping's payload.
	MaxPingData = 64
	// ChallengeSize is the size of the per-session challenge.
	ChallengeSize = 32
	// RefSize is the size of an envelope ref.
	RefSize = 32
	// sessionBufSize is the read and write buffer of a session on each
	// side. Frames larger than it pass through unbuffered; small buffers keep
	// an idle session cheap, and 16 KiB lets the two smaller buckets go out
	// in one write with their frame header.
	sessionBufSize = 16 << 10
	// SigContext domain-separates owner signatures.
	SigContext = "postern relay request v1"
)

var helloMagic = [4]byte{'P', 'S', 'T', 'N'}

// Frame types.
type frameType byte

const (
	frameClientHello frameType = 0x01
	frameServerHello frameType = 0x02
	frameCreate      frameType = 0x10
	frameSend        frameType = 0x11
	frameSubscribe   frameType = 0x12
	frameFetch       frameType = 0x13
	frameAck         frameType = 0x14
	frameRotate      frameType = 0x15
	frameDelete      frameType = 0x16
	framePing        frameType = 0x17
	frameForward     frameType = 0x18
	frameResult      frameType = 0x20
	frameDeliver     frameType = 0x21
	framePong        frameType = 0x22
)

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
)

var codeText = map[Code]string{
	CodeOK:            "ok",
	CodeBadFrame:      "malformed frame",
	CodeUnknownFrame:  "unknown frame type",
	CodeUnauthorized:  "signature does not verify for the mailbox owner",
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
)

// errFrameTooLarge and errShortFrame end a session: framing is lost.
var (
	errFrameTooLarge = errors.New("relay: frame larger than MaxFrameSize")
	errMalformed     = errors.New("relay: malformed frame")
)

// readFrame reads one frame. The returned payload is freshly allocated.
func readFrame(r *bufio.Reader) (frameType, []byte, error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrameSize {
		return 0, nil, errFrameTooLarge
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return frameType(hdr[0]), p, nil
}

// appendFrame appends a frame header and payload to b.
func appendFrame(b []byte, t frameType, payload ...[]byte) []byte {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	for _, p := range payload {
		b = append(b, p...)
	}
	return b
}

// cursor is a strict reader over a frame payload. After the first short
// read it returns zero values and ok() is false.
type cursor struct {
	b   []byte
	bad bool
}

func (c *cursor) take(n int) []byte {
	if c.bad || n < 0 || len(c.b) < n {
		c.bad = true
		return nil
	}
	out := c.b[:n:n]
	c.b = c.b[n:]
	return out
}

func (c *cursor) u8() byte {
	if b := c.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (c *cursor) u16() uint16 {
	if b := c.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (c *cursor) u32() uint32 {
	if b := c.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (c *cursor) id() (out [32]byte) {
	copy(out[:], c.take(32))
	return out
}

func (c *cursor) rest() []byte { return c.take(len(c.b)) }

// done reports whether the payload was consumed exactly.
func (c *cursor) done() bool { return !c.bad && len(c.b) == 0 }

// signedBytes is what an owner signs for a request: the context, the
// session challenge, the frame type and the payload up to the signature.
func signedBytes(challenge []byte, t frameType, payload []byte) []byte {
	m := make([]byte, 0, len(SigContext)+len(challenge)+1+len(payload))
	m = append(m, SigContext...)
	m = append(m, challenge...)
	m = append(m, byte(t))
	return append(m, payload...)
}

func sign(owner ed25519.PrivateKey, challenge []byte, t frameType, payload []byte) []byte {
	return ed25519.Sign(owner, signedBytes(challenge, t, payload))
}

func verify(owner ed25519.PublicKey, challenge []byte, t frameType, payload, sig []byte) bool {
	return len(owner) == ed25519.PublicKeySize && len(sig) == ed25519.SignatureSize &&
		ed25519.Verify(owner, signedBytes(challenge, t, payload), sig)
}

// result is a decoded Result frame.
type result struct {
	req  uint32
	code Code
	msg  string
	body []byte
}

func decodeResult(p []byte) (result, error) {
	c := cursor{b: p}
	r := result{req: c.u32(), code: Code(c.u16())}
	ml := int(c.u16())
	r.msg = string(c.take(ml))
	r.body = c.rest()
	if c.bad {
		return r, errMalformed
	}
	return r, nil
}

func encodeResult(req uint32, code Code, msg string, body []byte) []byte {
	if len(msg) > 512 {
		msg = msg[:512]
	}
	p := binary.BigEndian.AppendUint32(nil, req)
	p = binary.BigEndian.AppendUint16(p, uint16(code))
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	return append(p, body...)
}

// delivery is a decoded Deliver frame.
type delivery struct {
	req      uint32
	mailbox  [32]byte
	ref      [RefSize]byte
	seq      uint64
	envelope []byte
}

func decodeDeliver(p []byte) (delivery, error) {
	c := cursor{b: p}
	d := delivery{req: c.u32(), mailbox: c.id()}
	copy(d.ref[:], c.take(RefSize))
	if b := c.take(8); b != nil {
		d.seq = binary.BigEndian.Uint64(b)
	}
	d.envelope = c.rest()
	if c.bad || len(d.envelope) == 0 {
		return d, errMalformed
	}
	return d, nil
}
