package borrow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/postern/postern/transport"
)

// Defaults for the zero fields of Options.
const (
	// DefaultDialTimeout bounds the TCP connect to the origin.
	DefaultDialTimeout = 10 * time.Second
	// DefaultHelloTimeout bounds how long a plausible but incomplete
	// ClientHello record is held back from the origin. The origin's own
	// handshake timeout (nginx: client_header_timeout, 60 s) normally
	// ends such a connection first; after this the held bytes go to the
	// origin and the connection is spliced.
	DefaultHelloTimeout = 2 * time.Minute
	// DefaultMaxPending caps connections whose first record is still
	// being inspected (at most 5+MaxRecord bytes each); beyond it new
	// connections go to the origin uninspected.
	DefaultMaxPending = 256
	// DefaultMaxPendingPerSource caps the connections of one source under
	// inspection; beyond it that source's new connections go to the origin
	// uninspected, so that a few sources holding partial ClientHellos cannot
	// fill MaxPending and push every tagged client to the origin.
	DefaultMaxPendingPerSource = 16
	// DefaultMaxSplices caps spliced connections; beyond it new
	// connections are reset, as an origin out of worker connections
	// does. An idle splice holds no buffer (a 16 KiB one is taken only
	// while bytes move), so each costs two goroutines and two sockets;
	// one whose writes are blocked both ways (a client that pipelines
	// requests and reads slowly) holds two buffers, 128 MiB for all of
	// them at most, plus up to 16 KiB of held first bytes each.
	DefaultMaxSplices = 4096
	// DefaultMaxPerSource caps the inspected and spliced connections of
	// one source (IPv4 address or IPv6 /64); beyond it new connections
	// from that source are reset. It is half of MaxSplices (the default
	// is half of DefaultMaxSplices), above
	// what a stock origin holds from everyone together (Debian's nginx:
	// 768 worker connections per core), so that no prober meets the cap
	// before the origin's own limit, while one source still cannot take
	// every splice.
	DefaultMaxPerSource = DefaultMaxSplices / 2
	// DefaultSpliceIdle closes a spliced connection with no byte in either
	// direction for this long; any common origin times out first.
	DefaultSpliceIdle = 10 * time.Minute
	// DefaultHalfCloseIdle closes a spliced connection one of whose
	// directions has ended, after this long without a byte (Linux
	// tcp_fin_timeout).
	DefaultHalfCloseIdle = 60 * time.Second
)

// Options configure a borrowed-site listener. Only Origin is required; the
// zero value of every other field means the default above.
type Options struct {
	// Origin is the host:port of the site this listener is: every
	// connection that does not authenticate is spliced to it.
	Origin string
	// Dial connects to Origin (tests, or a bound source address). Nil
	// means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds the connect to the origin.
	DialTimeout time.Duration
	// HelloTimeout bounds the hold of an incomplete first record.
	HelloTimeout time.Duration
	// MaxPending, MaxPendingPerSource, MaxSplices and MaxPerSource are
	// the caps of the package documentation, "Limits".
	MaxPending, MaxPendingPerSource, MaxSplices, MaxPerSource int
	// MaxReplay caps the tags remembered per window (DefaultMaxReplay).
	MaxReplay int
	// SpliceIdle and HalfCloseIdle end spliced connections that carry
	// nothing; see the package documentation, "Splice".
	SpliceIdle, HalfCloseIdle time.Duration
	// Observe, if set, learns what happened to each connection the
	// listener did not hand to the relay: OutcomeCover (spliced),
	// OutcomeReplay (a tag seen before, or no room to remember it;
	// spliced), OutcomeLimited (source cap; reset), OutcomeBusy (splice
	// cap; reset). It must not block.
	Observe func(transport.Outcome)
	// Now is the clock of tag windows (tests). Nil means time.Now.
	Now func() time.Time

	inspected func(n int) // tests: told the bytes held after each read of an inspection
}

// ErrNoOrigin is returned by Listen without Options.Origin.
var ErrNoOrigin = errors.New("borrow: no origin: set the origin's host:port (config field borrow_origin)")

