package fingerprint

import (
	"crypto/rand"
	"fmt"
	"net"
	"strconv"
	"strings"

	utls "github.com/refraction-networking/utls"
)

// Presets accepted by [NewUConn].
const (
	// PresetChrome is the ClientHello of ChromiumVersion, rebuilt from the
	// capture in testdata/. The empty preset means the same.
	PresetChrome = "chrome"
	// PresetChrome133 is utls's own HelloChrome_133.
	PresetChrome133 = "chrome133"
)

// ChromiumVersion is the Chromium build whose ClientHello PresetChrome
// reproduces (Debian's chromium package; see testdata/README.md).
const ChromiumVersion = "156.0.8078.108"

// chromiumJA4 is the JA4 of every ClientHello in testdata/chromium-156-*.hex;
// TestChromiumCaptureJA4 recomputes it from the captures.
const chromiumJA4 = "t13d1517h2_8daaf6152771_cb7bf5808d99"

// ChromiumJA4 returns the JA4 fingerprint of ChromiumVersion's ClientHello,
// which connections made with PresetChrome share.
func ChromiumJA4() string { return chromiumJA4 }

// Signature schemes Chromium offers that utls v1.8.2 has no names for
// (draft-ietf-tls-mldsa).
const (
	sigMLDSA44 utls.SignatureScheme = 0x0904
	sigMLDSA65 utls.SignatureScheme = 0x0905
	sigMLDSA87 utls.SignatureScheme = 0x0906
)

// chromiumTrustAnchorIDs are the trust anchor IDs (draft-ietf-tls-trust-anchor-ids,
// relative OIDs) that ChromiumVersion requests in its trust_anchors extension:
// identifiers of roots in the Chrome Root Store. They are a constant of the
// build, the same in every capture, not a per-connection value.
var chromiumTrustAnchorIDs = []string{
	"44947.2.1", "44947.2.6", "44947.2.13", "44947.2.14", "44947.2.15",
	"44947.2.18", "44947.2.19", "44947.2.20",
	"52580.200109.1.7", "52580.200109.1.8", "52580.200109.1.9",
	"52580.200109.1.10", "52580.200109.1.11", "52580.200109.1.12",
	"52580.200109.1.13", "52580.200109.1.18", "52580.200109.1.19",
	"11129.9.1", "11129.9.4", "11129.9.5", "11129.9.6", "11129.9.7",
	"11129.9.8", "11129.9.10", "11129.9.11", "11129.9.12", "11129.9.13",
	"11129.9.15",
}

// trustAnchorsData is the extension_data of trust_anchors: a
// TrustAnchorIDList<0..2^16-1> of TrustAnchorID<1..2^8-1>, each a relative
// OID in DER's base-128 encoding.
var trustAnchorsData = mustTrustAnchors(chromiumTrustAnchorIDs)

func mustTrustAnchors(ids []string) []byte {
	var list []byte
	for _, id := range ids {
		enc, err := encodeRelativeOID(id)
		if err != nil {
			panic(err) // a typo in the table above
		}
		list = append(list, byte(len(enc)))
		list = append(list, enc...)
	}
	return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)
}

