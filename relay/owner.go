package relay

import (
	"crypto/ed25519"
	"encoding/binary"

	"golang.org/x/crypto/cryptobyte"
)

// SigContext domain-separates owner signatures.
const SigContext = "postern relay request v2"

// Binding is what ties a signature to one session with one relay: the
// relay's Ed25519 descriptor key, which the client takes from the relay's
// signed descriptor (never from the relay's hello), and the session
// challenge from ServerHello. A relay, or anyone in the middle, that
// passes another relay's challenge on to a client still gets signatures
// that only verify under its own key.
type Binding struct {
	RelayKey  [32]byte
	Challenge [ChallengeSize]byte
}

// NewBinding returns the binding for a session with the relay whose
// descriptor key is relayKey.
func NewBinding(relayKey ed25519.PublicKey, challenge [ChallengeSize]byte) (b Binding, ok bool) {
	if len(relayKey) != ed25519.PublicKeySize {
		return b, false
	}
	copy(b.RelayKey[:], relayKey)
	b.Challenge = challenge
	return b, true
}

func (b Binding) append(dst []byte) []byte {
	return append(append(dst, b.RelayKey[:]...), b.Challenge[:]...)
}

// OwnerRequest is a request that the mailbox owner signs: everything in
// its payload before the first signature is signed, together with the
// session's Binding.
type OwnerRequest interface {
	Message
	// AppendSigned appends the payload up to the first signature.
	AppendSigned(b []byte) []byte
}

// SignedBytes is what an owner signs for m on a session with this
// binding: SigContext || relay key || challenge || type || payload up to
// the signature.
func SignedBytes(bind Binding, m OwnerRequest) []byte {
	b := make([]byte, 0, len(SigContext)+32+ChallengeSize+1+128)
	b = bind.append(append(b, SigContext...))
	return m.AppendSigned(append(b, byte(m.Type())))
}

// Sign signs m for the session with this binding.
func Sign(owner ed25519.PrivateKey, bind Binding, m OwnerRequest) (sig [SigSize]byte) {
	copy(sig[:], ed25519.Sign(owner, SignedBytes(bind, m)))
	return sig
}

// Verify checks an owner's signature over m.
func Verify(owner ed25519.PublicKey, bind Binding, m OwnerRequest, sig [SigSize]byte) bool {
	return len(owner) == ed25519.PublicKeySize && ed25519.Verify(owner, SignedBytes(bind, m), sig[:])
}

// RelayAuthContext domain-separates the signature a relay makes when it
// authenticates a link to another relay (RelayAuth).
const RelayAuthContext = "postern relay link v1"

// SignRelayAuth is a relay's proof, with its own descriptor key, that it
// opened this session to the relay bind names: Ed25519(key,
// RelayAuthContext || peer relay key || challenge).
func SignRelayAuth(key ed25519.PrivateKey, bind Binding) (sig [SigSize]byte) {
	copy(sig[:], ed25519.Sign(key, bind.append([]byte(RelayAuthContext))))
	return sig
}

// VerifyRelayAuth checks a RelayAuth signature by the relay with key pub.
func VerifyRelayAuth(pub ed25519.PublicKey, bind Binding, sig [SigSize]byte) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, bind.append([]byte(RelayAuthContext)), sig[:])
}

// appendHead appends the request id and mailbox id that open most owner
// requests.
func appendHead(b []byte, req uint32, mailbox [MailboxSize]byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, req), mailbox[:]...)
}

func readHead(s *cryptobyte.String, req *uint32, mailbox *[MailboxSize]byte) bool {
	return s.ReadUint32(req) && readArray(s, mailbox[:])
}

// Create makes a mailbox: req u32 | mailbox 32 | owner 32 | caplen u8 |
// capverifier | sig 64. The signature proves the creator holds the owner
// key; capverifier is SHA-256 of the send capability, or empty.
type Create struct {
	Req         uint32
	Mailbox     [MailboxSize]byte
	Owner       [ed25519.PublicKeySize]byte
	CapVerifier []byte
	Sig         [SigSize]byte
}

func (Create) Type() FrameType { return FrameCreate }
func (m Create) AppendSigned(b []byte) []byte {
	return appendCap(append(appendHead(b, m.Req, m.Mailbox), m.Owner[:]...), m.CapVerifier)
}
func (m Create) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseCreate decodes a Create payload.
func ParseCreate(p []byte) (m Create, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, &m.Req, &m.Mailbox) && readArray(s, m.Owner[:]) && readCap(s, &m.CapVerifier) &&
			readArray(s, m.Sig[:])
	})
	return m, err
}

