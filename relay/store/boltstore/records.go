package boltstore

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"

	"github.com/postern/postern/relay/store"
)

// Mailbox and envelope records and the keys of store.db, laid out as the
// package comment says.

// recordVersion is the first byte of every mailbox and envelope record.
const recordVersion = 1

const (
	mailboxFixed  = 1 + ed25519.PublicKeySize + 8 + 4 + 8 + 2
	envelopeFixed = 1 + 4 + store.RefSize
	outboxFixed   = 1 + 4
)

var errRecord = errors.New("store: data file corrupt: bad record; restore from backup")

type mailboxRecord struct {
	owner   ed25519.PublicKey
	nextSeq uint64
	count   uint32
	bytes   uint64
	sendCap []byte
}

func (r *mailboxRecord) encode() []byte {
	b := make([]byte, 0, mailboxFixed+len(r.sendCap))
	b = append(b, recordVersion)
	b = append(b, r.owner...)
	b = binary.BigEndian.AppendUint64(b, r.nextSeq)
	b = binary.BigEndian.AppendUint32(b, r.count)
	b = binary.BigEndian.AppendUint64(b, r.bytes)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.sendCap)))
	return append(b, r.sendCap...)
}

// decodeMailbox parses a mailbox record. The result does not alias b.
func decodeMailbox(b []byte) (mailboxRecord, error) {
	var r mailboxRecord
	if len(b) < mailboxFixed || b[0] != recordVersion {
		return r, errRecord
	}
	p := b[1:]
	r.owner = ed25519.PublicKey(append([]byte(nil), p[:ed25519.PublicKeySize]...))
	p = p[ed25519.PublicKeySize:]
	r.nextSeq = binary.BigEndian.Uint64(p)
	r.count = binary.BigEndian.Uint32(p[8:])
	r.bytes = binary.BigEndian.Uint64(p[12:])
	n := int(binary.BigEndian.Uint16(p[20:]))
	p = p[22:]
	if n > store.MaxSendCapSize || len(p) != n {
		return mailboxRecord{}, errRecord
	}
	if n > 0 {
		r.sendCap = append([]byte(nil), p...)
	}
	return r, nil
}

type envelopeRecord struct {
	day    uint32
	ref    store.Ref
	sealed []byte
}

func (r *envelopeRecord) encode() []byte {
	b := make([]byte, 0, envelopeFixed+len(r.sealed))
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, r.day)
	b = append(b, r.ref[:]...)
	return append(b, r.sealed...)
}

// plainLen is the size of the envelope inside.
func (r *envelopeRecord) plainLen() int { return len(r.sealed) - store.SealOverhead }

// decodeEnvelope parses an envelope record. sealed aliases b.
func decodeEnvelope(b []byte) (envelopeRecord, error) {
	var r envelopeRecord
	if len(b) < envelopeFixed+store.SealOverhead+1 || len(b) > envelopeFixed+store.SealOverhead+store.MaxEnvelopeSize || b[0] != recordVersion {
		return r, errRecord
	}
	r.day = binary.BigEndian.Uint32(b[1:])
	copy(r.ref[:], b[5:])
	r.sealed = b[envelopeFixed:]
	return r, nil
}

// seqKey is the key of an envelope in its mailbox's bucket.
func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// dayKey is the name of an expiry-day bucket.
func dayKey(day uint32) []byte { return binary.BigEndian.AppendUint32(nil, day) }

// expiryKey is an entry in an expiry-day bucket: mailbox hash || sequence.
func expiryKey(hid [32]byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, 40), hid[:]...), seq)
}

// outboxRecord is one forward outbox item.
type outboxRecord struct {
	day    uint32
	sealed []byte
}

func (r *outboxRecord) encode() []byte {
	b := make([]byte, 0, outboxFixed+len(r.sealed))
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, r.day)
	return append(b, r.sealed...)
}

// plainLen is the size of the item inside.
func (r *outboxRecord) plainLen() int { return len(r.sealed) - store.SealOverhead }

// decodeOutbox parses an outbox record. sealed aliases b.
func decodeOutbox(b []byte) (outboxRecord, error) {
	var r outboxRecord
	if len(b) < outboxFixed+store.SealOverhead+1 || len(b) > outboxFixed+store.SealOverhead+store.MaxForwardSize || b[0] != recordVersion {
		return r, errRecord
	}
	r.day = binary.BigEndian.Uint32(b[1:])
	r.sealed = b[outboxFixed:]
	return r, nil
}
