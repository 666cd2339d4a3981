package censortest

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
)

// RFC 9001 appendix A: the client's Initial keys for DCID 8394c8f03e515708
// (A.1) and its first Initial packet (A.2): packet number 2, a CRYPTO frame
// with a ClientHello for example.com, padded to 1162 payload bytes.
const (
	rfc9001DCID         = "8394c8f03e515708"
	rfc9001ClientSecret = "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
	rfc9001Key          = "1f369613dd76d5467730efcbe3b1a22d"
	rfc9001IV           = "fa044b2f42a3fd3b46fb255c"
	rfc9001HP           = "9f50449e04a0e810283a1e9933adedd2"
	rfc9001CryptoFrame  = "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868" +
		"04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578" +
		"616d706c652e636f6dff01000100000a00080006001d00170018001000070005" +
		"04616c706e000500050100000000003300260024001d00209370b2c9caa47fba" +
		"baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400" +
		"0d0010000e0403050306030203080408050806002d00020101001c0002400100" +
		"3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000" +
		"75300901100f088394c8f03e51570806048000ffff"
	rfc9001PayloadLen = 1162
)

func rfc9001Packet(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/rfc9001-client-initial.hex")
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestQUICInitialKeysRFC9001(t *testing.T) {
	k, err := clientInitialKeys(unhex(t, rfc9001DCID))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want []byte
	}{
		{"client_initial_secret", k.secret, unhex(t, rfc9001ClientSecret)},
		{"key", k.key, unhex(t, rfc9001Key)},
		{"iv", k.iv, unhex(t, rfc9001IV)},
		{"hp", k.hpKey, unhex(t, rfc9001HP)},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s = %x, want %x", c.name, c.got, c.want)
		}
	}
}

func TestParseQUICInitialRFC9001(t *testing.T) {
	pkts, err := ParseQUICInitials(rfc9001Packet(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 1 {
		t.Fatalf("%d packets, want 1", len(pkts))
	}
	p := pkts[0]
	want := append(unhex(t, rfc9001CryptoFrame), make([]byte, rfc9001PayloadLen-len(rfc9001CryptoFrame)/2)...)
	if !bytes.Equal(p.Payload, want) {
		t.Errorf("payload differs from RFC 9001 A.2:\n got %x\nwant %x", p.Payload[:64], want[:64])
	}
	if p.PacketNumber != 2 || hex.EncodeToString(p.DCID) != rfc9001DCID || len(p.SCID) != 0 || len(p.Token) != 0 {
		t.Errorf("pn %d dcid %x scid %x token %x", p.PacketNumber, p.DCID, p.SCID, p.Token)
	}
	h, err := QUICClientHello(rfc9001Packet(t))
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "example.com" || len(h.CipherSuites) != 2 {
		t.Errorf("ClientHello: SNI %q, ciphers %x", h.ServerName, h.CipherSuites)
	}
}

func TestParseQUICInitialRejects(t *testing.T) {
	pkt := rfc9001Packet(t)
	flip := func(i int) []byte { b := clone(pkt); b[i] ^= 0x01; return b }
	cases := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short header", append([]byte{0x40}, pkt[1:]...)},
		{"version 2", append([]byte{pkt[0], 0x6b, 0x33, 0x43, 0xcf}, pkt[5:]...)},
		{"truncated", pkt[:40]},
		{"tampered ciphertext", flip(200)},
		{"tampered tag", flip(len(pkt) - 1)},
		{"other DCID", flip(7)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ParseQUICInitials(c.in); !errors.Is(err, ErrNotQUICInitial) {
				t.Fatalf("ParseQUICInitials: %v, want ErrNotQUICInitial", err)
			}
		})
	}
}

func TestCryptoStreamReassembly(t *testing.T) {
	frame := unhex(t, rfc9001CryptoFrame)[4:] // the ClientHello bytes of the CRYPTO frame
	var c cryptoStream
	// Out of order, overlapping and repeated, as Chrome shuffles them; the
	// stream is whole after the third.
	for i, r := range [][2]int{{100, len(frame)}, {50, 120}, {0, 60}, {50, 120}} {
		if h, err := c.clientHello(); i < 3 && (h != nil || err != nil) {
			t.Fatalf("ClientHello before the stream is whole: %v, %v", h, err)
		}
		if err := c.add(uint64(r[0]), frame[r[0]:r[1]]); err != nil {
			t.Fatal(err)
		}
	}
	h, err := c.clientHello()
	if err != nil || h == nil || h.ServerName != "example.com" {
		t.Fatalf("ClientHello %v, %v", h, err)
	}
	if err := c.add(maxCryptoStream-1, []byte{1, 2}); !errors.Is(err, ErrNotQUICInitial) {
		t.Errorf("CRYPTO data beyond the bound: %v", err)
	}
}

func FuzzQUICInitial(f *testing.F) {
	pkt := rfc9001Packet(f)
	f.Add(pkt)
	f.Add(pkt[:100])
	f.Add(append(clone(pkt), pkt...)) // two coalesced
	f.Add([]byte{0xc0, 0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		// The same bytes as decrypted frames.
		var c cryptoStream
		if eachCryptoFrame(in, c.add) == nil {
			if h, err := c.clientHello(); h != nil && err != nil {
				t.Fatalf("clientHello: %v and %v", h, err)
			}
		}
		buf := clone(in)
		pkts, err := ParseQUICInitials(buf)
		if err != nil {
			if pkts != nil || !errors.Is(err, ErrNotQUICInitial) {
				t.Fatalf("ParseQUICInitials: %v, %v", pkts, err)
			}
			return
		}
		for i := range buf {
			buf[i] ^= 0xff
		}
		for _, p := range pkts {
			if len(p.DCID) > maxConnIDLen {
				t.Fatalf("DCID of %d bytes", len(p.DCID))
			}
			eachCryptoFrame(p.Payload, func(uint64, []byte) error { return nil })
		}
		if h, err := QUICClientHello(in); err == nil && h == nil {
			t.Fatal("QUICClientHello: no ClientHello and no error")
		}
	})
}