// Subscribe asks for pushes of a mailbox's envelopes: req u32 | mailbox 32
// | sig 64.
type Subscribe struct {
	Req     uint32
	Mailbox [MailboxSize]byte
	Sig     [SigSize]byte
}

func (Subscribe) Type() FrameType                 { return FrameSubscribe }
func (m Subscribe) AppendSigned(b []byte) []byte  { return appendHead(b, m.Req, m.Mailbox) }
func (m Subscribe) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseSubscribe decodes a Subscribe payload.
func ParseSubscribe(p []byte) (m Subscribe, err error) {
	err = parseMailboxSig(p, &m.Req, &m.Mailbox, &m.Sig)
	return m, err
}

// SubscribeAfter is Subscribe from a cursor: req u32 | mailbox 32 |
// after u64 | sig 64. The subscription pushes only envelopes with seq >
// After, the waiting ones and then each new one. A client that has paged
// through the mailbox (in parts, behind a censor that freezes flows after
// a few kilobytes) and holds what it found there (fragments of a message
// still unfinished) subscribes past it: a plain Subscribe pushed those
// envelopes first again, and behind such a censor the push of the first
// large one froze the subscription every time, with new messages queued
// behind it. A relay from before it answers CodeUnknownFrame.
type SubscribeAfter struct {
	Req     uint32
	Mailbox [MailboxSize]byte
	After   uint64
	Sig     [SigSize]byte
}

func (SubscribeAfter) Type() FrameType { return FrameSubscribeAfter }
func (m SubscribeAfter) AppendSigned(b []byte) []byte {
	return binary.BigEndian.AppendUint64(appendHead(b, m.Req, m.Mailbox), m.After)
}
func (m SubscribeAfter) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseSubscribeAfter decodes a SubscribeAfter payload.
func ParseSubscribeAfter(p []byte) (m SubscribeAfter, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, &m.Req, &m.Mailbox) && s.ReadUint64(&m.After) && readArray(s, m.Sig[:])
	})
	return m, err
}

// Delete removes a mailbox and everything in it: req u32 | mailbox 32 |
// sig 64.
type Delete Subscribe

func (Delete) Type() FrameType                 { return FrameDelete }
func (m Delete) AppendSigned(b []byte) []byte  { return appendHead(b, m.Req, m.Mailbox) }
func (m Delete) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseDelete decodes a Delete payload.
func ParseDelete(p []byte) (m Delete, err error) {
	err = parseMailboxSig(p, &m.Req, &m.Mailbox, &m.Sig)
	return m, err
}

func parseMailboxSig(p []byte, req *uint32, mailbox *[MailboxSize]byte, sig *[SigSize]byte) error {
	return parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, req, mailbox) && readArray(s, sig[:])
	})
}

// Fetch reads waiting envelopes with seq > After, oldest first: req u32 |
// mailbox 32 | max u16 | after u64 | sig 64. Max 0 means MaxFetch.
type Fetch struct {
	Req     uint32
	Mailbox [MailboxSize]byte
	Max     uint16
	After   uint64
	Sig     [SigSize]byte
}

func (Fetch) Type() FrameType { return FrameFetch }
func (m Fetch) AppendSigned(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(appendHead(b, m.Req, m.Mailbox), m.Max)
	return binary.BigEndian.AppendUint64(b, m.After)
}
func (m Fetch) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseFetch decodes a Fetch payload.
func ParseFetch(p []byte) (m Fetch, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, &m.Req, &m.Mailbox) && s.ReadUint16(&m.Max) && s.ReadUint64(&m.After) &&
			readArray(s, m.Sig[:])
	})
	return m, err
}

// FetchPart reads part of the first waiting envelope with seq > After:
// req u32 | mailbox 32 | after u64 | offset u32 | max u32 | sig 64. The
// Result's body is a [Part] (empty when nothing waits). It is how a client
// on a network that cuts flows after a few kilobytes receives envelopes
// larger than that: part by part, over as many sessions as it takes,
// asking again for the same envelope (After its seq minus one) from where
// the last session stopped.
type FetchPart struct {
	Req     uint32
	Mailbox [MailboxSize]byte
	After   uint64
	Offset  uint32
	Max     uint32
	Sig     [SigSize]byte
}

