// Package httpsession is the HTTP session layer shared by Postern's HTTP
// transports, transport/https (HTTP/2 over TLS over TCP) and transport/h3
// (HTTP/3 over QUIC). A relay session is one HTTP request that looks like a
// browser's fetch(); everything about that request that does not depend on
// the HTTP version lives here, once: the client's checks of the endpoint and
// of the relay's certificate, the session token, the request and its
// headers, the server's choice between a session and the cover site, the
// session cap, and the classification of failures. The transports keep only
// their connections (TCP, uTLS and HTTP/2 with the response framing of
// transport/https; QUIC, HTTP/3 and the takeover of the request stream in
// transport/h3).
//
// # The session request
//
//	POST <secret path> HTTP/2 or HTTP/3     (the descriptor's Endpoint.Path)
//	:authority   the SNI name, with ":port" unless the port is 443
//	cookie       sid=<token>                 (see below)
//	user-agent, sec-ch-ua, sec-ch-ua-mobile, sec-ch-ua-platform, accept,
//	origin, referer, sec-fetch-site/-mode/-dest, accept-encoding,
//	accept-language, priority, content-type: application/octet-stream
//	             as browser.Current sends them for a same-origin fetch()
//	body         the session bytes, streamed, no content-length
//
// The relay answers a session with status 200, content-type
// application/octet-stream and cache-control no-store at once, before any
// session byte; from then on the request body carries client-to-relay bytes
// and the response body relay-to-client bytes (framed by transport/https,
// raw DATA frames in transport/h3).
//
// The token is 76 base64url characters: a flags byte, the minute it was
// made, a random nonce and an HMAC-SHA256 under the descriptor's 32-byte key
// over all of it, the path and, unless the endpoint is Unbound, the TLS
// exporter value of the connection (label "EXPORTER-postern-session-v1", no
// context, 32 bytes). So a token is useless on any other TLS connection,
// older than a few minutes, or a second time (the listener remembers
// nonces).
//
// # Cover or session
//
// [Gate.ServeHTTP] decides for every request that reaches a listener, in
// this order, and reports the outcome through ListenConfig.Observe:
//
//  1. Not a POST to the secret path: the cover site (OutcomeCover).
//  2. No token cookie, or a token that is malformed, forged, expired, bound
//     to another connection, or unbound while the listener requires binding:
//     the cover site (OutcomeAuthFailed). A token seen before: the cover
//     site (OutcomeReplay).
//  3. A valid token while the listener already carries its cap of
//     concurrent sessions (the transport's MaxSessions, default
//     DefaultMaxSessions): the cover site (OutcomeBusy). The token is spent.
//  4. A valid token while the request's source or its connection is at
//     its cap, or the source above its fair share (see Limits): the cover
//     site (OutcomeLimited). The token is spent.
//  5. Otherwise a session (OutcomeOK). It holds a slot until it ends.
//
// The cover site gets the request untouched, body unread, so everything but
// a valid session is answered exactly as the cover site alone answers it.
// The one exception is a request on the secret path itself (a refused
// session, or anything else sent there): the cover site, which may be
// cover_proxy's origin over cleartext http://, gets a copy for a decoy path
// of the same length and alphabet, without the token cookie, without the
// body and the headers that describe it (see Gate.coverRequest for why).
// Only someone who already knows the secret path can ask for it, and
// only from an origin that echoes the request path can that one tell.
//
// A transport that runs sessions on an HTTP engine of its own
// (transport/https) asks [Gate.Admit] first, which decides the same way but
// serves nothing: a request it does not admit goes to ServeHTTP through the
// stock server, which then reports the outcome (a token Admit spent before
// a cap refused it is reported busy or limited there, not as a replay).
// The relay side of a session never learns the client's address: its
// RemoteAddr is a [HiddenAddr].
//
// # Limits
//
// One client must not lock everybody else out of a listener, so a session
// is admitted only within three caps besides the listener's:
//
//   - per source: ListenConfig.MaxSessionsPerSource (default
//     DefaultMaxSessionsPerSource) sessions per client IPv4 address or
//     IPv6 /64;
//   - per connection: ListenConfig.MaxSessionsPerConn (default
//     DefaultMaxSessionsPerConn) sessions per TLS or QUIC connection, which
//     HTTP/2 and HTTP/3 would otherwise multiplex without bound (the
//     transport marks each connection's context with [WithConn]);
//   - fair share: above PressurePercent of the listener cap, a source may
//     hold at most the cap divided by the number of sources holding
//     sessions, and at least MinFairShare.
//
// A source is known only as an 8-byte HMAC-SHA256 of its address (or /64)
// under a key drawn at random when the listener starts. The hashes live in
// memory while the source holds sessions and are never logged, exported or
// reported; Observe learns only OutcomeLimited.
//
// # Errors
//
// Every error a client sees is a *transport.Error whose class does not
// depend on the transport (see [Classify]) and whose message carries no
// address and no host name.
package httpsession
