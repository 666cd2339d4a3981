package browser

import (
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	utls "github.com/refraction-networking/utls"
)

// GREASE marks, in the lists of a [Hello], a place where the browser puts a
// random GREASE value (RFC 8701); a fresh one is drawn per connection.
const GREASE = utls.GREASE_PLACEHOLDER

// ExtGREASE is the name of a GREASE extension in Hello.Extensions.
const ExtGREASE = "GREASE"

// extTrustAnchors is the code point of trust_anchors
// (draft-ietf-tls-trust-anchor-ids) that BoringSSL uses; utls has no type
// for it.
const extTrustAnchors = 0xca34

// Hello is a browser's ClientHello as data. Every per-connection value
// (random, session id, key shares, GREASE values, ECH GREASE) is generated
// when a spec is built from it, never stored here.
type Hello struct {
	// CipherSuites in wire order.
	CipherSuites []uint16
	// Extensions are IANA extension names in the browser's canonical
	// order; a connection permutes all but the GREASE ones and
	// pre_shared_key, as Chrome does. pre_shared_key is sent only when the
	// config's ClientSessionCache holds a session for the server (a
	// resumption); it must come last. The names the builder knows are the
	// keys of extensionBuilders.
	Extensions []string
	// SupportedGroups of supported_groups, in order.
	SupportedGroups []utls.CurveID
	// KeyShares are the groups that get a key share; GREASE gets a one-byte
	// share, as BoringSSL sends.
	KeyShares []utls.CurveID
	// SignatureAlgorithms of signature_algorithms, in order.
	SignatureAlgorithms []utls.SignatureScheme
	// Versions of supported_versions, in order.
	Versions []uint16
	// ALPN protocols, and the protocols of application_settings (ALPS).
	ALPN, ALPS []string
	// CertCompression algorithms of compress_certificate.
	CertCompression []utls.CertCompressionAlgo
	// TrustAnchors are the relative OIDs the trust_anchors extension asks
	// for.
	TrustAnchors []string
}

// extensionBuilders make one utls extension from the Hello's data. Every
// slice is copied: utls writes GREASE values into the slices it is given.
var extensionBuilders = map[string]func(h *Hello) (utls.TLSExtension, error){
	ExtGREASE:                                func(*Hello) (utls.TLSExtension, error) { return &utls.UtlsGREASEExtension{}, nil },
	"server_name":                            func(*Hello) (utls.TLSExtension, error) { return &utls.SNIExtension{}, nil },
	"extended_master_secret":                 func(*Hello) (utls.TLSExtension, error) { return &utls.ExtendedMasterSecretExtension{}, nil },
	"session_ticket":                         func(*Hello) (utls.TLSExtension, error) { return &utls.SessionTicketExtension{}, nil },
	"status_request":                         func(*Hello) (utls.TLSExtension, error) { return &utls.StatusRequestExtension{}, nil },
	"signed_certificate_timestamp":           func(*Hello) (utls.TLSExtension, error) { return &utls.SCTExtension{}, nil },
	"encrypted_client_hello":                 func(*Hello) (utls.TLSExtension, error) { return utls.BoringGREASEECH(), nil },
	"pre_shared_key":                         func(*Hello) (utls.TLSExtension, error) { return &utls.UtlsPreSharedKeyExtension{}, nil },
	"renegotiation_info":                     renegotiationInfo,
	"ec_point_formats":                       pointFormats,
	"psk_key_exchange_modes":                 pskModes,
	"supported_groups":                       supportedGroups,
	"application_layer_protocol_negotiation": alpn,
	"signature_algorithms":                   signatureAlgorithms,
	"key_share":                              keyShares,
	"supported_versions":                     supportedVersions,
	"compress_certificate":                   certCompression,
	"application_settings":                   alps,
	"trust_anchors":                          trustAnchors,
}

// renegotiationInfo: the bytes on the wire are the same whatever
// Renegotiation says; RenegotiateNever keeps TLS key export (the channel
// binding of session tokens) available in utls.
func renegotiationInfo(*Hello) (utls.TLSExtension, error) {
	return &utls.RenegotiationInfoExtension{Renegotiation: utls.RenegotiateNever}, nil
}

