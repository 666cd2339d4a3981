// Package server is the relay side of Postern's session protocol
// (documented in package relay): sessions on transport listeners, push to
// subscribers, quotas, and an Observer for metrics. It keeps mailboxes in a
// store.Store and sees forwarding between relays only through the narrow
// Forwarder interface.
//
// # No metadata
//
// The server never logs, stores or puts into an error a remote address, a
// mailbox id, a key, a ref or an envelope.
package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
)

// Observer receives relay events for metrics. Every argument comes from a
// small fixed set of strings; none identifies a user. A nil Observer in
// ServerConfig is fine.
type Observer interface {
	SessionOpened(transportName string)
	SessionClosed(transportName string)
	// Envelope reports an envelope event: "accepted", "delivered" (acked by
	// its recipient) or "rejected" (with a reason: malformed, bad_envelope,
	// no_mailbox, mailbox_full, relay_full, source_limit, capability,
	// internal).
	Envelope(event, reason string)
	// SendDuration reports how long an accepted Send took from the relay
	// reading it to the envelope being durable.
	SendDuration(d time.Duration)
}

// MailboxOpsObserver is an Observer that is also told of each mailbox
// create or rotate refused at the per-source allowance
// (Config.MailboxOps).
type MailboxOpsObserver interface {
	MailboxOpRefused()
}

type nopObserver struct{}

func (nopObserver) SessionOpened(string)       {}
func (nopObserver) SessionClosed(string)       {}
func (nopObserver) Envelope(string, string)    {}
func (nopObserver) SendDuration(time.Duration) {}

// Forwarder takes the opaque payload of a Forward frame (a two-hop layer
// for another relay) and returns once it is durable on this relay or
// refused. The server never looks inside.
type Forwarder interface {
	// Forward queues payload from the client counted as source: what
	// per-source limits count it as (transport.Sourced from the session's
	// transport, else a keyed hash of its address under a key of the
	// server's), to be kept in memory only, never logged or exported.
	Forward(ctx context.Context, source [16]byte, payload []byte) error
}

// LayerOpener opens forward layers sealed to this relay (package
// relay/forward) and returns the Send inside, and done, which the session
// calls once with whether it stored the envelope: only a stored layer may
// be refused as a replay later. A layer stored before gives an error
// matching relay.ErrReplay; a copy of one being stored meanwhile,
// relay.ErrBusy; one that is not for this relay any other error.
type LayerOpener interface {
	Open(layer []byte) (sendCap, env []byte, done func(stored bool), err error)
}

