package link

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/transport/descriptor"
)

// DefaultMaxTunnels is the default cap on a relay's concurrent tunnels.
const DefaultMaxTunnels = 256

// TunnelerConfig configures a Tunneler. Open is required.
type TunnelerConfig struct {
	// Open dials a home relay through the one dial path and says
	// TunnelHello, for example a closure over client.OpenTunnel.
	Open func(ctx context.Context, home *descriptor.Descriptor) (io.ReadWriteCloser, error)
	// Max bounds concurrent tunnels; one more is refused relay.CodeBusy.
	// Default DefaultMaxTunnels.
	Max int
	// PerSource bounds the tunnels, dials included, of one source; more
	// is refused CodeBusy too. Default a sixteenth of Max, at least 4.
	// An upstream of relays inside a censored network sees all of one
	// such relay's links and its clients' tunnels as one source.
	PerSource int
}

// Tunneler is the entry side of tunnels (it implements server.Tunneler):
// it checks the home relay's descriptor, opens a stream to it and counts
// the stream against the cap until it is closed. It never sees what the
// client says inside.
type Tunneler struct {
	cfg       TunnelerConfig
	sem       chan struct{}
	perSource int

	mu     sync.Mutex
	counts map[[16]byte]int // tunnels (and dials) per source, in memory only
}

// NewTunneler returns a tunneler for cfg.
func NewTunneler(cfg TunnelerConfig) *Tunneler {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMaxTunnels
	}
	if cfg.PerSource <= 0 {
		cfg.PerSource = max(4, cfg.Max/16)
	}
	return &Tunneler{cfg: cfg, sem: make(chan struct{}, cfg.Max), perSource: cfg.PerSource,
		counts: map[[16]byte]int{}}
}

// take counts a tunnel for src, unless src holds its share.
func (t *Tunneler) take(src [16]byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts[src] >= t.perSource {
		return false
	}
	t.counts[src]++
	return true
}

func (t *Tunneler) give(src [16]byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts[src]--; t.counts[src] <= 0 {
		delete(t.counts, src)
	}
}

// Tunnel opens a stream to the home relay whose descriptor line is home.
// Errors: relay.ErrBadFrame for a descriptor that does not parse or
// verify, relay.ErrBusy at the cap, relay.ErrInternal when the home relay
// cannot be reached or refuses tunnels.
func (t *Tunneler) Tunnel(ctx context.Context, src [16]byte, home string) (io.ReadWriteCloser, error) {
	d, _, err := descriptor.ParseStale(home, time.Now())
	if err != nil {
		return nil, relay.ErrBadFrame
	}
	if !t.take(src) {
		return nil, relay.ErrBusy
	}
	select {
	case t.sem <- struct{}{}:
	default:
		t.give(src)
		return nil, relay.ErrBusy
	}
	release := func() { <-t.sem; t.give(src) }
	s, err := t.cfg.Open(ctx, d)
	if err != nil {
		release()
		return nil, relay.ErrInternal
	}
	return &tunnelStream{ReadWriteCloser: s, release: release}, nil
}

// tunnelStream gives its cap slot back on the first Close.
type tunnelStream struct {
	io.ReadWriteCloser
	once    sync.Once
	release func()
}

func (s *tunnelStream) Close() error {
	err := s.ReadWriteCloser.Close()
	s.once.Do(s.release)
	return err
}

// CloseWrite half-closes the stream when it can.
func (s *tunnelStream) CloseWrite() error {
	if cw, ok := s.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