func pointFormats(*Hello) (utls.TLSExtension, error) {
	return &utls.SupportedPointsExtension{SupportedPoints: []byte{0}}, nil // uncompressed
}

func pskModes(*Hello) (utls.TLSExtension, error) {
	return &utls.PSKKeyExchangeModesExtension{Modes: []uint8{utls.PskModeDHE}}, nil
}

func supportedGroups(h *Hello) (utls.TLSExtension, error) {
	return &utls.SupportedCurvesExtension{Curves: slices.Clone(h.SupportedGroups)}, nil
}

func alpn(h *Hello) (utls.TLSExtension, error) {
	return &utls.ALPNExtension{AlpnProtocols: slices.Clone(h.ALPN)}, nil
}

// signatureAlgorithms draws the GREASE value itself: utls does not GREASE
// this list.
func signatureAlgorithms(h *Hello) (utls.TLSExtension, error) {
	algs := slices.Clone(h.SignatureAlgorithms)
	for i, a := range algs {
		if a == GREASE {
			g, err := randomGREASE()
			if err != nil {
				return nil, err
			}
			algs[i] = utls.SignatureScheme(g)
		}
	}
	return &utls.SignatureAlgorithmsExtension{SupportedSignatureAlgorithms: algs}, nil
}

func keyShares(h *Hello) (utls.TLSExtension, error) {
	shares := make([]utls.KeyShare, len(h.KeyShares))
	for i, g := range h.KeyShares {
		shares[i] = utls.KeyShare{Group: g} // key generated by ApplyPreset
		if g == GREASE {
			shares[i].Data = []byte{0}
		}
	}
	return &utls.KeyShareExtension{KeyShares: shares}, nil
}

func supportedVersions(h *Hello) (utls.TLSExtension, error) {
	return &utls.SupportedVersionsExtension{Versions: slices.Clone(h.Versions)}, nil
}

func certCompression(h *Hello) (utls.TLSExtension, error) {
	return &utls.UtlsCompressCertExtension{Algorithms: slices.Clone(h.CertCompression)}, nil
}

func alps(h *Hello) (utls.TLSExtension, error) {
	return &utls.ApplicationSettingsExtensionNew{SupportedProtocols: slices.Clone(h.ALPS)}, nil
}

func trustAnchors(h *Hello) (utls.TLSExtension, error) {
	data, err := trustAnchorsData(h.TrustAnchors)
	if err != nil {
		return nil, err
	}
	return &utls.GenericExtension{Id: extTrustAnchors, Data: data}, nil
}

// Spec returns a fresh utls ClientHelloSpec for one connection: the
// profile's cipher suites and extensions, the extensions in a Chrome-style
// random order (GREASE first and last), fresh GREASE values. Use a spec for
// one connection only.
func (h *Hello) Spec() (utls.ClientHelloSpec, error) {
	exts := make([]utls.TLSExtension, 0, len(h.Extensions))
	for _, name := range h.Extensions {
		build, ok := extensionBuilders[name]
		if !ok {
			return utls.ClientHelloSpec{}, fmt.Errorf("ClientHello extension %q: no builder for it in transport/browser", name)
		}
		ext, err := build(h)
		if err != nil {
			return utls.ClientHelloSpec{}, fmt.Errorf("ClientHello extension %s: %w", name, err)
		}
		exts = append(exts, ext)
	}
	return utls.ClientHelloSpec{
		CipherSuites:       slices.Clone(h.CipherSuites),
		CompressionMethods: []byte{0}, // null
		Extensions:         utls.ShuffleChromeTLSExtensions(exts),
	}, nil
}

// randomGREASE returns a random value of the form 0x?a?a.
func randomGREASE() (uint16, error) {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	v := uint16(b[0]&0xf0 | 0x0a)
	return v<<8 | v, nil
}

