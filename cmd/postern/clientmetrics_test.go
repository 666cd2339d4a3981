package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// TestClientMetricsFile runs send and recv with POSTERN_METRICS_FILE
// against a relay, then send against the same relay stopped: each run
// leaves a file in the text format with the class of its attempts as a
// label (ok; then refused), mode 0644, and no address, relay port or
// mailbox id in it.
func TestClientMetricsFile(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"))
	home := filepath.Join(dir, "home")
	base := []string{"POSTERN_HOME=" + home}
	bob := filepath.Join(home, "bob.id")
	runOK(t, bin, base, nil, "id", "new", "--out", bob)
	card := strings.TrimSpace(string(runOK(t, bin, base, nil, "mailbox", "create", "--id", bob, "--relay", rp.line)))
	secrets := metadataOf(t, rp.line, card)

	sendFile, recvFile := filepath.Join(dir, "send.prom"), filepath.Join(dir, "recv.prom")
	runOK(t, bin, append(base, "POSTERN_METRICS_FILE="+sendFile), []byte("hi"), "send", "--anonymous", "--to", card)
	checkMetricsFile(t, sendFile, secrets, `postern_client_dial_attempts_total{class="ok",transport="`)
	runOK(t, bin, append(base, "POSTERN_METRICS_FILE="+recvFile), nil, "recv", "--id", bob)
	checkMetricsFile(t, recvFile, secrets, `postern_client_dial_attempts_total{class="ok",transport="`)

	rp.stop()
	envv := append(base, "POSTERN_METRICS_FILE="+sendFile, "POSTERN_TRANSPORT=https")
	if _, errOut, code := runWith(t, bin, envv, []byte("hi"), "send", "--anonymous", "--timeout", "30s", "--to", card); code == 0 {
		t.Fatalf("send to a stopped relay succeeded: %s", errOut)
	}
	data := checkMetricsFile(t, sendFile, secrets, `postern_client_dial_attempts_total{class="refused",transport="https"} 1`)
	if strings.Contains(data, `class="ok"`) {
		t.Fatalf("the failed run's file still holds the earlier run's success:\n%s", data)
	}
}

// metadataOf returns what a metrics file must never hold: the relay's
// addresses and ports, and the mailbox id in hex and base64.
func metadataOf(t *testing.T, relayLine, cardLine string) []string {
	d, err := descriptor.Parse(relayLine, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := envelope.ParseCard(cardLine)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{"127.0.0", hex.EncodeToString(c.Mailbox[:]), base64.RawURLEncoding.EncodeToString(c.Mailbox[:]),
		base64.StdEncoding.EncodeToString(c.Mailbox[:]), d.RelayID()}
	for _, ep := range d.Endpoints {
		_, port, err := net.SplitHostPort(ep.Addr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, port)
	}
	return out
}

// labelsRE matches the label set of a sample line.
var labelsRE = regexp.MustCompile(`\{[^}]*\}`)

// checkMetricsFile checks path parses lint-clean, is mode 0644, holds
// want, and has none of secrets: anywhere for the long ones, in a label
// for the relay's ports (a sample's value may hold any digits).
func checkMetricsFile(t *testing.T, path string, secrets []string, want string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data := string(b)
	if problems, err := promlint.New(strings.NewReader(data)).Lint(); err != nil || len(problems) > 0 {
		t.Fatalf("%s does not parse cleanly: %v %v\n%s", path, err, problems, data)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("%s: mode %v (%v)", path, st.Mode(), err)
	}
	if !strings.Contains(data, want) {
		t.Fatalf("%s lacks %s:\n%s", path, want, data)
	}
	labels := strings.Join(labelsRE.FindAllString(data, -1), "\n")
	for _, s := range secrets {
		if len(s) > 6 && strings.Contains(data, s) || strings.Contains(labels, s) {
			t.Fatalf("%s holds %q:\n%s", path, s, data)
		}
	}
	return data
}

// TestMetricsFileEveryMinute: a run that goes on (recv --follow) writes
// its metrics file every metricsEvery, and once more when it stops; a
// write after stop never replaces the last one.
func TestMetricsFileEveryMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "recv.prom")
		var stderr strings.Builder
		e := &env{stderr: &stderr, getenv: func(k string) string {
			return map[string]string{"POSTERN_METRICS_FILE": path}[k]
		}}
		r := startMetrics(e)
		if runMetrics(e) != r.m {
			t.Fatal("dialOptions would not find the run's metrics")
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.every(ctx, metricsEvery)
		time.Sleep(metricsEvery - time.Second)
		synctest.Wait()
		if _, err := os.Stat(path); err == nil {
			t.Fatal("written before a minute had passed")
		}
		r.m.DialAttempt("https", "ok", time.Millisecond)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), `class="ok"`) {
			t.Fatalf("after a minute: %v\n%s", err, b)
		}
		r.m.DialAttempt("https", "refused", time.Millisecond)
		r.stop()
		cancel()
		if b, _ := os.ReadFile(path); !strings.Contains(string(b), `class="refused"`) {
			t.Fatalf("stop did not write the last counts:\n%s", b)
		}
		if runMetrics(e) != nil || stderr.Len() > 0 {
			t.Fatalf("the run is still registered, or warned: %q", stderr.String())
		}
		r.m.DialAttempt("h3", "ok", time.Millisecond)
		r.write(false) // a late tick
		if b, _ := os.ReadFile(path); strings.Contains(string(b), `transport="h3"`) {
			t.Fatal("a write after stop replaced the file")
		}
	})
}
