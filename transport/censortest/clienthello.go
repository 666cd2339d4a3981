package censortest

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Record, handshake and extension code points used by the parser.
const (
	recordTypeHandshake      = 22
	handshakeTypeClientHello = 1
	recordHeaderLen          = 5
	handshakeHeaderLen       = 4
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
func ParseClientHello(records []byte) (*ClientHello, error) {
	msg, recVersion, err := reassemble(records)
	if err != nil {
		return nil, err
	}
	h := &ClientHello{RecordVersion: recVersion}
	if err := h.parseBody(msg); err != nil {
		return nil, err
	}
	return h, nil
}

// reassemble returns the body of the ClientHello handshake message carried
// by the records, in a fresh buffer, and the first record's version.
func reassemble(b []byte) (body cryptobyte.String, recVersion uint16, err error) {
	in := cryptobyte.String(b)
	var hs []byte // the handshake message, collected from the fragments
	for first := true; !in.Empty(); first = false {
		frag, v, err := readRecord(&in)
		if err != nil {
			return nil, 0, err
		}
		if first {
			recVersion = v
		}
		hs = append(hs, frag...)
		if want, ok := handshakeLen(hs); ok {
			if len(hs) > want {
				return nil, 0, malformed("%d bytes after the handshake message", len(hs)-want)
			}
			if len(hs) == want && !in.Empty() {
				return nil, 0, malformed("%d bytes after the last record", len(in))
			}
		}
	}
	if hs == nil {
		return nil, 0, malformed("empty input")
	}
	msg := cryptobyte.String(hs)
	var typ uint8
	if !msg.ReadUint8(&typ) || !msg.ReadUint24LengthPrefixed(&body) {
		return nil, 0, malformed("truncated handshake message")
	}
	if typ != handshakeTypeClientHello {
		return nil, 0, malformed("handshake type %d, want %d (client_hello)", typ, handshakeTypeClientHello)
	}
	return body, recVersion, nil
}

// readRecord consumes one handshake record (RFC 8446 section 5.1):
// type(1)=22 version(2) length(2) fragment.
func readRecord(in *cryptobyte.String) (frag []byte, version uint16, err error) {
	if len(*in) < recordHeaderLen {
		return nil, 0, malformed("truncated record header")
	}
	var typ uint8
	var f cryptobyte.String
	in.ReadUint8(&typ)
	in.ReadUint16(&version)
	if typ != recordTypeHandshake {
		return nil, 0, malformed("record type %d, want %d (handshake)", typ, recordTypeHandshake)
	}
	if version>>8 != 3 || version&0xff > 4 {
		return nil, 0, malformed("record version %#04x", version)
	}
	if !in.ReadUint16LengthPrefixed(&f) {
		return nil, 0, malformed("record length exceeds the %d bytes present", len(*in))
	}
	if len(f) == 0 || len(f) > maxRecordPayload {
		return nil, 0, malformed("record length %d", len(f))
	}
	return f, version, nil
}

// handshakeLen is the full length of the handshake message that starts hs,
// once its header is complete.
func handshakeLen(hs []byte) (int, bool) {
	s := cryptobyte.String(hs)
	var typ uint8
	var n uint32
	if !s.ReadUint8(&typ) || !s.ReadUint24(&n) {
		return 0, false
	}
	return handshakeHeaderLen + int(n), true
}

// parseBody parses the ClientHello body (RFC 8446 section 4.1.2):
// legacy_version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
// compression_methods<1..2^8-1> [extensions<0..2^16-1>].
func (h *ClientHello) parseBody(body cryptobyte.String) error {
	var sid, cs, comp, exts cryptobyte.String
	switch {
	case !body.ReadUint16(&h.LegacyVersion):
		return malformed("truncated legacy_version")
	case !body.CopyBytes(h.Random[:]):
		return malformed("truncated random")
	case !body.ReadUint8LengthPrefixed(&sid) || len(sid) > 32:
		return malformed("bad session_id")
	case !body.ReadUint16LengthPrefixed(&cs) || len(cs) < 2 || len(cs)%2 != 0:
		return malformed("bad cipher_suites")
	case !body.ReadUint8LengthPrefixed(&comp) || len(comp) == 0:
		return malformed("bad compression_methods")
	}
	h.SessionID = sid
	h.CipherSuites = u16s(cs)
	h.GREASE.CipherSuites = anyGREASE(h.CipherSuites)
	h.CompressionMethods = comp
	if body.Empty() { // extensions are optional before TLS 1.3
		return nil
	}
	if !body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return malformed("bad extensions block")
	}
	return h.parseExtensions(exts)
}

