package httpsession

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/internal/token"
)

// DefaultMaxSessions is the session cap of a listener whose transport sets
// none.
const DefaultMaxSessions = 4096

// Start turns a request that carries a valid token into a session: it
// answers (see [WriteAccepted]), builds the relay's transport.Conn, hands it
// to [Gate.Offer] and calls release exactly once when the session no longer
// needs its slot. The Gate counts Start as running until it returns.
type Start func(w http.ResponseWriter, r *http.Request, release func())

// Gate is the part of a relay listener that both HTTP transports share: the
// handler that decides between a session and the cover site (see the
// package documentation), the session cap, and the hand-over of sessions to
// Accept. The transport serves Gate as its HTTP handler and implements
// transport.Listener with Accept and Shut.
type Gate struct {
	name     string
	path     string
	decoy    string // the path the cover site is handed in place of path
	verifier *token.Verifier
	cover    http.Handler
	altSvc   string // Alt-Svc of cover responses, "" for none
	observe  func(transport.Outcome)
	binding  func(*http.Request) []byte
	start    Start
	limits   *limiter // the listener, per-source and per-connection caps

	accept chan transport.Conn // unbuffered: a session exists once Accept took it

	mu     sync.Mutex     // orders active.Add before active.Wait
	active sync.WaitGroup // running Start calls
	closed chan struct{}  // closed by Shut
	shut   sync.Once
	ended  chan struct{} // closed by ServeEnded
	endErr error
	end    sync.Once
}

// NewGate checks cfg for transport name and returns the gate of a listener
// that allows maxSessions concurrent sessions (0: DefaultMaxSessions).
// binding returns the TLS exporter value of a request's connection (see
// [Binding]), nil if it has none. Configuration errors are
// *transport.Error values of class ClassInvalid.
func NewGate(name string, cfg transport.ListenConfig, maxSessions int, binding func(*http.Request) []byte, start Start) (*Gate, error) {
	if err := checkListen(name, cfg); err != nil {
		return nil, err
	}
	verifier, err := token.NewVerifier(cfg.Key, cfg.Path, cfg.AllowUnbound, cfg.Now)
	if err != nil {
		return nil, invalid(name, "listen", "ListenConfig.Key: "+err.Error())
	}
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	g := &Gate{
		name: name, path: cfg.Path, decoy: decoyPath(cfg.Key, cfg.Path), verifier: verifier, cover: cfg.Cover, altSvc: cfg.AltSvc, observe: cfg.Observe,
		binding: binding, start: start, limits: newLimiter(maxSessions, cfg),
		accept: make(chan transport.Conn), closed: make(chan struct{}), ended: make(chan struct{}),
	}
	if g.cover == nil {
		g.cover = cover.Default()
	}
	if g.observe == nil {
		g.observe = func(transport.Outcome) {}
	}
	return g, nil
}

// checkListen reports what makes cfg unusable.
func checkListen(name string, cfg transport.ListenConfig) error {
	_, port, err := net.SplitHostPort(cfg.Addr)
	switch {
	case cfg.Addr == "":
		return invalid(name, "listen", "ListenConfig.Addr is empty; set host:port")
	case err != nil || !validPort(port, true):
		return invalid(name, "listen", fmt.Sprintf("ListenConfig.Addr %q is not host:port with a port number from 0 to 65535", cfg.Addr))
	case len(cfg.Certificate.Certificate) == 0:
		return invalid(name, "listen", "ListenConfig.Certificate has no certificate; configure the TLS certificate")
	case !strings.HasPrefix(cfg.Path, "/"):
		return invalid(name, "listen", fmt.Sprintf("ListenConfig.Path %q must start with /", cfg.Path))
	case len(cfg.Key) != transport.KeySize:
		return invalid(name, "listen", fmt.Sprintf("ListenConfig.Key must be %d bytes", transport.KeySize))
	}
	return nil
}

