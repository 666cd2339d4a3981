// Package link is the home of links between relays. A relay reaches
// another relay exactly as a client does: through the one dial path
// (transport/route, via relay/client.Dial) over the same transports, so a
// relay inside a censored network reaches out through whatever works.
//
// A Link keeps one session to a peer relay up until its context ends: it
// dials, pings an idle session, notices when the session dies and redials
// with exponential backoff and jitter (a session that died soon after it
// came up counts as a failed dial). Forwarded items share that one
// session. The forwarding itself (a durable outbox on the entry relay,
// handed over the link and deleted when the next hop acks) plugs into the
// server as a server.Forwarder; it runs a link only while something is
// queued for its peer, and a bounded number at once (Forwarder).
//
// A Tunneler is the entry side of tunnels (see "Tunnels" in package relay)
// and plugs into the server as a server.Tunneler: it verifies the home
// relay's descriptor, opens a fresh stream to it through the one dial path
// (client.OpenTunnel in cmd/postern: TunnelHello, then OK), and holds one
// of at most Max slots until the stream is closed. The server then splices
// the client to that stream; the client's TLS runs end to end with the
// home relay, so the entry relay never sees the mailbox or the requests.
package link

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/postern/postern/relay/client"
)

// Config configures a Link. Dial is required.
type Config struct {
	// Dial opens a session to the peer relay, for example a closure over
	// client.Dial with the peer's descriptor.
	Dial func(ctx context.Context) (*client.Client, error)
	// Ping is how often the session is pinged to detect a dead peer.
	// Default 30 s.
	Ping time.Duration
	// MinBackoff and MaxBackoff bound the redial delay, which doubles
	// after each failure and is jittered to between half and all of it.
	// Defaults 1 s and 1 minute.
	MinBackoff, MaxBackoff time.Duration
	// Observe, if set, is told each time the link goes up or down (for the
	// links-up metric). It never receives an address.
	Observe func(up bool)
}

// Link is one relay-to-relay link.
type Link struct {
	cfg Config

	mu      sync.Mutex
	cur     *client.Client
	dialErr error         // the last dial's, while there is no session
	wake    chan struct{} // closed and replaced whenever cur or dialErr changes
}

// New returns a link that does nothing until Run.
func New(cfg Config) *Link {
	if cfg.Ping <= 0 {
		cfg.Ping = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Minute, cfg.MinBackoff)
	}
	if cfg.Observe == nil {
		cfg.Observe = func(bool) {}
	}
	return &Link{cfg: cfg, wake: make(chan struct{})}
}

// Run keeps the link up until ctx ends, then closes the session and
// returns nil.
func (l *Link) Run(ctx context.Context) error {
	backoff := l.cfg.MinBackoff
	for ctx.Err() == nil {
		c, err := l.cfg.Dial(ctx)
		if err == nil {
			began := time.Now()
			l.set(c)
			l.cfg.Observe(true)
			l.hold(ctx, c)
			l.set(nil)
			c.Close()
			l.cfg.Observe(false)
			if time.Since(began) >= l.cfg.MaxBackoff {
				backoff = l.cfg.MinBackoff
				continue // a session that lasted: redial at once
			}
			// One that died soon after it came up (a peer, or a
			// middlebox, that cuts links after the handshake) counts as
			// a failed dial: redialled at once, it would be redialled
			// as fast as it is cut.
		}
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			l.failed(err)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		backoff = min(2*backoff, l.cfg.MaxBackoff)
	}
	return nil
}

// hold pings c until it dies or ctx ends.
func (l *Link) hold(ctx context.Context, c *client.Client) {
	t := time.NewTicker(l.cfg.Ping)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, l.cfg.Ping)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

func (l *Link) set(c *client.Client) {
	l.mu.Lock()
	l.cur, l.dialErr = c, nil
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
}

// failed records a failed dial and wakes Session's callers.
func (l *Link) failed(err error) {
	l.mu.Lock()
	l.dialErr = err
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
}

// Up reports whether the link has a session now.
func (l *Link) Up() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur != nil
}

// Session returns the link's session, waiting for the link to come up
// until ctx ends. While the link's last dial failed, it returns that
// dial's error at once: the caller need not wait out the link's backoff
// to learn that the peer is out of reach. The session may die at any
// time; callers retry through Session.
func (l *Link) Session(ctx context.Context) (*client.Client, error) {
	for {
		l.mu.Lock()
		c, err, wake := l.cur, l.dialErr, l.wake
		l.mu.Unlock()
		if c != nil {
			return c, nil
		}
		if err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		}
	}
}
