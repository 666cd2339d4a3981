package main

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/relay/store"
)

// TestRelayConfigErrors: every bad config names the file, the field and the
// value, so an operator can fix it without reading the source.
func TestRelayConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown field", `{"listen": "127.0.0.1:1"}`, []string{`unknown field "listen"`, "postern relay config"}},
		{"syntax", "{\n\"store\": \"bolt\",\n}", []string{"line 3"}},
		{"wrong type", `{"ttl": 7}`, []string{`"ttl"`, "number", "string"}},
		{"bad store", `{"store": "sqlite"}`, []string{`"store"`, `"sqlite"`}},
		{"bad ttl", `{"ttl": "7 days"}`, []string{`"ttl"`, `"7 days"`}},
		{"short ttl", `{"ttl": "5m"}`, []string{`"ttl"`, "at least 1h"}},
		{"bad listen", `{"https_listen": "8443"}`, []string{`"https_listen"`, `"8443"`, "host:port"}},
		{"both off", `{"https_listen": "off", "h3_listen": "off"}`, []string{`"https_listen"`, `"h3_listen"`}},
		{"cert without key", `{"tls_cert": "c.pem"}`, []string{`"tls_cert"`, `"tls_key"`}},
		{"bad borrow origin", `{"borrow_origin": "nginx"}`, []string{`"borrow_origin"`, "host:port"}},
		{"borrow behind a CDN", `{"borrow_origin": "127.0.0.1:443", "https_cdn": true}`, []string{`"borrow_origin"`, `"https_cdn"`, "exclude"}},
		{"bad upstream", `{"upstreams": ["postern-relay1:AAAA"]}`, []string{`"upstreams" [0]`}},
		{"bad link_bind", `{"link_bind": "eth0"}`, []string{`"link_bind"`, "IP address"}},
		{"two covers", `{"cover_dir": "/srv", "cover_proxy": "http://127.0.0.1:1"}`, []string{`"cover_dir"`, `"cover_proxy"`}},
		{"negative quota", `{"max_store_bytes": -1}`, []string{`"max_store_bytes"`, "-1"}},
		{"send allowance below an envelope", `{"send_bytes_per_source": 1000}`, []string{`"send_bytes_per_source"`, "1000", "65536"}},
		{"negative send allowance", `{"send_bytes_per_source": -2}`, []string{`"send_bytes_per_source"`, "-2", "-1 no limit"}},
		{"negative mailbox allowance", `{"mailbox_ops_per_source": -5}`, []string{`"mailbox_ops_per_source"`, "-5", "-1 no limit"}},
		{"negative tunnels", `{"max_tunnels_per_source": -1}`, []string{`"max_tunnels_per_source"`, "-1"}},
		{"memory limit in MiB", `{"memory_limit": 2048}`, []string{`"memory_limit"`, "64 MiB", "in bytes"}},
		{"bad log level", `{"log_level": "loud"}`, []string{`"log_level"`, `"loud"`}},
		{"trailing data", `{} {}`, []string{"trailing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".json")
			if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadRelayConfig(p)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range append([]string{p}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := loadRelayConfig(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("missing file: %v", err)
	}
}

// TestRelayConfigDefaults: no file means the documented defaults, and the
// example printed by `relay config` is itself a valid config.
func TestRelayConfigDefaults(t *testing.T) {
	cfg, err := loadRelayConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPSListen != "127.0.0.1:8443" || cfg.H3Listen != "127.0.0.1:8443" || cfg.Store != "bolt" ||
		cfg.ttl.Hours() != 168 || cfg.MetricsListen != "127.0.0.1:9464" {
		t.Fatalf("defaults: %+v", cfg)
	}
	out, _ := json.MarshalIndent(defaultRelayConfig(), "", "  ")
	p := filepath.Join(t.TempDir(), "example.json")
	os.WriteFile(p, out, 0o600)
	if _, err := loadRelayConfig(p); err != nil {
		t.Fatalf("the printed example does not load: %v", err)
	}
}

// TestRelayConfigCommand: `relay config` prints JSON whose every field has
// its real default (what the relay and its store run with when the field
// is left out) and a one-line description; --check takes a good file and
// refuses a bad one with the field named.
func TestRelayConfigCommand(t *testing.T) {
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
	if code := run(context.Background(), []string{"relay", "config"}, e); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var fields map[string]any
	if err := json.Unmarshal([]byte(out.String()), &fields); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	real := store.Options{}.WithDefaults()
	for name, want := range map[string]float64{
		"max_mailbox_envelopes": float64(real.MaxMailboxEnvelopes), "max_mailboxes": float64(real.MaxMailboxes),
		"max_mailbox_bytes": float64(real.MaxMailboxBytes), "max_store_bytes": float64(real.MaxStoreBytes),
		"max_outbox_bytes": float64(real.MaxOutboxBytes),
	} {
		if fields[name] != want {
			t.Errorf("%s printed as %v, the store runs with %v", name, fields[name], want)
		}
	}
	documented := map[string]bool{}
	for _, d := range configDocs {
		documented[d.field] = true
		if !strings.Contains(errOut.String(), d.field) {
			t.Errorf("%s not described on stderr", d.field)
		}
	}
	for name := range fields {
		if !documented[name] {
			t.Errorf("field %s has no description", name)
		}
	}
	if len(documented) != len(fields) {
		t.Errorf("%d descriptions for %d fields", len(documented), len(fields))
	}

	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.json"), filepath.Join(dir, "bad.json")
	os.WriteFile(good, []byte(out.String()), 0o600)
	os.WriteFile(bad, []byte(`{"max_outbox_bytes": -1}`), 0o600)
	out.Reset()
	if code := run(context.Background(), []string{"relay", "config", "--check", good}, e); code != 0 || !strings.Contains(out.String(), "ok") {
		t.Fatalf("--check on the printed defaults: exit %d, %q", code, out.String())
	}
	errOut.Reset()
	if code := run(context.Background(), []string{"relay", "config", "--check", bad}, e); code != 1 || !strings.Contains(errOut.String(), `"max_outbox_bytes"`) {
		t.Fatalf("--check on a bad file: exit %d, %q", code, errOut.String())
	}
}

// TestLinkPrivate: a relay may link and tunnel to addresses that are not
// public when link_private_peers says so, or when its own addresses are
// all IP addresses that are not public; not when any is a name or public.
func TestLinkPrivate(t *testing.T) {
	for _, tc := range []struct {
		cfg  relayConfig
		want bool
	}{
		{relayConfig{HTTPSListen: "127.0.0.1:8443", H3Listen: "127.0.0.1:8443"}, true},
		{relayConfig{HTTPSListen: "10.0.0.5:443", H3Listen: "off"}, true},
		{relayConfig{HTTPSListen: "0.0.0.0:443", H3Listen: "0.0.0.0:443", PublicHTTPS: "8.8.8.8:443", PublicH3: "8.8.8.8:443"}, false},
		{relayConfig{HTTPSListen: "127.0.0.1:8443", H3Listen: "127.0.0.1:8443", PublicHTTPS: "relay.example:443"}, false},
		{relayConfig{HTTPSListen: "[::1]:8443", H3Listen: "off", PublicHTTPS: "8.8.8.8:443"}, false},
		{relayConfig{HTTPSListen: "8.8.8.8:443", H3Listen: "off", LinkPrivatePeers: true}, true},
		{relayConfig{HTTPSListen: "off", H3Listen: "off"}, false},
	} {
		if got := tc.cfg.linkPrivate(); got != tc.want {
			t.Errorf("%+v: linkPrivate %v, want %v", tc.cfg, got, tc.want)
		}
	}
}

// TestServerName: a relay published under a name uses it; one published
// under an IP sends no SNI and its certificate names the IP, never
// "localhost"; only a relay with no public address is "localhost".
func TestServerName(t *testing.T) {
	for _, tc := range []struct {
		cfg   relayConfig
		sni   string
		names []string
	}{
		{relayConfig{SNI: "cdn.example.net", PublicHTTPS: "198.51.100.7:443"}, "cdn.example.net", []string{"cdn.example.net"}},
		{relayConfig{PublicHTTPS: "www.example.com:443"}, "www.example.com", []string{"www.example.com"}},
		{relayConfig{PublicHTTPS: "198.51.100.7:443", PublicH3: "198.51.100.7:443"}, "", []string{"198.51.100.7"}},
		{relayConfig{PublicH3: "[2001:db8::7]:443"}, "", []string{"2001:db8::7"}},
		{relayConfig{HTTPSListen: "127.0.0.1:8443"}, "localhost", []string{"localhost"}},
	} {
		sni := serverName(tc.cfg)
		names := certNames(tc.cfg, sni)
		if sni != tc.sni || strings.Join(names, ",") != strings.Join(tc.names, ",") {
			t.Errorf("%+v: sni %q names %v; want %q %v", tc.cfg, sni, names, tc.sni, tc.names)
		}
	}
}

// metricsExposed tells a metrics listener others can reach (every
// interface, a public address) from one only this host or its private
// network can.
func TestMetricsExposed(t *testing.T) {
	for addr, want := range map[string]bool{
		"0.0.0.0:9464": true, "[::]:9464": true,
		"8.8.8.8:9464": true, "127.0.0.1:9464": false, "10.1.2.3:9464": false, "[::1]:9464": false,
	} {
		if got := metricsExposed(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))); got != want {
			t.Errorf("%s: exposed %v, want %v", addr, got, want)
		}
	}
}
