package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"net/netip"
)

// SourceHash is what per-source limits count a client as: an HMAC-SHA256,
// under a key the listener draws at start and never writes anywhere, of
// its IPv4 address or the /64 of its IPv6 address (one subscriber's
// usual allocation). remote is "ip:port"; anything else counts as one
// shared source. Callers keep a truncated prefix in memory only while the
// source holds something, and never log or export it.
func SourceHash(key []byte, remote string) [sha256.Size]byte {
	var b []byte
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		ip := ap.Addr().Unmap()
		if ip.Is4() {
			a := ip.As4()
			b = append([]byte{4}, a[:]...)
		} else {
			a := ip.As16()
			b = append([]byte{6}, a[:8]...)
		}
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	var out [sha256.Size]byte
	copy(out[:], m.Sum(nil))
	return out
}
