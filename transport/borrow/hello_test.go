package borrow

import (
	"bytes"
	"net"
	"testing"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport/browser"
)

// chromeHello builds the browser profile's ClientHello as the https client
// does and returns the uconn (for TagHello) after BuildHandshakeState.
func chromeHello(t testing.TB) *utls.UConn {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	uc, err := browser.NewUConn(a, &utls.Config{ServerName: "www.example.com"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := uc.BuildHandshakeState(); err != nil {
		t.Fatal(err)
	}
	return uc
}

// record wraps a handshake message in a TLS record as Chrome sends it.
func record(msg []byte) []byte {
	r := []byte{recordTypeHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}
	return append(r, msg...)
}

func TestScan(t *testing.T) {
	hello := record(chromeHello(t).HandshakeState.Hello.Raw)
	cases := []struct {
		name  string
		b     []byte
		want  verdict
		total int
	}{
		{"empty", nil, needMore, 0},
		{"handshake type only", hello[:1], needMore, 0},
		{"record header", hello[:5], needMore, 0},
		{"all but one byte", hello[:len(hello)-1], needMore, 0},
		{"whole", hello, wholeRecord, len(hello)},
		{"whole and more", append(bytes.Clone(hello), 0x17, 3, 3), wholeRecord, len(hello)},
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), notHello, 0},
		{"alert record", []byte{21, 3, 3, 0, 2}, notHello, 0},
		{"SSLv2", []byte{0x80, 0x2e, 1}, notHello, 0},
		{"version 4.1", []byte{22, 4, 1}, notHello, 0},
		{"version 3.4", []byte{22, 3, 4}, notHello, 0},
		{"record too long", []byte{22, 3, 1, 0x40, 0x01}, notHello, 0},
		{"record too short", []byte{22, 3, 1, 0, minRecord - 1}, notHello, 0},
		{"not a ClientHello", []byte{22, 3, 1, 1, 0, 2}, notHello, 0},
		{"message length mismatch", []byte{22, 3, 1, 1, 0, 1, 0, 0, 0xff}, notHello, 0},
		{"message header fits", []byte{22, 3, 1, 1, 0, 1, 0, 0, 0xfc}, needMore, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, total := scan(c.b)
			if v != c.want || total != c.total {
				t.Fatalf("scan = %v, %d; want %v, %d", v, total, c.want, c.total)
			}
		})
	}
}

func TestParseClientHello(t *testing.T) {
	uc := chromeHello(t)
	h := uc.HandshakeState.Hello
	ch, err := parseClientHello(h.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ch.random, h.Random) || !bytes.Equal(ch.sessionID, h.SessionId) {
		t.Fatal("random or session id differ from utls's")
	}
	if !bytes.Equal(h.Raw[ch.sessionIDAt:ch.sessionIDAt+TagSize], h.SessionId) {
		t.Fatal("sessionIDAt does not point at the session id")
	}
	// The key shares: X25519MLKEM768 (1216 bytes), X25519 (32) and GREASE.
	if len(ch.keyShare) < 2+1216+32 {
		t.Fatalf("key_share data is %d bytes", len(ch.keyShare))
	}

	bad := []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"server hello", append([]byte{2}, h.Raw[1:]...)},
		{"truncated", h.Raw[:len(h.Raw)-1]},
		{"trailing byte", append(bytes.Clone(h.Raw), 0)},
		{"short session id", shortSessionID(h.Raw, ch.sessionIDAt)},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			if _, err := parseClientHello(c.msg); err == nil {
				t.Fatal("parsed")
			}
		})
	}
}

// shortSessionID rewrites msg with a 31-byte session id.
func shortSessionID(msg []byte, at int) []byte {
	out := bytes.Clone(msg[:at-1])
	out = append(out, TagSize-1)
	out = append(out, msg[at+1:]...)
	n := len(out) - 4
	out[1], out[2], out[3] = byte(n>>16), byte(n>>8), byte(n)
	return out
}

func TestKeyShareCount(t *testing.T) {
	ext := func(typ uint16, data ...byte) []byte {
		return append([]byte{byte(typ >> 8), byte(typ), 0, byte(len(data))}, data...)
	}
	cases := []struct {
		name string
		exts []byte
		ok   bool
	}{
		{"none", ext(0, 1), false},
		{"one", append(ext(0, 1), ext(extensionKeyShare, 0, 0)...), true},
		{"two", append(ext(extensionKeyShare, 0, 0), ext(extensionKeyShare, 0, 0)...), false},
		{"truncated", ext(extensionKeyShare, 0, 0)[:5], false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := findKeyShare(c.exts); (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok %v", err, c.ok)
			}
		})
	}
}
