// Package h3 is the "h3" transport: relay sessions carried as HTTP/3 requests
// over QUIC v1, behind an HTTP/3 cover site.
//
// The session request, its token and the choice between a session and the
// cover site are the shared HTTP session layer's: see transport/httpsession.
// This package adds QUIC and HTTP/3, and the takeover of the request stream.
//
// # Wire
//
// The listener is a stock quic-go http3.Server (TLS 1.3, ALPN "h3") on a UDP
// port. A relay session is one HTTP/3 request on its own request stream:
//
//	client                                   relay
//	QUIC v1 handshake, ALPN h3  ------------>
//	HEADERS  :method POST, :path <secret>,
//	         cookie sid=<token>, browser
//	         headers             ----------->  verify token (bound to this QUIC
//	                                           connection's TLS exporter)
//	                            <-----------  HEADERS :status 200
//	DATA ... (session bytes)   <----------->  DATA ... (session bytes)
//	FIN (CloseWrite)            ------------>  Read returns io.EOF
//
// After the 200 both sides keep using the request stream: each Write becomes
// HTTP/3 DATA frames, exactly like a streaming upload and a streaming
// response, so an on-path observer sees one long HTTP/3 request. The request
// carries no content-length (a streaming body), so the request is well formed
// for any HTTP/3 hop.
//
// The client writes the request's HEADERS frame itself, on a request stream
// it opens, and reads the response's (request.go): quic-go's HTTP/3 client
// can only stream a request body by copying it from an io.Reader in 8 KiB
// pieces on a goroutine of its own. Both ends write each DATA frame, header
// and payload, with one write to the QUIC stream, from a buffer borrowed for
// that write (frames.go), so a session's Write costs what a write to a bare
// QUIC stream costs, and an idle session holds no buffer.
//
// The token (see transport/httpsession) is bound to the QUIC connection through
// the TLS exporter of that connection, so a captured token is useless on any
// other connection, and the listener's replay cache refuses it on this one.
// The relay side takes the request stream over (http3.HTTPStreamer) once it
// has sent the 200.
//
// # Probe resistance
//
// Every request that is not a valid session — wrong method or path, missing,
// malformed, expired, unbound (unless allowed) or replayed token — reaches the
// cover handler untouched (body unread; one on the secret path itself for a
// decoy path, without the token cookie and body: httpsession.Gate.ServeCover),
// on the same http3.Server, with the
// same QUIC and TLS settings a stock quic-go HTTP/3 server uses. Datagrams
// that are not QUIC are handled by quic-go exactly as by any quic-go server
// (dropped, or answered with version negotiation).
//
// # Floods and restarts
//
// quic-go creates a connection for every Initial that parses, before it can
// tell a client from random bytes sent from a spoofed address. The listener
// counts connections in their handshake: above Transport.RetryHandshakes
// (default 64) it asks new clients to prove their address with a Retry
// (RFC 9000, section 8.1.2), at Transport.MaxHandshakes (default 256) it
// refuses them. Both are stock quic-go server features (VerifySourceAddress,
// ConnContext) a careful HTTP/3 operator enables; under normal load neither
// shows on the wire.
//
// The stateless-reset key (RFC 9000, section 10.3) and the address-token key
// are derived from ListenConfig.Key with HMAC-SHA256 under distinct labels,
// so a relay that restarts with the same configuration resets the QUIC
// connections of its previous run at their next packet, and clients learn
// at once that their sessions are gone instead of after the 30 s idle
// timeout. The reset key is a one-way function of the descriptor key: who
// holds the descriptor and sees a connection's packets on path can forge a
// reset for it, which is what such an observer can do to https with a TCP
// reset anyway.
//
// # The client's Initial
//
// Anyone on the path can decrypt a client's Initial packets (RFC 9001,
// section 5.2) and read its ClientHello and transport parameters. The
// client sets everything quic-go lets it set to Chromium's values
// (chromium.go; compared with captures of Chromium 156 by
// TestInitialLikeChromium, testdata/README.md): initial_max_data 15728640,
// initial_max_stream_data_* 6291456, initial_max_streams_bidi 100 and _uni
// 103, max_idle_timeout 30000, max_datagram_frame_size present, an empty
// source connection ID, 1250-byte Initial datagrams (1230 over IPv6),
// supported_groups X25519MLKEM768, X25519, P-256, P-384 with key shares
// for the first two, and Chromium's HTTP/3 SETTINGS values plus a GREASE
// setting. What quic-go and crypto/tls fix, and so still tells the client
// apart: the ClientHello's extensions and signature algorithms (its JA4
// stays q13d0313h3_55b375c5d22e_f902b76752af against Chromium's
// q13d0312h3_55b375c5d22e_178839b6cec1), the destination connection ID
// length (random 8 to 20 bytes; Chromium: 8), the first packet number (0;
// Chromium: 1), max_udp_payload_size, max_ack_delay and
// active_connection_id_limit, the missing version_information and
// google_connection_options, the order of transport parameters (fixed;
// Chromium shuffles them) and of SETTINGS.
//
// # Sessions and QUIC connections
//
// The client opens one QUIC connection per session, from a UDP socket of its
// own, and closes both with the session. While the handshake runs, the socket
// reports ICMP errors (Linux), so a closed port fails the dial as refused at
// once, as a TCP reset does for https. A QUIC connection carries one
// session: from its 200 on, the listener refuses every other request
// stream on that connection, a second session's included, and every
// unidirectional stream past the control and QPACK streams (streams.go);
// only requests that reached the handler before it may be sessions too,
// within the session layer's per-connection, per-source and listener caps
// (transport/httpsession).
package h3

import (
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/httpsession"
)

// Name is the registry and descriptor name of this transport.
const Name = "h3"

