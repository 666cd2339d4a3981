// Package censortest looks at Postern's transports the way a censor does.
// It is for tests only, like net/http/httptest: production code never
// imports it.
//
// Today it parses TLS ClientHello messages and computes their JA4
// fingerprint, so that tests can check that a transport's handshake matches
// the browser it imitates (see transport/browser), and it carries the
// committed Chromium captures those tests compare against. It is also a
// censor simulator that needs no root: [Middlebox] (TCP) and [UDPMiddlebox]
// relay loopback traffic to a target and apply published censor behaviour
// to it ([Rule]: SNI resets and drops, freezes, throttling, the GFW's
// fully-encrypted-traffic and QUIC SNI rules), composable with [All] and
// switchable mid-connection. [FullyEncryptedExemption] and
// [QUICClientHello] are the detectors behind them, usable on their own.
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
package censortest

import (
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// captures holds ClientHello records a real Chromium sent; see
// testdata/README.md for how they were made.
//
//go:embed testdata/chromium-*.hex
var captures embed.FS

// ChromiumCaptures returns the committed Chromium ClientHello records (TLS
// record headers included) by file name, for example "chromium-156-1.hex".
func ChromiumCaptures() (map[string][]byte, error) {
	names, err := fs.Glob(captures, "testdata/chromium-*.hex")
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(names))
	for _, name := range names {
		b, err := captures.ReadFile(name)
		if err != nil {
			return nil, err
		}
		rec, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("capture %s: %w", name, err)
		}
		out[path.Base(name)] = rec
	}
	return out, nil
}
