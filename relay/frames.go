package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/cryptobyte"

	"github.com/postern/postern/envelope"
)

// ProtocolVersion is the session protocol version this build speaks.
const ProtocolVersion = 2

// Limits.
const (
	// FrameHeaderSize is the type byte and the 4-byte length.
	FrameHeaderSize = 5
	// MaxFrameSize bounds a frame's payload: the largest envelope plus
	// the largest fixed fields of a Send or Deliver.
	MaxFrameSize = envelope.Bucket64K + 512
	// MaxForwardFrameSize bounds the payload of a Forward or Layer frame
	// (MaxPayload): a forward layer around the largest envelope (66,778
	// bytes with X-Wing), the home relay's descriptor (at most 8 KiB) and
	// the fixed fields, as the outbox takes them (store.MaxForwardSize).
	// Under MaxFrameSize, which bounded them until 2026-12-06, no 64 KiB
	// envelope could go through an entry relay (a reviewer's find).
	MaxForwardFrameSize = 80<<10 + 512
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
	// MaxResultMsg bounds the human message of a Result.
	MaxResultMsg = 512
	// ChallengeSize is the size of the per-session challenge.
	ChallengeSize = 32
	// MailboxSize is the size of a mailbox id.
	MailboxSize = 32
	// RefSize is the size of an envelope ref.
	RefSize = 32
	// SigSize is the size of an owner signature (Ed25519).
	SigSize = 64
	// SessionBufSize is the client's read and write buffer, and the
	// size of the pooled buffers a relay session writes from (the relay
	// reads through a 4.5 KiB buffer of its own and holds no write buffer
	// while idle: relay/server's frameio.go). Frames larger than it pass
	// through unbuffered; 16 KiB lets the two smaller buckets go out in
	// one write with their frame header.
	SessionBufSize = 16 << 10
)

// HelloMagic opens every ClientHello.
var HelloMagic = [4]byte{'P', 'S', 'T', 'N'}

// FrameType is a frame's first byte.
type FrameType byte

// Frame types; the byte layout of each payload is in the package
// documentation and on its Go type.
const (
	FrameClientHello    FrameType = 0x01
	FrameServerHello    FrameType = 0x02
	FrameTunnelHello    FrameType = 0x03
	FrameCreate         FrameType = 0x10
	FrameSend           FrameType = 0x11
	FrameSubscribe      FrameType = 0x12
	FrameFetch          FrameType = 0x13
	FrameAck            FrameType = 0x14
	FrameRotate         FrameType = 0x15
	FrameDelete         FrameType = 0x16
	FramePing           FrameType = 0x17
	FrameForward        FrameType = 0x18
	FrameDescriptor     FrameType = 0x19
	FrameLayer          FrameType = 0x1A
	FrameTunnel         FrameType = 0x1B
	FrameRelayAuth      FrameType = 0x1C
	FrameFetchPart      FrameType = 0x1D
	FrameSubscribeAfter FrameType = 0x1E
	FrameResult         FrameType = 0x20
	FrameDeliver        FrameType = 0x21
	FramePong           FrameType = 0x22
)

// Errors that end a session: framing is lost or the peer is not speaking
// the protocol.
var (
	ErrFrameTooLarge = errors.New("relay: frame larger than its type allows (MaxPayload)")
	ErrMalformed     = errors.New("relay: malformed frame")
)

// Message is a decoded frame payload.
type Message interface {
	// Type is the frame type that carries the message.
	Type() FrameType
	// AppendPayload appends the wire payload (without the frame header).
	AppendPayload(b []byte) []byte
}

// ReadFrame reads one frame. The returned payload is freshly allocated.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	return ReadFrameSeen(r, nil)
}

// ReadFrameSeen is ReadFrame, telling seen, if not nil, how much of the
// payload has come as it comes: first with got 0 once the header was
// read, then after each read that brought some of it, with the payload
// p (len(p) bytes, the first got of them read). A reader that gives up
// on a frame half read (a session closed under it) keeps what came: p
// is not written to again once ReadFrameSeen has returned.
func ReadFrameSeen(r io.Reader, seen func(t FrameType, p []byte, got int)) (FrameType, []byte, error) {
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	t, n := FrameType(hdr[0]), binary.BigEndian.Uint32(hdr[1:])
	if n > MaxPayload(t) {
		return 0, nil, ErrFrameTooLarge
	}
	p := make([]byte, n)
	var err error
	if seen == nil {
		_, err = io.ReadFull(r, p)
	} else {
		seen(t, p, 0)
		for got := 0; got < len(p) && err == nil; {
			var m int
			m, err = r.Read(p[got:])
			if got += m; m > 0 {
				seen(t, p, got)
			}
			if got == len(p) {
				err = nil // a reader may say EOF with the last bytes
			}
		}
	}
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return t, p, nil
}