// ListenError wraps a failure to open the listening socket of transport
// name. Its message keeps the local address: the operator chose it and needs
// it to fix the configuration.
func ListenError(name string, err error) error {
	return &transport.Error{Class: transport.ClassOf(err), Op: "listen", Transport: name, Err: err}
}

// SourceKey is the key of the gate's source hashes, for a transport's
// own per-source accounts of the same clients.
func (g *Gate) SourceKey() [32]byte { return g.limits.hashKey }

// Source is what the relay counts r's client as (transport.Sourced): a
// prefix of transport.SourceHash of its address under the gate's key.
func (g *Gate) Source(r *http.Request) [16]byte {
	h := transport.SourceHash(g.limits.hashKey[:], r.RemoteAddr)
	return [16]byte(h[:16])
}

// ServeHTTP decides between a relay session and the cover site.
func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cc, _ := r.Context().Value(connCountKey{}).(*connCount)
	if outcome, ok := cc.takePreset(r); ok {
		g.refuse(w, r, outcome) // Admit spent this request's token
		return
	}
	if outcome := g.check(r); outcome != transport.OutcomeOK {
		g.refuse(w, r, outcome)
		return
	}
	release, outcome := g.limits.admit(g.limits.source(r), cc)
	if outcome != transport.OutcomeOK {
		// Full, or this source or connection has its share: for the
		// client the same as a refused token; it retries later or
		// elsewhere with a new one.
		g.refuse(w, r, outcome)
		return
	}
	if !g.enter() {
		release()
		g.refuse(w, r, transport.OutcomeCover)
		return
	}
	defer g.active.Done()
	g.observe(transport.OutcomeOK)
	g.start(w, r, release)
}

// Admit makes the decision of ServeHTTP for a transport that runs
// sessions with an HTTP engine of its own (transport/https's HTTP/2 fast
// path). r must carry the context of a connection marked with [WithConn].
//
// For a session (OutcomeOK) Admit reports it, takes its slots and returns
// done, which the caller calls exactly once when the session has ended. For
// anything else it reports nothing and returns ok false: the caller must
// then hand the request, untouched, to ServeHTTP through the stock server,
// which serves the cover site and reports the outcome. A request whose
// valid token Admit spent before a cap refused it is remembered on its
// connection, so that ServeHTTP reports OutcomeBusy or OutcomeLimited for
// it and not OutcomeReplay.
func (g *Gate) Admit(r *http.Request) (done func(), ok bool) {
	if g.check(r) != transport.OutcomeOK {
		return nil, false
	}
	cc, _ := r.Context().Value(connCountKey{}).(*connCount)
	release, outcome := g.limits.admit(g.limits.source(r), cc)
	if outcome != transport.OutcomeOK {
		cc.setPreset(r, outcome)
		return nil, false
	}
	if !g.enter() {
		release()
		cc.setPreset(r, transport.OutcomeCover)
		return nil, false
	}
	g.observe(transport.OutcomeOK)
	var once sync.Once
	return func() {
		once.Do(func() {
			release()
			g.active.Done()
		})
	}, true
}

