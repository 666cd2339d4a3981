package censortest

import (
	"errors"
	"regexp"
	"testing"
)

var ja4Shape = regexp.MustCompile(`^t(13|12|11|10|s3|s2|d1|d2|d3|00)[di]\d{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$`)

func FuzzParseClientHello(f *testing.F) {
	for _, rec := range chromiumCaptures(f) {
		f.Add(rec)
		f.Add(wrapRecords(rec[5:], 512))
	}
	f.Add(buildHello(helloSpec{legacyVersion: 0x0303, ciphers: []uint16{0x1301}, noExtensions: true}))
	f.Add(buildHello(helloSpec{legacyVersion: 0x0303, ciphers: []uint16{0x1301}, exts: []Extension{
		{ExtServerName, sniData("a.example")}, {ExtALPN, alpnData("\xab")},
		{ExtSupportedVersions, versionsData(0x0a0a, 0x0304)},
	}}))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		buf := append([]byte(nil), in...)
		h, err := ParseClientHello(buf)
		if err != nil {
			if h != nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseClientHello: %v, %v", h, err)
			}
			return
		}
		ja4 := JA4(h)
		if !ja4Shape.MatchString(ja4) {
			t.Fatalf("JA4 %q has the wrong shape", ja4)
		}
		raw := JA4R(h)
		// The result must not alias the input buffer.
		for i := range buf {
			buf[i] ^= 0xff
		}
		if JA4(h) != ja4 || JA4R(h) != raw {
			t.Fatal("ClientHello changed with its input buffer")
		}
	})
}
