package censortest

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"testing"
)

// helloSpec describes a synthetic ClientHello for buildHello.
type helloSpec struct {
	legacyVersion uint16
	sessionID     []byte
	ciphers       []uint16
	compression   []byte
	exts          []Extension
	noExtensions  bool // omit the extensions block entirely
}

// buildHello encodes s as one TLS handshake record.
func buildHello(s helloSpec) []byte {
	var body []byte
	body = be16(body, s.legacyVersion)
	body = append(body, bytes.Repeat([]byte{0x42}, 32)...)
	body = append(body, byte(len(s.sessionID)))
	body = append(body, s.sessionID...)
	body = be16(body, uint16(2*len(s.ciphers)))
	for _, c := range s.ciphers {
		body = be16(body, c)
	}
	comp := s.compression
	if comp == nil {
		comp = []byte{0}
	}
	body = append(body, byte(len(comp)))
	body = append(body, comp...)
	if !s.noExtensions {
		var ext []byte
		for _, e := range s.exts {
			ext = be16(ext, e.Type)
			ext = be16(ext, uint16(len(e.Data)))
			ext = append(ext, e.Data...)
		}
		body = be16(body, uint16(len(ext)))
		body = append(body, ext...)
	}
	hs := []byte{handshakeTypeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	return wrapRecords(hs, len(hs))
}

// wrapRecords splits a handshake message into records of at most size bytes.
func wrapRecords(hs []byte, size int) []byte {
	var out []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

func be16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func u16Vec16(v ...uint16) []byte {
	var b []byte
	b = be16(b, uint16(2*len(v)))
	for _, x := range v {
		b = be16(b, x)
	}
	return b
}

func sniData(host string) []byte {
	entry := append([]byte{0}, be16(nil, uint16(len(host)))...)
	entry = append(entry, host...)
	return append(be16(nil, uint16(len(entry))), entry...)
}

func alpnData(protos ...string) []byte {
	var list []byte
	for _, p := range protos {
		list = append(list, byte(len(p)))
		list = append(list, p...)
	}
	return append(be16(nil, uint16(len(list))), list...)
}

func versionsData(v ...uint16) []byte {
	b := []byte{byte(2 * len(v))}
	for _, x := range v {
		b = be16(b, x)
	}
	return b
}

func withoutGREASE(v []uint16) []uint16 {
	return slices.DeleteFunc(slices.Clone(v), IsGREASE)
}

func TestIsGREASE(t *testing.T) {
	n := 0
	for v := 0; v <= 0xffff; v++ {
		if IsGREASE(uint16(v)) {
			n++
			if v&0x0f != 0x0a || v>>8 != v&0xff {
				t.Errorf("IsGREASE(%#04x) = true", v)
			}
		}
	}
	if n != 16 {
		t.Errorf("%d GREASE values, want 16", n)
	}
	for _, v := range []uint16{0x0a0a, 0x1a1a, 0xfafa} {
		if !IsGREASE(v) {
			t.Errorf("IsGREASE(%#04x) = false", v)
		}
	}
	for _, v := range []uint16{0x0a1a, 0x1a0a, 0x0a0b, 0x0000, 0x1301} {
		if IsGREASE(v) {
			t.Errorf("IsGREASE(%#04x) = true", v)
		}
	}
}

func TestParseChromiumCapture(t *testing.T) {
	wantSigs := []uint16{0x0904, 0x0905, 0x0906, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}
	for name, rec := range chromiumCaptures(t) {
		t.Run(name, func(t *testing.T) {
			h, err := ParseClientHello(rec)
			if err != nil {
				t.Fatal(err)
			}
			if h.RecordVersion != 0x0301 || h.LegacyVersion != 0x0303 {
				t.Errorf("versions record %#04x legacy %#04x", h.RecordVersion, h.LegacyVersion)
			}
			if len(h.SessionID) != 32 {
				t.Errorf("session id %d bytes", len(h.SessionID))
			}
			if !bytes.Equal(h.CompressionMethods, []byte{0}) {
				t.Errorf("compression %x", h.CompressionMethods)
			}
			if !h.HasServerName || h.ServerName != "relay.example" {
				t.Errorf("SNI %q (present %v)", h.ServerName, h.HasServerName)
			}
			if !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) {
				t.Errorf("ALPN %q", h.ALPN)
			}
			if g := withoutGREASE(h.SupportedGroups); !slices.Equal(g, []uint16{0x11ec, 0x001d, 0x0017, 0x0018}) {
				t.Errorf("groups %04x", g)
			}
			if len(h.KeyShares) != 3 || !IsGREASE(h.KeyShares[0].Group) ||
				h.KeyShares[1].Group != GroupX25519MLKEM768 || len(h.KeyShares[1].Data) != 1184+32 ||
				h.KeyShares[2].Group != GroupX25519 || len(h.KeyShares[2].Data) != 32 {
				t.Errorf("key shares %+v", h.KeyShares)
			}
			if s := withoutGREASE(h.SignatureAlgorithms); !slices.Equal(s, wantSigs) {
				t.Errorf("signature algorithms %04x", s)
			}
			if v := withoutGREASE(h.SupportedVersions); !slices.Equal(v, []uint16{0x0304, 0x0303}) {
				t.Errorf("supported versions %04x", v)
			}
			want := GREASESeen{CipherSuites: true, Extensions: true, SupportedGroups: true,
				KeyShares: true, SignatureAlgorithms: true, SupportedVersions: true}
			if h.GREASE != want || !h.GREASE.Any() {
				t.Errorf("GREASE %+v, want %+v", h.GREASE, want)
			}
			if _, ok := h.Extension(ExtTrustAnchors); !ok {
				t.Error("no trust_anchors extension")
			}
			types := h.ExtensionTypes(true)
			if !IsGREASE(types[0]) || !IsGREASE(types[len(types)-1]) {
				t.Errorf("GREASE extensions not first and last: %04x", types)
			}
		})
	}
}

func TestParseFragmented(t *testing.T) {
	for name, rec := range chromiumCaptures(t) {
		whole, err := ParseClientHello(rec)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{1, 7, 100, 1000} {
			split := wrapRecords(rec[5:], size)
			h, err := ParseClientHello(split)
			if err != nil {
				t.Fatalf("%s in %d-byte records: %v", name, size, err)
			}
			if !reflect.DeepEqual(h, whole) {
				t.Errorf("%s in %d-byte records parses differently", name, size)
			}
		}
	}
}

func TestParseOptionalExtensions(t *testing.T) {
	h, err := ParseClientHello(buildHello(helloSpec{legacyVersion: 0x0303, ciphers: []uint16{0x002f}, noExtensions: true}))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Extensions) != 0 || h.GREASE.Any() || h.HasServerName {
		t.Errorf("unexpected %+v", h)
	}
}