// encodeRelativeOID encodes dotted arcs base-128, high bit set on every
// byte but the last of each arc.
func encodeRelativeOID(s string) ([]byte, error) {
	var out []byte
	for _, part := range strings.Split(s, ".") {
		v, err := strconv.ParseUint(part, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("trust anchor id %q: %w", s, err)
		}
		var arc []byte
		for {
			arc = append([]byte{byte(v & 0x7f)}, arc...)
			v >>= 7
			if v == 0 {
				break
			}
		}
		for i := 0; i < len(arc)-1; i++ {
			arc[i] |= 0x80
		}
		out = append(out, arc...)
	}
	if len(out) == 0 || len(out) > 255 {
		return nil, fmt.Errorf("trust anchor id %q: bad length %d", s, len(out))
	}
	return out, nil
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

// ChromeSpec returns a fresh ClientHelloSpec equal to ChromiumVersion's
// first-connection ClientHello: same cipher suites, the same set of
// extensions in a Chrome-style random order (GREASE first and last), the
// same groups with X25519MLKEM768 and X25519 key shares, and the same
// signature algorithms including GREASE and ML-DSA. Every per-connection
// value (key shares, GREASE values, ECH GREASE, random, session id) is
// generated when the spec is applied, never copied from the capture.
//
// A spec must be used for one connection only.
func ChromeSpec() (utls.ClientHelloSpec, error) {
	sigGREASE, err := randomGREASE()
	if err != nil {
		return utls.ClientHelloSpec{}, fmt.Errorf("chrome spec: %w", err)
	}
	return utls.ClientHelloSpec{
		CipherSuites: []uint16{
			utls.GREASE_PLACEHOLDER,
			utls.TLS_AES_128_GCM_SHA256,
			utls.TLS_AES_256_GCM_SHA384,
			utls.TLS_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			utls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_RSA_WITH_AES_256_CBC_SHA,
		},
		CompressionMethods: []byte{0}, // null
		Extensions: utls.ShuffleChromeTLSExtensions([]utls.TLSExtension{
			&utls.UtlsGREASEExtension{},
			&utls.SNIExtension{},
			&utls.ExtendedMasterSecretExtension{},
			&utls.RenegotiationInfoExtension{Renegotiation: utls.RenegotiateNever}, // same bytes on the wire; keeps key export available
			&utls.SupportedCurvesExtension{Curves: []utls.CurveID{
				utls.GREASE_PLACEHOLDER,
				utls.X25519MLKEM768,
				utls.X25519,
				utls.CurveP256,
				utls.CurveP384,
			}},
			&utls.SupportedPointsExtension{SupportedPoints: []byte{0}}, // uncompressed
			&utls.SessionTicketExtension{},
			&utls.ALPNExtension{AlpnProtocols: []string{"h2", "http/1.1"}},
			&utls.StatusRequestExtension{},
			&utls.SignatureAlgorithmsExtension{SupportedSignatureAlgorithms: []utls.SignatureScheme{
				utls.SignatureScheme(sigGREASE),
				sigMLDSA44,
				sigMLDSA65,
				sigMLDSA87,
				utls.ECDSAWithP256AndSHA256,
				utls.PSSWithSHA256,
				utls.PKCS1WithSHA256,
				utls.ECDSAWithP384AndSHA384,
				utls.PSSWithSHA384,
				utls.PKCS1WithSHA384,
				utls.PSSWithSHA512,
				utls.PKCS1WithSHA512,
			}},
			&utls.SCTExtension{},
			&utls.KeyShareExtension{KeyShares: []utls.KeyShare{
				{Group: utls.CurveID(utls.GREASE_PLACEHOLDER), Data: []byte{0}},
				{Group: utls.X25519MLKEM768}, // generated by ApplyPreset
				{Group: utls.X25519},         // generated by ApplyPreset
			}},
			&utls.PSKKeyExchangeModesExtension{Modes: []uint8{utls.PskModeDHE}},
			&utls.SupportedVersionsExtension{Versions: []uint16{
				utls.GREASE_PLACEHOLDER,
				utls.VersionTLS13,
				utls.VersionTLS12,
			}},
			&utls.UtlsCompressCertExtension{Algorithms: []utls.CertCompressionAlgo{utls.CertCompressionBrotli}},
			&utls.ApplicationSettingsExtensionNew{SupportedProtocols: []string{"h2"}},
			&utls.GenericExtension{Id: ExtTrustAnchors, Data: trustAnchorsData},
			utls.BoringGREASEECH(), // random config id, enc and payload per connection
			&utls.UtlsGREASEExtension{},
		}),
	}, nil
}

// NewUConn wraps conn in a utls client connection whose ClientHello follows
// preset: "" or PresetChrome for ChromiumVersion (see [ChromeSpec]),
// PresetChrome133 for utls.HelloChrome_133. config is cloned, because utls
// writes the preset's ALPN list into the config it is given; a nil config
// means a zero one. config must set ServerName (or skip verification), else
// the Chrome preset is refused here and the others fail in the handshake.
// The ClientHello's ALPN list is the preset's (h2, http/1.1 for both
// Chrome presets), whatever config.NextProtos says. The caller runs the
// handshake (HandshakeContext).
func NewUConn(conn net.Conn, config *utls.Config, preset string) (*utls.UConn, error) {
	if config == nil {
		config = &utls.Config{}
	} else {
		config = config.Clone()
	}
	switch preset {
	case "", PresetChrome:
		spec, err := ChromeSpec()
		if err != nil {
			return nil, err
		}
		// Chrome's first ClientHello carries no pre_shared_key; without
		// this, a session cache in config would make utls refuse the spec.
		config.PreferSkipResumptionOnNilExtension = true
		uc := utls.UClient(conn, config, utls.HelloCustom)
		if err := uc.ApplyPreset(&spec); err != nil {
			return nil, fmt.Errorf("apply %s ClientHello preset: %w", PresetChrome, err)
		}
		return uc, nil
	case PresetChrome133:
		spec, err := utls.UTLSIdToSpec(utls.HelloChrome_133)
		if err != nil {
			return nil, err
		}
		for _, ext := range spec.Extensions {
			if ri, ok := ext.(*utls.RenegotiationInfoExtension); ok {
				// Same bytes on the wire; keeps TLS key export (channel
				// binding of session tokens) available.
				ri.Renegotiation = utls.RenegotiateNever
			}
		}
		uc := utls.UClient(conn, config, utls.HelloCustom)
		if err := uc.ApplyPreset(&spec); err != nil {
			return nil, fmt.Errorf("apply %s ClientHello preset: %w", PresetChrome133, err)
		}
		return uc, nil
	}
	return nil, fmt.Errorf("unknown ClientHello preset %q: use %q, %q or \"\"", preset, PresetChrome, PresetChrome133)
}
