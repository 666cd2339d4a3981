package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

// relayRun is one `relay serve`: what each start-up step makes, kept for
// the steps after it.
type relayRun struct {
	cfg relayConfig
	e   *env
	log *slog.Logger
	met *metrics.Relay

	secrets *relaySecrets
	relayID *envelope.Identity
	sni     string
	cert    tls.Certificate
	pin     []byte
	cover   http.Handler

	st        store.Store
	srv       *server.Server
	listeners []boundListener
	metrics   *metrics.Server
	desc      atomic.Pointer[signedDescriptor]
	forwarder *link.Forwarder
	unlock    func() // releases the data directory's lock
	sessions  int    // the session cap (max_sessions, or sized from memory)
}

// boundListener is a transport listener and the address published for it.
type boundListener struct {
	name, public string
	ln           transport.Listener
}

// serveRelay runs a relay until ctx ends or a listener fails.
func serveRelay(ctx context.Context, cfg relayConfig, e *env) error {
	// quic-go logs through the standard logger, at the level its
	// QUIC_GO_LOG_LEVEL sets when the process starts, and its messages
	// name client addresses ("Dropping packet from %s"); Postern logs with
	// slog alone (log_level), so the standard logger writes nowhere. Until
	// 2026-12-07 an operator who set the variable had them on stderr (an
	// audit's find).
	log.SetOutput(io.Discard)
	// Cancelled on return too, so a failing listener stops everything else.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &relayRun{cfg: cfg, e: e, log: newLogger(e, cfg.LogLevel), met: metrics.NewRelay(version)}
	defer r.close()
	for _, step := range []func(context.Context) error{
		r.loadKeys, r.openStore, r.listen, r.startMetrics, r.publishDescriptor,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return r.run(ctx, cancel)
}

// loadKeys loads or makes the relay's secrets, envelope identity,
// certificate and cover site.
func (r *relayRun) loadKeys(context.Context) error {
	var err error
	if err = os.MkdirAll(r.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory %s: %w", r.cfg.DataDir, err)
	}
	if r.unlock, err = lockDataDir(r.cfg.DataDir); err != nil {
		return err
	}
	if r.secrets, err = loadOrCreateSecrets(r.cfg.DataDir); err != nil {
		return err
	}
	if r.relayID, err = loadOrCreateRelayIdentity(r.cfg.DataDir); err != nil {
		return err
	}
	r.sni = serverName(r.cfg)
	if r.cert, r.pin, err = loadOrCreateCert(r.cfg, r.sni); err != nil {
		return err
	}
	r.cover, err = coverHandler(r.cfg, r.secrets)
	return err
}

// serverName is the configured SNI, else the first public host name;
// a relay published under an IP gets none (its clients then send no SNI,
// as a browser does for an IP, and its certificate names the IP), and
// only a relay with no public address at all, a local one, gets
// "localhost".
func serverName(cfg relayConfig) string {
	if cfg.SNI != "" {
		return cfg.SNI
	}
	published := false
	for _, a := range []string{cfg.PublicHTTPS, cfg.PublicH3} {
		h, _, err := net.SplitHostPort(a)
		if err != nil || h == "" {
			continue
		}
		if net.ParseIP(h) == nil {
			return h
		}
		published = true
	}
	if published {
		return ""
	}
	return "localhost"
}

// certNames are the names a self-signed certificate carries: the SNI, or
// for a relay published under IPs, those IPs.
func certNames(cfg relayConfig, sni string) []string {
	if sni != "" {
		return []string{sni}
	}
	var ips []string
	for _, a := range []string{cfg.PublicHTTPS, cfg.PublicH3} {
		if h, _, err := net.SplitHostPort(a); err == nil && net.ParseIP(h) != nil && !slices.Contains(ips, h) {
			ips = append(ips, h)
		}
	}
	return ips
}

// openStore opens the mailbox store and the session server on it.
func (r *relayRun) openStore(context.Context) error {
	cfg := r.cfg
	opts := store.Options{TTL: cfg.ttl, MaxMailboxEnvelopes: cfg.MaxMailboxEnvelopes,
		MaxMailboxBytes: cfg.MaxMailboxBytes, MaxStoreBytes: cfg.MaxStoreBytes, OnCommit: r.met.Commit,
		KeyFile: cfg.StoreKeyFile, MaxMailboxes: cfg.MaxMailboxes, MaxOutboxBytes: cfg.MaxOutboxBytes}
	if cfg.Store == "memory" {
		r.st = store.NewMemory(opts)
	} else {
		b, err := boltstore.Open(filepath.Join(cfg.DataDir, "store"), opts)
		if err != nil {
			return err
		}
		r.st = b
	}
	st := r.st
	r.met.WatchStore(func() metrics.StoreStats {
		s := st.Stats()
		return metrics.StoreStats{Mailboxes: s.Mailboxes, Envelopes: s.Envelopes, Bytes: s.Bytes, DiskFull: s.DiskFull, Syncs: s.Syncs}
	})
	r.met.SetQuotaBytes(storeQuota(cfg.MaxStoreBytes))
	opener, err := forward.NewOpener(r.relayID, ed25519.NewKeyFromSeed(r.secrets.SigningKey).Public().(ed25519.PublicKey), forwardEpoch, 0)
	if err != nil {
		return err
	}
	r.forwarder = r.newForwarder()
	limit := memoryLimit(cfg.MemoryLimit)
	soft := applyMemoryLimit(cmp.Or(limit, hostMemory()), r.e.getenv)
	sized := soft // the session cap follows a limit set for the relay, not the host's memory
	if limit == 0 && r.e.getenv("GOMEMLIMIT") == "" {
		sized = 0
	}
	r.sessions = maxSessions(cfg.MaxSessions, sized)
	r.log.Info("memory", "soft_limit_bytes", soft, "max_sessions", r.sessions)
	r.log.Info("scheduler", "gomaxprocs", applyProcs(cfg.Store != "memory", r.e.getenv))
	r.srv, err = server.New(server.Config{Store: r.st, MaxSessions: r.sessions, Logger: r.log, Observer: r.met, Descriptor: r.currentDescriptor,
		Layers: layerOpener{opener}, Forwarder: r.forwarder,
		Tunneler: r.newTunneler(), RelayKey: ed25519.NewKeyFromSeed(r.secrets.SigningKey), AcceptTunnels: true,
		MailboxOps: r.cfg.MailboxOpsPerSource, StoreBytes: storeQuota(r.cfg.MaxStoreBytes), StoreTTL: r.cfg.ttl, SendBytes: r.cfg.SendBytesPerSource})
	if err != nil {
		return err
	}
	if n := r.srv.SendBytes(); n > 0 {
		r.log.Info("send allowance", "bytes_per_source_a_day", n, "from_store_bytes", storeQuota(r.cfg.MaxStoreBytes)/2)
	} else {
		r.log.Info("send allowance", "bytes_per_source_a_day", "no limit")
	}
	return nil
}

// listen opens each configured transport listener.
func (r *relayRun) listen(ctx context.Context) error {
	reg := newRegistryFor(&r.cfg, r.sessions)
	// The TCP site says where its HTTP/3 is, as a real site with both does.
	altSvc := ""
	if pub := cmp.Or(r.cfg.PublicH3, r.cfg.H3Listen); r.cfg.H3Listen != "off" {
		if _, port, err := net.SplitHostPort(pub); err == nil && port != "0" {
			altSvc = fmt.Sprintf(`h3=":%s"; ma=2592000`, port)
		}
	}
	// One key for both listeners' source hashes: a client counts as one
	// source (the relay's outbox and tunnel shares) on either transport.
	sourceKey := make([]byte, 32)
	rand.Read(sourceKey)
	for _, want := range []struct{ name, listen, public string }{
		{https.Name, r.cfg.HTTPSListen, r.cfg.PublicHTTPS},
		{h3.Name, r.cfg.H3Listen, r.cfg.PublicH3},
	} {
		if want.listen == "off" {
			continue
		}
		t, err := reg.Get(want.name)
		if err != nil {
			return err
		}
		name := want.name
		ln, err := t.Listen(ctx, transport.ListenConfig{Addr: want.listen, Certificate: r.cert,
			Path: r.secrets.Path, Key: r.secrets.SessionKey, Cover: r.cover, SourceKey: sourceKey,
			AllowUnbound: name == https.Name && r.cfg.HTTPSCDN,
			AltSvc:       altSvcFor(name, altSvc),
			Observe:      func(o transport.Outcome) { r.met.Handshake(name, string(o)) }})
		if err != nil {
			return fmt.Errorf("listen %s on %s: %w", want.name, want.listen, err)
		}
		pub := want.public
		if pub == "" {
			pub = ln.Addr().String()
		}
		// The relay's own addresses, the operator's configuration: never a
		// client's.
		r.log.Info("transport listening", "transport", want.name, "addr", ln.Addr().String(), "public", pub)
		r.listeners = append(r.listeners, boundListener{want.name, pub, ln})
	}
	return nil
}

// altSvcFor is the Alt-Svc header of transport name's cover site.
func altSvcFor(name, altSvc string) string {
	if name == https.Name {
		return altSvc
	}
	return ""
}

// startMetrics opens the metrics listener, refusing the transport ports.
// It starts before the descriptor is written, so that whoever waits for
// the descriptor finds DATA/metrics.addr in place.
func (r *relayRun) startMetrics(context.Context) error {
	path := filepath.Join(r.cfg.DataDir, "metrics.addr")
	if r.cfg.MetricsListen == "off" {
		os.Remove(path)
		return nil
	}
	var reserved []metrics.Reserved
	for _, b := range r.listeners {
		reserved = append(reserved, metrics.Reserved{Field: b.name + "_listen", Addr: b.ln.Addr().String()},
			metrics.Reserved{Field: "public_" + b.name, Addr: b.public})
	}
	var err error
	r.metrics, err = metrics.Listen(r.cfg.MetricsListen, r.met.Gatherer(), reserved...)
	if err != nil {
		return fmt.Errorf("field \"metrics_listen\": %w", err)
	}
	if err := writeFileAtomic(path, []byte(r.metrics.Addr().String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("write metrics address: %w", err)
	}
	st := r.st
	r.metrics.SetHealth(func() error {
		if st.Stats().DiskFull {
			return errDiskFull
		}
		return nil
	})
	r.log.Info("metrics listening", "addr", r.metrics.Addr().String(), "path", "/metrics")
	if metricsExposed(r.metrics.Addr()) {
		// In a container 0.0.0.0 is the container's own network; on a
		// host it is every interface, the public one too, where a
		// censor's scanner finds postern_build_info beside the cover site.
		r.log.Warn("metrics listen on every interface or a public address: unless the port is firewalled (a container's network, a private interface), a scanner finds a relay here; set metrics_listen to 127.0.0.1:9464 or a private address")
	}
	return nil
}

// metricsExposed reports whether a listener on addr can be reached from
// outside: every interface, or a public address.
func metricsExposed(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	return ip.IsUnspecified() || transport.PublicIP(ip)
}

var errDiskFull = errors.New("store disk full: new envelopes are refused until space is freed")

// watchDisk logs when the store's disk fills up and when it has room
// again, checking every tick until ctx ends.
func (r *relayRun) watchDisk(ctx context.Context, tick <-chan time.Time) {
	full := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		now := r.st.Stats().DiskFull
		switch {
		case now && !full:
			r.log.Error(errDiskFull.Error(), "data", r.cfg.DataDir)
		case !now && full:
			r.log.Info("store disk has room again; envelopes are accepted")
		}
		full = now
	}
}

// publishDescriptor signs the first descriptor and says on stdout where
// it is. The descriptor itself (it carries the session key and the secret
// path) goes only to DATA/descriptor, mode 0600, never to stdout, which
// service managers copy into their journals.
func (r *relayRun) publishDescriptor(context.Context) error {
	path, err := r.signDescriptor(time.Now())
	if err != nil {
		return err
	}
	r.log.Info("relay started", "descriptor", path)
	fmt.Fprintf(r.e.stdout, "relay ready: descriptor in %s (mode 0600; hand it to your users)\n", path)
	return nil
}

// signDescriptor signs a descriptor valid from now for the configured
// validity, for the bound listeners, and makes it the current one: in
// DATA/descriptor, for Descriptor requests and in the expiry metric.
func (r *relayRun) signDescriptor(now time.Time) (string, error) {
	d := &descriptor.Descriptor{
		EnvelopeSuite: uint8(envelope.SuiteXWing),
		EnvelopeKey:   r.relayID.Public().XWing,
		Issued:        now.Truncate(time.Second),
		Expires:       now.Add(r.cfg.validity).Truncate(time.Second),
	}
	names := make([]string, 0, len(r.listeners))
	for _, b := range r.listeners {
		ep := descriptor.Endpoint{Transport: b.name, Addr: b.public, SNI: r.sni,
			Path: r.secrets.Path, Key: r.secrets.SessionKey, CertSHA256: r.pin}
		if b.name == https.Name && r.cfg.HTTPSCDN {
			// Clients talk TLS to the front, not to us: no pin, no binding.
			ep.CertSHA256, ep.Unbound = nil, true
		}
		d.Endpoints = append(d.Endpoints, ep)
		names = append(names, b.name)
	}
	line, err := d.Sign(ed25519.NewKeyFromSeed(r.secrets.SigningKey))
	if err != nil {
		return "", fmt.Errorf("sign descriptor: %w", err)
	}
	path := filepath.Join(r.cfg.DataDir, "descriptor")
	if err := writeFileAtomic(path, []byte(line+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write descriptor: %w", err)
	}
	r.desc.Store(&signedDescriptor{line: line, expires: d.Expires})
	r.met.SetDescriptorExpiry(d.Expires)
	r.log.Info("descriptor signed", "relay_id", d.RelayID(), "transports", strings.Join(names, ","),
		"expires", d.Expires.UTC().Format(time.RFC3339), "store", r.cfg.Store, "descriptor", path)
	return path, nil
}

// signedDescriptor is the relay's current descriptor.
type signedDescriptor struct {
	line    string
	expires time.Time
}

// currentDescriptor is the server's Descriptor callback.
func (r *relayRun) currentDescriptor() string {
	if d := r.desc.Load(); d != nil {
		return d.line
	}
	return ""
}

// renewDescriptors re-signs the descriptor once less than half of its
// validity is left, checking every tick, until ctx ends. Keys and
// endpoints stay the same, so clients holding the old one still reach the
// relay and fetch the new one in-session.
func (r *relayRun) renewDescriptors(ctx context.Context, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick:
			if _, err := r.renewIfDue(now); err != nil {
				r.log.Error("descriptor renewal failed; retrying", "err", err)
			}
		}
	}
}