// MaxPart bounds the bytes one FetchPart returns.
const MaxPart = 16 << 10

func (FetchPart) Type() FrameType { return FrameFetchPart }
func (m FetchPart) AppendSigned(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(appendHead(b, m.Req, m.Mailbox), m.After)
	b = binary.BigEndian.AppendUint32(b, m.Offset)
	return binary.BigEndian.AppendUint32(b, m.Max)
}
func (m FetchPart) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseFetchPart decodes a FetchPart payload.
func ParseFetchPart(p []byte) (m FetchPart, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, &m.Req, &m.Mailbox) && s.ReadUint64(&m.After) && s.ReadUint32(&m.Offset) &&
			s.ReadUint32(&m.Max) && readArray(s, m.Sig[:])
	})
	return m, err
}

// Part is the body of a Result answering FetchPart: ref 32 | seq u64 |
// total u32 | data, where data are the envelope's bytes from the asked
// offset on (at most the asked max and MaxPart) and total is the
// envelope's whole size.
type Part struct {
	Ref   [RefSize]byte
	Seq   uint64
	Total uint32
	Data  []byte
}

// Append appends the encoded part.
func (m Part) Append(b []byte) []byte {
	b = append(b, m.Ref[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	return append(binary.BigEndian.AppendUint32(b, m.Total), m.Data...)
}

// ParsePart decodes a Part; it checks only the layout (the caller checks
// the sizes against what it asked for).
func ParsePart(p []byte) (m Part, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readArray(s, m.Ref[:]) && s.ReadUint64(&m.Seq) && s.ReadUint32(&m.Total) && readRest(s, &m.Data)
	})
	return m, err
}

// Ack deletes delivered envelopes: req u32 | mailbox 32 | n u16 | n × ref
// 32 | sig 64, with n at most MaxAckRefs.
type Ack struct {
	Req     uint32
	Mailbox [MailboxSize]byte
	Refs    [][RefSize]byte
	Sig     [SigSize]byte
}

func (Ack) Type() FrameType { return FrameAck }
func (m Ack) AppendSigned(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(appendHead(b, m.Req, m.Mailbox), uint16(len(m.Refs)))
	for _, r := range m.Refs {
		b = append(b, r[:]...)
	}
	return b
}
func (m Ack) AppendPayload(b []byte) []byte { return append(m.AppendSigned(b), m.Sig[:]...) }

// ParseAck decodes an Ack payload.
func ParseAck(p []byte) (m Ack, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		var n uint16
		if !readHead(s, &m.Req, &m.Mailbox) || !s.ReadUint16(&n) || n > MaxAckRefs {
			return false
		}
		m.Refs = make([][RefSize]byte, n)
		for i := range m.Refs {
			if !readArray(s, m.Refs[i][:]) {
				return false
			}
		}
		return readArray(s, m.Sig[:])
	})
	return m, err
}

// Rotate moves a mailbox's envelopes to a new id and owner: req u32 | old
// 32 | new 32 | newowner 32 | caplen u8 | capverifier | sig 64 (old owner)
// | sig 64 (new owner). Both owners sign the same bytes.
type Rotate struct {
	Req         uint32
	Old, New    [MailboxSize]byte
	NewOwner    [ed25519.PublicKeySize]byte
	CapVerifier []byte
	OldSig      [SigSize]byte
	NewSig      [SigSize]byte
}

func (Rotate) Type() FrameType { return FrameRotate }
func (m Rotate) AppendSigned(b []byte) []byte {
	b = append(appendHead(b, m.Req, m.Old), m.New[:]...)
	return appendCap(append(b, m.NewOwner[:]...), m.CapVerifier)
}
func (m Rotate) AppendPayload(b []byte) []byte {
	return append(append(m.AppendSigned(b), m.OldSig[:]...), m.NewSig[:]...)
}

// ParseRotate decodes a Rotate payload.
func ParseRotate(p []byte) (m Rotate, err error) {
	err = parse(p, func(s *cryptobyte.String) bool {
		return readHead(s, &m.Req, &m.Old) && readArray(s, m.New[:]) && readArray(s, m.NewOwner[:]) &&
			readCap(s, &m.CapVerifier) && readArray(s, m.OldSig[:]) && readArray(s, m.NewSig[:])
	})
	return m, err
}
