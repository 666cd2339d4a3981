package main

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/cover"
	"github.com/postern/postern/transport/h3"
	"github.com/postern/postern/transport/https"
)

// The relay reports its events to its metrics.
var _ server.Observer = (*metrics.Relay)(nil)

// newRegistry returns the transports this binary speaks.
func newRegistry() *transport.Registry { return newRegistryFor(nil, 0) }

// newRegistryFor is the registry a relay with cfg listens with: in
// borrowed-site mode its https transport splices every connection whose
// ClientHello carries no valid tag to the origin. Each
// listener admits up to sessions relay sessions (the relay's own cap, so
// max_sessions holds whichever transport the clients use); 0 leaves the
// transports' defaults.
func newRegistryFor(cfg *relayConfig, sessions int) *transport.Registry {
	// quic-go prints a warning through the standard logger when it cannot
	// enlarge the UDP receive buffer; Postern logs with slog or not at all.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	var r transport.Registry
	ht := &https.Transport{MaxSessions: sessions}
	if cfg != nil && cfg.BorrowOrigin != "" {
		ht.Borrow = &borrow.Options{Origin: cfg.BorrowOrigin}
	}
	r.Register(ht)
	h3t := h3.New()
	h3t.MaxSessions = sessions
	r.Register(h3t)
	return &r
}

func relayServeCmd() command {
	return command{
		name: "relay serve",
		summary: "Run a relay. With no config file it keeps its data in --data, makes its keys\n" +
			"and a self-signed certificate on first start, listens on 127.0.0.1:8443 with\n" +
			"both transports (https over TCP, h3 over UDP), and writes its descriptor to\n" +
			"DATA/descriptor. Prometheus metrics are served on 127.0.0.1:9464/metrics\n" +
			"(the bound address is written to DATA/metrics.addr). Stops cleanly on\n" +
			"SIGINT or SIGTERM.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			data := fs.String("data", "", "data `directory` (default: config data_dir, else $POSTERN_HOME/relay)")
			cfgPath := fs.String("config", "", "JSON config `file` (see `postern relay config`)")
			httpsAddr := fs.String("https", "", "override https_listen: TCP `address` or \"off\"")
			h3Addr := fs.String("h3", "", "override h3_listen: UDP `address` or \"off\"")
			dev := fs.Bool("dev", false, "keep envelopes in memory only (lost on exit)")
			logLevel := fs.String("log-level", "", "override log_level: debug, info, warn or error")
			metricsAddr := fs.String("metrics", "", "override metrics_listen: TCP `address` of /metrics and /healthz, or \"off\"")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				cfg, err := loadRelayConfig(*cfgPath)
				if err != nil {
					return err
				}
				if *data != "" {
					cfg.DataDir = *data
				}
				if cfg.DataDir == "" {
					cfg.DataDir = filepath.Join(homeDir(e), "relay")
				}
				if *httpsAddr != "" {
					cfg.HTTPSListen = *httpsAddr
				}
				if *h3Addr != "" {
					cfg.H3Listen = *h3Addr
				}
				if *dev {
					cfg.Store = "memory"
				}
				if *logLevel != "" {
					cfg.LogLevel = *logLevel
				}
				if *metricsAddr != "" {
					cfg.MetricsListen = *metricsAddr
				}
				if err := cfg.validate(); err != nil {
					return fmt.Errorf("flags: %w", err)
				}
				return serveRelay(ctx, cfg, e)
			}
		},
	}
}

func relayConfigCmd() command {
	return command{
		name: "relay config",
		summary: "Print a relay config file with every field at its real default (JSON, on\n" +
			"stdout) and what each field means (on stderr), or check a file with --check.\n" +
			"A relay forwards two-hop sends for any client (its outbox is bounded by\n" +
			"max_outbox_bytes, and a full outbox refuses new layers without losing queued\n" +
			"ones) and splices at most 256 tunnels at a time; a relay inside a censored\n" +
			"network names upstreams.\n\n" +
			"examples:\n" +
			"  postern relay config > relay.json       # the defaults, to edit\n" +
			"  postern relay config --check relay.json # validate without starting anything",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			check := fs.String("check", "", "validate this config `file` and exit: 0 if a relay would start with it")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				if *check != "" {
					if _, err := loadRelayConfig(*check); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "%s: ok\n", *check)
					return nil
				}
				out, _ := json.MarshalIndent(defaultRelayConfig(), "", "  ")
				fmt.Fprintln(e.stdout, string(out))
				for _, d := range configDocs {
					fmt.Fprintf(e.stderr, "%-22s %s\n", d.field, d.doc)
				}
				return nil
			}
		},
	}
}

