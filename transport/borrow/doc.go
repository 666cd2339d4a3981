// Package borrow is the borrowed-site mode of the https transport: a TCP
// front that is its origin. Every connection that does not carry a valid
// tag in its very first TLS record is spliced, byte for byte at the TCP
// level, to the origin (an operator's web server, host:port), so the TLS
// stack, certificate, ALPN, HTTP/2 SETTINGS, session tickets, error pages
// and timeouts a prober meets are the origin's own, not Go's. Only a
// ClientHello that authenticates reaches the relay's TLS and session stack.
//
// The idea is the one of REALITY and ShadowTLS (authenticate inside the
// ClientHello, fall through to a real site otherwise); the construction here
// is Postern's own, keyed by the 32-byte session key every https endpoint of
// a relay descriptor already carries.
//
// # Tag
//
// An authenticating client puts the tag in the ClientHello's
// legacy_session_id, which TLS 1.3 clients, Chrome included, fill with 32
// random bytes (RFC 8446, 4.1.2, middlebox compatibility):
//
//	legacy_session_id  32 bytes  HMAC-SHA256(K, msg), all 32 bytes
//	K    = HKDF-SHA256(secret = the endpoint's 32-byte session key, salt = none,
//	                   info = "postern borrow tag key v1"), 32 bytes
//	msg  = "postern-borrow-v1"      17 bytes, the label
//	    || window                   8 bytes, big-endian: floor(Unix seconds / 120)
//	    || random                   32 bytes, the ClientHello's random
//	    || key_share                the key_share extension's extension_data as
//	                                sent (client_shares with its 2-byte length)
//
// The tag binds the hello's random and key shares, so it cannot be lifted
// onto another ClientHello, and a 2-minute window ([Window]), so it is
// useless a few minutes later. The listener accepts the window it is in and
// the one on either side (clock skew up to a window; a tag lives between 2
// and 6 minutes), and remembers the first 16 bytes of every tag it accepted
// per window (at most [Options.MaxReplay] per window; a full window takes no
// more authenticated hellos until it rolls over): a tag seen twice, or one
// the cache has no room for, goes to the origin like any other hello.
// Without the key the session id is 32 uniformly random-looking bytes.
//
// # Which first records can authenticate
//
// One TLS record of type handshake (22), record version 3.1 to 3.3, length
// 71 to [MaxRecord], holding exactly one whole ClientHello message, with a
// 32-byte session id and exactly one key_share extension. The listener
// reads the first bytes of a connection only as long as they can still be
// such a record; the first byte that rules it out (an HTTP request, random
// bytes, a longer or malformed record) ends the inspection and the
// connection goes to the origin with every byte read so far, in order. So
// at most 5 + MaxRecord bytes are held per connection, and only while they
// form a plausible, incomplete ClientHello.
//
// # Splice
//
// The listener dials the origin as soon as it accepts a connection, so the
// origin's own timers run from the same moment as they would for a direct
// connection; it forwards whatever the origin sends (or its FIN or RST) at
// once, even while it still inspects the client's first record. When the
// inspection ends, what the client has sent so far, and whatever else it
// has already sent, goes to the origin in one write, so a burst is not
// split (an origin that closes with unread data sends RST, without, FIN).
// Once the origin has sent anything (bytes, FIN or reset) the connection
// is the origin's, and an inspection under way ends at once. If that was
// a FIN (a web server timing out a silent client or a partial hello), the
// origin has closed its socket: the bytes held back go with the client's
// next bytes, whose arrival draws the origin's reset as a direct client's
// would, and are dropped if the client ends first. After the origin's FIN
// the listener watches its socket and passes a reset on to the client at
// once (without the watch it would show only at the next write).
// An authenticated connection closes its origin connection unused (the
// origin sees a connection that sends nothing). An origin that accepts
// and resets at once gets the connection reset at once; an origin that is
// down gets it reset once the inspection has found no tag (so tagged
// clients still reach the relay). Closes propagate by kind: a FIN
// from one side half-closes the other (CloseWrite), a reset (RST, or a write
// the peer reset) resets the other side (SO_LINGER 0). The listener itself
// times out nothing the origin would not: a spliced connection is closed
// only when both directions have ended, after [Options.SpliceIdle] without
// a byte in either direction, after [Options.HalfCloseIdle] without a byte
// once one direction has ended (Linux keeps a FIN_WAIT2 socket 60 s), or
// when one write stays blocked for HalfCloseIdle (a side that stopped
// reading; nginx's send_timeout is 60 s too).
//
// # Limits
//
// Connections under inspection are capped, in all and per source
// ([Options.MaxPending], [Options.MaxPendingPerSource]); beyond either cap
// a new connection is spliced without inspection, so an overloaded front
// still looks like its origin. A splice holds a copy buffer only while
// bytes move. Spliced connections are capped
// ([Options.MaxSplices]) and so are the connections of one source, an IPv4
// address or IPv6 /64, known only by a keyed hash as in
// transport/httpsession ([Options.MaxPerSource]); beyond either cap a new
// connection is reset, as an origin out of worker connections does.
// Outcomes are reported through [Options.Observe] with the transport's
// outcome names; nothing about a client is logged.
package borrow
