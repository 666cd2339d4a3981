package censortest

import (
	"bytes"
	"math/bits"
)

// Exemption is the rule by which the GFW's detector of fully encrypted
// traffic lets a connection's first data packet pass: Algorithm 1 of Wu et
// al., "How the Great Firewall of China Detects and Blocks Fully Encrypted
// Traffic", USENIX Security '23. A packet none of them exempts is judged
// fully encrypted and its connection blocked (with some probability, see
// [GFWFullyEncrypted]). "Printable" means a byte in 0x20-0x7e.
type Exemption int

const (
	NotExempt             Exemption = iota // looks fully encrypted
	ExemptPopcount                         // Ex1: average set bits per byte <= 3.4 or >= 4.6
	ExemptPrintablePrefix                  // Ex2: the first six bytes are printable
	ExemptPrintableShare                   // Ex3: more than 50% of the bytes are printable
	ExemptPrintableRun                     // Ex4: more than 20 contiguous printable bytes
	ExemptProtocol                         // Ex5: starts like TLS or HTTP
)

var exemptionNames = [...]string{"not exempt", "Ex1 popcount", "Ex2 printable prefix",
	"Ex3 printable share", "Ex4 printable run", "Ex5 protocol"}

func (e Exemption) String() string {
	if e < 0 || int(e) >= len(exemptionNames) {
		return "unknown exemption"
	}
	return exemptionNames[e]
}

// Thresholds of Algorithm 1.
const (
	popcountLow     = 3.4 // Ex1: at most this many set bits per byte on average
	popcountHigh    = 4.6 // Ex1: or at least this many
	printablePrefix = 6   // Ex2
	printableRun    = 20  // Ex4: a run longer than this
)

// httpPrefixes are the HTTP fingerprints of Ex5 the paper found (section
// 4.3): a request starting with one of these methods.
var httpPrefixes = [][]byte{[]byte("GET "), []byte("PUT "), []byte("POST "), []byte("HEAD ")}

// FullyEncryptedExemption returns the first exemption of Algorithm 1 that
// applies to payload, the first data packet of a connection from the
// client, or NotExempt. An empty payload has no bits and is exempt by Ex1.
func FullyEncryptedExemption(payload []byte) Exemption {
	ones, printable, run, longest := 0, 0, 0, 0
	for _, b := range payload {
		ones += bits.OnesCount8(b)
		if isPrintable(b) {
			printable++
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	n := len(payload)
	// ones/n <= 3.4 or >= 4.6, in integers: 5*ones <= 17*n or >= 23*n.
	switch {
	case 5*ones <= 17*n || 5*ones >= 23*n:
		return ExemptPopcount
	case n >= printablePrefix && allPrintable(payload[:printablePrefix]):
		return ExemptPrintablePrefix
	case 2*printable > n:
		return ExemptPrintableShare
	case longest > printableRun:
		return ExemptPrintableRun
	case looksLikeTLSOrHTTP(payload):
		return ExemptProtocol
	}
	return NotExempt
}

func isPrintable(b byte) bool { return b >= 0x20 && b <= 0x7e }

func allPrintable(p []byte) bool {
	for _, b := range p {
		if !isPrintable(b) {
			return false
		}
	}
	return true
}

// looksLikeTLSOrHTTP is Ex5: a TLS record header [\x16-\x17]\x03[\x00-\x09]
// or one of httpPrefixes.
func looksLikeTLSOrHTTP(p []byte) bool {
	if len(p) >= 3 && (p[0] == 0x16 || p[0] == 0x17) && p[1] == 0x03 && p[2] <= 0x09 {
		return true
	}
	for _, h := range httpPrefixes {
		if bytes.HasPrefix(p, h) {
			return true
		}
	}
	return false
}
