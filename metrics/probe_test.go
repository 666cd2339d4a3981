package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestProbeScrapeExposition: one scrape-driven probe's answer holds its
// pairs, the class of each failure, and the timeout it was given; label
// values outside their sets are "other"; nothing else is on the registry.
func TestProbeScrapeExposition(t *testing.T) {
	p := NewProbeScrape(4500 * time.Millisecond)
	p.Success(relayA, "https", 250*time.Millisecond)
	p.Failure(relayA, "h3", "udp_silent", 4*time.Second)
	p.Failure("127.0.0.1:443", "quic", "connection refused by 10.0.0.1", time.Second)
	want := `
# HELP postern_probe_duration_seconds Duration of this probe of a relay over a transport, until success or failure.
# TYPE postern_probe_duration_seconds gauge
postern_probe_duration_seconds{relay="abcdefghijklmnopqrstuvwxyz",transport="h3"} 4
postern_probe_duration_seconds{relay="abcdefghijklmnopqrstuvwxyz",transport="https"} 0.25
postern_probe_duration_seconds{relay="other",transport="other"} 1
# HELP postern_probe_failure_class 1 for a relay and transport whose probe failed, with the failure class as the class label; absent for a pair that succeeded.
# TYPE postern_probe_failure_class gauge
postern_probe_failure_class{class="other",relay="other",transport="other"} 1
postern_probe_failure_class{class="udp_silent",relay="abcdefghijklmnopqrstuvwxyz",transport="h3"} 1
# HELP postern_probe_success Whether this probe of a relay over a transport completed the transport handshake, the relay hello and a ping (1) or not (0).
# TYPE postern_probe_success gauge
postern_probe_success{relay="abcdefghijklmnopqrstuvwxyz",transport="h3"} 0
postern_probe_success{relay="abcdefghijklmnopqrstuvwxyz",transport="https"} 1
postern_probe_success{relay="other",transport="other"} 0
# HELP postern_probe_timeout_seconds Time this probe was given: the exporter's --timeout, or less to fit the scrape's own timeout.
# TYPE postern_probe_timeout_seconds gauge
postern_probe_timeout_seconds 4.5
`
	if err := testutil.GatherAndCompare(p.Gatherer(), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestListenProbe: the probe exporter's listener serves the handler on
// GET /probe beside /metrics and /healthz, and 404 elsewhere.
func TestListenProbe(t *testing.T) {
	probe := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "probed "+r.URL.Query().Get("target"))
	})
	s, err := ListenProbe("127.0.0.1:0", NewProbe("dev").Gatherer(), probe)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/probe?target=x", 200, "probed x"},
		{"POST", "/probe?target=x", 404, ""},
		{"GET", "/metrics", 200, "postern_build_info"},
		{"GET", "/healthz", 200, "ok"},
		{"GET", "/probes", 404, ""},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+s.Addr().String()+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.body)
		}
	}
}
