package httpsession

import (
	"crypto/hmac"
	"crypto/sha256"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/postern/postern/transport/internal/token"
)

// decoyLabel domain-separates the decoy path from the session key's other
// uses (the token MAC's label is token.Label).
const decoyLabel = "postern cover decoy path v1"

// decoyAlphabet is base64url, the alphabet of the secret paths relays make.
const decoyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// coverRequest returns what the cover site is handed for r, a request on
// the secret path that is not a session (a refused, replayed or malformed
// session request, or anything else sent there). The cover site may be
// cover_proxy's origin, perhaps over cleartext http:// or run by someone
// else, so the copy carries nothing of the session:
//
//   - no token: every cookie named token.Cookie is removed, the others
//     stay as sent;
//   - no body: the session's first bytes stay unread, and the headers that
//     describe the body (Content-Type, Content-Length, Content-Encoding,
//     Trailer) go with it. The rest of a session request is a browser's
//     ordinary fetch() headers (see browser.Profile.FetchPOST): Origin
//     and Referer name only the relay's origin, not the path;
//   - not the secret path: the decoy path (see decoyPath), with r's query.
//
// Why a decoy rather than the path: the path in the request line to an
// origin, in its access log or in cleartext between relay and origin,
// tells whoever sees it the one string that, with the relay's address,
// marks a Postern relay and names its session endpoint. The decoy hides it
// at a small cost: the cover site answers the secret path as it answers
// the decoy, so an origin whose 404 page echoes the request path shows the
// decoy there, and a body it would have read goes unread. Only someone who
// already knows the secret path can ask for it and see that; a stable
// decoy of the same length and alphabet makes every such answer the same
// and alike in size to the answer for any other random path.
func (g *Gate) coverRequest(r *http.Request) *http.Request {
	c := r.Clone(r.Context())
	c.URL.Path, c.URL.RawPath = g.decoy, ""
	c.RequestURI = c.URL.RequestURI()
	c.Body, c.GetBody, c.ContentLength = http.NoBody, nil, 0
	c.TransferEncoding, c.Trailer = nil, nil
	c.Form, c.PostForm, c.MultipartForm = nil, nil, nil
	for _, k := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Trailer"} {
		c.Header.Del(k)
	}
	removeCookie(c.Header, token.Cookie)
	return c
}

// removeCookie removes every cookie called name from h's Cookie fields,
// as net/http's cookie parser would find it (name trimmed of spaces and
// tabs, whatever its value), keeps every other byte of those fields, and
// drops a field left empty.
func removeCookie(h http.Header, name string) {
	lines := h.Values("Cookie")
	if len(lines) == 0 {
		return
	}
	kept := make([]string, 0, len(lines))
	for _, line := range lines {
		parts := strings.Split(line, ";")
		rest := parts[:0]
		for _, part := range parts {
			if n, _, _ := strings.Cut(part, "="); textproto.TrimString(n) != name {
				rest = append(rest, part)
			}
		}
		if len(rest) == len(parts) {
			kept = append(kept, line)
		} else if line = textproto.TrimString(strings.Join(rest, ";")); strings.Trim(line, "; \t") != "" {
			kept = append(kept, line)
		}
	}
	h.Del("Cookie")
	for _, line := range kept {
		h.Add("Cookie", line)
	}
}

// decoyPath returns the path the cover site is handed in place of the
// secret path (see coverRequest): as long as path, with "/" where path
// has one and base64url characters elsewhere, drawn from ChaCha8 seeded
// with HMAC-SHA256 under the session key of decoyLabel and path. So it is
// the same for every request on every listener of the relay and across
// restarts (repeated probes see the same answer), and tells nothing about
// path to whoever lacks the key.
func decoyPath(key []byte, path string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(decoyLabel))
	m.Write([]byte(path))
	rng := rand.NewChaCha8([32]byte(m.Sum(nil)))
	out := []byte(path)
	for i, c := range out {
		if c != '/' {
			out[i] = decoyAlphabet[rng.Uint64()&63]
		}
	}
	return string(out)
}
