package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport/descriptor"
)

// TestNetworkMemory: with --network, send and recv remember what reached
// the relay on that network, in POSTERN_HOME/routes, without any address,
// port, path, mailbox id or the network's name; without it, nothing is
// written.
func TestNetworkMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	defer rp.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(rp.dir, "descriptor"))))
	routes := filepath.Join(home, "routes")
	runOK(t, bin, base, []byte("no memory"), "send", "--anonymous", "--to", card)
	if _, err := os.Stat(routes); err == nil {
		t.Fatal("routes written without --network")
	}
	runOK(t, bin, base, []byte("remembered"), "send", "--anonymous", "--network", "cafe-wifi", "--to", card)
	runOK(t, bin, base, nil, "recv", "--id", bob, "--network", "cafe-wifi")
	data, err := os.ReadFile(routes)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"recipe"`) || strings.Contains(string(data), "cafe-wifi") {
		t.Fatalf("routes hold no entry, or the network's name: %s", data)
	}
	d, _ := descriptor.Parse(rp.line, time.Now())
	for _, ep := range d.Endpoints {
		_, port, _ := strings.Cut(ep.Addr, ":")
		for _, secret := range []string{ep.Addr, ":" + port, ep.Path} {
			if strings.Contains(string(data), secret) {
				t.Fatalf("routes hold %q:\n%s", secret, data)
			}
		}
	}
}
