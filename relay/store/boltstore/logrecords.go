package boltstore

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/postern/postern/relay/store"
)

// The log's byte layout (see "The log" in the package comment): segment
// headers, batch frames and the records inside them. Every integer is
// big-endian.

// Segment header and batch frame.
const (
	segMagic     = "PSTRLOG2"         // frame checksums continue from a secret seed per segment
	segMagicV1   = "PSTRLOG1"         // frames checksummed alone (segments written before recycling)
	segHeader    = 8 + 8 + 32 + 8 + 4 // magic, number, key check, outbox next seq, CRC32C
	frameHeader  = 4 + 4              // payload length, CRC32C of the payload from the segment seed
	maxFrame     = 1 << 30
	recHeader    = 1 + 4 // type, body length
	envelopeBody = 32 + 8 + 4 + store.RefSize
	outboxBody   = 32 + 8 + 4
	mailboxBody  = 32 + ed25519.PublicKeySize + 8 + 2
	forwardBody  = 32 + 4 + 4
	boxBody      = 32 + 8
)

// Record types.
const (
	recMailbox  byte = 1  // 32B hash, 32B owner, 8B next seq, 2B n, nB send capability verifier
	recDelete   byte = 2  // 32B hash, 1B retired (0/1), 4B day it becomes free
	recEnvelope byte = 3  // 32B hash, 8B seq, 4B expiry day, 32B ref, sealed envelope
	recAck      byte = 4  // 32B hash, 8B seq per envelope
	recSweep    byte = 5  // 4B day: envelopes and retirements up to it end
	recRetired  byte = 6  // 32B hash, 4B day it becomes free
	recOutbox   byte = 7  // 32B dest, 8B seq, 4B expiry day, sealed item
	recDone     byte = 8  // 32B dest, 8B seq per item
	recExpire   byte = 9  // 4B day: outbox items up to it end
	recClose    byte = 10 // empty: the store was closed cleanly here
	recForward  byte = 11 // 32B hash, 4B day it becomes free, 4B day its forward ends, sealed forward
	recBox      byte = 12 // 32B hash, 8B next seq, sealed owner key and send capability verifier
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fixedBody is the least body length of each record type (0: no such type).
var fixedBody = [...]int{recMailbox: mailboxBody, recDelete: 37, recEnvelope: envelopeBody, recAck: 32,
	recSweep: 4, recRetired: 36, recOutbox: outboxBody, recDone: 32, recExpire: 4, recClose: 0,
	recForward: forwardBody, recBox: boxBody}

// record is one parsed log record. Which fields are set depends on typ.
type record struct {
	typ     byte
	size    int      // bytes in the log, header included
	key     [32]byte // mailbox hash or destination
	owner   []byte
	sendCap []byte
	seq     uint64   // envelope or item seq; next seq of a mailbox
	seqs    []uint64 // ack, done
	day     uint32
	until   uint32 // day a forward ends
	retired bool
	ref     store.Ref
	sealed  []byte // aliases the frame
	sealOff int    // offset of sealed in the record
}

var errLogRecord = errors.New("bad record")

// parseRecord parses the record at the start of b and returns it with
// the rest of b.
func parseRecord(b []byte) (record, []byte, error) {
	if len(b) < recHeader {
		return record{}, nil, errLogRecord
	}
	n := int(binary.BigEndian.Uint32(b[1:]))
	if n > len(b)-recHeader {
		return record{}, nil, errLogRecord
	}
	r := record{typ: b[0], size: recHeader + n}
	if err := r.parseBody(b[recHeader : recHeader+n]); err != nil {
		return record{}, nil, fmt.Errorf("%w (type %d)", err, b[0])
	}
	return r, b[recHeader+n:], nil
}

func (r *record) parseBody(p []byte) error {
	if r.typ == recClose {
		return exact(p, 0, true)
	}
	fixed := 0
	if int(r.typ) < len(fixedBody) {
		fixed = fixedBody[r.typ]
	}
	if fixed == 0 || len(p) < fixed {
		return errLogRecord
	}
	if r.typ != recSweep && r.typ != recExpire {
		copy(r.key[:], p)
	}
	switch r.typ {
	case recMailbox:
		return r.parseMailbox(p)
	case recDelete:
		r.retired, r.day = p[32] == 1, binary.BigEndian.Uint32(p[33:])
		return exact(p, 37, p[32] <= 1)
	case recEnvelope:
		r.seq, r.day = binary.BigEndian.Uint64(p[32:]), binary.BigEndian.Uint32(p[40:])
		copy(r.ref[:], p[44:])
		r.sealed, r.sealOff = p[envelopeBody:], recHeader+envelopeBody
		return sealedSize(len(r.sealed), store.MaxEnvelopeSize)
	case recOutbox:
		r.seq, r.day = binary.BigEndian.Uint64(p[32:]), binary.BigEndian.Uint32(p[40:])
		r.sealed, r.sealOff = p[outboxBody:], recHeader+outboxBody
		return sealedSize(len(r.sealed), store.MaxForwardSize)
	case recAck, recDone:
		if (len(p)-32)%8 != 0 || len(p) == 32 {
			return errLogRecord
		}
		for q := p[32:]; len(q) > 0; q = q[8:] {
			r.seqs = append(r.seqs, binary.BigEndian.Uint64(q))
		}
	case recSweep, recExpire:
		r.day = binary.BigEndian.Uint32(p)
		return exact(p, 4, true)
	case recRetired:
		r.day = binary.BigEndian.Uint32(p[32:])
		return exact(p, 36, true)
	case recBox:
		r.seq = binary.BigEndian.Uint64(p[32:])
		r.sealed, r.sealOff = p[boxBody:], recHeader+boxBody
		if len(r.sealed) < store.SealOverhead+ed25519.PublicKeySize {
			return errLogRecord
		}
		return sealedSize(len(r.sealed), ed25519.PublicKeySize+store.MaxSendCapSize)
	case recForward:
		r.day, r.until = binary.BigEndian.Uint32(p[32:]), binary.BigEndian.Uint32(p[36:])
		r.sealed, r.sealOff = p[forwardBody:], recHeader+forwardBody
		if len(r.sealed) < store.SealOverhead+store.IDSize {
			return errLogRecord
		}
		return sealedSize(len(r.sealed), store.IDSize+store.MaxSendCapSize)
	}
	return nil
}

func (r *record) parseMailbox(p []byte) error {
	r.owner = p[32 : 32+ed25519.PublicKeySize]
	q := p[32+ed25519.PublicKeySize:]
	r.seq = binary.BigEndian.Uint64(q)
	n := int(binary.BigEndian.Uint16(q[8:]))
	if n > store.MaxSendCapSize || len(q) != 10+n {
		return errLogRecord
	}
	if n > 0 {
		r.sendCap = q[10:]
	}
	return nil
}

func exact(p []byte, n int, ok bool) error {
	if len(p) != n || !ok {
		return errLogRecord
	}
	return nil
}

func sealedSize(n, max int) error {
	if n < store.SealOverhead+1 || n > store.SealOverhead+max {
		return errLogRecord
	}
	return nil
}

// Record encoders append one record to b.

func appendRecord(b []byte, typ byte, body ...[]byte) []byte {
	n := 0
	for _, p := range body {
		n += len(p)
	}
	b = slices.Grow(b, recHeader+n) // one allocation for a new record
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	for _, p := range body {
		b = append(b, p...)
	}
	return b
}

func appendMailbox(b []byte, hid [32]byte, owner ed25519.PublicKey, nextSeq uint64, sendCap []byte) []byte {
	fixed := binary.BigEndian.AppendUint64(append(hid[:], owner...), nextSeq)
	fixed = binary.BigEndian.AppendUint16(fixed, uint16(len(sendCap)))
	return appendRecord(b, recMailbox, fixed, sendCap)
}

// appendBox appends a mailbox record whose owner key and send capability
// verifier are sealed (store.Keys.SealMailbox): what the store writes
// since 2026-12-07. Records of type recMailbox, with both in the clear,
// are still read; a Put to such a mailbox writes it anew this way.
func appendBox(b []byte, hid [32]byte, nextSeq uint64, sealed []byte) []byte {
	return appendRecord(b, recBox, hid[:], binary.BigEndian.AppendUint64(nil, nextSeq), sealed)
}

func appendDelete(b []byte, hid [32]byte, retired bool, day uint32) []byte {
	flag := byte(0)
	if retired {
		flag = 1
	}
	return appendRecord(b, recDelete, hid[:], []byte{flag}, binary.BigEndian.AppendUint32(nil, day))
}

// envelopeHead is the body of an envelope record before the sealed bytes.
func envelopeHead(hid [32]byte, seq uint64, day uint32, ref store.Ref) []byte {
	p := binary.BigEndian.AppendUint64(append(make([]byte, 0, envelopeBody), hid[:]...), seq)
	p = binary.BigEndian.AppendUint32(p, day)
	return append(p, ref[:]...)
}

// envelopeRecordHead is an envelope record up to its sealed bytes, n of
// which must follow it.
func envelopeRecordHead(hid [32]byte, day uint32, ref store.Ref, n int) []byte {
	return appendEnvelopeRecordHead(make([]byte, 0, recHeader+envelopeBody), hid, day, ref, n)
}

// appendEnvelopeRecordHead appends envelopeRecordHead to b.
func appendEnvelopeRecordHead(b []byte, hid [32]byte, day uint32, ref store.Ref, n int) []byte {
	b = append(b, recEnvelope)
	b = binary.BigEndian.AppendUint32(b, uint32(envelopeBody+n))
	return append(b, envelopeHead(hid, 0, day, ref)...)
}

func appendOutbox(b []byte, dest [32]byte, seq uint64, day uint32, sealed []byte) []byte {
	p := binary.BigEndian.AppendUint64(append(make([]byte, 0, outboxBody), dest[:]...), seq)
	return appendRecord(b, recOutbox, binary.BigEndian.AppendUint32(p, day), sealed)
}

// appendSeqs appends an ack or done record.
func appendSeqs(b []byte, typ byte, key [32]byte, seqs []uint64) []byte {
	p := append(make([]byte, 0, 32+8*len(seqs)), key[:]...)
	for _, s := range seqs {
		p = binary.BigEndian.AppendUint64(p, s)
	}
	return appendRecord(b, typ, p)
}

func appendDay(b []byte, typ byte, day uint32) []byte {
	return appendRecord(b, typ, binary.BigEndian.AppendUint32(nil, day))
}

func appendRetired(b []byte, hid [32]byte, day uint32) []byte {
	return appendRecord(b, recRetired, hid[:], binary.BigEndian.AppendUint32(nil, day))
}

// appendForward appends the retirement of a rotated-away id with where
// it went: sealed is Keys.SealForward's, readable only with the old id.
func appendForward(b []byte, hid [32]byte, day, until uint32, sealed []byte) []byte {
	days := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, day), until)
	return appendRecord(b, recForward, hid[:], days, sealed)
}

