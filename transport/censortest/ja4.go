package censortest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// JA4 returns the JA4 TLS client fingerprint of h as specified by FoxIO
// (technical_details/JA4.md in FoxIO-LLC/ja4), for TLS over TCP:
//
//	t  version(2)  d|i  #ciphers(2)  #extensions(2)  alpn(2)
//	_  sha256(sorted ciphers)[:12]
//	_  sha256(sorted extensions without SNI and ALPN "_" signature algorithms)[:12]
//
// GREASE values are ignored everywhere; lists are comma-separated 4-digit
// lower-case hex.
func JA4(h *ClientHello) string {
	a, ciphers, exts, sigs := ja4Parts(h)
	return a + "_" + truncHash(ciphers) + "_" + truncHash(joinExtSig(exts, sigs))
}

// JA4R returns the raw (unhashed, sorted) form of the JA4 fingerprint,
// "JA4_r" in the specification. It shows why two fingerprints differ.
func JA4R(h *ClientHello) string {
	a, ciphers, exts, sigs := ja4Parts(h)
	return a + "_" + ciphers + "_" + joinExtSig(exts, sigs)
}

func joinExtSig(exts, sigs string) string {
	if exts == "" {
		return ""
	}
	if sigs == "" {
		return exts
	}
	return exts + "_" + sigs
}

// truncHash is the first 12 hex digits of sha256(s), or twelve zeros for an
// empty list, as the specification asks.
func truncHash(s string) string {
	if s == "" {
		return "000000000000"
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:12]
}

func ja4Parts(h *ClientHello) (a, ciphers, exts, sigs string) {
	var cs, es, ss []uint16
	for _, c := range h.CipherSuites {
		if !IsGREASE(c) {
			cs = append(cs, c)
		}
	}
	nExt := 0
	for _, e := range h.Extensions {
		if IsGREASE(e.Type) {
			continue
		}
		nExt++
		if e.Type != ExtServerName && e.Type != ExtALPN {
			es = append(es, e.Type)
		}
	}
	for _, s := range h.SignatureAlgorithms {
		if !IsGREASE(s) {
			ss = append(ss, s)
		}
	}
	slices.Sort(cs)
	slices.Sort(es)

	sni := "i"
	if h.HasServerName {
		sni = "d"
	}
	a = fmt.Sprintf("t%s%s%02d%02d%s", ja4Version(h), sni, min(len(cs), 99), min(nExt, 99), ja4ALPN(h.ALPN))
	return a, hexList(cs), hexList(es), hexList(ss)
}

func hexList(v []uint16) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%04x", x)
	}
	return strings.Join(parts, ",")
}

// ja4Version is the highest non-GREASE supported_versions entry, or the
// legacy version when that extension is absent.
func ja4Version(h *ClientHello) string {
	v := h.LegacyVersion
	if h.SupportedVersions != nil {
		v = 0
		for _, x := range h.SupportedVersions {
			if !IsGREASE(x) && x > v {
				v = x
			}
		}
	}
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

// ja4ALPN is the first and last character of the first ALPN value, or of
// its hex form when either end is not alphanumeric; "00" without ALPN.
func ja4ALPN(alpn []string) string {
	if len(alpn) == 0 || alpn[0] == "" {
		return "00"
	}
	p := alpn[0]
	first, last := p[0], p[len(p)-1]
	if isAlnum(first) && isAlnum(last) {
		return string([]byte{first, last})
	}
	x := hex.EncodeToString([]byte(p))
	return string([]byte{x[0], x[len(x)-1]})
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
