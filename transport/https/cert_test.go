package https

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSelfSigned(t *testing.T) {
	c, err := SelfSigned("relay.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	k, ok := c.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", c.PrivateKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.Leaf)
	for _, name := range []string{"relay.test", "127.0.0.1"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	p1, _ := CertPin(c)
	c.Leaf = nil
	p2, err := CertPin(c)
	if err != nil || string(p1) != string(p2) || len(p1) != 32 {
		t.Errorf("CertPin inconsistent: %x vs %x (%v)", p1, p2, err)
	}
}

func TestLoadCertificate(t *testing.T) {
	dir := t.TempDir()
	c, err := SelfSigned("relay.test")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := SelfSigned("other.test")
	otherDER, _ := x509.MarshalPKCS8PrivateKey(other.PrivateKey)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certFile := write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}))
	keyFile := write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	otherKey := write("other-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER}))
	garbage := write("garbage.pem", []byte("not pem"))
	missing := filepath.Join(dir, "missing.pem")

	if got, err := LoadCertificate(certFile, keyFile); err != nil || len(got.Certificate) != 1 {
		t.Fatalf("load: %v", err)
	}
	tests := []struct {
		name, cert, key, mention string
	}{
		{"missing cert", missing, keyFile, "missing.pem"},
		{"missing key", certFile, missing, "missing.pem"},
		{"cert not PEM", garbage, keyFile, "garbage.pem"},
		{"key not PEM", certFile, garbage, "garbage.pem"},
		{"key does not match", certFile, otherKey, "other-key.pem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCertificate(tc.cert, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %v, want one naming %s", err, tc.mention)
			}
		})
	}
}