// parseExtensions reads the extensions block: each is type(2) followed by
// extension_data<0..2^16-1>.
func (h *ClientHello) parseExtensions(exts cryptobyte.String) error {
	seen := make(map[uint16]bool)
	for !exts.Empty() {
		var t uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&t) || !exts.ReadUint16LengthPrefixed(&data) {
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
		if decode, ok := extensionDecoders[t]; ok {
			if err := decode(h, data); err != nil {
				return err
			}
		}
	}
	return nil
}

// extensionDecoders fill the decoded fields of ClientHello from the
// extensions they know.
var extensionDecoders = map[uint16]func(*ClientHello, cryptobyte.String) error{
	ExtServerName:          (*ClientHello).decodeServerName,
	ExtALPN:                (*ClientHello).decodeALPN,
	ExtSupportedGroups:     (*ClientHello).decodeSupportedGroups,
	ExtSignatureAlgorithms: (*ClientHello).decodeSignatureAlgorithms,
	ExtSupportedVersions:   (*ClientHello).decodeSupportedVersions,
	ExtKeyShare:            (*ClientHello).decodeKeyShare,
}

// decodeServerName: ServerNameList<1..2^16-1> of name_type(1) and
// HostName<1..2^16-1> (RFC 6066 section 3). At most one host_name.
func (h *ClientHello) decodeServerName(data cryptobyte.String) error {
	h.HasServerName = true
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return malformed("bad server_name")
	}
	for !list.Empty() {
		var typ uint8
		var name cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&name) || name.Empty() {
			return malformed("bad server_name entry")
		}
		if typ != 0 {
			continue
		}
		if h.ServerName != "" {
			return malformed("two host_name entries in server_name")
		}
		h.ServerName = string(name)
	}
	return nil
}

// decodeALPN: ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>
// (RFC 7301 section 3.1).
func (h *ClientHello) decodeALPN(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return malformed("bad ALPN")
	}
	h.ALPN = []string{}
	for !list.Empty() {
		var p cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return malformed("bad ALPN protocol")
		}
		// Chrome does not GREASE ALPN, but RFC 8701 reserves such values.
		if len(p) == 2 && IsGREASE(uint16(p[0])<<8|uint16(p[1])) {
			h.GREASE.ALPN = true
		}
		h.ALPN = append(h.ALPN, string(p))
	}
	return nil
}

func (h *ClientHello) decodeSupportedGroups(data cryptobyte.String) error {
	v, err := u16List(data, "supported_groups")
	h.SupportedGroups, h.GREASE.SupportedGroups = v, anyGREASE(v)
	return err
}

func (h *ClientHello) decodeSignatureAlgorithms(data cryptobyte.String) error {
	v, err := u16List(data, "signature_algorithms")
	h.SignatureAlgorithms, h.GREASE.SignatureAlgorithms = v, anyGREASE(v)
	return err
}

// decodeSupportedVersions: ProtocolVersion versions<2..254>
// (RFC 8446 section 4.2.1).
func (h *ClientHello) decodeSupportedVersions(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list) < 2 || len(list)%2 != 0 {
		return malformed("bad supported_versions")
	}
	h.SupportedVersions = u16s(list)
	h.GREASE.SupportedVersions = anyGREASE(h.SupportedVersions)
	return nil
}

// decodeKeyShare: KeyShareEntry client_shares<0..2^16-1>, each
// group(2) key_exchange<1..2^16-1> (RFC 8446 section 4.2.8).
func (h *ClientHello) decodeKeyShare(data cryptobyte.String) error {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() {
		return malformed("bad key_share")
	}
	h.KeyShares = []KeyShare{}
	for !list.Empty() {
		var g uint16
		var kx cryptobyte.String
		if !list.ReadUint16(&g) || !list.ReadUint16LengthPrefixed(&kx) || kx.Empty() {
			return malformed("bad key_share entry")
		}
		if IsGREASE(g) {
			h.GREASE.KeyShares = true
		}
		h.KeyShares = append(h.KeyShares, KeyShare{Group: g, Data: kx})
	}
	return nil
}

// u16List reads a non-empty vector<2..2^16-2> of uint16 that fills data.
func u16List(data cryptobyte.String, name string) ([]uint16, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() || len(list)%2 != 0 {
		return nil, malformed("bad %s", name)
	}
	return u16s(list), nil
}

// u16s decodes s, of even length, as big-endian uint16 values.
func u16s(s cryptobyte.String) []uint16 {
	out := make([]uint16, len(s)/2)
	for i := range out {
		s.ReadUint16(&out[i])
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
