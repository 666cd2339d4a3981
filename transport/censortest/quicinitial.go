package censortest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// A QUIC v1 client Initial packet (RFC 9000 section 17.2.2, protected as in
// RFC 9001 section 5), as a censor reads it:
//
//	first(1)        1 1 type(2)=00 reserved(2) pn_length-1(2), the low 4 bits protected
//	version(4)      0x00000001
//	dcid<0..20>     8-bit length prefix; the initial secrets derive from it
//	scid<0..20>     8-bit length prefix
//	token           varint length, bytes
//	length          varint: packet number and payload
//	packet_number   1-4 bytes, protected
//	payload         AES-128-GCM sealed frames (16-byte tag)
//
// Keys: initial_secret = HKDF-Extract(quicV1Salt, dcid); client secret =
// HKDF-Expand-Label(initial_secret, "client in", "", 32); from it "quic
// key" (16), "quic iv" (12) and "quic hp" (16). The header protection mask
// is AES-ECB(hp, the 16 bytes 4 after the packet number's start). Several
// packets may be coalesced in one datagram. The client's frames in Initial
// packets are PADDING, PING, ACK, CRYPTO (offset, length, ClientHello bytes)
// and CONNECTION_CLOSE.

const (
	quicVersion1      = 0x00000001
	maxConnIDLen      = 20
	quicTagLen        = 16
	quicSampleLen     = 16
	maxCryptoStream   = 16 << 10 // most ClientHello bytes reassembled
	maxInitialFrames  = 256      // CRYPTO frames kept per flow
	quicPacketTypeMax = 3
)

// quicV1Salt is initial_salt of RFC 9001 section 5.2.
var quicV1Salt = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
	0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// ErrNotQUICInitial is wrapped by the errors of [ParseQUICInitials] and
// [QUICClientHello] for input that is not a QUIC v1 client Initial, or not
// one that decrypts.
var ErrNotQUICInitial = errors.New("not a QUIC v1 client Initial")

// QUICInitial is one decrypted client Initial packet.
type QUICInitial struct {
	DCID, SCID, Token []byte
	PacketNumber      uint64
	Payload           []byte // the frames, decrypted
}

// ParseQUICInitials decrypts the client Initial packets coalesced in one
// UDP datagram. Other long-header packets after them are skipped; an error
// is returned if the datagram does not start with a v1 Initial that
// decrypts, or if one of its Initial packets is malformed.
func ParseQUICInitials(datagram []byte) ([]QUICInitial, error) {
	var out []QUICInitial
	for len(datagram) > 0 {
		p, rest, err := openInitial(datagram)
		switch {
		case err == nil:
			out = append(out, p)
		case errors.Is(err, errSkipPacket) && len(out) > 0:
		case errors.Is(err, errSkipPacket):
			return nil, fmt.Errorf("%w: first packet is no v1 Initial", ErrNotQUICInitial)
		default:
			return nil, err
		}
		datagram = rest
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty datagram", ErrNotQUICInitial)
	}
	return out, nil
}

// errSkipPacket marks a well-formed long-header packet that is no v1
// Initial, and a short-header packet (which runs to the datagram's end).
var errSkipPacket = errors.New("not an Initial packet")

func notInitial(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrNotQUICInitial}, args...)...)
}

// openInitial decrypts the packet at the start of b and returns it with
// the bytes after it.
func openInitial(b []byte) (QUICInitial, []byte, error) {
	var p QUICInitial
	s := cryptobyte.String(b)
	var first uint8
	var version uint32
	if !s.ReadUint8(&first) || first&0x80 == 0 {
		return p, nil, errSkipPacket // short header
	}
	if !s.ReadUint32(&version) || !s.ReadUint8LengthPrefixed((*cryptobyte.String)(&p.DCID)) ||
		!s.ReadUint8LengthPrefixed((*cryptobyte.String)(&p.SCID)) {
		return p, nil, notInitial("truncated long header")
	}
	if len(p.DCID) > maxConnIDLen || len(p.SCID) > maxConnIDLen {
		return p, nil, notInitial("connection id longer than %d bytes", maxConnIDLen)
	}
	ptype := first >> 4 & quicPacketTypeMax
	if version != quicVersion1 || ptype == quicPacketTypeMax { // other versions, Retry: to the end
		return p, nil, errSkipPacket
	}
	var tokenLen, length uint64
	if ptype == 0 && (!readVarint(&s, &tokenLen) || !s.ReadBytes(&p.Token, int(min(tokenLen, uint64(len(s)+1))))) {
		return p, nil, notInitial("truncated token")
	}
	if !readVarint(&s, &length) || length > uint64(len(s)) {
		return p, nil, notInitial("packet length beyond the datagram")
	}
	pnOffset := len(b) - len(s)
	end := pnOffset + int(length)
	if ptype != 0 { // 0-RTT or Handshake
		return p, b[end:], errSkipPacket
	}
	var err error
	p.PacketNumber, p.Payload, err = unprotect(b[:end], pnOffset, p.DCID)
	if err != nil {
		return p, nil, err
	}
	p.DCID, p.SCID, p.Token = clone(p.DCID), clone(p.SCID), clone(p.Token)
	return p, b[end:], nil
}

