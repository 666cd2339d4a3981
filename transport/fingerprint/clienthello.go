// Package fingerprint parses TLS ClientHello messages, computes their JA4
// fingerprint, and builds utls connections whose ClientHello matches a real,
// current Chromium.
//
// Postern's TLS transports must look like a browser to a censor that
// classifies flows by ClientHello fingerprint. utls ships presets only up to
// Chrome 133, while current Chrome sends more: a trust_anchors extension
// (0xca34), GREASE and ML-DSA code points in signature_algorithms. The
// "chrome" preset of [NewUConn] reproduces the ClientHello of the Chromium
// capture committed in testdata/ (see testdata/README.md); the tests compare
// the two field by field and by JA4.
//
// The wire format parsed here (RFC 8446 section 4.1.2, RFC 5246 section 6.2):
//
//	record:      type(1)=22  version(2)  length(2)  fragment
//	handshake:   type(1)=1   length(3)   body
//	ClientHello: legacy_version(2) random(32) session_id<0..32>
//	             cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
//	             extensions<0..2^16-1>   (each: type(2) extension_data<0..2^16-1>)
//
// A ClientHello larger than one record may be split across several
// consecutive handshake records; [ParseClientHello] reassembles them.
package fingerprint

import (
	"errors"
	"fmt"
)

// Record, handshake and extension code points used by the parser.
const (
	recordTypeHandshake      = 22
	handshakeTypeClientHello = 1
	maxRecordPayload         = 1 << 14 // RFC 8446 section 5.1: TLSPlaintext.length limit

	ExtServerName          uint16 = 0x0000
	ExtStatusRequest       uint16 = 0x0005
	ExtSupportedGroups     uint16 = 0x000a
	ExtECPointFormats      uint16 = 0x000b
	ExtSignatureAlgorithms uint16 = 0x000d
	ExtALPN                uint16 = 0x0010
	ExtSCT                 uint16 = 0x0012
	ExtPadding             uint16 = 0x0015
	ExtExtendedMasterSec   uint16 = 0x0017
	ExtCompressCert        uint16 = 0x001b
	ExtSessionTicket       uint16 = 0x0023
	ExtPreSharedKey        uint16 = 0x0029
	ExtSupportedVersions   uint16 = 0x002b
	ExtPSKModes            uint16 = 0x002d
	ExtKeyShare            uint16 = 0x0033
	ExtALPS                uint16 = 0x44cd // application_settings, Chrome's new code point
	ExtTrustAnchors        uint16 = 0xca34 // draft-ietf-tls-trust-anchor-ids, BoringSSL's code point
	ExtECH                 uint16 = 0xfe0d // encrypted_client_hello
	ExtRenegotiationInfo   uint16 = 0xff01

	GroupX25519MLKEM768 uint16 = 0x11ec
	GroupX25519         uint16 = 0x001d
)

// ErrMalformed is wrapped by every error [ParseClientHello] returns for input
// that is not a well-formed ClientHello.
var ErrMalformed = errors.New("malformed ClientHello")

// Extension is one ClientHello extension as it appeared on the wire.
type Extension struct {
	Type uint16
	Data []byte
}

// KeyShare is one entry of the key_share extension.
type KeyShare struct {
	Group uint16
	Data  []byte
}

// GREASESeen reports in which lists a GREASE value (RFC 8701) appeared.
type GREASESeen struct {
	CipherSuites        bool
	Extensions          bool
	SupportedGroups     bool
	KeyShares           bool
	SignatureAlgorithms bool
	SupportedVersions   bool
	ALPN                bool
}

// Any reports whether GREASE appeared anywhere.
func (g GREASESeen) Any() bool {
	return g.CipherSuites || g.Extensions || g.SupportedGroups || g.KeyShares ||
		g.SignatureAlgorithms || g.SupportedVersions || g.ALPN
}

// ClientHello is a parsed TLS ClientHello. Its slices never alias the input
// of [ParseClientHello].
type ClientHello struct {
	RecordVersion      uint16 // version field of the first record header
	LegacyVersion      uint16 // ClientHello.legacy_version
	Random             [32]byte
	SessionID          []byte
	CipherSuites       []uint16
	CompressionMethods []byte
	Extensions         []Extension // in wire order, GREASE included

	// Decoded from the extensions above; nil when the extension is absent.
	ServerName          string // host_name from server_name, "" if absent
	HasServerName       bool   // server_name extension present
	ALPN                []string
	SupportedGroups     []uint16
	KeyShares           []KeyShare
	SignatureAlgorithms []uint16
	SupportedVersions   []uint16

	GREASE GREASESeen
}