// MaxPayload returns the most a frame of type t may carry:
// MaxForwardFrameSize for Forward and Layer, MaxFrameSize for the others.
func MaxPayload(t FrameType) uint32 {
	if t == FrameForward || t == FrameLayer {
		return MaxForwardFrameSize
	}
	return MaxFrameSize
}

// AppendFrame appends m as a whole frame, header and payload, to b.
func AppendFrame(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, byte(m.Type()), 0, 0, 0, 0)
	b = m.AppendPayload(b)
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-FrameHeaderSize))
	return b
}

// RequestID reads the request id that opens every request and answer
// payload after the hellos.
func RequestID(p []byte) (uint32, bool) {
	if len(p) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(p), true
}

// parse runs read over p and fails unless it consumed p exactly.
func parse(p []byte, read func(s *cryptobyte.String) bool) error {
	s := cryptobyte.String(p)
	if !read(&s) || !s.Empty() {
		return ErrMalformed
	}
	return nil
}

// readArray reads exactly len(dst) bytes into dst.
func readArray(s *cryptobyte.String, dst []byte) bool { return s.CopyBytes(dst) }

// readRest takes everything left in s, without copying: the field it fills
// (an envelope, a layer, a body: always a message's last) shares the
// payload's memory. Every frame reader hands out a payload of its own per
// frame (ReadFrame, relay/server's frameReader), so a parsed message owns
// it; a caller that parses from a buffer it reuses must copy what it keeps.
// Copying here cost a second 4 KiB allocation and copy per envelope, on
// the relay and on the client.
func readRest(s *cryptobyte.String, out *[]byte) bool {
	if len(*s) > 0 {
		*out = (*s)[:len(*s):len(*s)]
	} else {
		*out = nil
	}
	*s = nil
	return true
}

// readCap reads a u8-length-prefixed capability or verifier.
func readCap(s *cryptobyte.String, out *[]byte) bool {
	var v cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&v) || len(v) > MaxCapLen {
		return false
	}
	*out = append([]byte(nil), v...)
	return true
}

func appendCap(b, c []byte) []byte {
	b = append(b, byte(len(c)))
	return append(b, c...)
}

// ClientHello opens a session: magic "PSTN" | min u8 | max u8.
type ClientHello struct{ Min, Max uint8 }

func (ClientHello) Type() FrameType { return FrameClientHello }
func (m ClientHello) AppendPayload(b []byte) []byte {
	return append(append(b, HelloMagic[:]...), m.Min, m.Max)
}

// ParseClientHello decodes a ClientHello payload.
func ParseClientHello(p []byte) (m ClientHello, err error) {
	var magic [4]byte
	err = parse(p, func(s *cryptobyte.String) bool {
		return readArray(s, magic[:]) && s.ReadUint8(&m.Min) && s.ReadUint8(&m.Max) && magic == HelloMagic
	})
	return m, err
}

// ServerHello answers a ClientHello: version u8 | challenge 32 | maxenvelope u32.
type ServerHello struct {
	Version     uint8
	Challenge   [ChallengeSize]byte
	MaxEnvelope uint32
}

func (ServerHello) Type() FrameType { return FrameServerHello }
func (m ServerHello) AppendPayload(b []byte) []byte {
	b = append(append(b, m.Version), m.Challenge[:]...)
	return binary.BigEndian.AppendUint32(b, m.MaxEnvelope)
}

// ParseServerHello decodes a ServerHello payload.
func ParseServerHello(p []byte) (m ServerHello, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint8(&m.Version) && readArray(s, m.Challenge[:]) && s.ReadUint32(&m.MaxEnvelope)
	})
	return m, err
}

// Result answers a request: req u32 | code u16 | msglen u16 | msg | body.
// The body of an answer to Send is the ref (32 bytes); to Fetch, Ack and
// Rotate a count u32; otherwise empty.
type Result struct {
	Req  uint32
	Code Code
	Msg  string // at most MaxResultMsg bytes; longer is cut on encoding
	Body []byte
}

func (Result) Type() FrameType { return FrameResult }
func (m Result) AppendPayload(b []byte) []byte {
	msg := m.Msg
	if len(msg) > MaxResultMsg {
		msg = msg[:MaxResultMsg]
	}
	b = binary.BigEndian.AppendUint32(b, m.Req)
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(append(b, msg...), m.Body...)
}