// unprotect removes header protection from the Initial packet pkt, whose
// packet number starts at pnOffset, and opens its payload.
func unprotect(pkt []byte, pnOffset int, dcid []byte) (uint64, []byte, error) {
	if len(pkt) < pnOffset+4+quicSampleLen {
		return 0, nil, notInitial("packet too short to sample")
	}
	k, err := clientInitialKeys(dcid)
	if err != nil {
		return 0, nil, err
	}
	var mask [aes.BlockSize]byte
	k.hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+4+quicSampleLen])
	hdr := clone(pkt[:pnOffset+4])
	hdr[0] ^= mask[0] & 0x0f
	pnLen := int(hdr[0]&0x03) + 1
	var pn uint64
	for i := range pnLen {
		hdr[pnOffset+i] ^= mask[1+i]
		pn = pn<<8 | uint64(hdr[pnOffset+i])
	}
	nonce := clone(k.iv)
	for i := range 8 {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	payload, err := k.aead.Open(nil, nonce, pkt[pnOffset+pnLen:], hdr[:pnOffset+pnLen])
	if err != nil {
		return 0, nil, notInitial("payload does not decrypt")
	}
	return pn, payload, nil
}

// initialKeys are the client's Initial packet protection keys.
type initialKeys struct {
	secret, key, iv, hpKey []byte
	aead                   cipher.AEAD
	hp                     cipher.Block
}

func clientInitialKeys(dcid []byte) (*initialKeys, error) {
	initial, err := hkdf.Extract(sha256.New, dcid, quicV1Salt)
	if err != nil {
		return nil, err
	}
	k := &initialKeys{secret: expandLabel(initial, "client in", sha256.Size)}
	k.key = expandLabel(k.secret, "quic key", 16)
	k.iv = expandLabel(k.secret, "quic iv", 12)
	k.hpKey = expandLabel(k.secret, "quic hp", 16)
	block, err := aes.NewCipher(k.key)
	if err != nil {
		return nil, err
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	if k.hp, err = aes.NewCipher(k.hpKey); err != nil {
		return nil, err
	}
	return k, nil
}

// expandLabel is HKDF-Expand-Label of RFC 8446 section 7.1 with an empty
// context.
func expandLabel(secret []byte, label string, n int) []byte {
	var b cryptobyte.Builder
	b.AddUint16(uint16(n))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte("tls13 " + label)) })
	b.AddUint8LengthPrefixed(func(*cryptobyte.Builder) {})
	out, err := hkdf.Expand(sha256.New, secret, string(b.BytesOrPanic()), n)
	if err != nil {
		panic(err) // n is a constant far below the limit of 255*32
	}
	return out
}