func (o *Options) setDefaults() error {
	if o.Origin == "" {
		return ErrNoOrigin
	}
	if _, _, err := net.SplitHostPort(o.Origin); err != nil {
		return fmt.Errorf("borrow: origin %q is not host:port: %w", o.Origin, err)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxPending, DefaultMaxPending)
	def(&o.MaxPendingPerSource, DefaultMaxPendingPerSource)
	def(&o.MaxSplices, DefaultMaxSplices)
	def(&o.MaxPerSource, max(1, o.MaxSplices/2)) // DefaultMaxPerSource with the default MaxSplices
	def(&o.MaxReplay, DefaultMaxReplay)
	defD(&o.DialTimeout, DefaultDialTimeout)
	defD(&o.HelloTimeout, DefaultHelloTimeout)
	defD(&o.SpliceIdle, DefaultSpliceIdle)
	defD(&o.HalfCloseIdle, DefaultHalfCloseIdle)
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Observe == nil {
		o.Observe = func(transport.Outcome) {}
	}
	return nil
}

// Listener is a net.Listener whose Accept yields only connections whose
// first record authenticated; it splices every other connection to the
// origin itself. A connection from Accept reads the bytes the listener
// inspected first, then the rest of the stream.
type Listener struct {
	inner   net.Listener
	key     tagKey
	opts    Options
	replay  *replayCache
	sources *sources
	pending chan struct{}
	splices chan struct{}
	authed  chan net.Conn

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	flows    map[*flow]struct{}
	closed   bool
	acceptEr error
}

var _ net.Listener = (*Listener)(nil)

// Listen wraps inner, which the Listener owns from now on. secret is the
// endpoint's 32-byte session key (transport.ListenConfig.Key).
func Listen(inner net.Listener, secret []byte, opts Options) (*Listener, error) {
	k, err := deriveKey(secret)
	if err != nil {
		return nil, err
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		inner: inner, key: k, opts: opts,
		replay:  newReplayCache(opts.MaxReplay),
		sources: newSources(opts.MaxPerSource, opts.MaxPendingPerSource),
		pending: make(chan struct{}, opts.MaxPending),
		splices: make(chan struct{}, opts.MaxSplices),
		authed:  make(chan net.Conn),
		ctx:     ctx, cancel: cancel,
		flows: make(map[*flow]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Accept waits for the next authenticated connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.authed:
		return c, nil
	case <-l.ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.acceptEr != nil {
			return nil, l.acceptEr
		}
		return nil, fmt.Errorf("borrow: %w", net.ErrClosed)
	}
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting, closes every inspected and spliced connection
// and waits for their goroutines. Connections already returned by Accept
// are the caller's.
func (l *Listener) Close() error {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	flows := make([]*flow, 0, len(l.flows))
	for f := range l.flows {
		flows = append(flows, f)
	}
	l.mu.Unlock()
	if already {
		return nil
	}
	l.cancel()
	err := l.inner.Close()
	for _, f := range flows {
		f.kill(false)
	}
	l.wg.Wait()
	return err
}

// acceptLoop accepts until the inner listener fails for good or Close.
func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			if !temporary(err) {
				l.mu.Lock()
				l.acceptEr = fmt.Errorf("borrow: accept: %w", err)
				l.mu.Unlock()
				l.cancel()
				return
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !l.track(nil) {
			c.Close()
			return
		}
		l.wg.Add(1)
		go l.handle(c)
	}
}

// temporary reports accept errors worth retrying: out of descriptors, or
// a connection aborted before it was accepted.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// track registers f (nil: only checks) unless the listener is closed.
func (l *Listener) track(f *flow) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if f != nil {
		l.flows[f] = struct{}{}
	}
	return true
}

func (l *Listener) untrack(f *flow) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.flows, f)
}

// deliver hands an authenticated connection to Accept.
func (l *Listener) deliver(c net.Conn) {
	select {
	case l.authed <- c:
	case <-l.ctx.Done():
		c.Close()
	}
}

func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}