// Config configures a Server. Store is required; every other zero
// field means the default given.
type Config struct {
	Store store.Store
	// Forwarder takes Forward frames. Default: none, and Forward is
	// answered relay.CodeUnsupported.
	Forwarder Forwarder
	// Layers opens forward layers that entry relays hand over (Layer
	// frames). Default: none, and they are answered CodeUnsupported.
	Layers LayerOpener
	// Tunneler opens tunnels to home relays for Tunnel frames (entry
	// side; see "Tunnels" in package relay). Default: none, and Tunnel is
	// answered relay.CodeUnsupported.
	Tunneler Tunneler
	// RelayKey is the relay's Ed25519 descriptor key. Owner signatures
	// are bound to its public half (clients take it from the descriptor),
	// and a tunnel's inner TLS proves it. Default: a fresh key, which only
	// suits tests: clients then need Server.PublicKey.
	RelayKey ed25519.PrivateKey
	// AcceptTunnels lets entry relays open tunnels to this relay
	// (TunnelHello). Default: false, and TunnelHello is answered
	// relay.CodeUnsupported.
	AcceptTunnels bool
	// Descriptor returns the relay's current signed descriptor line, for
	// Descriptor requests. Default: none, and they are answered
	// relay.CodeUnsupported.
	Descriptor func() string
	// Logger gets session-level events at debug level, never an address,
	// mailbox id, key, ref or envelope. Default: discard.
	Logger *slog.Logger
	// Observer gets events for metrics. Default: none.
	Observer Observer
	// HelloTimeout bounds how long a new session may take to say hello.
	// Default 15s.
	HelloTimeout time.Duration
	// IdleTimeout closes a session that sends nothing for this long. Clients
	// ping to stay connected. Default 5 minutes.
	IdleTimeout time.Duration
	// MaxInFlight bounds concurrent Sends per session. Default 64.
	MaxInFlight int
	// MaxSubscriptions bounds subscriptions per session. Default 16.
	MaxSubscriptions int
	// MaxSessions bounds sessions across all listeners; a session beyond
	// it is closed at once. Default 8192.
	MaxSessions int
	// MaxSendsInFlight bounds Sends being stored across all sessions (each
	// holds up to three copies of a 64 KiB envelope). Default 512.
	MaxSendsInFlight int
	// MaxReads bounds concurrent store reads for Fetch and push across all
	// sessions. Default 4 × GOMAXPROCS.
	MaxReads int
	// BatchBytes bounds the envelope bytes one store read for Fetch or push
	// may hold: a read takes at most BatchBytes / 64 KiB envelopes (the
	// largest bucket), so the bound holds whatever the envelopes' sizes.
	// Default 256 KiB.
	BatchBytes int
	// SessionDeliveryBytes bounds the envelope bytes read for one session
	// and not yet queued to it, across its Fetch and subscriptions; its
	// write buffer holds at most 32 KiB and one frame more. Default
	// 512 KiB (two batches).
	SessionDeliveryBytes int
	// MaxDeliveryBytes bounds the envelope bytes read for delivery and not
	// yet queued to their sessions, across all sessions. Default 64 MiB.
	MaxDeliveryBytes int
	// WriteTimeout ends a session whose write to its transport stays
	// blocked this long: a client that stops reading cannot pin what the
	// relay was writing to it. Under pressure (more than three quarters of
	// MaxDeliveryBytes held) a write gets a tenth of it. Default 30 s.
	WriteTimeout time.Duration
	// MailboxOps is how many mailboxes one source may create or rotate
	// a day, refilled evenly (see DefaultMailboxOps, the default);
	// negative means no limit.
	MailboxOps int
	// StoreBytes is the store's byte quota in effect
	// (store.Options.MaxStoreBytes): with it the server knows when the
	// store holds half of it or more, and SendBytes applies. 0 or less:
	// never.
	StoreBytes int64
	// StoreTTL is how long the store keeps an envelope
	// (store.Options.TTL), for SendBytes' default. Default
	// store.DefaultTTL.
	StoreTTL time.Duration
	// SendBytes is how many envelope bytes one source may send a day,
	// refilled evenly; a Send beyond it is refused (relay full) only while the
	// store holds half of StoreBytes or more (see sendlimit.go). Default
	// (0) a quarter of StoreBytes over an envelope's life (StoreTTL and a
	// day): 32 MiB for 1 GiB and 7 days. At least the largest envelope;
	// negative: no limit.
	SendBytes int64
	// Now is the clock of MailboxOps and SendBytes (tests). Default
	// time.Now.
	Now func() time.Time
}

// Server serves the session protocol on transport listeners.
type Server struct {
	cfg Config
	log *slog.Logger
	obs Observer

	sendSem    chan struct{} // global in-flight Sends
	readSem    chan struct{} // global store reads for Fetch and push
	deliverSem chan struct{} // global delivery budget, one token per batch
	batchItems int           // envelopes per delivery batch
	tunnelTLS  *tls.Config   // home side of tunnels; nil unless AcceptTunnels
	pub        ed25519.PublicKey
	sourceKey  []byte // keys the source hashes Forwarder.Forward is given
	ops        *opLimiter
	sends      *opLimiter // envelope bytes per source (Config.SendBytes)

	mu       sync.Mutex
	sessions map[*session]struct{}
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 15 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = 16
	}
	if cfg.MailboxOps == 0 {
		cfg.MailboxOps = DefaultMailboxOps
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 8192
	}
	if cfg.MaxSendsInFlight <= 0 {
		cfg.MaxSendsInFlight = 512
	}
	if cfg.MaxReads <= 0 {
		cfg.MaxReads = 4 * runtime.GOMAXPROCS(0)
	}
	cfg.withBudgetDefaults()
	if cfg.RelayKey == nil {
		_, cfg.RelayKey, _ = ed25519.GenerateKey(nil)
	}
	if len(cfg.RelayKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("server: Config.RelayKey is %d bytes, want an Ed25519 private key (%d)", len(cfg.RelayKey), ed25519.PrivateKeySize)
	}
	var tcfg *tls.Config
	if cfg.AcceptTunnels {
		var err error
		if tcfg, err = tunnelTLS(cfg.RelayKey); err != nil {
			return nil, fmt.Errorf("server: tunnel certificate from Config.RelayKey: %w", err)
		}
	}
	sourceKey := make([]byte, 32)
	rand.Read(sourceKey)
	sends := newSendLimiter(&cfg)
	return &Server{cfg: cfg, pub: cfg.RelayKey.Public().(ed25519.PublicKey), tunnelTLS: tcfg, sourceKey: sourceKey, log: cfg.Logger, obs: cfg.Observer, sessions: make(map[*session]struct{}),
		ops: newOpLimiter(cfg.MailboxOps, mailboxOpsPeriod, cfg.Now), sends: sends,
		sendSem: make(chan struct{}, cfg.MaxSendsInFlight), readSem: make(chan struct{}, cfg.MaxReads),
		deliverSem: make(chan struct{}, cfg.MaxDeliveryBytes/cfg.BatchBytes),
		batchItems: max(1, cfg.BatchBytes/maxEnvelope)}, nil
}

