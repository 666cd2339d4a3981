package borrow

import (
	"bytes"
	"testing"
	"time"
)

// FuzzScan checks that scan never panics, never asks for more than a
// record, and agrees with itself on every prefix.
func FuzzScan(f *testing.F) {
	f.Add(record(chromeHello(f).HandshakeState.Hello.Raw))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 74, 1, 0, 0, 70})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, total := scan(b)
		if v == wholeRecord && (total > len(b) || total > RecordHeaderLen+MaxRecord) {
			t.Fatalf("whole record of %d bytes in %d", total, len(b))
		}
		if v == notHello {
			for i := range len(b) {
				if pv, _ := scan(b[:i]); pv == wholeRecord {
					t.Fatalf("prefix %d whole but the longer input is not a hello", i)
				}
			}
		}
		if v == wholeRecord {
			if pv, ptotal := scan(b[:total]); pv != wholeRecord || ptotal != total {
				t.Fatal("the record alone does not scan as whole")
			}
		}
	})
}

// FuzzParseClientHello checks the parser never panics and that a parsed
// hello's session id sits where sessionIDAt says; and that the tag
// computed for a parsed hello verifies once written there.
func FuzzParseClientHello(f *testing.F) {
	f.Add(chromeHello(f).HandshakeState.Hello.Raw)
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		ch, err := parseClientHello(msg)
		if err != nil {
			return
		}
		if !bytes.Equal(msg[ch.sessionIDAt:ch.sessionIDAt+TagSize], ch.sessionID) {
			t.Fatal("sessionIDAt is wrong")
		}
		k, _ := deriveKey(make([]byte, KeySize))
		now := time.Unix(1_800_000_000, 0)
		copy(msg[ch.sessionIDAt:], k.tag(windowOf(now), ch.random, ch.keyShare))
		again, err := parseClientHello(msg)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := k.verify(again, now); !ok {
			t.Fatal("a tagged hello does not verify")
		}
	})
}
