package fingerprint

import (
	"net"
	"testing"

	utls "github.com/refraction-networking/utls"
)

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

// BenchmarkNewUConnChrome measures building the Chrome ClientHello,
// including its X25519MLKEM768 and X25519 key generation.
func BenchmarkNewUConnChrome(b *testing.B) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	cfg := &utls.Config{ServerName: testHost}
	for b.Loop() {
		if _, err := NewUConn(c1, cfg, PresetChrome); err != nil {
			b.Fatal(err)
		}
	}
}
