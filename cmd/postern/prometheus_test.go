package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
)

// prometheusBin is where the Debian package installs Prometheus.
const prometheusBin = "/usr/bin/prometheus"

// promProc is a Prometheus server scraping one target.
type promProc struct {
	base string // http://127.0.0.1:port
	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *promProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// startPrometheus runs a real Prometheus that scrapes target every second
// as job "postern" (see startPrometheusWith).
func startPrometheus(t *testing.T, target string) *promProc {
	t.Helper()
	return startPrometheusWith(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: postern
    static_configs:
      - targets: [%q]
`, target))
}

// startPrometheusWith runs a real Prometheus with the config conf, its
// storage in a temporary directory, and waits until it is ready. It is
// killed when the test ends. Without Prometheus installed the test is
// skipped, except in CI.
func startPrometheusWith(t *testing.T, conf string) *promProc {
	t.Helper()
	bin := prometheusBin
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("prometheus"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("prometheus is not installed (apt package prometheus); CI must have it")
			}
			t.Skip("prometheus is not installed (apt package prometheus)")
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Pick a free port for the web listener. Another process could take it
	// before Prometheus binds; then Prometheus exits and the test says so.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webAddr := l.Addr().String()
	l.Close()
	p := &promProc{base: "http://" + webAddr}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+webAddr, "--log.level=warn")
	cmd.Dir = dir
	cmd.Stdout = lockedWriter{&p.mu, &p.logs}
	cmd.Stderr = lockedWriter{&p.mu, &p.logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", p.log())
		default:
		}
		if resp, err := c.Get(p.base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 90s:\n%s", p.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// query runs an instant PromQL query and returns the value of each
// resulting series, keyed by its labels rendered as JSON.
func (p *promProc) query(t *testing.T, q string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" || r.Data.ResultType != "vector" {
		t.Fatalf("query %s: %v %s %s", q, err, r.Error, body)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			t.Fatalf("query %s: value %v", q, s.Value)
		}
		k, _ := json.Marshal(s.Metric)
		out[string(k)] = v
	}
	return out
}

// waitQuery polls q until it returns exactly one series with value want,
// for at most 90 seconds.
func (p *promProc) waitQuery(t *testing.T, q string, want float64) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		got := p.query(t, q)
		if len(got) == 1 {
			for _, v := range got {
				if v == want {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want one series of %v\nprometheus log:\n%s", q, got, want, p.log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPrometheusScrapesRelay: a real Prometheus scrapes a relay process
// and sees the workload's counts through its query API.
func TestPrometheusScrapesRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--metrics", "127.0.0.1:0")
	prom := startPrometheus(t, metricsAddr(t, rp))
	prom.waitQuery(t, `up{job="postern"}`, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ident, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	m := newTestMailbox(t, ident, rp.line, false)
	c, err := dialRelay(ctx, transportEnv("https"), rp.line)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateMailbox(ctx, m.owner, m.id, nil); err != nil {
		t.Fatal(err)
	}
	const sends = 7
	for i := 0; i < sends; i++ {
		sealed, err := envelope.Seal(m.card, nil, []byte("scraped"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Send(ctx, sealed, nil); err != nil {
			t.Fatal(err)
		}
	}
	prom.waitQuery(t, `postern_envelopes_accepted_total{job="postern"}`, sends)
	prom.waitQuery(t, `postern_store_envelopes{job="postern"}`, sends)
	prom.waitQuery(t, `postern_sessions_active{job="postern",transport="https"}`, 1)
	prom.waitQuery(t, `sum(postern_build_info{job="postern"})`, 1)
	prom.waitQuery(t, `up{job="postern"}`, 1)
}
