package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/metrics"
)

// probeGet asks the exporter at addr for /probe?query, with the scrape
// timeout header when timeout is not "", and returns the status and body.
// A request ctx cancels returns code 0.
func probeGet(t *testing.T, ctx context.Context, addr, query, timeout string) (int, []byte) {
	t.Helper()
	code, body, err := probeDo(ctx, addr, query, timeout)
	if err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	return code, body
}

func probeDo(ctx context.Context, addr, query, timeout string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/probe?"+query, nil)
	if err != nil {
		return 0, nil, err
	}
	if timeout != "" {
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", timeout)
	}
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// TestProbeScrape: `postern probe --listen` with --interval 0 probes only
// when /probe is scraped: a live relay by id or contact name succeeds, a
// stopped one fails with its class, the scrape's timeout header bounds the
// probe, an unknown target or transport is refused with 400 and nothing is
// dialled, more scrapes at once than --max-scrapes get 503, and neither
// the answers nor the logs hold a relay address or the contact's name.
func TestProbeScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	envv := []string{"POSTERN_HOME=" + dir}
	live := startRelay(t, bin, filepath.Join(dir, "live"), "--metrics", "off")
	stopped := startRelay(t, bin, filepath.Join(dir, "stopped"), "--metrics", "off")
	stopped.stop()
	liveID, stoppedID := relayID(t, live.line), relayID(t, stopped.line)
	hole := fullBacklog(t)
	holeLine, holeID := descriptorAt(t, hole, "https")
	cardPath, _ := cardWith(t, dir, "bob", live.line)
	aliceID, _, _ := newCardFile(t, dir, "alice")
	const contact = "Bob-Contact"
	if out, stderr, code := runBin(t, bin, envv, "contact", "add", "--id", aliceID, contact, cardPath); code != 0 {
		t.Fatalf("contact add: %d %s%s", code, out, stderr)
	}
	x := startProbeExporter(t, bin, envv, "--interval", "0", "--timeout", "20s", "--max-scrapes", "1",
		"--id", aliceID, contact, stopped.line, holeLine)
	secret := append(append(relayAddrs(t, live.line), relayAddrs(t, stopped.line)...), hole)
	var answers strings.Builder
	scrape := func(t *testing.T, query, timeout string, wantCode int) (map[string]float64, string) {
		t.Helper()
		code, body := probeGet(t, t.Context(), x.addr, query, timeout)
		answers.Write(body)
		if code != wantCode {
			t.Fatalf("/probe?%s: %d, want %d\n%s", query, code, wantCode, body)
		}
		if code != 200 {
			return nil, string(body)
		}
		promtoolCheck(t, body)
		return parseExposition(t, body), string(body)
	}
	success := func(relay, tr string) string {
		return fmt.Sprintf(`postern_probe_success{relay=%q,transport=%q}`, relay, tr)
	}

	t.Run("live relay by id", func(t *testing.T) {
		got, body := scrape(t, "target="+liveID, "5", 200)
		if got[success(liveID, "https")] != 1 || got[success(liveID, "h3")] != 1 {
			t.Errorf("not both transports ok:\n%s", body)
		}
		if got["postern_probe_timeout_seconds"] != 4.5 {
			t.Errorf("timeout %v, want 4.5 (the 5 s scrape timeout less 0.5 s)", got["postern_probe_timeout_seconds"])
		}
		if strings.Contains(body, "postern_probe_failure_class{") || strings.Contains(body, stoppedID) {
			t.Errorf("answer holds other series:\n%s", body)
		}
	})
	t.Run("a contact name is an unknown target", func(t *testing.T) {
		// A known contact and a name that is none get the same answer,
		// so a scrape cannot learn whom the operator talks to.
		_, known := scrape(t, "target="+url.QueryEscape(contact), "5", 400)
		_, unknown := scrape(t, "target=Nobody-Contact", "5", 400)
		if known != unknown {
			t.Errorf("a contact's name and an unknown name get different answers:\n%s\n%s", known, unknown)
		}
	})
	t.Run("stopped relay", func(t *testing.T) {
		got, body := scrape(t, "target="+stoppedID, "5", 200)
		for _, tr := range []string{"https", "h3"} {
			v, ok := got[success(stoppedID, tr)]
			classes := 0.0
			for _, class := range []string{"refused", "timeout"} {
				classes += got[fmt.Sprintf(`postern_probe_failure_class{class=%q,relay=%q,transport=%q}`, class, stoppedID, tr)]
			}
			if !ok || v != 0 || classes != 1 {
				t.Errorf("%s: success %v (present %v), refused or timeout class %v; want 0 and 1\n%s", tr, v, ok, classes, body)
			}
		}
	})
	t.Run("one transport", func(t *testing.T) {
		got, body := scrape(t, "target="+liveID+"&transport=h3", "5", 200)
		if _, ok := got[success(liveID, "https")]; ok || got[success(liveID, "h3")] != 1 {
			t.Errorf("transport=h3:\n%s", body)
		}
	})
	t.Run("scrape timeout bounds the probe", func(t *testing.T) {
		got, body := scrape(t, "target="+holeID, "1.5", 200)
		timeout := fmt.Sprintf(`postern_probe_failure_class{class="timeout",relay=%q,transport="https"}`, holeID)
		if got["postern_probe_timeout_seconds"] != 1 || got[success(holeID, "https")] != 0 || got[timeout] != 1 {
			t.Errorf("blackholed relay with a 1.5 s scrape timeout:\n%s", body)
		}
		got, _ = scrape(t, "target="+stoppedID, "", 200)
		if got["postern_probe_timeout_seconds"] != 20 {
			t.Errorf("no header: timeout %v, want --timeout 20s", got["postern_probe_timeout_seconds"])
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, q := range []string{"target=" + url.QueryEscape(hole), "target=" + strings.Repeat("a", 26),
			"target=" + url.QueryEscape("https://"+hole), "", "target=" + liveID + "&transport=quic",
			"target=" + holeID + "&transport=h3"} {
			_, body := scrape(t, q, "5", 400)
			if len(body) > 120 || strings.Contains(body, hole) {
				t.Errorf("/probe?%s: 400 body %q", q, body)
			}
		}
	})
	t.Run("at most --max-scrapes at once", func(t *testing.T) { checkScrapeCap(t, x.addr, holeID, stoppedID) })

	t.Run("interval 0 runs no rounds", func(t *testing.T) {
		// Once a probe of the stopped relay was answered, a round of it
		// would have ended too.
		y := startProbeExporter(t, bin, envv, "--interval", "0", stopped.line)
		if code, body := probeGet(t, t.Context(), y.addr, "target="+stoppedID, "5"); code != 200 {
			t.Fatalf("/probe: %d %s", code, body)
		}
		_, body := scrapeMetrics(t, y.addr)
		if strings.Contains(string(body), "postern_probe_") || !strings.Contains(string(body), "postern_build_info") {
			t.Errorf("--interval 0: /metrics\n%s", body)
		}
		y.stop(t)
	})
	logs := x.stop(t)
	checkNoAddr(t, answers.String()+logs, secret)
	if strings.Contains(answers.String()+logs, contact) {
		t.Errorf("the answers or logs name the contact:\n%s\n%s", answers.String(), logs)
	}
}

func scrapeMetrics(t *testing.T, addr string) (map[string]float64, []byte) { return scrape(t, addr) }

// checkScrapeCap holds the exporter's one scrape slot with a probe of a
// blackholed relay, sees a second scrape refused with 503, then cancels
// the first and sees the slot free again.
func checkScrapeCap(t *testing.T, addr, holeID, quickID string) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	held := make(chan int, 1)
	go func() {
		// Retry while a quick probe below happens to hold the slot.
		for {
			code, _, err := probeDo(ctx, addr, "target="+holeID, "30")
			if err != nil && ctx.Err() != nil {
				code = 0
			}
			if code != http.StatusServiceUnavailable || ctx.Err() != nil {
				held <- code
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		code, body := probeGet(t, t.Context(), addr, "target="+quickID, "5")
		if code == http.StatusServiceUnavailable {
			if !strings.Contains(string(body), "--max-scrapes") {
				t.Errorf("503 body %q does not say what to do", body)
			}
			break
		}
		if code != 200 || i == 1000 || time.Now().After(deadline) {
			t.Fatalf("a second scrape while one probes: %d after %d tries, want 503\n%s", code, i+1, body)
		}
		// Leave the slot free for a moment, or on a busy machine these
		// quick probes can hold it every time the other scrape asks.
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-held; code != 0 {
		t.Fatalf("the held scrape ended with %d, want it canceled", code)
	}
	deadline = time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		code, body := probeGet(t, t.Context(), addr, "target="+quickID, "5")
		if code == 200 {
			break
		}
		if code != http.StatusServiceUnavailable || i == 1000 || time.Now().After(deadline) {
			t.Fatalf("after the held scrape was canceled: %d after %d tries, want 200\n%s", code, i+1, body)
		}
		time.Sleep(10 * time.Millisecond) // the exporter notices the closed connection
	}
}

// TestScrapeTimeout: a scrape-driven probe gets --timeout, or the
// scrape's timeout less half a second when that is shorter, never under
// 250 ms, and never near the HTTP write timeout.
func TestScrapeTimeout(t *testing.T) {
	for _, tc := range []struct {
		limit  time.Duration
		header string
		want   time.Duration
	}{
		{10 * time.Second, "", 10 * time.Second},
		{10 * time.Second, "garbage", 10 * time.Second},
		{10 * time.Second, "-3", 10 * time.Second},
		{10 * time.Second, "NaN", 10 * time.Second},
		{10 * time.Second, "5", 4500 * time.Millisecond},
		{10 * time.Second, "1.5", time.Second},
		{10 * time.Second, "0.5", 250 * time.Millisecond},
		{10 * time.Second, "120", 10 * time.Second},
		{2 * time.Second, "5", 2 * time.Second},
		{100 * time.Millisecond, "0.5", 100 * time.Millisecond},
		{5 * time.Minute, "", 50 * time.Second},
		{5 * time.Minute, "300", 50 * time.Second},
	} {
		if got := scrapeTimeout(tc.limit, tc.header); got != tc.want {
			t.Errorf("scrapeTimeout(%v, %q) = %v, want %v", tc.limit, tc.header, got, tc.want)
		}
	}
}

// TestProbePrometheusExample: deploy/prometheus/probe.yml passes promtool,
// and a real Prometheus running it (with the exporter's address, two relay
// ids and a 1 s scrape interval and timeout put in) scrapes the exporter's
// rounds and its /probe: a live relay succeeds, a stopped one fails with a
// class, and the probe fits the scrape's timeout.
func TestProbePrometheusExample(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "probe.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if path, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(path, "check", "config", filepath.Join("..", "..", "deploy", "prometheus", "probe.yml")).CombinedOutput(); err != nil {
			t.Fatalf("promtool check config probe.yml: %v\n%s", err, out)
		}
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	envv := []string{"POSTERN_HOME=" + dir}
	live := startRelay(t, bin, filepath.Join(dir, "live"), "--metrics", "off")
	stopped := startRelay(t, bin, filepath.Join(dir, "stopped"), "--metrics", "off")
	stopped.stop()
	liveID, stoppedID := relayID(t, live.line), relayID(t, stopped.line)
	x := startProbeExporter(t, bin, envv, "--interval", "1s", "--timeout", "5s", live.line, stopped.line)

	conf := string(raw)
	for old, repl := range map[string]string{
		"probe-vantage-1.example.net:9465": x.addr,
		"aaaaaaaaaaaaaaaaaaaaaaaaaa":       liveID,
		"bbbbbbbbbbbbbbbbbbbbbbbbbb":       stoppedID,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("probe.yml no longer holds %q for the test to replace", old)
		}
		conf = strings.ReplaceAll(conf, old, repl)
	}
	conf = regexp.MustCompile(`scrape_(interval|timeout): \S+`).ReplaceAllString(conf, "scrape_$1: 1s")
	prom := startPrometheusWith(t, conf)
	prom.waitQuery(t, `up{job="postern-probe"}`, 1)
	prom.waitQuery(t, fmt.Sprintf(`up{job="postern-probe-relays",target=%q}`, liveID), 1)
	prom.waitQuery(t, fmt.Sprintf(`postern_probe_success{job="postern-probe-relays",target=%q,relay=%q,transport="https"}`, liveID, liveID), 1)
	prom.waitQuery(t, fmt.Sprintf(`postern_probe_success{job="postern-probe-relays",target=%q,relay=%q,transport="h3"}`, liveID, liveID), 1)
	prom.waitQuery(t, fmt.Sprintf(`postern_probe_success{job="postern-probe-relays",target=%q,relay=%q,transport="h3"}`, stoppedID, stoppedID), 0)
	prom.waitQuery(t, fmt.Sprintf(`count(postern_probe_failure_class{job="postern-probe-relays",relay=%q,class=~"refused|timeout"})`, stoppedID), 2)
	// The scrape's 1 s timeout reached the exporter as its header.
	prom.waitQuery(t, fmt.Sprintf(`postern_probe_timeout_seconds{job="postern-probe-relays",target=%q}`, liveID), 0.5)
	prom.waitQuery(t, fmt.Sprintf(`postern_probe_success{job="postern-probe",relay=%q,transport="https"}`, liveID), 1)
	prom.waitQuery(t, fmt.Sprintf(`count(postern_probe_success{job="postern-probe-relays",instance=%q})`, x.addr), 4)
}

// FuzzScrapeTimeout: whatever the scrape's header says, a probe gets a
// positive time no longer than --timeout nor near the write timeout.
func FuzzScrapeTimeout(f *testing.F) {
	for _, s := range []string{"", "5", "0.5", "-1", "NaN", "+Inf", "1e308", "4.9e-324", "0x10", "10s"} {
		f.Add(int64(10*time.Second), s)
	}
	f.Fuzz(func(t *testing.T, limit int64, header string) {
		if limit <= 0 {
			return
		}
		got := scrapeTimeout(time.Duration(limit), header)
		if got <= 0 || got > time.Duration(limit) || got > metrics.ProbeWriteTimeout-10*time.Second {
			t.Fatalf("scrapeTimeout(%v, %q) = %v", time.Duration(limit), header, got)
		}
	})
}