// readVarint reads a QUIC variable-length integer (RFC 9000 section 16).
func readVarint(s *cryptobyte.String, v *uint64) bool {
	var b uint8
	if !s.ReadUint8(&b) {
		return false
	}
	var rest []byte
	if !s.ReadBytes(&rest, 1<<(b>>6)-1) {
		return false
	}
	x := uint64(b & 0x3f)
	for _, c := range rest {
		x = x<<8 | uint64(c)
	}
	*v = x
	return true
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Frame types a client sends in Initial packets.
const (
	framePadding  = 0x00
	framePing     = 0x01
	frameACK      = 0x02
	frameACKECN   = 0x03
	frameCrypto   = 0x06
	frameConnClos = 0x1c
)

// eachCryptoFrame calls fn for every CRYPTO frame in an Initial payload.
func eachCryptoFrame(payload []byte, fn func(off uint64, data []byte) error) error {
	s := cryptobyte.String(payload)
	for !s.Empty() {
		var t uint64
		if !readVarint(&s, &t) {
			return notInitial("truncated frame")
		}
		var err error
		switch t {
		case framePadding, framePing:
		case frameACK, frameACKECN:
			err = skipACK(&s, t == frameACKECN)
		case frameCrypto:
			var off, n uint64
			var data []byte
			if !readVarint(&s, &off) || !readVarint(&s, &n) || n > uint64(len(s)) || !s.ReadBytes(&data, int(n)) {
				return notInitial("truncated CRYPTO frame")
			}
			err = fn(off, data)
		case frameConnClos:
			var code, ft, n uint64
			if !readVarint(&s, &code) || !readVarint(&s, &ft) || !readVarint(&s, &n) || n > uint64(len(s)) || !s.Skip(int(n)) {
				return notInitial("truncated CONNECTION_CLOSE frame")
			}
		default:
			return notInitial("frame type %#x not allowed in an Initial packet", t)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func skipACK(s *cryptobyte.String, ecn bool) error {
	var largest, delay, ranges, first, v uint64
	if !readVarint(s, &largest) || !readVarint(s, &delay) || !readVarint(s, &ranges) || !readVarint(s, &first) {
		return notInitial("truncated ACK frame")
	}
	n := 2 * min(ranges, uint64(len(*s)))
	if ecn {
		n += 3
	}
	for range n {
		if !readVarint(s, &v) {
			return notInitial("truncated ACK frame")
		}
	}
	return nil
}

// cryptoStream reassembles the client's Initial CRYPTO stream from frames
// that may come in any order, overlap or repeat, up to maxCryptoStream
// bytes.
type cryptoStream struct {
	frames []cryptoFrame
}

type cryptoFrame struct {
	off  uint64
	data []byte
}

func (c *cryptoStream) add(off uint64, data []byte) error {
	if off+uint64(len(data)) > maxCryptoStream {
		return notInitial("CRYPTO data beyond %d bytes", maxCryptoStream)
	}
	if len(c.frames) >= maxInitialFrames {
		return notInitial("more than %d CRYPTO frames", maxInitialFrames)
	}
	c.frames = append(c.frames, cryptoFrame{off, clone(data)})
	return nil
}

// contiguous returns the stream's bytes from offset 0 up to the first gap.
func (c *cryptoStream) contiguous() []byte {
	var out []byte
	for grew := true; grew; {
		grew = false
		for _, f := range c.frames {
			end := f.off + uint64(len(f.data))
			if f.off <= uint64(len(out)) && end > uint64(len(out)) {
				out = append(out, f.data[uint64(len(out))-f.off:]...)
				grew = true
			}
		}
	}
	return out
}

// clientHello returns the ClientHello once the stream holds all of it:
// nil, nil while it is incomplete.
func (c *cryptoStream) clientHello() (*ClientHello, error) {
	hs := c.contiguous()
	want, ok := handshakeLen(hs)
	if !ok || len(hs) < want {
		return nil, nil
	}
	return ParseClientHello(handshakeRecords(hs[:want]))
}

// handshakeRecords wraps a handshake message in TLS records for
// ParseClientHello, as a TCP client would have sent it.
func handshakeRecords(hs []byte) []byte {
	var out []byte
	for len(hs) > 0 {
		n := min(len(hs), maxRecordPayload)
		out = append(out, recordTypeHandshake, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// QUICClientHello decrypts the client Initial packets in datagrams, the
// first datagrams a client sent on one flow in order, reassembles their
// CRYPTO frames and parses the ClientHello they carry. The error wraps
// [ErrNotQUICInitial] or [ErrMalformed].
func QUICClientHello(datagrams ...[]byte) (*ClientHello, error) {
	var c cryptoStream
	for _, d := range datagrams {
		if err := c.addDatagram(d); err != nil {
			return nil, err
		}
	}
	h, err := c.clientHello()
	if err == nil && h == nil {
		err = notInitial("ClientHello incomplete")
	}
	return h, err
}

// addDatagram adds the CRYPTO frames of the Initial packets in d.
func (c *cryptoStream) addDatagram(d []byte) error {
	pkts, err := ParseQUICInitials(d)
	if err != nil {
		return err
	}
	for _, p := range pkts {
		if err := eachCryptoFrame(p.Payload, c.add); err != nil {
			return err
		}
	}
	return nil
}
