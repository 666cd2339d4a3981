package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

// FuzzRelayConfig writes arbitrary bytes as a relay config file and loads
// it. Invariants: no panic; every error names the file; an accepted config
// validates again, holds only values validate allows, and written back as
// JSON loads to the same config.
func FuzzRelayConfig(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(``))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"store": "memory", "ttl": "1h", "descriptor_validity": "2h", "log_level": "debug"}`))
	f.Add([]byte(`{"https_listen": "off", "h3_listen": "[::1]:443", "metrics_listen": "off"}`))
	f.Add([]byte(`{"https_listen": "0.0.0.0:443", "metrics_listen": ":443"}`))
	f.Add([]byte(`{"public_https": "relay.example:443", "https_cdn": true, "sni": "cdn.example"}`))
	f.Add([]byte(`{"tls_cert": "c.pem", "tls_key": "k.pem", "cover_dir": "/srv/www"}`))
	f.Add([]byte(`{"max_mailbox_envelopes": 1, "max_mailboxes": 2, "max_mailbox_bytes": 3, "max_store_bytes": -4}`))
	f.Add([]byte(`{"send_bytes_per_source": 65535}`))
	f.Add([]byte("{\n\"store\": \"bolt\",\n}"))
	f.Add([]byte(`{"ttl": 7}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`{"unknown": 1}`))
	if ex, err := json.Marshal(defaultRelayConfig()); err == nil {
		f.Add(ex)
	}
	path := filepath.Join(f.TempDir(), "relay.json")
	again := filepath.Join(f.TempDir(), "again.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := loadRelayConfig(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file %s: %v", path, err)
			}
			return
		}
		if err := cfg.validate(); err != nil {
			t.Fatalf("accepted config fails validate: %v", err)
		}
		if cfg.Store != "bolt" && cfg.Store != "memory" {
			t.Fatalf("accepted store %q", cfg.Store)
		}
		if cfg.ttl < time.Hour || cfg.validity < time.Hour {
			t.Fatalf("accepted ttl %v, descriptor validity %v", cfg.ttl, cfg.validity)
		}
		if cfg.HTTPSListen == "off" && cfg.H3Listen == "off" {
			t.Fatal("accepted a config with no transport")
		}
		if cfg.MaxMailboxEnvelopes < 0 || cfg.MaxMailboxes < 0 || cfg.MaxMailboxBytes < 0 || cfg.MaxStoreBytes < 0 {
			t.Fatalf("accepted a negative quota: %+v", cfg)
		}
		if cfg.SendBytesPerSource < 0 || (cfg.SendBytesPerSource > 0 && cfg.SendBytesPerSource < store.MaxEnvelopeSize) {
			t.Fatalf("accepted send_bytes_per_source %d", cfg.SendBytesPerSource)
		}
		out, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		back, err := loadRelayConfig(again)
		if err != nil {
			t.Fatalf("accepted config written back is rejected: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(back, cfg) {
			t.Fatalf("accepted config does not survive a round trip:\n in  %+v\n out %+v", cfg, back)
		}
	})
}
