// Package transport is the seam between Postern's relay and the network.
//
// A transport carries relay sessions: full-duplex byte streams between a client
// and a relay (or between two relays), hidden inside something a censor expects
// to see, such as HTTPS over TCP or HTTP/3 over QUIC. The relay only ever sees a
// [Conn] and a typed [*Error]; it never sees quic-go, utls or net/http types.
//
// Transports are plain values collected in a [Registry] that the program fills
// explicitly (see cmd/postern); nothing registers itself at import time, so a
// test can build a registry holding a fake transport.
//
// # Streams
//
// A [Conn] is a net.Conn with half-close. Close tears the whole session down and
// unblocks pending Read and Write calls. CloseWrite sends end-of-stream to the
// peer (its Read returns io.EOF once buffered data is consumed) while reads keep
// working. Deadlines behave as for net.Conn where the transport supports them;
// where it does not, the SetDeadline family returns an error wrapping
// [ErrDeadlineUnsupported] and callers must use Close to unblock.
//
// # Listeners
//
// A [Listener] yields only authenticated relay sessions. Everything else that
// reaches the public port (probes, browsers, scanners, replays) is answered by
// the cover site and never surfaces through Accept.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Conn is a relay session stream. See the package documentation for the
// close and half-close contract.
type Conn interface {
	net.Conn
	// CloseWrite half-closes the stream: the peer reads io.EOF, reads on this
	// side keep working.
	CloseWrite() error
}

// Early data: the first bytes of a session, which a client may ask a
// transport to send with the session request instead of after the
// relay's answer (Postern's hello, so that the relay's answer to it comes
// with the session's acceptance: a round trip less per session). A
// transport that can do so takes them from the dial's context
// ([EarlyData]) and reports them on the Conn it returns ([EarlySender]);
// one that cannot ignores them, and the caller writes them itself. They
// go only to the server the transport authenticated (the relay's pinned
// certificate; for an endpoint without a pin, such as https_cdn's, the
// CDN with a certificate valid for the name, and whatever it forwards
// to); if the relay then refuses the session, they went to its cover
// site's handler, as a form's body would.
type earlyKey struct{}

// MaxEarlyData is the most early data a context may ask for; more is
// ignored (EarlyData returns nil).
const MaxEarlyData = 4 << 10

// WithEarlyData returns a context asking the transport that dials with it
// to send p with the session request.
func WithEarlyData(ctx context.Context, p []byte) context.Context {
	return context.WithValue(ctx, earlyKey{}, p)
}

// EarlyData returns the early data ctx asks for, or nil (also when it is
// longer than MaxEarlyData).
func EarlyData(ctx context.Context) []byte {
	p, _ := ctx.Value(earlyKey{}).([]byte)
	if len(p) > MaxEarlyData {
		return nil
	}
	return p
}

// Sourced is implemented by a relay-side Conn that knows what its
// listener's per-source limits count the client as: a prefix of
// SourceHash under the listener's key, never the address (which a
// relay-side Conn hides). The relay keys limits of its own with it (an
// entry relay's share of its forward outbox), in memory only.
type Sourced interface{ Source() [16]byte }

// EarlySender is a Conn on which the transport sent early data: SentEarly
// returns those bytes (nil if none were sent).
type EarlySender interface {
	SentEarly() []byte
}

// Arrivals is implemented by a Conn whose framing beneath the session (TLS
// records, HTTP/2 frames) holds bytes back from the session until a unit
// of it is whole. It reports when bytes last arrived on the connection
// and whether such a unit has begun to arrive and not ended. A flow a
// censor freezes inside one delivers nothing more to the session, and
// without this a session with no request waiting (a subscription waiting
// for pushes) could not tell it from an idle one.
type Arrivals interface {
	Arrivals() (last time.Time, midway bool)
}