// QUIC and session limits. The server-side values equal quic-go's defaults on
// purpose: they are visible to anyone who completes a handshake (transport
// parameters, retransmission timing), and a relay must look like a stock
// quic-go HTTP/3 server. They are spelled out so a quic-go upgrade that moves
// a default does not silently change the relay.
const (
	// HandshakeIdleTimeout bounds a QUIC handshake without progress.
	HandshakeIdleTimeout = 5 * time.Second
	// MaxIdleTimeout closes a QUIC connection after this long without
	// packets from the peer.
	MaxIdleTimeout = 30 * time.Second
	// DefaultIdleTimeout closes a connection that has had no request open
	// for this long, whatever QUIC-level traffic (a client's PINGs) keeps
	// it alive: as the https listener's keep-alive connections, like
	// nginx. A session's request stays open as long as the session.
	DefaultIdleTimeout = 60 * time.Second
	// KeepAlivePeriod is how often the client pings an idle session so that
	// NAT bindings and the idle timeout do not end it: 15 s, as Chromium's
	// QUIC does while a stream is open (QUICHE's kPingTimeoutSecs), and half
	// of MaxIdleTimeout, which quic-go would cap it at anyway. It was 10 s:
	// at 20,000 held sessions that was 2,000 packets a second for the relay
	// to answer, and a rhythm no Chromium has.
	KeepAlivePeriod = 15 * time.Second
	// MaxIncomingStreams is the number of concurrent request streams a
	// client may open on one QUIC connection.
	MaxIncomingStreams = 100
	// DefaultMaxSessions caps concurrent relay sessions per listener. A valid
	// session beyond the cap is answered by the cover site.
	DefaultMaxSessions = httpsession.DefaultMaxSessions
	// DefaultMaxHandshakes caps QUIC connections in their handshake per
	// listener, as https caps TLS handshakes.
	DefaultMaxHandshakes = 256
	// DefaultRetryHandshakes is the number of QUIC connections in their
	// handshake above which a new client must first prove its source
	// address with a Retry. Legitimate load stays far below it (a handshake
	// takes one or two round trips); a flood of Initials from spoofed
	// addresses reaches it within milliseconds.
	DefaultRetryHandshakes = 64
	// DefaultMaxHandshakesPerSource caps the handshakes in flight of one
	// source whose address a Retry proved (see handshakes): a client
	// dials one connection per session, and a handshake takes a round
	// trip or two.
	DefaultMaxHandshakesPerSource = 16
)

// Transport is the h3 transport. The zero value is ready to use.
type Transport struct {
	// MaxSessions caps concurrent sessions per listener (accepted and
	// waiting for Accept). Zero means DefaultMaxSessions.
	MaxSessions int
	// MaxHandshakes caps QUIC connections in their handshake; beyond it a
	// new connection is refused (CONNECTION_REFUSED). Zero means
	// DefaultMaxHandshakes.
	MaxHandshakes int
	// RetryHandshakes is the number of connections in their handshake
	// from which on new ones must first pass a Retry (source address
	// validation). Zero means DefaultRetryHandshakes.
	RetryHandshakes int
	// IdleTimeout closes connections that carry no session and have no
	// request in the handler, a request whose headers never finish
	// included (see DefaultIdleTimeout, the value when zero; negative:
	// never).
	IdleTimeout time.Duration
	// MaxConnsPerSource caps the established QUIC connections of one
	// source (see conns.go). Zero means twice the listener's per-source
	// session cap (ListenConfig.MaxSessionsPerSource, or its default).
	MaxConnsPerSource int
	// MaxConns caps the established QUIC connections of the listener (see
	// conns.go): at the cap a new connection takes the place of one that
	// carries no session, or is refused. Keep it above MaxSessions, or
	// connections in sessions alone can fill it. Zero means the session
	// cap (MaxSessions, or its default) and a quarter more, at least 64
	// more.
	MaxConns int
	// WindowBudget is the receive window, in bytes past the initial one,
	// that the QUIC connections of a listener may hold together (see
	// windows.go). Zero means DefaultWindowBudget; a negative value keeps
	// every connection at its initial window.
	WindowBudget int64
	// HeaderBudget is how many bytes of request HEADERS frames too large
	// to wait for whole (over 16 KiB) http3 may be reading at once for
	// the listener (see accept.go). Zero means DefaultHeaderBudget.
	HeaderBudget int

	// noFloodDefence turns Retry and the handshake cap off: benchmarks
	// measure what the defence saves.
	noFloodDefence bool
	// slotAtTake gives a handshake's slot back when the HTTP/3 server
	// takes the connection, as before 2026-12-05: benchmarks measure what
	// holding it to the handshake's end saves.
	slotAtTake bool
	// openSessionConns serves every stream of a connection that carries
	// a session, as before 2026-12-07 (streams.go): benchmarks measure
	// what refusing them saves, and the shared probe table sends a
	// replayed token on the connection of the session it opened.
	openSessionConns bool
	// pressure, set only by tests, replaces the memory pressure check and
	// its timings (pressure.go). A pointer keeps Transport comparable.
	pressure *pressureHook
	// onSend, if set, sees every sendmsg quic-go makes on the transport's
	// UDP sockets (b: the datagrams, oob: their control messages, with
	// the GSO segment size): benchmarks count syscalls with it.
	onSend func(b, oob []byte)
}

var _ transport.Transport = (*Transport)(nil)

// pressureHook is a test's memory pressure; see Transport.pressure.
// It is also how the listener passes its defaults to relieve.
type pressureHook struct {
	under              func(spare int) (act, busyToo bool)
	every, grace, busy time.Duration
}

// New returns an h3 transport with default settings.
func New() *Transport { return &Transport{} }

// Name returns "h3".
func (*Transport) Name() string { return Name }
