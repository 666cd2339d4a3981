package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/https"
)

// TestCDNMode: with https_cdn the descriptor's https endpoint is unbound
// and unpinned (clients verify the front's certificate), and the relay
// accepts tokens that are not bound to its own TLS session, as they are
// when a CDN terminates TLS.
func TestCDNMode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfgPath, []byte(`{"https_cdn": true, "sni": "relay.example.org"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--config", cfgPath, "--h3", "off", "--metrics", "off")
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Endpoints) != 1 {
		t.Fatalf("%d endpoints, want 1 (https)", len(d.Endpoints))
	}
	ep := d.Endpoints[0]
	if !ep.Unbound || ep.CertSHA256 != nil || ep.SNI != "relay.example.org" {
		t.Fatalf("https endpoint in CDN mode: unbound %v, pin %x, sni %q", ep.Unbound, ep.CertSHA256, ep.SNI)
	}
	// No CDN here: dial the relay directly with an unbound token, pinning
	// its self-signed certificate as the front would accept it.
	tep := ep.TransportEndpoint()
	tep.CertSHA256 = certPinFromFile(t, filepath.Join(rp.dir, "cert.pem"), filepath.Join(rp.dir, "key.pem"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := newRegistry().Dial(ctx, tep)
	if err != nil {
		t.Fatalf("unbound session: %v", err)
	}
	c, err := client.New(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// Bound tokens still work too (clients that reach the origin directly).
	tep.Unbound = false
	conn2, err := newRegistry().Dial(ctx, tep)
	if err != nil {
		t.Fatalf("bound session in CDN mode: %v", err)
	}
	conn2.Close()
}

func certPinFromFile(t *testing.T, certFile, keyFile string) []byte {
	t.Helper()
	cert, err := https.LoadCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := https.CertPin(cert)
	if err != nil {
		t.Fatal(err)
	}
	return pin
}
