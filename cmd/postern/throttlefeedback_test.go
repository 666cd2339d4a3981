package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/censortest"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// TestThrottledSendRecorded: a send through a censor that throttles the
// flow to 12 KB/s (under throttleFloor) still delivers, and records the
// session as throttled: the way in goes into backoff with that class in
// the network's route memory, and the metrics file counts one throttled
// session.
func TestThrottledSendRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	relayHTTPS := freePort(t)
	mb := censortest.NewMiddlebox(t, relayHTTPS)
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--https", relayHTTPS, "--h3", "off", "--config", writeConfig(t, dir, mb.Addr()))
	defer rp.stop()
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", filepath.Join(rp.dir, "descriptor"))))

	mb.SetRule(censortest.Throttle(12 << 10))
	msg := make([]byte, 40<<10) // at least 40 KiB of envelopes: over 3 s at the censor's rate
	rand.Read(msg)
	metricsFile := filepath.Join(dir, "send.prom")
	cmd := exec.Command(bin, "send", "--anonymous", "--network", "cafe", "--to", card)
	cmd.Env = append(os.Environ(), append(base, "POSTERN_METRICS_FILE="+metricsFile)...)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("send through the throttling censor: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "the flow is throttled") {
		t.Fatalf("the send never measured the throttle (test setup):\n%s", stderr.String())
	}

	mem, err := route.OpenMemory(filepath.Join(home, "routes"), 0)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := descriptor.ParseStale(strings.TrimSpace(string(mustRead(t, filepath.Join(rp.dir, "descriptor")))), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	way := route.FromDescriptor(d, route.Filter{Transport: "https"})[0]
	if until, class := mem.Backoff("cafe", way); until.IsZero() || class != transport.ClassThrottled {
		t.Fatalf("the throttled way in: backoff until %v, class %v", until, class)
	}
	checkMetricsFile(t, metricsFile, nil, `postern_client_session_failures_total{class="throttled"} 1`)

	mb.SetRule(censortest.Pass)
	if got := parseRecv(t, runOK(t, bin, base, nil, "recv", "--id", bob)); len(got) != 1 || !bytes.Equal(got[0].body, msg) {
		t.Fatalf("received %d messages", len(got))
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