// segHead is a segment file's header.
type segHead struct {
	num     uint64
	check   [32]byte
	outNext uint64
	v1      bool // PSTRLOG1: its frames' checksums do not cover the number
}

// seeder gives the secret checksum seed of each segment (store.Keys).
type seeder interface {
	FrameSeed(segment uint64) uint32
	Check() [32]byte // what the segment header's key check must be
}

// seed is where the checksum of each of the segment's frames starts:
// k.FrameSeed of its number, so that the frames a recycled segment file
// still holds from its last use fail the check, and so do frames planted
// in bytes a client chose, whose seed nobody outside the relay knows (a
// chance of 2^-32 each); 0 in a segment of the first layout.
func (h segHead) seed(k seeder) uint32 {
	if h.v1 {
		return 0
	}
	return k.FrameSeed(h.num)
}

func (h segHead) encode() []byte {
	magic := segMagic
	if h.v1 {
		magic = segMagicV1
	}
	b := append(make([]byte, 0, segHeader), magic...)
	b = binary.BigEndian.AppendUint64(b, h.num)
	b = append(b, h.check[:]...)
	b = binary.BigEndian.AppendUint64(b, h.outNext)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func parseSegHead(b []byte) (segHead, error) {
	if len(b) < segHeader || (string(b[:8]) != segMagic && string(b[:8]) != segMagicV1) {
		return segHead{}, errors.New("not a log segment (bad magic)")
	}
	if crc32.Checksum(b[:segHeader-4], castagnoli) != binary.BigEndian.Uint32(b[segHeader-4:]) {
		return segHead{}, errors.New("segment header damaged (checksum)")
	}
	h := segHead{num: binary.BigEndian.Uint64(b[8:]), outNext: binary.BigEndian.Uint64(b[48:]), v1: string(b[:8]) == segMagicV1}
	copy(h.check[:], b[16:48])
	return h, nil
}

// putFrameHeader fills the frame header at the start of b for payload,
// which follows it, in a segment whose checksums start at seed
// (segHead.seed).
func putFrameHeader(b, payload []byte, seed uint32) {
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	binary.BigEndian.PutUint32(b[4:], crc32.Update(seed, castagnoli, payload))
}

// frame returns payload in a frame for a segment whose checksums start at
// seed.
func frame(seed uint32, payload []byte) []byte {
	b := append(make([]byte, frameHeader, frameHeader+len(payload)), payload...)
	putFrameHeader(b, b[frameHeader:], seed)
	return b
}

// parseFrameHeader returns the payload length and checksum of a frame.
func parseFrameHeader(b []byte) (n int, sum uint32, err error) {
	n, sum = int(binary.BigEndian.Uint32(b)), binary.BigEndian.Uint32(b[4:])
	if n == 0 || n > maxFrame {
		return 0, 0, errors.New("bad batch length")
	}
	return n, sum, nil
}
