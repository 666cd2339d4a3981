// Package browser describes the browser Postern's HTTP transports imitate,
// as data: one [Profile] value per browser build, holding what a censor or a
// relay's access log can see of it. That is the TLS ClientHello (the https
// transport's uTLS handshake is built from it, see [NewUConn]), the
// User-Agent and client hints, and the request headers of a same-origin
// fetch() POST in the browser's order (both transports' session requests
// carry them, see transport/httpsession).
//
// [Current] is the profile in use. Moving to a newer browser is a data
// change: capture its ClientHello (transport/censortest/testdata/README.md),
// add a Profile value next to [Chromium156] with the new version, hints, JA4
// and hello, point Current at it, and run the tests, which compare the
// profile with the captures.
//
// The order of FetchHeaders is the browser's. The https transport's HTTP/2
// client sends them in that order, with the browser's connection preface,
// SETTINGS, WINDOW_UPDATE, stream priority and HPACK choices ([HTTP2]);
// HTTP/3 client libraries send header fields in map order. Only the relay
// (or a TLS-terminating front) sees request headers at all, but the sizes
// of the records that carry them are visible to anyone on the path.
package browser

// Header is one request header field: a lower-case name and its value.
type Header struct {
	Name, Value string
}

// Request-dependent fields of [Profile.FetchHeaders]: their values in a
// profile are placeholders that [Profile.FetchPOST] fills.
const (
	HeaderOrigin      = "origin"
	HeaderReferer     = "referer"
	HeaderContentType = "content-type"
	HeaderCookie      = "cookie"
	HeaderUserAgent   = "user-agent"
)

// Profile is one browser build as seen on the wire. Its slices must not be
// modified.
type Profile struct {
	// Name and Version identify the build, for example "Chromium" and
	// "156.0.8078.108".
	Name, Version string
	// FetchHeaders are the request headers of a same-origin fetch() POST,
	// in the order the browser sends them, client hints (sec-ch-ua...) and
	// User-Agent included. The values of origin, referer, content-type and
	// cookie depend on the request; see FetchPOST.
	FetchHeaders []Header
	// Hello is the ClientHello of a first connection to an HTTPS origin.
	Hello Hello
	// JA4 is the JA4 fingerprint of Hello: the one of the captures the
	// profile was made from.
	JA4 string
	// HTTP2 is how the browser opens an HTTP/2 connection and sends a
	// fetch() on it.
	HTTP2 HTTP2
}

// HTTP2 is a browser's HTTP/2 client behaviour as data: what it sends
// before and with the first request of a connection.
type HTTP2 struct {
	// Settings are the parameters of the client's first SETTINGS frame,
	// in the browser's order.
	Settings []Setting
	// WindowUpdate is the increment of the connection-level WINDOW_UPDATE
	// sent right after that SETTINGS frame (the connection's receive
	// window is then 65535 plus it).
	WindowUpdate uint32
	// PseudoHeaders is the order of the request pseudo-header fields.
	PseudoHeaders []string
	// FetchWeight is the weight (1-256) in the PRIORITY part of a fetch()'s
	// HEADERS frame; the first stream of a connection depends exclusively
	// on stream 0.
	FetchWeight int
	// Unindexed are the header fields the browser's HPACK encoder sends as
	// literals without indexing when the static table has no exact match;
	// every other field is sent with incremental indexing. Values are
	// Huffman-coded when that is shorter.
	Unindexed []string
}

// Setting is one SETTINGS parameter (RFC 9113 section 6.5.2).
type Setting struct {
	ID  uint16
	Val uint32
}

// SETTINGS parameter identifiers.
const (
	SettingHeaderTableSize      uint16 = 0x1
	SettingEnablePush           uint16 = 0x2
	SettingMaxConcurrentStreams uint16 = 0x3
	SettingInitialWindowSize    uint16 = 0x4
	SettingMaxFrameSize         uint16 = 0x5
	SettingMaxHeaderListSize    uint16 = 0x6
)

// Setting returns the value of SETTINGS parameter id, and whether the
// browser sends it.
func (h *HTTP2) Setting(id uint16) (uint32, bool) {
	for _, s := range h.Settings {
		if s.ID == id {
			return s.Val, true
		}
	}
	return 0, false
}

// Current is the profile Postern's HTTP transports imitate.
var Current = &Chromium156

// Header returns the profile's value of the request header name (lower
// case), or "" if it sends none.
func (p *Profile) Header(name string) string {
	for _, h := range p.FetchHeaders {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

// UserAgent returns the User-Agent header of the profile.
func (p *Profile) UserAgent() string { return p.Header(HeaderUserAgent) }

// FetchPOST returns the headers of a same-origin fetch() POST to origin
// (scheme://host[:port]) with a body of contentType, carrying cookie, in the
// browser's order. Empty cookie or contentType leave those fields out.
func (p *Profile) FetchPOST(origin, contentType, cookie string) []Header {
	out := make([]Header, 0, len(p.FetchHeaders))
	for _, h := range p.FetchHeaders {
		switch h.Name {
		case HeaderOrigin:
			h.Value = origin
		case HeaderReferer:
			h.Value = origin + "/"
		case HeaderContentType:
			h.Value = contentType
		case HeaderCookie:
			h.Value = cookie
		}
		if h.Value != "" {
			out = append(out, h)
		}
	}
	return out
}