// IsGREASE reports whether v is one of the 16 reserved GREASE values
// 0x0a0a, 0x1a1a, ..., 0xfafa of RFC 8701.
func IsGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// Extension returns the data of the first extension of type t.
func (h *ClientHello) Extension(t uint16) ([]byte, bool) {
	for _, e := range h.Extensions {
		if e.Type == t {
			return e.Data, true
		}
	}
	return nil, false
}

// ExtensionTypes returns the extension types in wire order. With
// withGREASE false, GREASE types are left out.
func (h *ClientHello) ExtensionTypes(withGREASE bool) []uint16 {
	out := make([]uint16, 0, len(h.Extensions))
	for _, e := range h.Extensions {
		if withGREASE || !IsGREASE(e.Type) {
			out = append(out, e.Type)
		}
	}
	return out
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// ParseClientHello parses TLS records that hold exactly one ClientHello
// handshake message and nothing else. It is strict: lengths must agree,
// every vector must be well formed, no extension may repeat and no bytes may
// trail. It never panics on any input.
func ParseClientHello(record []byte) (*ClientHello, error) {
	msg, recVersion, err := reassemble(record)
	if err != nil {
		return nil, err
	}
	h := &ClientHello{RecordVersion: recVersion}
	if err := h.parseBody(msg); err != nil {
		return nil, err
	}
	return h, nil
}

// reassemble returns the handshake message body carried by the records.
func reassemble(b []byte) (body []byte, recVersion uint16, err error) {
	var hs []byte
	first := true
	for len(b) > 0 {
		if len(b) < 5 {
			return nil, 0, malformed("truncated record header")
		}
		if b[0] != recordTypeHandshake {
			return nil, 0, malformed("record type %d, want %d (handshake)", b[0], recordTypeHandshake)
		}
		v := uint16(b[1])<<8 | uint16(b[2])
		if b[1] != 3 || b[2] > 4 {
			return nil, 0, malformed("record version %#04x", v)
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > maxRecordPayload {
			return nil, 0, malformed("record length %d", n)
		}
		if len(b) < 5+n {
			return nil, 0, malformed("record length %d exceeds the %d bytes present", n, len(b)-5)
		}
		if first {
			recVersion = v
			first = false
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
		if len(hs) >= 4 {
			want := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
			if len(hs) > want {
				return nil, 0, malformed("%d bytes after the handshake message", len(hs)-want)
			}
			if len(hs) == want && len(b) > 0 {
				return nil, 0, malformed("%d bytes after the last record", len(b))
			}
		}
	}
	if first {
		return nil, 0, malformed("empty input")
	}
	if len(hs) < 4 {
		return nil, 0, malformed("truncated handshake header")
	}
	if hs[0] != handshakeTypeClientHello {
		return nil, 0, malformed("handshake type %d, want %d (client_hello)", hs[0], handshakeTypeClientHello)
	}
	want := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
	if len(hs)-4 != want {
		return nil, 0, malformed("handshake length %d, records carry %d", want, len(hs)-4)
	}
	return hs[4:], recVersion, nil
}

func (h *ClientHello) parseBody(body []byte) error {
	r := reader(body)
	var ok bool
	if h.LegacyVersion, ok = r.u16(); !ok {
		return malformed("truncated legacy_version")
	}
	rnd, ok := r.bytes(32)
	if !ok {
		return malformed("truncated random")
	}
	copy(h.Random[:], rnd)
	sid, ok := r.vec8()
	if !ok || len(sid) > 32 {
		return malformed("bad session_id")
	}
	h.SessionID = sid
	cs, ok := r.vec16()
	if !ok || len(cs) < 2 || len(cs)%2 != 0 {
		return malformed("bad cipher_suites")
	}
	h.CipherSuites = u16s(cs)
	for _, c := range h.CipherSuites {
		if IsGREASE(c) {
			h.GREASE.CipherSuites = true
		}
	}
	comp, ok := r.vec8()
	if !ok || len(comp) == 0 {
		return malformed("bad compression_methods")
	}
	h.CompressionMethods = comp
	if r.empty() { // extensions are optional before TLS 1.3
		return nil
	}
	exts, ok := r.vec16()
	if !ok || !r.empty() {
		return malformed("bad extensions block")
	}
	er := reader(exts)
	seen := make(map[uint16]bool)
	for !er.empty() {
		t, ok1 := er.u16()
		data, ok2 := er.vec16()
		if !ok1 || !ok2 {
			return malformed("truncated extension")
		}
		if seen[t] {
			return malformed("duplicate extension %#04x", t)
		}
		seen[t] = true
		if IsGREASE(t) {
			h.GREASE.Extensions = true
		}
		h.Extensions = append(h.Extensions, Extension{Type: t, Data: data})
		if err := h.decodeExtension(t, data); err != nil {
			return err
		}
	}
	return nil
}

func (h *ClientHello) decodeExtension(t uint16, data []byte) error {
	r := reader(data)
	switch t {
	case ExtServerName:
		h.HasServerName = true
		list, ok := r.vec16()
		if !ok || !r.empty() || len(list) == 0 {
			return malformed("bad server_name")
		}
		lr := reader(list)
		for !lr.empty() {
			typ, ok1 := lr.u8()
			name, ok2 := lr.vec16()
			if !ok1 || !ok2 || len(name) == 0 {
				return malformed("bad server_name entry")
			}
			if typ == 0 {
				if h.ServerName != "" {
					return malformed("two host_name entries in server_name")
				}
				h.ServerName = string(name)
			}
		}
	case ExtALPN:
		list, ok := r.vec16()
		if !ok || !r.empty() || len(list) == 0 {
			return malformed("bad ALPN")
		}
		lr := reader(list)
		h.ALPN = []string{}
		for !lr.empty() {
			p, ok := lr.vec8()
			if !ok || len(p) == 0 {
				return malformed("bad ALPN protocol")
			}
			// Chrome does not GREASE ALPN, but RFC 8701 reserves such values.
			if len(p) == 2 && IsGREASE(uint16(p[0])<<8|uint16(p[1])) {
				h.GREASE.ALPN = true
			}
			h.ALPN = append(h.ALPN, string(p))
		}
	case ExtSupportedGroups:
		v, err := u16List(r, "supported_groups")
		if err != nil {
			return err
		}
		h.SupportedGroups = v
		h.GREASE.SupportedGroups = anyGREASE(v)
	case ExtSignatureAlgorithms:
		v, err := u16List(r, "signature_algorithms")
		if err != nil {
			return err
		}
		h.SignatureAlgorithms = v
		h.GREASE.SignatureAlgorithms = anyGREASE(v)
	case ExtSupportedVersions:
		list, ok := r.vec8()
		if !ok || !r.empty() || len(list) < 2 || len(list)%2 != 0 {
			return malformed("bad supported_versions")
		}
		h.SupportedVersions = u16s(list)
		h.GREASE.SupportedVersions = anyGREASE(h.SupportedVersions)
	case ExtKeyShare:
		list, ok := r.vec16()
		if !ok || !r.empty() {
			return malformed("bad key_share")
		}
		lr := reader(list)
		h.KeyShares = []KeyShare{}
		for !lr.empty() {
			g, ok1 := lr.u16()
			kx, ok2 := lr.vec16()
			if !ok1 || !ok2 || len(kx) == 0 {
				return malformed("bad key_share entry")
			}
			if IsGREASE(g) {
				h.GREASE.KeyShares = true
			}
			h.KeyShares = append(h.KeyShares, KeyShare{Group: g, Data: kx})
		}
	}
	return nil
}

func u16List(r reader, name string) ([]uint16, error) {
	list, ok := r.vec16()
	if !ok || !r.empty() || len(list) == 0 || len(list)%2 != 0 {
		return nil, malformed("bad %s", name)
	}
	return u16s(list), nil
}

func u16s(b []byte) []uint16 {
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
	}
	return out
}

func anyGREASE(v []uint16) bool {
	for _, x := range v {
		if IsGREASE(x) {
			return true
		}
	}
	return false
}

// reader consumes big-endian TLS vectors from a byte slice. Methods that
// fail leave the reader in an unspecified position; callers stop at the
// first failure.
type reader []byte

func (r *reader) empty() bool { return len(*r) == 0 }

func (r *reader) bytes(n int) ([]byte, bool) {
	if n < 0 || len(*r) < n {
		return nil, false
	}
	b := (*r)[:n:n]
	*r = (*r)[n:]
	return b, true
}

func (r *reader) u8() (uint8, bool) {
	b, ok := r.bytes(1)
	if !ok {
		return 0, false
	}
	return b[0], true
}

func (r *reader) u16() (uint16, bool) {
	b, ok := r.bytes(2)
	if !ok {
		return 0, false
	}
	return uint16(b[0])<<8 | uint16(b[1]), true
}

func (r *reader) vec8() ([]byte, bool) {
	n, ok := r.u8()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}

func (r *reader) vec16() ([]byte, bool) {
	n, ok := r.u16()
	if !ok {
		return nil, false
	}
	return r.bytes(int(n))
}
