package https

import (
	"slices"

	"golang.org/x/net/http2/hpack"
)

// hpackEncoder encodes the header block of the first request on a
// connection as Chromium's HPACK encoder (QUICHE) does with an empty
// dynamic table (RFC 7541):
//
//   - a field with an exact match in the static table is indexed (one
//     byte, for example :method POST);
//   - any other field is a literal, its name indexed when the static
//     table has the name (first match), else a literal name;
//   - literals are added to the dynamic table (incremental indexing),
//     except the fields in unindexed (without indexing);
//   - every string is Huffman-coded when that is shorter.
//
// It never refers to the dynamic table, so it keeps no state: the
// connection carries a single request.
type hpackEncoder struct {
	unindexed []string
}

// appendField appends one header field representation to dst.
func (e hpackEncoder) appendField(dst []byte, name, value string) []byte {
	nameIdx := 0
	for i, f := range hpackStatic {
		if f[0] != name {
			continue
		}
		if f[1] == value {
			return appendHpackInt(dst, 0x80, 7, uint64(i+1)) // indexed
		}
		if nameIdx == 0 {
			nameIdx = i + 1
		}
	}
	if slices.Contains(e.unindexed, name) {
		dst = appendHpackInt(dst, 0x00, 4, uint64(nameIdx)) // without indexing
	} else {
		dst = appendHpackInt(dst, 0x40, 6, uint64(nameIdx)) // incremental indexing
	}
	if nameIdx == 0 {
		dst = appendHpackString(dst, name)
	}
	return appendHpackString(dst, value)
}

// appendHpackInt appends v with an n-bit prefix whose other bits are
// flags (RFC 7541 section 5.1).
func appendHpackInt(dst []byte, flags byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(dst, flags|byte(v))
	}
	dst = append(dst, flags|byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		dst = append(dst, byte(v&0x7f|0x80))
	}
	return append(dst, byte(v))
}

// appendHpackString appends s as a string literal, Huffman-coded if that
// is shorter (RFC 7541 section 5.2).
func appendHpackString(dst []byte, s string) []byte {
	if n := hpack.HuffmanEncodeLength(s); n < uint64(len(s)) {
		dst = appendHpackInt(dst, 0x80, 7, n)
		return hpack.AppendHuffmanString(dst, s)
	}
	dst = appendHpackInt(dst, 0x00, 7, uint64(len(s)))
	return append(dst, s...)
}

// hpackStatic is the static table of RFC 7541 appendix A; entry i is
// index i+1.
var hpackStatic = [...][2]string{
	{":authority", ""}, {":method", "GET"}, {":method", "POST"}, {":path", "/"},
	{":path", "/index.html"}, {":scheme", "http"}, {":scheme", "https"}, {":status", "200"},
	{":status", "204"}, {":status", "206"}, {":status", "304"}, {":status", "400"},
	{":status", "404"}, {":status", "500"}, {"accept-charset", ""}, {"accept-encoding", "gzip, deflate"},
	{"accept-language", ""}, {"accept-ranges", ""}, {"accept", ""}, {"access-control-allow-origin", ""},
	{"age", ""}, {"allow", ""}, {"authorization", ""}, {"cache-control", ""},
	{"content-disposition", ""}, {"content-encoding", ""}, {"content-language", ""}, {"content-length", ""},
	{"content-location", ""}, {"content-range", ""}, {"content-type", ""}, {"cookie", ""},
	{"date", ""}, {"etag", ""}, {"expect", ""}, {"expires", ""},
	{"from", ""}, {"host", ""}, {"if-match", ""}, {"if-modified-since", ""},
	{"if-none-match", ""}, {"if-range", ""}, {"if-unmodified-since", ""}, {"last-modified", ""},
	{"link", ""}, {"location", ""}, {"max-forwards", ""}, {"proxy-authenticate", ""},
	{"proxy-authorization", ""}, {"range", ""}, {"referer", ""}, {"refresh", ""},
	{"retry-after", ""}, {"server", ""}, {"set-cookie", ""}, {"strict-transport-security", ""},
	{"transfer-encoding", ""}, {"user-agent", ""}, {"vary", ""}, {"via", ""},
	{"www-authenticate", ""},
}
