package https

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// nginxPath is where Debian's nginx package puts the binary; CI installs it.
const nginxPath = "/usr/sbin/nginx"

// Short nginx timeouts keep the probe test fast; a relay in front of this
// nginx inherits them by splicing, which is what the probes check.
const (
	nginxHeaderTimeout    = 3 // seconds: client_header_timeout (also the TLS handshake)
	nginxKeepaliveTimeout = 5 // seconds: keepalive_timeout
)

// requireNginx returns the nginx binary, skips the test when there is
// none, and fails it when there is none under CI.
func requireNginx(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(nginxPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("nginx is required under CI (apt-get install -y nginx): %v", err)
		}
		t.Skipf("no %s (apt-get install -y nginx); skipping", nginxPath)
	}
	return nginxPath
}

// startNginx runs an nginx of its own on a free loopback port with a
// generated configuration, an RSA self-signed certificate (RSA-PSS
// signatures have a fixed length, so two handshakes have the same record
// lengths) and a one-page site, and returns its address.
func startNginx(t *testing.T) string {
	t.Helper()
	bin := requireNginx(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	writeNginxCert(t, dir)
	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("<!doctype html><title>origin</title><p>nginx origin\n"), 0o644)
	var lastErr error
	for range 5 { // a free port can be taken between probing and binding
		addr := freeLoopbackPort(t)
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConf(dir, addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", conf)
		if lastErr = cmd.Start(); lastErr != nil {
			t.Fatal(lastErr)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if lastErr = waitListening(addr, exited); lastErr == nil {
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			return addr
		}
		cmd.Process.Kill()
	}
	log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
	t.Fatalf("nginx did not start: %v\n%s", lastErr, log)
	return ""
}

func nginxConf(dir, addr string) string {
	return fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	client_header_timeout %[3]ds;
	keepalive_timeout %[4]ds;
	server {
		listen %[2]s ssl http2;
		server_name localhost;
		ssl_certificate %[1]s/cert.pem;
		ssl_certificate_key %[1]s/key.pem;
		root %[1]s/www;
	}
}
`, dir, addr, nginxHeaderTimeout, nginxKeepaliveTimeout)
}

// freeLoopbackPort returns 127.0.0.1:port for a port free a moment ago.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitListening waits until addr accepts a connection or nginx exits. The
// loop is bounded: 200 tries 50 ms apart.
func waitListening(addr string, exited <-chan error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("nginx exited: %v", err)
		case <-tick.C:
		}
	}
	return errors.New("nginx is not listening after 10s")
}

func writeNginxCert(t *testing.T, dir string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	for name, b := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