// PublicKey is the relay key's public half, which owner signatures on
// this server's sessions are bound to.
func (s *Server) PublicKey() ed25519.PublicKey { return s.pub }

// SendBytes is the allowance of envelope bytes a source a day in effect
// (Config.SendBytes), 0 if none.
func (s *Server) SendBytes() int64 { return int64(s.sends.per) }

// Serve accepts sessions from ln until ctx ends or ln fails, serving each in
// its own goroutine. It returns nil when ctx ends. Sessions still open are
// closed when ctx ends; Serve waits for them.
func (s *Server) Serve(ctx context.Context, ln transport.Listener, transportName string) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ServeConn(ctx, conn, transportName)
		}()
	}
}

// ServeConn runs one session on conn until it ends, then closes conn.
func (s *Server) ServeConn(ctx context.Context, conn transport.Conn, transportName string) {
	ctx, cancel := context.WithCancel(ctx)
	ss := &session{srv: s, conn: conn, ctx: ctx, cancel: cancel, fr: &frameReader{r: conn}, w: conn,
		subs: make(map[[32]byte]*subscription), sem: make(chan struct{}, s.cfg.MaxInFlight),
		deliverSem: make(chan struct{}, s.cfg.SessionDeliveryBytes/s.cfg.BatchBytes)}
	ss.wtimer = time.AfterFunc(time.Hour, ss.writeStalled)
	ss.wtimer.Stop()
	s.mu.Lock()
	if len(s.sessions) >= s.cfg.MaxSessions {
		s.mu.Unlock()
		conn.Close()
		cancel()
		s.log.Debug("session refused", "transport", transportName, "reason", "relay full")
		return
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	s.obs.SessionOpened(transportName)
	// Closing the conn is the one way to unblock a Read on every transport.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err := ss.run()
	if ss.stalled.Load() {
		err = errWriteStalled
	}
	cancel()
	stop()
	conn.Close()
	ss.wg.Wait()
	ss.releaseBuffers()
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	s.obs.SessionClosed(transportName)
	s.log.Debug("session ended", "transport", transportName, "reason", endReason(err))
}

// endReason maps a session's end to a short fixed string for logs.
func endReason(err error) string {
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return "closed"
	case errors.Is(err, relay.ErrFrameTooLarge):
		return "frame too large"
	case errors.Is(err, relay.ErrMalformed):
		return "malformed"
	case errors.Is(err, errIdle):
		return "idle"
	case errors.Is(err, errWriteStalled):
		return "write stalled"
	case errors.Is(err, relay.ErrVersion):
		return "version"
	case errors.Is(err, errTunnelEnded):
		return "tunnel ended"
	case errors.Is(err, errTunnelTLS):
		return "tunnel tls"
	case errors.Is(err, relay.ErrUnsupported):
		return "unsupported"
	case errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled):
		return "shutdown"
	}
	return "transport " + transport.ClassOf(err).String()
}
