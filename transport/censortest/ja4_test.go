package censortest

import (
	"strconv"
	"strings"
	"testing"
)

func hexU16s(t *testing.T, list string) []uint16 {
	t.Helper()
	var out []uint16
	for _, f := range strings.Split(list, ",") {
		v, err := strconv.ParseUint(f, 16, 16)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, uint16(v))
	}
	return out
}

// helloFromOriginal builds a ClientHello whose ciphers, extensions (in wire
// order) and signature algorithms are the lists of a JA4_ro string, with
// well-formed data for the extensions the parser decodes.
func helloFromOriginal(t *testing.T, ciphers, exts, sigs string, grease bool) []byte {
	t.Helper()
	cs := hexU16s(t, ciphers)
	var list []Extension
	if grease {
		cs = append([]uint16{0x3a3a}, cs...)
		list = append(list, Extension{Type: 0x1a1a})
	}
	for _, typ := range hexU16s(t, exts) {
		var data []byte
		switch typ {
		case ExtServerName:
			data = sniData("example.com")
		case ExtALPN:
			data = alpnData("h2", "http/1.1")
		case ExtSupportedVersions:
			if grease {
				data = versionsData(0x6a6a, 0x0304, 0x0303)
			} else {
				data = versionsData(0x0304, 0x0303)
			}
		case ExtSignatureAlgorithms:
			s := hexU16s(t, sigs)
			if grease {
				s = append([]uint16{0xcaca}, s...)
			}
			data = u16Vec16(s...)
		case ExtSupportedGroups:
			data = u16Vec16(0x001d, 0x0017)
		case ExtKeyShare:
			ks := append(be16(nil, GroupX25519), be16(nil, 32)...)
			ks = append(ks, make([]byte, 32)...)
			data = append(be16(nil, uint16(len(ks))), ks...)
		}
		list = append(list, Extension{Type: typ, Data: data})
	}
	if grease {
		list = append(list, Extension{Type: 0x0a0a, Data: []byte{0}})
	}
	return buildHello(helloSpec{legacyVersion: 0x0303, sessionID: make([]byte, 32), ciphers: cs, exts: list})
}

// TestJA4PublishedExamples checks JA4 against fingerprints published with
// their raw inputs: the example of FoxIO's JA4 specification, and a Chrome
// 143 ClientHello as reported by a public TLS fingerprinting service
// (ja4 together with ja4_r and ja4_ro).
func TestJA4PublishedExamples(t *testing.T) {
	cases := []struct {
		name                string
		ciphers, exts, sigs string // wire order (JA4_ro)
		ja4, ja4r           string
	}{
		{
			name:    "FoxIO specification",
			ciphers: "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035",
			exts:    "001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015",
			sigs:    "0403,0804,0401,0503,0805,0501,0806,0601",
			ja4:     "t13d1516h2_8daaf6152771_e5627efa2ab1",
			ja4r:    "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
		{
			name:    "Chrome 143",
			ciphers: "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035",
			exts:    "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b",
			sigs:    "0403,0804,0401,0503,0805,0501,0806,0601",
			ja4:     "t13d1516h2_8daaf6152771_d8a2da3f94cd",
			ja4r:    "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01_0403,0804,0401,0503,0805,0501,0806,0601",
		},
	}
	for _, c := range cases {
		for _, grease := range []bool{false, true} {
			t.Run(c.name+"/grease="+strconv.FormatBool(grease), func(t *testing.T) {
				h, err := ParseClientHello(helloFromOriginal(t, c.ciphers, c.exts, c.sigs, grease))
				if err != nil {
					t.Fatal(err)
				}
				if h.GREASE.Any() != grease {
					t.Errorf("GREASE seen %v, want %v", h.GREASE.Any(), grease)
				}
				if got := JA4(h); got != c.ja4 {
					t.Errorf("JA4 = %s, want %s", got, c.ja4)
				}
				if got := JA4R(h); got != c.ja4r {
					t.Errorf("JA4_r = %s\nwant   %s", got, c.ja4r)
				}
			})
		}
	}
}

func TestJA4Components(t *testing.T) {
	// The specification's hash of the extension list without signature
	// algorithms: no trailing underscore.
	if got := truncHash("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"); got != "6d807ffa2a79" {
		t.Errorf("extension-only hash %s", got)
	}
	if got := truncHash(""); got != "000000000000" {
		t.Errorf("empty hash %s", got)
	}
	alpn := []struct {
		in   []string
		want string
	}{
		{nil, "00"},
		{[]string{""}, "00"},
		{[]string{"h2", "http/1.1"}, "h2"},
		{[]string{"http/1.1"}, "h1"},
		{[]string{"h"}, "hh"},
		{[]string{"\xab"}, "ab"},
		{[]string{"\xab\xcd"}, "ad"},
		{[]string{"0\xab"}, "3b"},
		{[]string{"01\xab\xcd"}, "3d"},
		{[]string{"0\xab\xcd1"}, "01"},
	}
	for _, c := range alpn {
		if got := ja4ALPN(c.in); got != c.want {
			t.Errorf("ja4ALPN(%q) = %q, want %q", c.in, got, c.want)
		}
	}

	// No SNI, no ALPN, no supported_versions, no signature algorithms.
	rec := buildHello(helloSpec{
		legacyVersion: 0x0303,
		ciphers:       []uint16{0xc02f, 0x1a1a, 0x002f},
		exts:          []Extension{{Type: 0x0017}, {Type: 0xff01, Data: []byte{0}}, {Type: 0x2a2a}},
	})
	h, err := ParseClientHello(rec)
	if err != nil {
		t.Fatal(err)
	}
	want := "t12i0202" + "00_" + truncHash("002f,c02f") + "_" + truncHash("0017,ff01")
	if got := JA4(h); got != want {
		t.Errorf("JA4 = %s, want %s", got, want)
	}
	if got, want := JA4R(h), "t12i020200_002f,c02f_0017,ff01"; got != want {
		t.Errorf("JA4_r = %s, want %s", got, want)
	}

	// Only SNI and ALPN: the extension hash is all zeros, counts still 2.
	rec = buildHello(helloSpec{
		legacyVersion: 0x0301,
		ciphers:       []uint16{0x002f},
		exts:          []Extension{{ExtServerName, sniData("a.example")}, {ExtALPN, alpnData("http/1.1")}},
	})
	if h, err = ParseClientHello(rec); err != nil {
		t.Fatal(err)
	}
	if got, want := JA4(h), "t10d0102h1_"+truncHash("002f")+"_000000000000"; got != want {
		t.Errorf("JA4 = %s, want %s", got, want)
	}
}