func TestParseRejects(t *testing.T) {
	var rec []byte
	for _, r := range chromiumCaptures(t) {
		rec = r
		break
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(rec)) }
	base := helloSpec{legacyVersion: 0x0303, ciphers: []uint16{0x1301}}
	with := func(exts ...Extension) []byte {
		s := base
		s.exts = exts
		return buildHello(s)
	}
	cases := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"alert record", mutate(func(b []byte) []byte { b[0] = 21; return b })},
		{"record version 2.0", mutate(func(b []byte) []byte { b[1] = 2; return b })},
		{"record length short", mutate(func(b []byte) []byte { b[4]--; return b })},
		{"record length long", mutate(func(b []byte) []byte { b[4]++; return b })},
		{"trailing byte", append(bytes.Clone(rec), 0)},
		{"trailing record", append(bytes.Clone(rec), rec...)},
		{"server hello", mutate(func(b []byte) []byte { b[5] = 2; return b })},
		{"handshake length", mutate(func(b []byte) []byte { b[8]--; return b })},
		{"zero-length record", []byte{22, 3, 1, 0, 0}},
		{"session id 33", buildHello(helloSpec{legacyVersion: 0x0303, sessionID: make([]byte, 33), ciphers: []uint16{1}})},
		{"no ciphers", buildHello(helloSpec{legacyVersion: 0x0303})},
		{"no compression", buildHello(helloSpec{legacyVersion: 0x0303, ciphers: []uint16{1}, compression: []byte{}})},
		{"duplicate extension", with(Extension{0x0017, nil}, Extension{0x0017, nil})},
		{"empty SNI list", with(Extension{ExtServerName, be16(nil, 0)})},
		{"SNI trailing", with(Extension{ExtServerName, append(sniData("a.example"), 0)})},
		{"two host names", with(Extension{ExtServerName, func() []byte {
			a, b := sniData("a.example")[2:], sniData("b.example")[2:]
			l := append(a, b...)
			return append(be16(nil, uint16(len(l))), l...)
		}()})},
		{"empty ALPN protocol", with(Extension{ExtALPN, alpnData("h2", "")})},
		{"empty ALPN list", with(Extension{ExtALPN, be16(nil, 0)})},
		{"odd groups", with(Extension{ExtSupportedGroups, []byte{0, 3, 0, 0x1d, 0}})},
		{"empty groups", with(Extension{ExtSupportedGroups, be16(nil, 0)})},
		{"odd sigalgs", with(Extension{ExtSignatureAlgorithms, []byte{0, 1, 4}})},
		{"odd versions", with(Extension{ExtSupportedVersions, []byte{3, 3, 4, 3}})},
		{"empty key share", with(Extension{ExtKeyShare, append(be16(nil, 4), 0, 0x1d, 0, 0)})},
		{"key share overrun", with(Extension{ExtKeyShare, append(be16(nil, 6), 0, 0x1d, 0, 9, 1, 2)})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseClientHello(c.in)
			if err == nil {
				t.Fatalf("parsed: %+v", h)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
		})
	}
	// Every strict prefix of a valid record is rejected.
	for n := range len(rec) {
		if _, err := ParseClientHello(rec[:n]); err == nil {
			t.Fatalf("prefix of %d bytes parsed", n)
		}
	}
}
