package browser

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"slices"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport/censortest"
)

const testHost = "relay.example" // the host name the captures were made with

// loopbackHello makes a ClientHello with NewUConn(preset) towards a
// loopback listener that records the first TLS record and hangs up.
func loopbackHello(t *testing.T, preset string) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		rec []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		hdr := make([]byte, 5)
		if _, err := io.ReadFull(c, hdr); err != nil {
			got <- result{nil, err}
			return
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		_, err = io.ReadFull(c, body)
		got <- result{append(hdr, body...), err}
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	uc, err := NewUConn(conn, &utls.Config{ServerName: testHost}, preset)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hsDone := make(chan error, 1)
	go func() { hsDone <- uc.HandshakeContext(ctx) }()
	r := <-got
	if r.err != nil {
		t.Fatalf("reading ClientHello: %v", r.err)
	}
	if err := <-hsDone; err == nil {
		t.Fatal("handshake against a hang-up succeeded")
	}
	return r.rec
}

func mustParse(t *testing.T, rec []byte) *censortest.ClientHello {
	t.Helper()
	h, err := censortest.ParseClientHello(rec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func sortedTypes(h *censortest.ClientHello) []uint16 {
	v := h.ExtensionTypes(false)
	slices.Sort(v)
	return v
}

func TestChromiumCaptureJA4(t *testing.T) {
	for name, rec := range chromiumCaptures(t) {
		if got := censortest.JA4(mustParse(t, rec)); got != Chromium156.JA4 {
			t.Errorf("%s: JA4 %s, Chromium156.JA4 %s", name, got, Chromium156.JA4)
		}
	}
}

// chromiumCaptures returns the committed Chromium ClientHello records.
func chromiumCaptures(t testing.TB) map[string][]byte {
	t.Helper()
	out, err := censortest.ChromiumCaptures()
	if err != nil || len(out) == 0 {
		t.Fatalf("captures: %d, %v", len(out), err)
	}
	return out
}

func TestTrustAnchorsMatchCapture(t *testing.T) {
	want, err := trustAnchorsData(Chromium156.Hello.TrustAnchors)
	if err != nil {
		t.Fatal(err)
	}
	for name, rec := range chromiumCaptures(t) {
		data, ok := mustParse(t, rec).Extension(censortest.ExtTrustAnchors)
		if !ok || !bytes.Equal(data, want) {
			t.Errorf("%s: trust_anchors\n%x\nwant\n%x", name, data, want)
		}
	}
}

// TestChromePresetMatchesChromium compares NewUConn's "chrome" ClientHello
// with every committed Chromium capture, extension by extension.
func TestChromePresetMatchesChromium(t *testing.T) {
	captures := chromiumCaptures(t)
	for _, preset := range []string{PresetChrome, ""} {
		for i := range 3 {
			h := mustParse(t, loopbackHello(t, preset))
			if got := censortest.JA4(h); got != Chromium156.JA4 {
				t.Errorf("preset %q hello %d: JA4 %s, want %s\n%s", preset, i, got, Chromium156.JA4, censortest.JA4R(h))
			}
			if !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) {
				t.Errorf("ALPN %q", h.ALPN)
			}
			if !slices.Contains(h.SupportedGroups, censortest.GroupX25519MLKEM768) {
				t.Errorf("supported groups %04x lack X25519MLKEM768", h.SupportedGroups)
			}
			if !h.GREASE.CipherSuites || !h.GREASE.Extensions || !h.GREASE.SupportedGroups ||
				!h.GREASE.KeyShares || !h.GREASE.SignatureAlgorithms || !h.GREASE.SupportedVersions {
				t.Errorf("GREASE %+v", h.GREASE)
			}
			types := h.ExtensionTypes(true)
			if !censortest.IsGREASE(types[0]) || !censortest.IsGREASE(types[len(types)-1]) {
				t.Errorf("GREASE extensions not first and last: %04x", types)
			}
			checkKeyShares(t, h)
			for name, rec := range captures {
				compareHellos(t, name, mustParse(t, rec), h)
			}
		}
	}
}

// compareHellos checks that got has the shape of Chromium's want: equal
// cipher list, extension set and every extension body, where GREASE values,
// key shares and the ECH GREASE payload are compared by structure only.
func compareHellos(t *testing.T, name string, want, got *censortest.ClientHello) {
	t.Helper()
	if got.RecordVersion != want.RecordVersion || got.LegacyVersion != want.LegacyVersion ||
		len(got.SessionID) != len(want.SessionID) || !bytes.Equal(got.CompressionMethods, want.CompressionMethods) {
		t.Errorf("%s: header fields differ", name)
	}
	if !slices.Equal(greaseMasked(got.CipherSuites), greaseMasked(want.CipherSuites)) {
		t.Errorf("%s: ciphers %04x, want %04x", name, got.CipherSuites, want.CipherSuites)
	}
	if g, w := sortedTypes(got), sortedTypes(want); !slices.Equal(g, w) {
		t.Errorf("%s: extensions %04x, want %04x", name, g, w)
	}
	for _, list := range []struct {
		name      string
		got, want []uint16
	}{
		{"supported_groups", got.SupportedGroups, want.SupportedGroups},
		{"signature_algorithms", got.SignatureAlgorithms, want.SignatureAlgorithms},
		{"supported_versions", got.SupportedVersions, want.SupportedVersions},
	} {
		if !slices.Equal(greaseMasked(list.got), greaseMasked(list.want)) {
			t.Errorf("%s: %s %04x, want %04x", name, list.name, list.got, list.want)
		}
	}
	if len(got.KeyShares) != len(want.KeyShares) {
		t.Fatalf("%s: %d key shares, want %d", name, len(got.KeyShares), len(want.KeyShares))
	}
	for i := range got.KeyShares {
		g, w := got.KeyShares[i], want.KeyShares[i]
		if greaseMask(g.Group) != greaseMask(w.Group) || len(g.Data) != len(w.Data) {
			t.Errorf("%s: key share %d: group %04x/%d bytes, want %04x/%d bytes", name, i, g.Group, len(g.Data), w.Group, len(w.Data))
		}
	}
	for _, e := range want.Extensions {
		if censortest.IsGREASE(e.Type) {
			continue
		}
		data, _ := got.Extension(e.Type)
		switch e.Type {
		case censortest.ExtSupportedGroups, censortest.ExtSignatureAlgorithms, censortest.ExtSupportedVersions, censortest.ExtKeyShare:
			// compared above, GREASE and keys aside
		case censortest.ExtECH:
			// outer ECH GREASE: type 0, HKDF-SHA256, AES-128-GCM, config id,
			// 32-byte enc, then a payload whose length Chrome varies.
			if len(data) < 40 || !bytes.Equal(data[:5], e.Data[:5]) || !bytes.Equal(data[6:8], e.Data[6:8]) {
				t.Errorf("%s: ECH GREASE %x, want the shape of %x", name, data[:min(len(data), 8)], e.Data[:8])
			}
			payloadLen := int(data[40])<<8 | int(data[41])
			if !slices.Contains([]int{144, 176, 208, 240}, payloadLen) || len(data) != 42+payloadLen {
				t.Errorf("%s: ECH GREASE payload %d bytes", name, payloadLen)
			}
		default:
			if !bytes.Equal(data, e.Data) {
				t.Errorf("%s: extension %04x data %x, want %x", name, e.Type, data, e.Data)
			}
		}
	}
}

func greaseMask(v uint16) uint16 {
	if censortest.IsGREASE(v) {
		return 0x0a0a
	}
	return v
}

func greaseMasked(v []uint16) []uint16 {
	out := make([]uint16, len(v))
	for i, x := range v {
		out[i] = greaseMask(x)
	}
	return out
}

// checkKeyShares verifies that the real key shares are valid public keys.
func checkKeyShares(t *testing.T, h *censortest.ClientHello) {
	t.Helper()
	for _, ks := range h.KeyShares {
		switch ks.Group {
		case censortest.GroupX25519MLKEM768:
			if len(ks.Data) != mlkem.EncapsulationKeySize768+32 {
				t.Fatalf("X25519MLKEM768 share %d bytes", len(ks.Data))
			}
			if _, err := mlkem.NewEncapsulationKey768(ks.Data[:mlkem.EncapsulationKeySize768]); err != nil {
				t.Errorf("ML-KEM-768 part: %v", err)
			}
			if _, err := ecdh.X25519().NewPublicKey(ks.Data[mlkem.EncapsulationKeySize768:]); err != nil {
				t.Errorf("X25519 part: %v", err)
			}
		case censortest.GroupX25519:
			if _, err := ecdh.X25519().NewPublicKey(ks.Data); err != nil {
				t.Errorf("X25519 share: %v", err)
			}
		}
	}
}

// TestChromeHelloIsFresh checks that nothing per-connection is replayed:
// two hellos differ in random, session id, key shares and ECH GREASE, and
// none of their key shares is one from a capture.
func TestChromeHelloIsFresh(t *testing.T) {
	a := mustParse(t, loopbackHello(t, PresetChrome))
	b := mustParse(t, loopbackHello(t, PresetChrome))
	if a.Random == b.Random || bytes.Equal(a.SessionID, b.SessionID) {
		t.Error("random or session id repeated")
	}
	seen := make(map[string]bool)
	for _, rec := range chromiumCaptures(t) {
		for _, ks := range mustParse(t, rec).KeyShares {
			if len(ks.Data) > 1 {
				seen[string(ks.Data)] = true
			}
		}
	}
	for _, h := range []*censortest.ClientHello{a, b} {
		for _, ks := range h.KeyShares {
			if len(ks.Data) <= 1 {
				continue
			}
			if seen[string(ks.Data)] {
				t.Errorf("key share for group %04x repeated", ks.Group)
			}
			seen[string(ks.Data)] = true
		}
	}
	ea, _ := a.Extension(censortest.ExtECH)
	eb, _ := b.Extension(censortest.ExtECH)
	if bytes.Equal(ea[8:40], eb[8:40]) {
		t.Error("ECH GREASE enc repeated")
	}
}

// TestChrome133Preset checks the "chrome133" preset against utls's own
// HelloChrome_133 spec.
func TestChrome133Preset(t *testing.T) {
	spec, err := utls.UTLSIdToSpec(utls.HelloChrome_133)
	if err != nil {
		t.Fatal(err)
	}
	var wantTypes []uint16
	var wantGroups, wantSigs []uint16
	var wantALPN []string
	for _, e := range spec.Extensions {
		switch x := e.(type) {
		case *utls.UtlsGREASEExtension:
			continue
		case *utls.SupportedCurvesExtension:
			for _, c := range x.Curves {
				wantGroups = append(wantGroups, greaseMask(uint16(c)))
			}
		case *utls.SignatureAlgorithmsExtension:
			for _, s := range x.SupportedSignatureAlgorithms {
				wantSigs = append(wantSigs, uint16(s))
			}
		case *utls.ALPNExtension:
			wantALPN = x.AlpnProtocols
		}
		typ, ok := utlsExtensionType(e)
		if !ok {
			t.Fatalf("HelloChrome_133 has an extension %T this test does not know", e)
		}
		wantTypes = append(wantTypes, typ)
	}
	slices.Sort(wantTypes)

	for i := range 2 {
		h := mustParse(t, loopbackHello(t, PresetChrome133))
		if !slices.Equal(greaseMasked(h.CipherSuites), greaseMasked(spec.CipherSuites)) {
			t.Errorf("hello %d: ciphers %04x, want %04x", i, h.CipherSuites, spec.CipherSuites)
		}
		if got := sortedTypes(h); !slices.Equal(got, wantTypes) {
			t.Errorf("hello %d: extensions %04x, want %04x", i, got, wantTypes)
		}
		if !slices.Equal(greaseMasked(h.SupportedGroups), wantGroups) || !slices.Contains(h.SupportedGroups, censortest.GroupX25519MLKEM768) {
			t.Errorf("hello %d: groups %04x, want %04x", i, h.SupportedGroups, wantGroups)
		}
		if !slices.Equal(h.SignatureAlgorithms, wantSigs) {
			t.Errorf("hello %d: signature algorithms %04x, want %04x", i, h.SignatureAlgorithms, wantSigs)
		}
		if !slices.Equal(h.ALPN, wantALPN) || !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) {
			t.Errorf("hello %d: ALPN %q", i, h.ALPN)
		}
		if !h.GREASE.CipherSuites || !h.GREASE.Extensions || !h.GREASE.SupportedGroups {
			t.Errorf("hello %d: GREASE %+v", i, h.GREASE)
		}
		checkKeyShares(t, h)
		// Chrome 133 lacks trust_anchors and the ML-DSA schemes, so it is
		// one extension short of current Chromium but shares its ciphers.
		ja4 := censortest.JA4(h)
		if ja4 == Chromium156.JA4 || ja4[:10] != "t13d1516h2" || ja4[11:23] != Chromium156.JA4[11:23] {
			t.Errorf("hello %d: chrome133 JA4 %s (Chromium %s)", i, ja4, Chromium156.JA4)
		}
	}
}

