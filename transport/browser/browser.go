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
// The order of FetchHeaders is the browser's. The HTTP/2 and HTTP/3 client
// libraries the transports use send header fields in map order, so the
// order reaches the wire only through a client that honours it; only the
// relay (or a TLS-terminating front) sees request headers at all.
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
