package server_test

import (
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"strings"

	"github.com/postern/postern/relay"
)

// containsEncoded reports whether s contains b in any common text encoding.
func containsEncoded(s string, b []byte) bool {
	for _, enc := range []string{
		hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		base32.StdEncoding.EncodeToString(b), strings.ToLower(base32.StdEncoding.EncodeToString(b)),
	} {
		if strings.Contains(s, enc[:len(enc)*3/4]) {
			return true
		}
	}
	return false
}

// rawFrame builds a frame from raw payload pieces, to send what a client
// never would.
func rawFrame(t relay.FrameType, payload ...[]byte) []byte {
	var p []byte
	for _, b := range payload {
		p = append(p, b...)
	}
	return append(binary.BigEndian.AppendUint32([]byte{byte(t)}, uint32(len(p))), p...)
}