// ParseResult decodes a Result payload.
func ParseResult(p []byte) (m Result, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		var code uint16
		var msg cryptobyte.String
		// A message longer than MaxResultMsg is refused: no encoder sends one
		// (AppendPayload cuts it), so it would not re-encode to what was read.
		ok := s.ReadUint32(&m.Req) && s.ReadUint16(&code) && s.ReadUint16LengthPrefixed(&msg) && len(msg) <= MaxResultMsg && readRest(s, &m.Body)
		m.Code, m.Msg = Code(code), string(msg)
		return ok
	})
	return m, err
}

// Count reads the u32 count body of a Result answering Fetch, Ack or Rotate.
func (m Result) Count() (int, error) {
	if len(m.Body) != 4 {
		return 0, fmt.Errorf("%w: result body of %d bytes where a count was expected", ErrMalformed, len(m.Body))
	}
	return int(binary.BigEndian.Uint32(m.Body)), nil
}

// CountBody is the body of a Result carrying a count.
func CountBody(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }

// Send hands an envelope to the relay: req u32 | caplen u8 | cap | envelope.
type Send struct {
	Req      uint32
	Cap      []byte
	Envelope []byte
}

func (Send) Type() FrameType { return FrameSend }
func (m Send) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.Req)
	return append(appendCap(b, m.Cap), m.Envelope...)
}

// ParseSend decodes a Send payload.
func ParseSend(p []byte) (m Send, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint32(&m.Req) && readCap(s, &m.Cap) && readRest(s, &m.Envelope)
	})
	return m, err
}

// Deliver carries one envelope to its owner: req u32 | mailbox 32 | ref 32
// | seq u64 | envelope. req is the Subscribe's or the Fetch's request id;
// seq is the envelope's position in the mailbox, a Fetch cursor.
type Deliver struct {
	Req      uint32
	Mailbox  [MailboxSize]byte
	Ref      [RefSize]byte
	Seq      uint64
	Envelope []byte
}

func (Deliver) Type() FrameType { return FrameDeliver }
func (m Deliver) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.Req)
	b = append(append(b, m.Mailbox[:]...), m.Ref[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	return append(b, m.Envelope...)
}

// AppendFrameHead appends the whole frame but the envelope: the frame
// header (whose length counts the envelope) and the fixed fields. Writing
// it and then the envelope sends the frame without copying the envelope.
func (m Deliver) AppendFrameHead(b []byte) []byte {
	b = append(b, byte(FrameDeliver))
	b = binary.BigEndian.AppendUint32(b, uint32(4+MailboxSize+RefSize+8+len(m.Envelope)))
	b = binary.BigEndian.AppendUint32(b, m.Req)
	b = append(append(b, m.Mailbox[:]...), m.Ref[:]...)
	return binary.BigEndian.AppendUint64(b, m.Seq)
}

// ParseDeliver decodes a Deliver payload; the envelope may not be empty.
func ParseDeliver(p []byte) (m Deliver, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint32(&m.Req) && readArray(s, m.Mailbox[:]) && readArray(s, m.Ref[:]) &&
			s.ReadUint64(&m.Seq) && !s.Empty() && readRest(s, &m.Envelope)
	})
	return m, err
}

// Ping asks for a Pong: req u32 | data (at most MaxPingData bytes).
type Ping struct {
	Req  uint32
	Data []byte
}

func (Ping) Type() FrameType { return FramePing }
func (m Ping) AppendPayload(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, m.Req), m.Data...)
}

// ParsePing decodes a Ping payload.
func ParsePing(p []byte) (m Ping, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint32(&m.Req) && len(*s) <= MaxPingData && readRest(s, &m.Data)
	})
	return m, err
}

// Pong answers a Ping with its data: req u32 | data.
type Pong Ping

func (Pong) Type() FrameType                 { return FramePong }
func (m Pong) AppendPayload(b []byte) []byte { return Ping(m).AppendPayload(b) }

// ParsePong decodes a Pong payload.
func ParsePong(p []byte) (Pong, error) {
	m, err := ParsePing(p)
	return Pong(m), err
}

// Forward is reserved for two-hop routing: req u32 | opaque. A relay
// without forwarding answers it CodeUnsupported.
type Forward struct {
	Req     uint32
	Payload []byte
}

func (Forward) Type() FrameType { return FrameForward }
func (m Forward) AppendPayload(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, m.Req), m.Payload...)
}

// ParseForward decodes a Forward payload.
func ParseForward(p []byte) (m Forward, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint32(&m.Req) && readRest(s, &m.Payload)
	})
	return m, err
}

// DescriptorRequest asks for the relay's current signed descriptor: req
// u32. The Result's body is the descriptor line. A relay re-signs its
// descriptor before it expires; clients fetch it in-session to keep their
// mailbox files and cards current.
type DescriptorRequest struct{ Req uint32 }