// setPreset remembers the outcome of r for ServeHTTP, keyed by its token.
func (cc *connCount) setPreset(r *http.Request, outcome transport.Outcome) {
	ck, err := r.Cookie(token.Cookie)
	if cc == nil || err != nil {
		return
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.preset == nil {
		cc.preset = make(map[string]transport.Outcome, 1)
	}
	cc.preset[ck.Value] = outcome
}

// takePreset returns and forgets the outcome Admit decided for r.
func (cc *connCount) takePreset(r *http.Request) (transport.Outcome, bool) {
	if cc == nil {
		return "", false
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if len(cc.preset) == 0 {
		return "", false
	}
	ck, err := r.Cookie(token.Cookie)
	if err != nil {
		return "", false
	}
	outcome, ok := cc.preset[ck.Value]
	delete(cc.preset, ck.Value)
	return outcome, ok
}

// check returns OutcomeOK for a POST to the secret path with a valid
// token, and else what the request is.
func (g *Gate) check(r *http.Request) transport.Outcome {
	if r.Method != http.MethodPost || r.URL.Path != g.path {
		return transport.OutcomeCover
	}
	ck, err := r.Cookie(token.Cookie)
	if err != nil {
		return transport.OutcomeAuthFailed
	}
	return g.verifier.Verify(ck.Value, g.binding(r))
}

// refuse serves the cover site (see ServeCover) and reports why.
func (g *Gate) refuse(w http.ResponseWriter, r *http.Request, outcome transport.Outcome) {
	g.observe(outcome)
	g.ServeCover(w, r)
}

// ServeCover answers r with the cover site (with ListenConfig.AltSvc), for
// a Start that cannot make a session after all. A request on the secret
// path reaches the cover site as [Gate.coverRequest] makes it; any other
// request reaches it untouched.
func (g *Gate) ServeCover(w http.ResponseWriter, r *http.Request) {
	if g.altSvc != "" {
		w.Header().Set("Alt-Svc", g.altSvc)
	}
	if r.URL.Path == g.path {
		r = g.coverRequest(r)
	}
	g.cover.ServeHTTP(w, r)
}

// enter registers a running Start unless the listener is shutting down
// (Shut may already be waiting for running ones).
func (g *Gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.closed:
		return false
	default:
	}
	g.active.Add(1)
	return true
}

// Binding returns the channel binding of a connection for token checks: its
// TLS exporter value, or nil if cs is nil or has none.
func Binding(cs *tls.ConnectionState) []byte {
	if cs == nil {
		return nil
	}
	b, err := cs.ExportKeyingMaterial(token.ExporterLabel, nil, token.ExporterLen)
	if err != nil {
		return nil
	}
	return b
}

// WriteAccepted sends the answer to a session request: status 200 and the
// headers of an endless download. The caller flushes it.
func WriteAccepted(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

// Offer hands c to Accept. It returns false, and the caller must close c,
// if the listener shut down or ctx (the request's) ended first.
func (g *Gate) Offer(ctx context.Context, c transport.Conn) bool {
	select {
	case g.accept <- c:
		return true
	case <-g.closed:
	case <-g.ended:
	case <-ctx.Done():
	}
	return false
}

// Accept waits for the next session; see transport.Listener.
func (g *Gate) Accept(ctx context.Context) (transport.Conn, error) {
	select {
	case c := <-g.accept:
		return c, nil
	case <-g.closed:
		return nil, closedErr(g.name, "accept")
	case <-g.ended:
		err := g.endErr
		if err == nil {
			err = net.ErrClosed
		}
		return nil, transport.Classify("accept", g.name, err)
	case <-ctx.Done():
		return nil, transport.Classify("accept", g.name, ctx.Err())
	}
}

// Closed is closed once Shut was called.
func (g *Gate) Closed() <-chan struct{} { return g.closed }

// Shut marks the listener as closing: Accept and Offer fail from now on and
// no new session starts. Then the transport closes its server and calls
// Wait.
func (g *Gate) Shut() {
	g.shut.Do(func() {
		g.mu.Lock()
		close(g.closed)
		g.mu.Unlock()
	})
}

// Wait waits until every running Start has returned.
func (g *Gate) Wait() { g.active.Wait() }

// ServeEnded records that the transport's server stopped serving with err
// (nil or one wrapping http.ErrServerClosed or net.ErrClosed for a normal
// stop); Accept then fails with it.
func (g *Gate) ServeEnded(err error) {
	g.end.Do(func() {
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			g.endErr = err
		}
		close(g.ended)
	})
}

// HiddenAddr stands for the client's address on the relay side of a
// session: the relay must not learn it through the transport. Its value is
// the transport's name.
type HiddenAddr string

// Network returns the transport's name.
func (a HiddenAddr) Network() string { return string(a) }

// String returns "client".
func (HiddenAddr) String() string { return "client" }