// utlsExtensionType maps the utls extension types of HelloChrome_133 to
// their code points.
func utlsExtensionType(e utls.TLSExtension) (uint16, bool) {
	switch e.(type) {
	case *utls.SNIExtension:
		return censortest.ExtServerName, true
	case *utls.ExtendedMasterSecretExtension:
		return censortest.ExtExtendedMasterSec, true
	case *utls.RenegotiationInfoExtension:
		return censortest.ExtRenegotiationInfo, true
	case *utls.SupportedCurvesExtension:
		return censortest.ExtSupportedGroups, true
	case *utls.SupportedPointsExtension:
		return censortest.ExtECPointFormats, true
	case *utls.SessionTicketExtension:
		return censortest.ExtSessionTicket, true
	case *utls.ALPNExtension:
		return censortest.ExtALPN, true
	case *utls.StatusRequestExtension:
		return censortest.ExtStatusRequest, true
	case *utls.SignatureAlgorithmsExtension:
		return censortest.ExtSignatureAlgorithms, true
	case *utls.SCTExtension:
		return censortest.ExtSCT, true
	case *utls.KeyShareExtension:
		return censortest.ExtKeyShare, true
	case *utls.PSKKeyExchangeModesExtension:
		return censortest.ExtPSKModes, true
	case *utls.SupportedVersionsExtension:
		return censortest.ExtSupportedVersions, true
	case *utls.UtlsCompressCertExtension:
		return censortest.ExtCompressCert, true
	case *utls.ApplicationSettingsExtensionNew:
		return censortest.ExtALPS, true
	case *utls.GREASEEncryptedClientHelloExtension:
		return censortest.ExtECH, true
	}
	return 0, false
}