func (DescriptorRequest) Type() FrameType { return FrameDescriptor }
func (m DescriptorRequest) AppendPayload(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, m.Req)
}

// ParseDescriptorRequest decodes a DescriptorRequest payload.
func ParseDescriptorRequest(p []byte) (m DescriptorRequest, err error) {
	err = parse(p, func(s *cryptobyte.String) bool { return s.ReadUint32(&m.Req) })
	return m, err
}

// Layer hands a forward layer from an entry relay to the home relay it is
// sealed to: req u32 | layer. The home relay opens it, stores the Send
// inside and answers OK, or CodeReplay if it had it already (the entry
// relay then drops it as delivered).
type Layer struct {
	Req   uint32
	Layer []byte
}

func (Layer) Type() FrameType { return FrameLayer }
func (m Layer) AppendPayload(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, m.Req), m.Layer...)
}

// ParseLayer decodes a Layer payload; the layer may not be empty.
func ParseLayer(p []byte) (m Layer, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return s.ReadUint32(&m.Req) && !s.Empty() && readRest(s, &m.Layer)
	})
	return m, err
}

// TunnelHello opens the stream an entry relay dials to a home relay for a
// tunnel, in place of ClientHello: magic "PSTN". The home relay answers a
// Result (request id 0): OK, and from the next byte on the stream carries
// the client's inner TLS 1.3 session; or an error code, and it closes.
type TunnelHello struct{}

func (TunnelHello) Type() FrameType               { return FrameTunnelHello }
func (TunnelHello) AppendPayload(b []byte) []byte { return append(b, HelloMagic[:]...) }

// ParseTunnelHello decodes a TunnelHello payload.
func ParseTunnelHello(p []byte) (m TunnelHello, err error) {
	var magic [4]byte
	err = parse(p, func(s *cryptobyte.String) bool { return readArray(s, magic[:]) && magic == HelloMagic })
	return m, err
}

// Tunnel asks an entry relay to splice this session to the client's home
// relay: req u32 | home relay descriptor line. An OK Result means the
// stream is spliced from the next byte on; the client then runs TLS 1.3
// pinned to the home relay's key and a whole new session inside.
type Tunnel struct {
	Req        uint32
	Descriptor string
}

func (Tunnel) Type() FrameType { return FrameTunnel }
func (m Tunnel) AppendPayload(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, m.Req), m.Descriptor...)
}

// ParseTunnel decodes a Tunnel payload; the descriptor may not be empty.
func ParseTunnel(p []byte) (m Tunnel, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		var d []byte
		ok := s.ReadUint32(&m.Req) && !s.Empty() && readRest(s, &d)
		m.Descriptor = string(d)
		return ok
	})
	return m, err
}

// RelayAuth authenticates a session as a link from another relay: req u32
// | desclen u16 | the sending relay's signed descriptor | sig 64, where sig
// is SignRelayAuth with the descriptor's key over this session's Binding
// (the receiving relay's key and challenge). The receiving relay answers
// OK, and from then on takes Layer frames on the session.
type RelayAuth struct {
	Req        uint32
	Descriptor string
	Sig        [SigSize]byte
}

func (RelayAuth) Type() FrameType { return FrameRelayAuth }
func (m RelayAuth) AppendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.Req)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Descriptor)))
	return append(append(b, m.Descriptor...), m.Sig[:]...)
}

// ParseRelayAuth decodes a RelayAuth payload; the descriptor may not be
// empty.
func ParseRelayAuth(p []byte) (m RelayAuth, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		var d cryptobyte.String
		ok := s.ReadUint32(&m.Req) && s.ReadUint16LengthPrefixed(&d) && !d.Empty() && readArray(s, m.Sig[:])
		m.Descriptor = string(d)
		return ok
	})
	return m, err
}

// ForwardPayload is what a client puts in a Forward frame to an entry
// relay: desclen u16 | the home relay's signed descriptor | layer.
type ForwardPayload struct {
	Descriptor string
	Layer      []byte
}

// Append encodes the payload.
func (f ForwardPayload) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(f.Descriptor)))
	return append(append(b, f.Descriptor...), f.Layer...)
}

// ParseForwardPayload decodes a Forward frame's payload.
func ParseForwardPayload(p []byte) (f ForwardPayload, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		var d cryptobyte.String
		ok := s.ReadUint16LengthPrefixed(&d) && !d.Empty() && !s.Empty() && readRest(s, &f.Layer)
		f.Descriptor = string(d)
		return ok
	})
	return f, err
}

// TunnelALPN is the ALPN protocol of the TLS 1.3 session a client runs
// with its home relay inside a tunnel.
const TunnelALPN = "postern-tunnel/1"