// trustAnchorsData encodes the extension_data of trust_anchors: a
// TrustAnchorIDList<0..2^16-1> of TrustAnchorID<1..2^8-1>, each a relative
// OID (dotted arcs) in DER's base-128 encoding.
func trustAnchorsData(ids []string) ([]byte, error) {
	var list []byte
	for _, id := range ids {
		enc, err := encodeRelativeOID(id)
		if err != nil {
			return nil, err
		}
		list = append(list, byte(len(enc)))
		list = append(list, enc...)
	}
	if len(list) > 0xffff {
		return nil, fmt.Errorf("trust anchor list of %d bytes is too long", len(list))
	}
	return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...), nil
}

// encodeRelativeOID encodes dotted arcs base-128, high bit set on every
// byte but the last of each arc.
func encodeRelativeOID(s string) ([]byte, error) {
	var out []byte
	for part := range strings.SplitSeq(s, ".") {
		v, err := strconv.ParseUint(part, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("trust anchor id %q: %w", s, err)
		}
		arc := []byte{byte(v & 0x7f)}
		for v >>= 7; v > 0; v >>= 7 {
			arc = append([]byte{byte(v&0x7f) | 0x80}, arc...)
		}
		out = append(out, arc...)
	}
	if len(out) > 255 {
		return nil, fmt.Errorf("trust anchor id %q: %d bytes, at most 255", s, len(out))
	}
	return out, nil
}

// Presets accepted by [NewUConn] (an Endpoint's Fingerprint).
const (
	// PresetChrome is the ClientHello of [Current]. The empty preset means
	// the same.
	PresetChrome = "chrome"
	// PresetChrome133 is utls's own HelloChrome_133.
	PresetChrome133 = "chrome133"
)

// NewUConn wraps conn in a utls client connection whose ClientHello follows
// preset: "" or PresetChrome for Current's Hello, PresetChrome133 for
// utls.HelloChrome_133. config is cloned, because utls writes the preset's
// ALPN list into the config it is given; a nil config means a zero one.
// config must set ServerName (or skip verification), else the Chrome preset
// is refused here and the others fail in the handshake. The ClientHello's
// ALPN list is the preset's, whatever config.NextProtos says. The caller
// runs the handshake.
func NewUConn(conn net.Conn, config *utls.Config, preset string) (*utls.UConn, error) {
	if config == nil {
		config = &utls.Config{}
	} else {
		config = config.Clone()
	}
	var spec utls.ClientHelloSpec
	var err error
	switch preset {
	case "", PresetChrome:
		spec, err = Current.Hello.Spec()
		// pre_shared_key only when there is a session to resume, as the
		// browser does.
		config.OmitEmptyPsk = true
		config.PreferSkipResumptionOnNilExtension = true
	case PresetChrome133:
		spec, err = chrome133()
		// Its spec has no pre_shared_key: a session in the cache is not
		// offered, as utls does with its own HelloChrome_133 (uTLS
		// panics otherwise: the second connection to an endpoint did,
		// until 2026-12-07).
		config.PreferSkipResumptionOnNilExtension = true
	default:
		return nil, fmt.Errorf("unknown ClientHello preset %q: use %q, %q or \"\"", preset, PresetChrome, PresetChrome133)
	}
	if err != nil {
		return nil, err
	}
	uc := utls.UClient(conn, config, utls.HelloCustom)
	if err := uc.ApplyPreset(&spec); err != nil {
		return nil, fmt.Errorf("apply ClientHello preset %q: %w", preset, err)
	}
	return uc, nil
}

// chrome133 is utls's HelloChrome_133 with renegotiation off: the same
// bytes on the wire, and TLS key export stays available.
func chrome133() (utls.ClientHelloSpec, error) {
	spec, err := utls.UTLSIdToSpec(utls.HelloChrome_133)
	if err != nil {
		return spec, err
	}
	for _, ext := range spec.Extensions {
		if ri, ok := ext.(*utls.RenegotiationInfoExtension); ok {
			ri.Renegotiation = utls.RenegotiateNever
		}
	}
	return spec, nil
}