// ErrDeadlineUnsupported is wrapped by SetDeadline and friends on transports
// whose streams cannot honour deadlines.
var ErrDeadlineUnsupported = errors.New("transport: deadlines not supported on this stream")

// KeySize is the size of the session authentication key of an Endpoint and
// a ListenConfig.
const KeySize = 32

// Endpoint is everything a client needs to reach one relay over one
// transport. It is normally taken from a relay descriptor.
type Endpoint struct {
	// Transport is the registry name, for example "https" or "h3".
	Transport string
	// Addr is the host:port to dial.
	Addr string
	// SNI is the server name sent in the TLS ClientHello and the HTTP
	// authority. Empty means the host part of Addr.
	SNI string
	// Path is the secret HTTP path of relay sessions, starting with "/".
	Path string
	// Key is the 32-byte session authentication key shared through the
	// descriptor. It authenticates the client to the listener.
	Key []byte
	// CertSHA256, when set, pins the SHA-256 of the server certificate's
	// SubjectPublicKeyInfo instead of verifying it against system roots. Used
	// for self-signed relays.
	CertSHA256 []byte
	// Fingerprint names the ClientHello preset (for example "chrome").
	// Empty means the transport's default.
	Fingerprint string
	// Unbound disables binding the session token to the TLS session; set it
	// when a CDN or other TLS-terminating front sits between client and relay.
	Unbound bool

	// RootCAs overrides the system roots when CertSHA256 is empty (tests).
	RootCAs *x509.CertPool
	// LocalAddr, if set, is the local IP address to dial from (multi-homed
	// hosts, and tests that play several clients on loopback).
	LocalAddr string
	// Sessions, if set, keeps TLS sessions for resumption (see
	// SessionCache); nil means the transport's own in-memory cache.
	Sessions SessionCache
	// PublicOnly refuses to connect to an address that is not public
	// (PublicIP), checked on the address dialed, after name resolution,
	// with a ClassInvalid error. A relay sets it for the dials a client's
	// descriptor asks of it (tunnels, forwarding links), so that no one
	// can make it connect into its own network.
	PublicOnly bool
}

// ListenConfig configures a transport listener. The zero value of every
// optional field means a sensible default.
type ListenConfig struct {
	// Addr is the local address to listen on, host:port. Required.
	Addr string
	// Certificate is the TLS certificate to present. Required.
	Certificate tls.Certificate
	// Path is the secret session path, starting with "/". Required.
	Path string
	// Key is the 32-byte session authentication key. Required.
	Key []byte
	// Cover answers every request that is not a valid relay session. Nil
	// means the built-in cover site chosen by the transport.
	Cover http.Handler
	// AllowUnbound accepts tokens that are not bound to the TLS session (for
	// relays behind a CDN). Replay protection still applies.
	AllowUnbound bool
	// Observe, if set, is called once per session attempt with the outcome,
	// by h3 once per connection refused (OutcomeConnLimited and
	// OutcomeConnBusy, per Initial packet) or closed to make room, and by
	// https once per TCP connection reset at its source's cap
	// (OutcomeConnLimited). It must be cheap and must not block. It never
	// receives anything that identifies a client.
	Observe func(Outcome)
	// Now overrides the clock (tests).
	Now func() time.Time
	// MaxSessionsPerSource caps the concurrent sessions of one source: a
	// client IPv4 address, or the /64 of a client IPv6 address. Zero means
	// the transport's default (httpsession.DefaultMaxSessionsPerSource).
	MaxSessionsPerSource int
	// AltSvc, if set, is the Alt-Svc header of every cover-site response
	// (for example `h3=":8443"; ma=2592000` on the TCP listener when h3 is
	// on, as a site that offers HTTP/3 says). Session responses never
	// carry it.
	AltSvc string
	// MaxSessionsPerConn caps the concurrent sessions carried by one TLS
	// or QUIC connection (HTTP/2 and HTTP/3 multiplex many requests on
	// one). Zero means the transport's default
	// (httpsession.DefaultMaxSessionsPerConn).
	MaxSessionsPerConn int
	// SourceKey, if 32 bytes, keys the hashes that per-source limits count
	// clients by (SourceHash), and what relay-side Conns say (Sourced): a
	// relay gives all its listeners one, so that a client counts as one
	// source whichever transport it comes by. Never written anywhere.
	// Empty: one drawn at Listen.
	SourceKey []byte
}