// configDocs is a one-line description of every config field, in the
// order of the JSON; a test checks that none is missing.
var configDocs = []struct{ field, doc string }{
	{"data_dir", "keys, certificate, store and descriptor (default $POSTERN_HOME/relay; --data overrides)"},
	{"https_listen", "TCP address of the https transport, or \"off\""},
	{"h3_listen", "UDP address of the h3 transport, or \"off\""},
	{"public_https", "host:port clients dial for https, written into the descriptor (default: the bound address)"},
	{"public_h3", "host:port clients dial for h3 (default: the bound address)"},
	{"https_cdn", "a TLS-terminating front (CDN) sits before https: unbound tokens, no certificate pin"},
	{"sni", "server name clients send (default: the public host when it is a name)"},
	{"tls_cert", "PEM certificate file (with tls_key; default: a self-signed one, pinned in the descriptor)"},
	{"tls_key", "PEM private key file of tls_cert"},
	{"cover_dir", "serve this directory as the cover site (public relays: use this or cover_proxy)"},
	{"cover_proxy", "reverse-proxy the cover site to this origin URL"},
	{"borrow_origin", "be this origin (host:port) over TCP: every https connection without the ClientHello tag is spliced to it"},
	{"store", "\"bolt\" (durable) or \"memory\" (lost on restart)"},
	{"store_key_file", "the store key (0600; default DATA/store/store.key): keep it on another volume"},
	{"ttl", "how long an undelivered envelope is kept (Go duration, at least 1h)"},
	{"max_mailbox_envelopes", "envelopes one mailbox may hold"},
	{"max_mailboxes", "mailboxes this relay holds"},
	{"max_mailbox_bytes", "bytes one mailbox may hold"},
	{"max_store_bytes", "bytes the whole store may hold"},
	{"max_outbox_bytes", "bytes of two-hop forward layers queued for other relays; beyond it new ones are refused"},
	{"memory_limit", "bytes the relay may use; 0: the cgroup's limit. GOMEMLIMIT is set to 9/10 of it"},
	{"max_sessions", "sessions across both transports; 0: one per 192 KiB of the soft memory limit, else 8192"},
	{"upstreams", "relays (descriptor lines or files) this relay reaches other relays through, inside a censored network"},
	{"link_bind", "local IP that links and tunnels to other relays are dialed from"},
	{"max_tunnels_per_source", "tunnels one client address may hold through this relay (0: 16 of 256); raise it on an upstream of relays inside a censored network"},
	{"mailbox_ops_per_source", "mailboxes one client address may create or rotate a day (0: 256, -1: no limit); beyond it the relay answers busy. Raise it on a relay that entry relays tunnel to"},
	{"send_bytes_per_source", "envelope bytes one client address may send a day (0: a quarter of max_store_bytes over ttl and a day, 32 MiB by default; at least 65536; -1: no limit), enforced only while the store is half full or more; beyond it the relay answers \"relay storage full\". Entry relays' forwards and tunnels count as theirs: raise it on a relay that entry relays reach"},
	{"link_private_peers", "let links and tunnels that clients ask for reach loopback, private and link-local addresses (default: only when this relay's own addresses are such)"},
	{"descriptor_validity", "how long a descriptor is valid; it is re-signed at half of it (at least 1h)"},
	{"log_level", "debug, info, warn or error; no level ever logs a client address or mailbox id"},
	{"metrics_listen", "TCP address of /metrics, /healthz and /livez, never a transport's port; or \"off\""},
}

func newLogger(e *env, level string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l}))
}

// relaySecrets are the relay's long-lived secrets, kept in DATA/relay.secret
// (mode 0600) so descriptors stay valid across restarts.
type relaySecrets struct {
	SigningKey []byte `json:"signing_key"` // Ed25519 seed
	SessionKey []byte `json:"session_key"` // transport session authentication key
	Path       string `json:"path"`        // secret session path
}

