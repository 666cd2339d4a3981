package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestClientMetrics: attempts count by transport and class ("ok" for the
// winner, whose time goes into the histogram), session failures by
// class, and values outside the fixed sets become "other".
func TestClientMetrics(t *testing.T) {
	c := NewClient("v1.2.3")
	c.DialAttempt("https", "timeout", 15*time.Second)
	c.DialAttempt("h3", "ok", 40*time.Millisecond)
	c.DialAttempt("h3", "ok", 60*time.Millisecond)
	c.DialAttempt("127.0.0.1:8443", "ok", time.Millisecond) // not a transport
	c.DialAttempt("https", "mailbox 0badc0de", time.Second) // not a class
	c.SessionFailure("stalled")
	c.SessionFailure("ok") // not a failure class
	want := `
# HELP postern_client_dial_attempts_total Attempts to reach a relay (one transport, one endpoint), by transport and outcome: ok (the attempt won the race) or its failure class. Attempts cancelled because another won are not counted.
# TYPE postern_client_dial_attempts_total counter
postern_client_dial_attempts_total{class="ok",transport="h3"} 2
postern_client_dial_attempts_total{class="ok",transport="other"} 1
postern_client_dial_attempts_total{class="other",transport="https"} 1
postern_client_dial_attempts_total{class="timeout",transport="https"} 1
# HELP postern_client_session_failures_total Relay sessions that failed after the dial, by failure class: stalled (the flow froze), throttled (throughput under the floor), busy (the relay asked to come back later).
# TYPE postern_client_session_failures_total counter
postern_client_session_failures_total{class="busy"} 0
postern_client_session_failures_total{class="other"} 1
postern_client_session_failures_total{class="stalled"} 1
postern_client_session_failures_total{class="throttled"} 0
`
	if err := testutil.GatherAndCompare(c.Gatherer(), strings.NewReader(want),
		"postern_client_dial_attempts_total", "postern_client_session_failures_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c.dialSeconds); n != 2 { // h3 and other; the failure is not timed
		t.Fatalf("%d dial histograms, want 2", n)
	}
	if v := testutil.ToFloat64(c.sessions.WithLabelValues("stalled")); v != 1 {
		t.Fatalf("stalled %v", v)
	}
}

// TestClientWriteFile: the file is the text format, lint-clean, mode
// 0644, replaced whole on each write, and holds only declared metrics.
func TestClientWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "postern.prom")
	c := NewClient("v1.2.3")
	c.DialAttempt("https", "refused", time.Millisecond)
	if err := c.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	c.DialAttempt("https", "ok", time.Millisecond)
	if err := c.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.New(strings.NewReader(string(data))).Lint()
	if err != nil || len(problems) > 0 {
		t.Fatalf("the file does not parse cleanly: %v %v\n%s", err, problems, data)
	}
	for _, want := range []string{`postern_client_dial_attempts_total{class="ok",transport="https"} 1`,
		`postern_client_dial_attempts_total{class="refused",transport="https"} 1`, `postern_build_info{`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the file lacks %s:\n%s", want, data)
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "postern_") {
			t.Errorf("undeclared metric: %s", line)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v (%v)", st.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files in the directory: a temporary file was left", len(ents))
	}
	if err := c.WriteFile(filepath.Join(dir, "missing", "x.prom")); err == nil || !strings.Contains(err.Error(), "POSTERN_METRICS_FILE") {
		t.Fatalf("write into a missing directory: %v", err)
	}
}