// Outcome is what happened to one request that reached a listener; it is
// reported through ListenConfig.Observe for metrics.
type Outcome string

const (
	OutcomeOK         Outcome = "ok"          // authenticated session accepted
	OutcomeAuthFailed Outcome = "auth_failed" // session path with a bad or expired token
	OutcomeReplay     Outcome = "replay"      // a token seen before
	OutcomeCover      Outcome = "cover"       // ordinary request, served the cover site
	OutcomeBusy       Outcome = "busy"        // valid session refused: listener at its session cap (served the cover site)
	OutcomeLimited    Outcome = "limited"     // valid session refused: its source or connection at its cap, or above its fair share (served the cover site)
	// OutcomeConnLimited is a QUIC connection refused because its source
	// holds its cap of connections, or its fair share of the listener's
	// (counted per Initial packet refused), or a TCP connection of the
	// https listener reset because its source holds its cap of
	// connections.
	OutcomeConnLimited Outcome = "conn_limited"
	// OutcomeConnBusy is a QUIC connection refused because the listener
	// holds its cap of connections and none may be taken to make room, or
	// a connection without a session closed to make room for a new one or
	// under memory pressure.
	OutcomeConnBusy Outcome = "conn_busy"
)

// Listener yields authenticated relay sessions.
type Listener interface {
	// Accept waits for the next authenticated session. It returns an error
	// wrapping net.ErrClosed after Close.
	Accept(ctx context.Context) (Conn, error)
	// Addr is the bound address (useful when Addr asked for port 0).
	Addr() net.Addr
	// Close stops listening and closes sessions not yet accepted.
	Close() error
}

// Transport is one way of carrying relay sessions.
type Transport interface {
	// Name is the registry and descriptor name, for example "https".
	Name() string
	// Dial opens an authenticated session to ep. Errors are *Error values.
	Dial(ctx context.Context, ep Endpoint) (Conn, error)
	// Listen starts a listener that serves the cover site and yields
	// authenticated sessions.
	Listen(ctx context.Context, cfg ListenConfig) (Listener, error)
}

// Registry maps transport names to implementations. The zero value is empty
// and ready to use; it is safe for concurrent use.
type Registry struct {
	mu sync.RWMutex
	m  map[string]Transport
}

// ErrUnknownTransport is returned by Registry.Get for an unregistered name.
var ErrUnknownTransport = errors.New("unknown transport")

// Register adds t under t.Name(). Registering a name twice is an error.
func (r *Registry) Register(t Transport) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string]Transport)
	}
	name := t.Name()
	if _, ok := r.m[name]; ok {
		return fmt.Errorf("transport %q registered twice", name)
	}
	r.m[name] = t
	return nil
}

// Get returns the transport registered under name.
func (r *Registry) Get(name string) (Transport, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.m[name]
	if !ok {
		return nil, fmt.Errorf("transport %q: %w (known: %v)", name, ErrUnknownTransport, r.namesLocked())
	}
	return t, nil
}

// Names lists registered transports in sorted order.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	names := make([]string, 0, len(r.m))
	for n := range r.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Dial looks up ep.Transport and dials it.
func (r *Registry) Dial(ctx context.Context, ep Endpoint) (Conn, error) {
	t, err := r.Get(ep.Transport)
	if err != nil {
		return nil, &Error{Class: ClassInvalid, Op: "dial", Transport: ep.Transport, Err: err}
	}
	return t.Dial(ctx, ep)
}
