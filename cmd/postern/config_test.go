package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{"two covers", `{"cover_dir": "/srv", "cover_proxy": "http://127.0.0.1:1"}`, []string{`"cover_dir"`, `"cover_proxy"`}},
		{"negative quota", `{"max_store_bytes": -1}`, []string{`"max_store_bytes"`, "-1"}},
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
