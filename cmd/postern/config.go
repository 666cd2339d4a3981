package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// relayConfig is the relay's config file, JSON. Every field is optional;
// the comment gives the default. `postern relay config` prints this
// documentation and the defaults.
type relayConfig struct {
	// DataDir holds keys, the certificate, the store and the descriptor.
	// Default: $POSTERN_HOME/relay. The --data flag overrides it.
	DataDir string `json:"data_dir"`
	// HTTPSListen is the TCP address of the https transport; "off"
	// disables it. Default 127.0.0.1:8443.
	HTTPSListen string `json:"https_listen"`
	// H3Listen is the UDP address of the h3 transport; "off" disables it.
	// Default 127.0.0.1:8443.
	H3Listen string `json:"h3_listen"`
	// PublicHTTPS and PublicH3 are the host:port clients dial, written into
	// the descriptor. Default: the bound listen address.
	PublicHTTPS string `json:"public_https"`
	PublicH3    string `json:"public_h3"`
	// HTTPSCDN says a CDN or other TLS-terminating front sits between
	// clients and the https listener (public_https is then the front's
	// address and sni its name): the listener accepts session tokens that
	// are not bound to the TLS session (the replay cache still applies),
	// and the descriptor's https endpoint is marked unbound, without a
	// certificate pin (clients verify the front's certificate). Default
	// false.
	HTTPSCDN bool `json:"https_cdn"`
	// SNI is the server name clients send. Default: the host of the public
	// address when it is a name, else "localhost".
	SNI string `json:"sni"`
	// TLSCert and TLSKey are PEM files of a real certificate. Default: a
	// self-signed certificate kept in the data directory and pinned in the
	// descriptor.
	TLSCert string `json:"tls_cert"`
	TLSKey  string `json:"tls_key"`
	// CoverDir serves this directory as the cover site; CoverProxy reverse
	// proxies to this origin URL instead. Default: the built-in cover site.
	CoverDir   string `json:"cover_dir"`
	CoverProxy string `json:"cover_proxy"`
	// BorrowOrigin (host:port) makes the https listener its origin over
	// TCP: a connection whose ClientHello carries no valid tag (keyed from
	// the relay's session key, see transport/borrow) is spliced byte for
	// byte to the origin, whose TLS, certificate and timeouts it then
	// meets. Set sni to the origin's name, cover_proxy to the same origin,
	// and h3_listen to "off" unless the origin speaks HTTP/3. Default: off.
	BorrowOrigin string `json:"borrow_origin"`
	// Store is "bolt" (durable, default) or "memory" (lost on restart).
	Store string `json:"store"`
	// StoreKeyFile is where the store key lives (mode 0600, created on
	// first start). Default: DATA/store/store.key. Put it on another volume
	// (a tmpfs filled at boot, a separate disk) so a seized data volume
	// alone reveals no mailbox ids and opens no envelopes.
	StoreKeyFile string `json:"store_key_file"`
	// TTL is how long an undelivered envelope is kept, as a Go duration.
	// Default "168h" (7 days).
	TTL string `json:"ttl"`
	// MaxMailboxEnvelopes, MaxMailboxBytes and MaxStoreBytes are quotas.
	// Defaults: 4096 envelopes, 67108864 bytes per mailbox, 1073741824
	// bytes per relay.
	MaxMailboxEnvelopes int `json:"max_mailbox_envelopes"`
	// MaxMailboxes bounds the mailboxes on this relay. Default 1000000.
	MaxMailboxes    int   `json:"max_mailboxes"`
	MaxMailboxBytes int64 `json:"max_mailbox_bytes"`
	MaxStoreBytes   int64 `json:"max_store_bytes"`
	// MaxOutboxBytes bounds the forward layers this relay holds as an entry
	// relay for other relays (two-hop sends); beyond it clients are told
	// to retry later or use another entry relay. Default 268435456. One
	// client address (or IPv6 /64) may fill a sixteenth of it, at least
	// 16 MiB.
	MaxOutboxBytes int64 `json:"max_outbox_bytes"`
	// MemoryLimit is the memory the relay may use, in bytes. The relay sets
	// Go's soft limit (GOMEMLIMIT, unless set in the environment) to 9/10 of
	// it and sizes max_sessions from it. Default 0: the cgroup's limit (a
	// container, or systemd MemoryMax), else none.
	MemoryLimit int64 `json:"memory_limit"`

	// (memory_limit below minMemoryLimit is refused: a units mistake, such
	// as 2048 meant as MiB, made a soft limit of 1.8 KB, a collector that
	// never stopped and 256 sessions, without a word.)
	// MaxSessions bounds sessions across both transports; one more is
	// closed at once. Default 0: one per 192 KiB of the soft memory limit
	// (at least 256), else 8192.
	MaxSessions int `json:"max_sessions"`
	// Upstreams are relays, each a descriptor line or a file holding one,
	// that this relay reaches other relays through: for a relay inside a
	// censored network. Links to home relays (forwarding) and tunnels then
	// run inside a tunnel via one of them (raced like a client's dial),
	// end to end with the home relay; an upstream itself is dialed
	// directly. Default: none, and other relays are dialed directly.
	Upstreams []string `json:"upstreams"`
	// LinkBind is the local IP address that links and tunnels to other
	// relays are dialed from (a multi-homed host). Default: the system's
	// choice.
	LinkBind string `json:"link_bind"`
	// LinkPrivatePeers lets the links and tunnels this relay opens at a
	// client's request (forwarding to a home relay, a client's tunnel) go
	// to loopback, private and link-local addresses. The descriptors that
	// name them are the client's, so by default they may not: no client
	// can make the relay connect into its own network. Default false, but
	// a relay whose own addresses are all loopback or private (a test, a
	// lab network) allows them anyway. Upstreams are dialed wherever they
	// are.
	LinkPrivatePeers bool `json:"link_private_peers"`
	// MaxTunnelsPerSource bounds the tunnels one client address (or IPv6
	// /64) may hold through this relay, of the 256 it splices at most.
	// Default 0: 16. An upstream of relays inside a censored network sees
	// all of one such relay's links and its clients' tunnels as one
	// address, and should raise it.
	MaxTunnelsPerSource int `json:"max_tunnels_per_source"`
	// MailboxOpsPerSource is how many mailboxes one client address (or
	// IPv6 /64) may create or rotate a day, refilled evenly. Default 0:
	// 256 (server.DefaultMailboxOps). Clients behind one carrier NAT
	// share it, and so do those an entry relay tunnels here. -1: no
	// limit.
	MailboxOpsPerSource int `json:"mailbox_ops_per_source"`
	// SendBytesPerSource is how many envelope bytes one client address
	// (or IPv6 /64) may send a day, refilled evenly; beyond it a send is
	// refused as "relay storage full", but only while the store holds
	// half of max_store_bytes or more. Default 0: a quarter of
	// max_store_bytes over an envelope's life (ttl and a day): 32 MiB for
	// 1 GiB and 7 days. At least 65536 (the largest envelope) when set.
	// An entry relay's forwards and tunnels count as that relay's. -1: no
	// limit.
	SendBytesPerSource int64 `json:"send_bytes_per_source"`
	// DescriptorValidity is how long a descriptor written at start-up is
	// valid. Default "720h" (30 days).
	DescriptorValidity string `json:"descriptor_validity"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `json:"log_level"`
	// MetricsListen is the TCP address of the Prometheus metrics listener
	// (/metrics and /healthz); "off" disables it. It must not share a port
	// with a transport listener or public address. Default
	// 127.0.0.1:9464. The --metrics flag overrides it.
	MetricsListen string `json:"metrics_listen"`

	// Parsed values.
	ttl       time.Duration
	validity  time.Duration
	upstreams []*descriptor.Descriptor
}

// linkPrivate reports whether links and tunnels for clients may go to
// addresses that are not public: link_private_peers, or a relay whose own
// advertised addresses are all IP addresses that are not public.
func (c *relayConfig) linkPrivate() bool {
	if c.LinkPrivatePeers {
		return true
	}
	own := 0
	for _, a := range []string{cmp.Or(c.PublicHTTPS, c.HTTPSListen), cmp.Or(c.PublicH3, c.H3Listen)} {
		if a == "" || a == "off" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || transport.PublicIP(ip) {
			return false // a name, or a public address
		}
		own++
	}
	return own > 0
}

func defaultRelayConfig() relayConfig {
	return relayConfig{
		HTTPSListen:        "127.0.0.1:8443",
		H3Listen:           "127.0.0.1:8443",
		Store:              "bolt",
		TTL:                "168h",
		DescriptorValidity: "720h",
		LogLevel:           "info",
		MetricsListen:      metrics.DefaultAddr,
		// The store's own defaults, written out so `relay config` shows
		// the quotas a relay runs with.
		MaxMailboxEnvelopes: 4096,
		MaxMailboxes:        1000000,
		MaxMailboxBytes:     64 << 20,
		MaxStoreBytes:       1 << 30,
		MaxOutboxBytes:      store.DefaultOutboxBytes,
		Upstreams:           []string{},
	}
}

// loadRelayConfig reads path over the defaults; path "" means defaults
// only. Errors name the file, the field and the value.
func loadRelayConfig(path string) (relayConfig, error) {
	cfg := defaultRelayConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, explainJSON(data, err))
		}
		if dec.More() {
			return cfg, fmt.Errorf("config %s: trailing data after the JSON object", path)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("config %s: trailing data after the JSON object", path)
		}
	}
	if err := cfg.validate(); err != nil {
		if path == "" {
			path = "(defaults)"
		}
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func explainJSON(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
		return fmt.Errorf("line %d: %v", line, se)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q: value of type %s where %s is expected", te.Field, te.Value, te.Type)
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return fmt.Errorf("unknown field %s (see `postern relay config` for the fields)", strings.TrimPrefix(msg, "json: unknown field "))
	}
	return err
}

func (c *relayConfig) validate() error {
	checkAddr := func(field, v string, allowOff bool) error {
		if allowOff && v == "off" {
			return nil
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("field %q: %q is not host:port", field, v)
		}
		return nil
	}
	if err := checkAddr("https_listen", c.HTTPSListen, true); err != nil {
		return err
	}
	if err := checkAddr("h3_listen", c.H3Listen, true); err != nil {
		return err
	}
	if c.HTTPSListen == "off" && c.H3Listen == "off" {
		return fmt.Errorf("fields \"https_listen\" and \"h3_listen\" are both \"off\": enable at least one transport")
	}
	if c.PublicHTTPS != "" {
		if err := checkAddr("public_https", c.PublicHTTPS, false); err != nil {
			return err
		}
	}
	if c.PublicH3 != "" {
		if err := checkAddr("public_h3", c.PublicH3, false); err != nil {
			return err
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("fields \"tls_cert\" and \"tls_key\" go together: set both or neither")
	}
	if err := c.validateBorrow(checkAddr); err != nil {
		return err
	}
	if c.CoverDir != "" && c.CoverProxy != "" {
		return fmt.Errorf("fields \"cover_dir\" and \"cover_proxy\" exclude each other: set one")
	}
	if c.Store != "bolt" && c.Store != "memory" {
		return fmt.Errorf("field \"store\": %q is not \"bolt\" or \"memory\"", c.Store)
	}
	var err error
	if c.ttl, err = time.ParseDuration(c.TTL); err != nil || c.ttl < time.Hour {
		return fmt.Errorf("field \"ttl\": %q is not a duration of at least 1h (for example \"168h\")", c.TTL)
	}
	if c.validity, err = time.ParseDuration(c.DescriptorValidity); err != nil || c.validity < time.Hour {
		return fmt.Errorf("field \"descriptor_validity\": %q is not a duration of at least 1h (for example \"720h\")", c.DescriptorValidity)
	}
	if err := c.validateQuotas(); err != nil {
		return err
	}
	if err := checkAddr("metrics_listen", c.MetricsListen, true); err != nil {
		return err
	}
	if c.MetricsListen != "off" {
		for _, o := range []struct{ field, addr string }{
			{"https_listen", c.HTTPSListen}, {"h3_listen", c.H3Listen},
			{"public_https", c.PublicHTTPS}, {"public_h3", c.PublicH3},
		} {
			if metrics.Overlaps(c.MetricsListen, o.addr) {
				return fmt.Errorf("field \"metrics_listen\": %q shares its port with field %q (%q): metrics must have their own port, never a transport's", c.MetricsListen, o.field, o.addr)
			}
		}
	}
	if err := c.validateLinks(); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("field \"log_level\": %q is not debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// validateQuotas checks the caps and sizes: none negative (0 is the
// default) but -1 for no per-source allowance, memory_limit not below
// minMemoryLimit.
func (c *relayConfig) validateQuotas() error {
	for _, q := range []struct {
		name string
		v    int64
	}{{"max_mailbox_envelopes", int64(c.MaxMailboxEnvelopes)}, {"max_mailboxes", int64(c.MaxMailboxes)}, {"max_mailbox_bytes", c.MaxMailboxBytes}, {"max_store_bytes", c.MaxStoreBytes}, {"max_outbox_bytes", c.MaxOutboxBytes}, {"memory_limit", c.MemoryLimit}, {"max_sessions", int64(c.MaxSessions)},
		{"max_tunnels_per_source", int64(c.MaxTunnelsPerSource)}} {
		if q.v < 0 {
			return fmt.Errorf("field %q: %d is negative", q.name, q.v)
		}
	}
	// The per-source allowances take -1 for none (an operator's own relay
	// behind entry relays it runs).
	for _, q := range []struct {
		name string
		v    int64
	}{{"mailbox_ops_per_source", int64(c.MailboxOpsPerSource)}, {"send_bytes_per_source", c.SendBytesPerSource}} {
		if q.v < -1 {
			return fmt.Errorf("field %q: %d is negative (0 is the default, -1 no limit)", q.name, q.v)
		}
	}
	if c.SendBytesPerSource > 0 && c.SendBytesPerSource < store.MaxEnvelopeSize {
		return fmt.Errorf("field \"send_bytes_per_source\": %d bytes is less than one envelope may be (%d)", c.SendBytesPerSource, store.MaxEnvelopeSize)
	}
	if c.MemoryLimit > 0 && c.MemoryLimit < minMemoryLimit {
		return fmt.Errorf("field \"memory_limit\": %d bytes is below 64 MiB, too little for a relay (it is in bytes: 2 GiB is 2147483648)", c.MemoryLimit)
	}
	return nil
}

// validateLinks checks and parses upstreams and link_bind.
func (c *relayConfig) validateLinks() error {
	c.upstreams = nil
	for i, u := range c.Upstreams {
		line, err := lineArg(u, descriptor.Prefix)
		if err != nil {
			return fmt.Errorf("field \"upstreams\" [%d]: %v", i, err)
		}
		d, _, err := descriptor.ParseStale(line, time.Now())
		if err != nil {
			return fmt.Errorf("field \"upstreams\" [%d]: %v", i, err)
		}
		c.upstreams = append(c.upstreams, d)
	}
	if c.LinkBind != "" && net.ParseIP(c.LinkBind) == nil {
		return fmt.Errorf("field \"link_bind\": %q is not an IP address", c.LinkBind)
	}
	return nil
}

// minMemoryLimit is the smallest memory_limit a relay accepts.
const minMemoryLimit = 64 << 20

// validateBorrow checks borrow_origin.
func (c *relayConfig) validateBorrow(checkAddr func(field, v string, allowOff bool) error) error {
	if c.BorrowOrigin == "" {
		return nil
	}
	if err := checkAddr("borrow_origin", c.BorrowOrigin, false); err != nil {
		return err
	}
	if c.HTTPSCDN {
		return fmt.Errorf("fields \"borrow_origin\" and \"https_cdn\" exclude each other: a CDN ends TLS, so the ClientHello tag never reaches the relay")
	}
	return nil
}
