// Package https is Postern's "https" transport: relay sessions carried as
// HTTP/2 requests over TLS over TCP, indistinguishable from a visit to an
// ordinary website.
//
// The session request, its token and the choice between a session and the
// cover site are the shared HTTP session layer's: see transport/httpsession.
// This package adds TCP, TLS and HTTP/2, and the framing of the response.
//
// # Server
//
// The listener is a stock [net/http.Server] serving HTTP/2 and HTTP/1.1 over
// crypto/tls with the operator's certificate and the TLS defaults of any Go
// HTTPS server. Its handler is an httpsession.Gate: a POST to the secret
// session path with a valid token becomes a relay session (the server
// answers 200 at once, and the request body and the response body form a
// full-duplex stream); everything else is handed untouched to the cover
// site, so the answer is byte for byte what the cover site gives anybody
// (but a request on the secret path itself, which reaches it for a decoy
// path, without the token cookie and body: httpsession.Gate.ServeCover).
// HTTP/1.1 sessions exist for relays behind a CDN, which also need unbound
// tokens (ListenConfig.AllowUnbound).
//
// # The HTTP/2 front and engine
//
// net/http's HTTP/2 server costs a session a goroutine handoff per frame
// written, a WINDOW_UPDATE pair per 4 KiB read and three goroutines, so a
// connection whose first request is a session runs it on the listener's
// own HTTP/2 engine instead (h2session.go): the request body and the
// response body are read and written by the session's callers directly,
// each DATA frame one TLS record, a WINDOW_UPDATE pair per half window,
// and no goroutine but the connection's. Such a connection carries that
// one session: a further request on it is refused (REFUSED_STREAM), which
// only the client that proved the token can send.
//
// The choice is made by a front (h2front.go) that reads the client's
// first flight before net/http's HTTP/2 server sees the connection. It
// writes what the stock server writes first (captured from it when the
// listener starts) when the stock server would, reads the preface within
// the stock server's limit, ACKs one valid SETTINGS as the stock server
// does, and reads frames while they arrive at once. At the first HEADERS
// it decodes the request and asks the gate (httpsession.Gate.Admit);
// anything else at any point (another frame, a pause, a request that is
// not an admitted session) hands the connection to net/http's own HTTP/2
// server with the bytes read so far replayed and the frames already sent
// dropped from its output, so that from there on it is served as any
// other connection. Only the order of the stock server's first few
// frames, which depends on its goroutines' timing, and the moment its
// post-preface timers start (at the handover, at most 6 ms late) can
// differ from a server without the front; h2probe_test.go
// compares the two for a table of first flights.
//
// # Client
//
// The client dials TCP, performs a uTLS handshake whose ClientHello is the
// browser profile's (transport/browser; Endpoint.Fingerprint may choose
// another preset), requires ALPN h2, and sends the session request with a
// token bound to this TLS session. An endpoint at an IP address without
// SNI sends no server_name, as a browser does for an IP literal.
//
// Its HTTP/2 is its own (h2client.go), so that the connection preface,
// SETTINGS, WINDOW_UPDATE, the HEADERS frame's priority, the order of
// pseudo-headers and header fields, the HPACK encoding and the TLS records
// that carry them are the browser profile's; testdata/chromium-156-h2.json
// holds the Chromium capture the tests compare them with.
//
// The client resumes TLS sessions as the browser does: a ticket is used
// once, offered with pre_shared_key last in the ClientHello. Sessions live
// in Endpoint.Sessions (transport.SessionDir keeps them across runs), or
// else in a process-wide memory cache, keyed by a hash of the endpoint's
// address, name and pin.
//
// # Stream framing
//
// Client to server, the request body carries the session bytes as they are;
// the client's CloseWrite ends the request body (HTTP/2 END_STREAM).
//
// Server to client, the response body is a sequence of records, because an
// HTTP server cannot end a response while it keeps reading the request:
//
//	length  4 bytes  big-endian, 1..MaxRecord: that many session bytes follow
//	length  4 bytes  zero: end of stream (the server's CloseWrite)
//
// The end of the response body without the zero record also reads as end of
// stream, like a TCP FIN.
//
// Both ends size their DATA frames to TLS records: a frame's 9-byte header
// and payload fill at most one record (16384 bytes of plaintext).
// crypto/tls and uTLS write each record to the socket on its own; beneath
// them, both ends gather the records of one session write and send them
// in one socket write per 64 KiB (cork.go), flushing before any wait for
// flow-control window. The relay's
// frames carry at most 16375 bytes, the first of a record carrying its
// 4-byte header (the engine builds them; on net/http's server it hands
// net/http at most that much at a time, which it sends as one frame); the
// client sends at most 16371 bytes per frame, and the engine's Read
// returns a full-size frame's payload alone, so that a relay passing on
// the bytes of one read with a record header still fits one frame
// (smaller payloads that came while the reader was behind share a buffer
// and come back together, up to 16384 bytes, which may take two). Frame buffers come from pools and return once written: an idle
// session holds none, on either side.
//
// # Limits
//
// Read-header and idle timeouts, a header size cap, a cap on concurrent TLS
// handshakes, a cap on the TCP connections of one source (twice its
// session cap; none behind a CDN; a connection over it is reset at the
// accept, whatever it would have sent: conns.go) and caps on concurrent
// sessions (per listener, and through transport/httpsession per source
// and per TCP connection) protect the listener; see [Transport]. The server's error log is discarded: it would
// print client addresses.
//
// The timeouts are chosen to hold a silent client no longer than a common
// web server (nginx: client_header_timeout 60 s, keepalive 60-75 s) and
// never longer than that:
//
//   - the TLS handshake and HTTP/1.1 request headers must arrive within
//     ReadHeaderTimeout (60 s, nginx's client_header_timeout) of the connection
//     opening;
//   - the HTTP/2 preface must arrive within 10 s (net/http's own limit);
//   - a connection with no request in flight, HTTP/1.1 keep-alive or
//     HTTP/2, including one whose HEADERS never completed, is closed after
//     IdleTimeout (60 s; before this limit it was 90 s, which let HTTP/2
//     slowloris connections sit for 91 s);
//   - a request that is not a session (the cover, a refusal) must be read,
//     and its response written, within 5 minutes of its beginning, over
//     HTTP/1.1 and HTTP/2 alike (coverTimeout): a body that stops
//     coming, which net/http waits for before it answers, or a response
//     the client gives no flow-control credit for kept its connection
//     out of the idle timeout for good. A session lifts the bound.
package https