func TestNewUConnPresets(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := NewUConn(a, nil, "firefox"); err == nil {
		t.Error("unknown preset accepted")
	}
	cfg := &utls.Config{ServerName: testHost}
	for _, p := range []string{"", PresetChrome, PresetChrome133} {
		if _, err := NewUConn(a, cfg, p); err != nil {
			t.Errorf("preset %q: %v", p, err)
		}
	}
	// utls refuses to build a hello that could not verify the server.
	if _, err := NewUConn(a, nil, PresetChrome); err == nil {
		t.Error("nil config (no ServerName) accepted")
	}
	if cfg.NextProtos != nil || cfg.PreferSkipResumptionOnNilExtension {
		t.Errorf("caller's config modified: %+v", cfg)
	}
}

// testCert returns a self-signed ECDSA P-256 certificate for testHost.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: testHost},
		DNSNames:              []string{testHost},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestHandshake runs real TLS 1.3 handshakes between NewUConn and a Go
// crypto/tls server on loopback, with and without h2, with the hybrid
// post-quantum group and with X25519 only, and moves data both ways.
func TestHandshake(t *testing.T) {
	cert, pool := testCert(t)
	cases := []struct {
		name       string
		serverALPN []string
		curves     []tls.CurveID
		wantProto  string
		wantCurve  tls.CurveID
	}{
		{"h2 hybrid", []string{"h2", "http/1.1"}, nil, "h2", tls.X25519MLKEM768},
		{"no ALPN hybrid", nil, nil, "", tls.X25519MLKEM768},
		{"http1.1 only", []string{"http/1.1"}, nil, "http/1.1", tls.X25519MLKEM768},
		{"h2 x25519", []string{"h2"}, []tls.CurveID{tls.X25519}, "h2", tls.X25519},
		{"no ALPN p256", nil, []tls.CurveID{tls.CurveP256}, "", tls.CurveP256},
	}
	for _, preset := range []string{PresetChrome, PresetChrome133} {
		for _, c := range cases {
			t.Run(preset+"/"+c.name, func(t *testing.T) {
				ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
					Certificates:     []tls.Certificate{cert},
					NextProtos:       c.serverALPN,
					CurvePreferences: c.curves,
					MinVersion:       tls.VersionTLS13,
				})
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				type result struct {
					state tls.ConnectionState
					err   error
				}
				srv := make(chan result, 1)
				go func() {
					conn, err := ln.Accept()
					if err != nil {
						srv <- result{err: err}
						return
					}
					defer conn.Close()
					tc := conn.(*tls.Conn)
					_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
					if err := tc.Handshake(); err != nil {
						srv <- result{err: err}
						return
					}
					buf := make([]byte, 4)
					if _, err := io.ReadFull(tc, buf); err != nil {
						srv <- result{err: err}
						return
					}
					_, err = tc.Write(append([]byte("pong:"), buf...))
					srv <- result{state: tc.ConnectionState(), err: err}
				}()

				conn, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				uc, err := NewUConn(conn, &utls.Config{ServerName: testHost, RootCAs: pool}, preset)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := uc.HandshakeContext(ctx); err != nil {
					t.Fatalf("client handshake: %v", err)
				}
				st := uc.ConnectionState()
				if st.Version != utls.VersionTLS13 || st.NegotiatedProtocol != c.wantProto {
					t.Errorf("client: version %#04x protocol %q, want TLS 1.3 %q", st.Version, st.NegotiatedProtocol, c.wantProto)
				}
				_ = uc.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := uc.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				reply := make([]byte, 9)
				if _, err := io.ReadFull(uc, reply); err != nil {
					t.Fatal(err)
				}
				if string(reply) != "pong:ping" {
					t.Errorf("reply %q", reply)
				}
				r := <-srv
				if r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
				if r.state.NegotiatedProtocol != c.wantProto || r.state.CurveID != c.wantCurve || r.state.ServerName != testHost {
					t.Errorf("server: protocol %q curve %v sni %q, want %q %v %q",
						r.state.NegotiatedProtocol, r.state.CurveID, r.state.ServerName, c.wantProto, c.wantCurve, testHost)
				}
			})
		}
	}
}
