package censortest

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// fetCase is a first payload and the exemption Algorithm 1 gives it.
type fetCase struct {
	name    string
	payload []byte
	want    Exemption
}

// randomLooking returns n bytes that no exemption covers: popcount 4 per
// byte and no printable byte (0x0f has 4 bits and is a control character,
// 0xf0 has 4 bits and is above 0x7e).
func randomLooking(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = []byte{0x0f, 0xf0, 0x99, 0xa5}[i%4]
	}
	return b
}

// fetCases covers each exemption at and beside its threshold.
func fetCases() []fetCase {
	withPrefix := func(prefix string, n int) []byte { return append([]byte(prefix), randomLooking(n)...) }
	printableAt := func(b []byte, from, n int) []byte {
		b = bytes.Clone(b)
		for i := from; i < from+n; i++ {
			b[i] = "ZZZZ"[i%4] // 'Z' = 0x5a: 4 bits, printable
		}
		return b
	}
	r := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 1000)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	return []fetCase{
		{"random-looking", randomLooking(100), NotExempt},
		{"uniform random (seeded)", random, NotExempt},
		{"Ex1 all zero", make([]byte, 100), ExemptPopcount},
		{"Ex1 popcount exactly 3.4", bytes.Repeat([]byte{0x07, 0x07, 0x07, 0x0f, 0x0f}, 20), ExemptPopcount}, // 17 bits / 5 bytes
		{"Ex1 popcount just above 3.4", append(bytes.Repeat([]byte{0x07, 0x07, 0x07, 0x0f, 0x0f}, 20), 0x0f), NotExempt},
		{"Ex1 popcount exactly 4.6", bytes.Repeat([]byte{0x1f, 0x1f, 0x1f, 0xf0, 0xf0}, 20), ExemptPopcount}, // 23 bits / 5 bytes
		{"Ex1 popcount just below 4.6", append(bytes.Repeat([]byte{0x1f, 0x1f, 0x1f, 0xf0, 0xf0}, 20), 0xf0), NotExempt},
		{"Ex1 popcount all ones", bytes.Repeat([]byte{0xff}, 100), ExemptPopcount},
		{"Ex2 six printable first", withPrefix("\x5a\x5a\x5a\x5a\x5a\x5a", 100), ExemptPrintablePrefix},
		{"Ex2 five printable first", withPrefix("\x5a\x5a\x5a\x5a\x5a", 100), NotExempt},
		{"Ex3 51% printable", printableAt(randomLooking(100), 1, 51), ExemptPrintableShare},
		{"Ex3 exactly 50% printable, runs of 20", interleave(100, 20), NotExempt},
		{"Ex4 run of 21", printableAt(randomLooking(100), 10, 21), ExemptPrintableRun},
		{"Ex4 run of 20", printableAt(randomLooking(100), 10, 20), NotExempt},
		{"Ex5 TLS handshake", withPrefix("\x16\x03\x01", 100), ExemptProtocol},
		{"Ex5 TLS application data", withPrefix("\x17\x03\x03", 100), ExemptProtocol},
		{"Ex5 TLS version byte 0x09", withPrefix("\x16\x03\x09", 100), ExemptProtocol},
		{"Ex5 not: TLS version byte 0x0a", withPrefix("\x16\x03\x0a", 100), NotExempt},
		{"Ex5 not: alert record", withPrefix("\x15\x03\x03", 100), NotExempt},
		{"Ex5 GET", withPrefix("GET ", 100), ExemptProtocol},
		{"Ex5 POST", withPrefix("POST ", 100), ExemptProtocol},
		{"Ex5 HEAD", withPrefix("HEAD ", 100), ExemptProtocol},
		{"Ex5 PUT", withPrefix("PUT ", 100), ExemptProtocol},
		{"Ex5 not: GET without space", withPrefix("GET", 100), NotExempt},
	}
}

// interleave returns n bytes: runs of run printable bytes between runs of
// run random-looking ones, half printable in all.
func interleave(n, run int) []byte {
	b := randomLooking(n)
	for i := range b {
		if (i/run)%2 == 1 {
			b[i] = 'Z'
		}
	}
	return b
}

func TestFullyEncryptedExemption(t *testing.T) {
	for _, c := range fetCases() {
		t.Run(c.name, func(t *testing.T) {
			if got := FullyEncryptedExemption(c.payload); got != c.want {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
	for name, rec := range chromiumCaptures(t) {
		if got := FullyEncryptedExemption(rec); got != ExemptProtocol {
			t.Errorf("%s: %v, want Ex5", name, got)
		}
	}
}