// renewIfDue re-signs the descriptor if less than half its validity is
// left at now.
func (r *relayRun) renewIfDue(now time.Time) (bool, error) {
	cur := r.desc.Load()
	if cur != nil && cur.expires.Sub(now) > r.cfg.validity/2 {
		return false, nil
	}
	_, err := r.signDescriptor(now)
	return err == nil, err
}

// run serves every listener and sweeps expired envelopes until ctx ends
// or a listener fails, then shuts down in order.
func (r *relayRun) run(ctx context.Context, cancel context.CancelFunc) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(r.listeners))
	for _, b := range r.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.srv.Serve(ctx, b.ln, b.name); err != nil {
				errc <- fmt.Errorf("%s listener: %w", b.name, err)
			}
		}()
	}
	r.log.Info("garbage collection", "gogc", gcMode(startGCTuning(ctx, &wg, r.e.getenv)))
	wg.Add(4)
	go func() {
		defer wg.Done()
		if err := r.forwarder.Run(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("forwarding stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		sweep(ctx, r.st, r.st.(store.Outbox), r.log, r.met)
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		r.watchDisk(ctx, t.C)
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(min(time.Hour, r.cfg.validity/8))
		defer t.Stop()
		r.renewDescriptors(ctx, t.C)
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	r.log.Info("relay stopping")
	for _, b := range r.listeners {
		b.ln.Close()
	}
	wg.Wait()
	if err := r.closeStore(); err != nil && runErr == nil {
		runErr = err
	}
	r.log.Info("relay stopped")
	return runErr
}

func (r *relayRun) closeStore() error {
	if r.st == nil {
		return nil
	}
	st := r.st
	r.st = nil
	return st.Close()
}

// close releases whatever the steps opened; run has closed it all on a
// normal stop.
func (r *relayRun) close() {
	for _, b := range r.listeners {
		b.ln.Close()
	}
	if r.metrics != nil {
		r.metrics.Close()
	}
	r.closeStore()
	if r.unlock != nil {
		r.unlock()
	}
}
