package borrow

import (
	"errors"

	"golang.org/x/crypto/cryptobyte"
)

// Record limits of a ClientHello that can authenticate.
const (
	// RecordHeaderLen is the TLS record header: type, version, length.
	RecordHeaderLen = 5
	// MaxRecord is the largest record body that can hold an authenticating
	// ClientHello: the TLS plaintext limit (RFC 8446, 5.1).
	MaxRecord = 16384
	// minRecord is the smallest ClientHello with a 32-byte session id:
	// message header 4, version 2, random 32, session id 1+32.
	minRecord = 4 + 2 + 32 + 1 + TagSize

	recordTypeHandshake  = 22
	handshakeClientHello = 1
	extensionKeyShare    = 51
)

// verdict says what the first bytes of a connection can still be.
type verdict int

const (
	needMore    verdict = iota // a plausible ClientHello record, not yet whole
	notHello                   // cannot be an authenticating ClientHello
	wholeRecord                // one whole candidate record is present
)

// scan classifies the first bytes b of a connection, looking at no more
// bytes than it needs. For wholeRecord it returns the record's total
// length (header included).
func scan(b []byte) (verdict, int) {
	checks := []struct {
		n  int
		ok func() bool
	}{
		{1, func() bool { return b[0] == recordTypeHandshake }},
		{3, func() bool { return b[1] == 3 && b[2] >= 1 && b[2] <= 3 }},
		{5, func() bool { l := recordLen(b); return l >= minRecord && l <= MaxRecord }},
		{6, func() bool { return b[5] == handshakeClientHello }},
		{9, func() bool { return int(b[6])<<16|int(b[7])<<8|int(b[8]) == recordLen(b)-4 }},
	}
	for _, c := range checks {
		if len(b) < c.n {
			return needMore, 0
		}
		if !c.ok() {
			return notHello, 0
		}
	}
	total := RecordHeaderLen + recordLen(b)
	if len(b) < total {
		return needMore, 0
	}
	return wholeRecord, total
}

func recordLen(b []byte) int { return int(b[3])<<8 | int(b[4]) }

// clientHello holds the parts of a ClientHello the tag covers.
type clientHello struct {
	random    []byte // 32 bytes
	sessionID []byte // TagSize bytes
	keyShare  []byte // extension_data of key_share, as sent
	// sessionIDAt is the offset of the session id in the handshake
	// message (4-byte message header included).
	sessionIDAt int
}

var (
	errNotClientHello = errors.New("not a ClientHello handshake message")
	errMalformed      = errors.New("malformed ClientHello")
	errSessionID      = errors.New("ClientHello session id is not 32 bytes")
	errKeyShare       = errors.New("ClientHello has no key_share extension, or more than one")
)

// parseClientHello parses one whole ClientHello handshake message (type,
// 3-byte length, body) with nothing after it. The returned slices alias
// msg.
func parseClientHello(msg []byte) (*clientHello, error) {
	s := cryptobyte.String(msg)
	var typ uint8
	var body cryptobyte.String
	if !s.ReadUint8(&typ) || typ != handshakeClientHello {
		return nil, errNotClientHello
	}
	if !s.ReadUint24LengthPrefixed(&body) || !s.Empty() {
		return nil, errMalformed
	}
	var (
		ch                  clientHello
		sid, suites, comprs cryptobyte.String
	)
	if !body.Skip(2) || !body.ReadBytes(&ch.random, 32) || !body.ReadUint8LengthPrefixed(&sid) {
		return nil, errMalformed
	}
	if len(sid) != TagSize {
		return nil, errSessionID
	}
	ch.sessionID, ch.sessionIDAt = sid, 4+2+32+1
	if !body.ReadUint16LengthPrefixed(&suites) || !body.ReadUint8LengthPrefixed(&comprs) {
		return nil, errMalformed
	}
	var exts cryptobyte.String
	if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return nil, errMalformed
	}
	ks, err := findKeyShare(exts)
	if err != nil {
		return nil, err
	}
	ch.keyShare = ks
	return &ch, nil
}

// findKeyShare returns the data of the only key_share extension in exts.
func findKeyShare(exts cryptobyte.String) ([]byte, error) {
	var (
		found []byte
		seen  bool
	)
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return nil, errMalformed
		}
		if typ != extensionKeyShare {
			continue
		}
		if seen {
			return nil, errKeyShare
		}
		found, seen = data, true
	}
	if !seen {
		return nil, errKeyShare
	}
	return found, nil
}
