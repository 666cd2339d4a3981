package relaytest

import (
	"bytes"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Needle is a secret a relay must never reveal (a mailbox id, a client's
// address), with the forms in which a leak would show.
type Needle struct {
	What  string
	Forms [][]byte
}

// AddrNeedle is an address, or a prefix of addresses, as text.
func AddrNeedle(what, addr string) Needle {
	return Needle{What: what, Forms: [][]byte{[]byte(addr)}}
}

// BytesNeedle covers raw bytes and their common encodings (hex in both
// cases, the four base64 kinds, base32 in both cases and base32hex), the
// forms a Go program writes them in by accident (quoted, as slog's text
// handler writes a []byte; a decimal list, as fmt and slog write an array
// such as a [32]byte id), and each 16-byte half of 32 bytes or more, so a
// truncated or split form is caught. A form longer than 20 characters is cut to three quarters: the
// same bytes encoded at another alignment differ only at the edges.
func BytesNeedle(what string, b []byte) Needle {
	n := Needle{What: what}
	parts := [][]byte{b}
	if len(b) >= 32 {
		parts = append(parts, b[:16], b[len(b)-16:])
	}
	for _, p := range parts {
		for _, f := range []string{
			string(p), hex.EncodeToString(p), strings.ToUpper(hex.EncodeToString(p)),
			base64.StdEncoding.EncodeToString(p), base64.RawStdEncoding.EncodeToString(p),
			base64.URLEncoding.EncodeToString(p), base64.RawURLEncoding.EncodeToString(p),
			base32.StdEncoding.EncodeToString(p), strings.ToLower(base32.StdEncoding.EncodeToString(p)),
			base32.HexEncoding.EncodeToString(p),
			strings.Trim(strconv.Quote(string(p)), `"`), strings.Trim(fmt.Sprint(p), "[]"),
		} {
			if len(f) > 20 {
				f = f[:len(f)*3/4]
			}
			n.Forms = append(n.Forms, []byte(f))
		}
	}
	return n
}

// FindLeaks returns "where contains what" for each needle found in hay.
func FindLeaks(where string, hay []byte, needles []Needle) []string {
	var out []string
	for _, n := range needles {
		for _, f := range n.Forms {
			if len(f) > 0 && bytes.Contains(hay, f) {
				out = append(out, where+" contains "+n.What)
				break
			}
		}
	}
	return out
}