func loadOrCreateSecrets(dir string) (*relaySecrets, error) {
	path := filepath.Join(dir, "relay.secret")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		s := &relaySecrets{SigningKey: make([]byte, ed25519.SeedSize), SessionKey: make([]byte, transport.KeySize)}
		rand.Read(s.SigningKey)
		rand.Read(s.SessionKey)
		p := make([]byte, 12)
		rand.Read(p)
		s.Path = "/" + base64.RawURLEncoding.EncodeToString(p)
		out, _ := json.MarshalIndent(s, "", "  ")
		if err := writeFileAtomic(path, append(out, '\n'), 0o600); err != nil {
			return nil, err
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relay secrets %s: %w", path, err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("relay secrets %s: mode %04o is too open; run `chmod 600 %s`", path, st.Mode().Perm(), path)
	}
	var s relaySecrets
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("relay secrets %s: %w", path, err)
	}
	if len(s.SigningKey) != ed25519.SeedSize || len(s.SessionKey) != transport.KeySize || !strings.HasPrefix(s.Path, "/") {
		return nil, fmt.Errorf("relay secrets %s: corrupt (wrong key sizes or path); move it away to make new keys", path)
	}
	return &s, nil
}

// writeFileAtomic writes data to path via a temporary file, fsync and
// rename, so a crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable.
	dir, err := os.Open(filepath.Dir(path))
	if err == nil {
		err = dir.Sync()
		dir.Close()
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errNotSynced, err)
	}
	return nil
}

// errNotSynced is writeFileAtomic's error once the file is in place but
// its directory could not be synced: a crash could still lose the rename.
var errNotSynced = errors.New("its directory could not be synced")

// loadOrCreateCert returns the configured certificate, or the relay's
// self-signed one (made on first start) and its pin.
func loadOrCreateCert(cfg relayConfig, sni string) (tls.Certificate, []byte, error) {
	if cfg.TLSCert != "" {
		c, err := https.LoadCertificate(cfg.TLSCert, cfg.TLSKey)
		return c, nil, err
	}
	certFile := filepath.Join(cfg.DataDir, "cert.pem")
	keyFile := filepath.Join(cfg.DataDir, "key.pem")
	if _, err := os.Stat(certFile); errors.Is(err, fs.ErrNotExist) {
		c, err := https.SelfSigned(certNames(cfg, sni)...)
		if err != nil {
			return tls.Certificate{}, nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			return tls.Certificate{}, nil, err
		}
		if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return tls.Certificate{}, nil, err
		}
		if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644); err != nil {
			return tls.Certificate{}, nil, err
		}
	}
	c, err := https.LoadCertificate(certFile, keyFile)
	if err != nil {
		return c, nil, err
	}
	pin, err := https.CertPin(c)
	return c, pin, err
}

// coverHandler is the configured cover site, else a site of this relay's
// own, generated from a seed derived from its signing key (under its own
// label, so it reveals nothing of the key): the same after every restart,
// different on every relay.
func coverHandler(cfg relayConfig, s *relaySecrets) (http.Handler, error) {
	switch {
	case cfg.CoverDir != "":
		return cover.Dir(cfg.CoverDir)
	case cfg.CoverProxy != "":
		return cover.Proxy(cfg.CoverProxy, cfg.HTTPSCDN)
	}
	seed, err := hkdf.Key(sha256.New, s.SigningKey, nil, "postern cover site v1", 32)
	if err != nil {
		return nil, fmt.Errorf("cover site seed: %w", err)
	}
	return cover.Generate(seed, time.Now())
}

// storeQuota is the store byte quota in effect for max_store_bytes: the
// store's default of 1 GiB for 0.
func storeQuota(configured int64) int64 {
	if configured == 0 {
		return 1 << 30
	}
	return configured
}

// sweep deletes expired envelopes and forwards at start and then hourly.
func sweep(ctx context.Context, st store.Store, ob store.Outbox, log *slog.Logger, met *metrics.Relay) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := st.Sweep(ctx, time.Now()); err != nil && ctx.Err() == nil {
			log.Warn("sweep failed", "err", err)
		} else if n > 0 {
			met.Expired(n)
			log.Info("expired envelopes deleted", "count", n)
		}
		if n, err := ob.Expire(ctx, time.Now()); err != nil && ctx.Err() == nil {
			log.Warn("outbox expiry failed", "err", err)
		} else if n > 0 {
			log.Info("expired forwards deleted", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// loadOrCreateRelayIdentity returns the relay's envelope identity, whose
// X-Wing key is published in the descriptor for two-hop forwarding.
func loadOrCreateRelayIdentity(dir string) (*envelope.Identity, error) {
	path := filepath.Join(dir, "relay.id")
	id, err := envelope.LoadIdentity(path)
	if errors.Is(err, fs.ErrNotExist) {
		id, err = envelope.NewIdentity()
		if err != nil {
			return nil, err
		}
		return id, id.WriteFile(path)
	}
	return id, err
}
