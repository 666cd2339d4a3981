package censortest

import "testing"

func firstCapture(b *testing.B) []byte {
	for _, rec := range chromiumCaptures(b) {
		return rec
	}
	return nil
}

func BenchmarkParseClientHello(b *testing.B) {
	rec := firstCapture(b)
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		if _, err := ParseClientHello(rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJA4(b *testing.B) {
	h, err := ParseClientHello(firstCapture(b))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		_ = JA4(h)
	}
}
