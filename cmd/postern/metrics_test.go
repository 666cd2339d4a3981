package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// scrape fetches http://addr/metrics and returns every sample keyed by its
// series as exposed (name{labels}), and the raw text.
func scrape(t *testing.T, addr string) (map[string]float64, []byte) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	return parseExposition(t, body), body
}

// parseExposition reads the Prometheus text format, which is what a
// request without an Accept header gets.
func parseExposition(t *testing.T, body []byte) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			t.Fatalf("bad exposition line %q", l)
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("bad exposition line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// waitMetrics scrapes until every series in want has its value, for at
// most a minute, and returns the last scrape.
func waitMetrics(t *testing.T, addr string, want map[string]float64) (map[string]float64, []byte) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		got, body := scrape(t, addr)
		var diff []string
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				diff = append(diff, fmt.Sprintf("%s = %v (present %v), want %v", k, g, ok, v))
			}
		}
		if len(diff) == 0 {
			return got, body
		}
		if time.Now().After(deadline) {
			sort.Strings(diff)
			t.Fatalf("metrics never matched:\n%s\n\nlast scrape:\n%s", strings.Join(diff, "\n"), body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricsAddr reads the metrics address the relay wrote to its data
// directory before printing its descriptor.
func metricsAddr(t *testing.T, rp *relayProc) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rp.dir, "metrics.addr"))
	if err != nil {
		t.Fatalf("metrics address: %v; logs:\n%s", err, rp.logs())
	}
	return strings.TrimSpace(string(b))
}

// promtoolCheck runs `promtool check metrics` on the exposition. Without
// promtool it skips, except in CI.
func promtoolCheck(t *testing.T, body []byte) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is not installed (apt package prometheus); CI must have it")
		}
		t.Log("promtool not installed: skipping `promtool check metrics`")
		return
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// testMailbox is a mailbox the test creates through the library.
type testMailbox struct {
	owner ed25519.PrivateKey
	id    [32]byte
	cap   []byte
	card  *envelope.Card
}

func newTestMailbox(t *testing.T, ident *envelope.Identity, line string, withCap bool) *testMailbox {
	t.Helper()
	m := &testMailbox{}
	_, m.owner, _ = ed25519.GenerateKey(nil)
	rand.Read(m.id[:])
	if withCap {
		m.cap = make([]byte, 32)
		rand.Read(m.cap)
	}
	m.card = ident.Card(m.id, []string{line}, m.cap)
	return m
}

func (m *testMailbox) capVerifier() []byte {
	if m.cap == nil {
		return nil
	}
	s := sha256.Sum256(m.cap)
	return s[:]
}

func transportEnv(tr string) *env {
	return &env{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string {
		if k == "POSTERN_TRANSPORT" {
			return tr
		}
		return ""
	}}
}

// coverGET fetches / from the transport's cover site as any browser would.
func coverGET(t *testing.T, ep descriptor.Endpoint) {
	t.Helper()
	tlsConf := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}
	var rt http.RoundTripper
	switch ep.Transport {
	case "https":
		rt = &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}
	case "h3":
		h3t := &http3.Transport{TLSClientConfig: tlsConf}
		defer h3t.Close()
		rt = h3t
	default:
		t.Fatalf("no cover client for %s", ep.Transport)
	}
	c := &http.Client{Transport: rt, Timeout: 20 * time.Second}
	resp, err := c.Get("https://" + ep.Addr + "/")
	if err != nil {
		t.Fatalf("cover GET over %s: %v", ep.Transport, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("cover GET over %s: %s", ep.Transport, resp.Status)
	}
	c.CloseIdleConnections()
}

// TestMetricsCountWorkload runs a known workload against a relay process
// and checks that its /metrics report exactly that workload, lint clean,
// with no address, mailbox id or key anywhere in the exposition.
func TestMetricsCountWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--metrics", "127.0.0.1:0")
	maddr := metricsAddr(t, rp)
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Before any traffic: the series exist at zero, and the quota is the
	// default.
	waitMetrics(t, maddr, map[string]float64{
		`postern_envelopes_accepted_total`:                                   0,
		`postern_handshakes_total{result="ok",transport="https"}`:            0,
		`postern_envelopes_rejected_total{reason="capability"}`:              0,
		`postern_store_quota_bytes`:                                          1 << 30,
		`postern_store_mailboxes`:                                            0,
		`postern_build_info{goversion="` + goVersion(t) + `",version="dev"}`: 1,
	})

	recipient, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	sender, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	open := newTestMailbox(t, recipient, rp.line, false)
	capped := newTestMailbox(t, recipient, rp.line, true)
	nowhere := newTestMailbox(t, recipient, rp.line, false) // never created
	var envelopeIDs [][]byte

	seal := func(m *testMailbox) []byte {
		t.Helper()
		sealed, err := envelope.Seal(m.card, sender, []byte("metrics workload"), nil)
		if err != nil {
			t.Fatal(err)
		}
		o, err := envelope.Open(recipient, sealed)
		if err != nil {
			t.Fatal(err)
		}
		envelopeIDs = append(envelopeIDs, o.ID[:])
		return sealed
	}
	const perTransport = 5 // 3 to the open mailbox, 2 to the capped one
	const acked = 2        // per transport
	sessions := map[string]int{}
	for i, tr := range []string{"https", "h3"} {
		c, err := dialRelay(ctx, transportEnv(tr), rp.line)
		if err != nil {
			t.Fatal(err)
		}
		sessions[tr]++
		if i == 0 {
			for _, m := range []*testMailbox{open, capped} {
				if err := c.CreateMailbox(ctx, m.owner, m.id, m.capVerifier()); err != nil {
					t.Fatal(err)
				}
			}
		}
		for j := 0; j < 3; j++ {
			if _, err := c.Send(ctx, seal(open), nil); err != nil {
				t.Fatal(err)
			}
		}
		for j := 0; j < 2; j++ {
			if _, err := c.Send(ctx, seal(capped), capped.cap); err != nil {
				t.Fatal(err)
			}
		}
		// Rejected: no capability, unknown mailbox, not an envelope.
		if _, err := c.Send(ctx, seal(capped), nil); !errors.Is(err, relay.ErrCapability) {
			t.Fatalf("send without capability: %v", err)
		}
		if _, err := c.Send(ctx, seal(nowhere), nil); !errors.Is(err, relay.ErrNoMailbox) {
			t.Fatalf("send to no mailbox: %v", err)
		}
		if _, err := c.Send(ctx, []byte("not an envelope at all"), nil); !errors.Is(err, relay.ErrBadEnvelope) {
			t.Fatalf("send garbage: %v", err)
		}
		got, err := c.Fetch(ctx, open.owner, open.id, acked)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != acked {
			t.Fatalf("fetched %d, want %d", len(got), acked)
		}
		n, err := c.Ack(ctx, open.owner, open.id, got[0].Ref, got[1].Ref)
		if err != nil || n != acked {
			t.Fatalf("ack: %d, %v", n, err)
		}
		c.Close()
	}

	// A browser on each cover site, and a client with a wrong session key
	// on each transport.
	for _, ep := range d.Endpoints {
		coverGET(t, ep)
		bad := ep.TransportEndpoint()
		bad.Key = make([]byte, transport.KeySize)
		rand.Read(bad.Key)
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		conn, err := newRegistry().Dial(dctx, bad)
		dcancel()
		if err == nil {
			conn.Close()
			t.Fatalf("%s: session with a wrong key accepted", ep.Transport)
		}
		if c := transport.ClassOf(err); c != transport.ClassAuth {
			t.Fatalf("%s: wrong key failed with class %s (%v), want auth", ep.Transport, c, err)
		}
	}

	accepted := 2 * perTransport
	delivered := 2 * acked
	want := map[string]float64{
		`postern_envelopes_accepted_total`:                                 float64(accepted),
		`postern_envelopes_delivered_total`:                                float64(delivered),
		`postern_envelopes_expired_total`:                                  0,
		`postern_envelopes_rejected_total{reason="capability"}`:            2,
		`postern_envelopes_rejected_total{reason="no_mailbox"}`:            2,
		`postern_envelopes_rejected_total{reason="bad_envelope"}`:          2,
		`postern_envelopes_rejected_total{reason="malformed"}`:             0,
		`postern_envelopes_rejected_total{reason="mailbox_full"}`:          0,
		`postern_envelopes_rejected_total{reason="relay_full"}`:            0,
		`postern_envelopes_rejected_total{reason="source_limit"}`:          0,
		`postern_envelopes_rejected_total{reason="internal"}`:              0,
		`postern_send_duration_seconds_count`:                              float64(accepted),
		`postern_sessions_total{transport="https"}`:                        float64(sessions["https"]),
		`postern_sessions_total{transport="h3"}`:                           float64(sessions["h3"]),
		`postern_sessions_active{transport="https"}`:                       0,
		`postern_sessions_active{transport="h3"}`:                          0,
		`postern_handshakes_total{result="ok",transport="https"}`:          float64(sessions["https"]),
		`postern_handshakes_total{result="ok",transport="h3"}`:             float64(sessions["h3"]),
		`postern_handshakes_total{result="cover",transport="https"}`:       1,
		`postern_handshakes_total{result="cover",transport="h3"}`:          1,
		`postern_handshakes_total{result="auth_failed",transport="https"}`: 1,
		`postern_handshakes_total{result="auth_failed",transport="h3"}`:    1,
		`postern_handshakes_total{result="replay",transport="https"}`:      0,
		`postern_handshakes_total{result="replay",transport="h3"}`:         0,
		`postern_store_mailboxes`:                                          2,
		`postern_mailbox_ops_refused_total`:                                0,
		`postern_store_envelopes`:                                          float64(accepted - delivered),
	}
	got, body := waitMetrics(t, maddr, want)
	if got[`postern_store_bytes`] <= 0 {
		t.Errorf("postern_store_bytes = %v with envelopes stored", got[`postern_store_bytes`])
	}
	// Every accepted envelope and every ack was committed durably.
	if n := got[`postern_store_commit_writes_count`]; n < 1 {
		t.Errorf("postern_store_commit_writes_count = %v", n)
	}
	if w := got[`postern_store_commit_writes_sum`]; w < float64(accepted+delivered) {
		t.Errorf("postern_store_commit_writes_sum = %v, want at least %d (sends and acks)", w, accepted+delivered)
	}
	// Each commit with puts is synced; acks alone may share a later sync.
	if n := got[`postern_store_syncs_total`]; n < 1 || n > got[`postern_store_commit_writes_count`] {
		t.Errorf("postern_store_syncs_total = %v with %v commits", n, got[`postern_store_commit_writes_count`])
	}
	if got[`postern_store_commit_duration_seconds_count`] != got[`postern_store_commit_writes_count`] {
		t.Errorf("commit duration and writes histograms disagree")
	}
	// Only postern_ series carry labels beyond the standard collectors'.
	for series := range got {
		if strings.HasPrefix(series, "postern_") && strings.Contains(series, "{") {
			name := series[:strings.IndexByte(series, '{')]
			switch strings.TrimSuffix(name, "_bucket") {
			case "postern_handshakes_total", "postern_sessions_total", "postern_sessions_active",
				"postern_envelopes_rejected_total", "postern_build_info", "postern_send_duration_seconds",
				"postern_store_commit_duration_seconds", "postern_store_commit_writes", "postern_forwards_total":
			default:
				t.Errorf("unexpected labelled series %s", series)
			}
		}
	}

	// Nothing in the exposition identifies anyone.
	needles := []needle{addrNeedle("an address", "127.0.0."), addrNeedle("the session path", d.Endpoints[0].Path)}
	for _, m := range []*testMailbox{open, capped, nowhere} {
		needles = append(needles, bytesNeedle("mailbox id", m.id[:]),
			bytesNeedle("owner key", m.owner.Public().(ed25519.PublicKey)))
	}
	needles = append(needles, bytesNeedle("send capability", capped.cap))
	for _, ident := range []*envelope.Identity{recipient, sender} {
		p := ident.Public()
		needles = append(needles, bytesNeedle("sender key", p.Auth), bytesNeedle("x25519 key", p.X25519), bytesNeedle("x-wing key", p.XWing))
	}
	for _, id := range envelopeIDs {
		needles = append(needles, bytesNeedle("envelope id", id))
	}
	needles = append(needles, bytesNeedle("session key", d.Endpoints[0].Key), bytesNeedle("relay key", d.RelayKey))
	if leaks := findLeaks("/metrics", body, needles); len(leaks) > 0 {
		t.Fatalf("metadata leaked:\n%s", strings.Join(leaks, "\n"))
	}
	promtoolCheck(t, body)

	// The listener serves only /metrics and /healthz.
	for path, wantCode := range map[string]int{"/healthz": 200, "/": 404, "/debug/pprof/": 404, "/metrics/x": 404} {
		resp, err := http.Get("http://" + maddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != wantCode {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, wantCode)
		}
	}
	if code := rp.stop(); code != 0 {
		t.Fatalf("relay exit %d; logs:\n%s", code, rp.logs())
	}
	if strings.Contains(rp.logs(), "receive buffer") {
		t.Errorf("quic-go printed its receive buffer warning:\n%s", rp.logs())
	}
}

func goVersion(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestMetricsListenRefused: the relay refuses to serve metrics on a
// transport's port, naming the config field, and "off" disables metrics.
func TestMetricsListenRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	// Find a free port for https, then ask for metrics on the same one.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	_, stderr, code := runBin(t, bin, []string{"POSTERN_HOME=" + dir},
		"relay", "serve", "--data", filepath.Join(dir, "r1"), "--https", addr, "--h3", "off", "--metrics", addr)
	if code == 0 || !strings.Contains(stderr, `"metrics_listen"`) || !strings.Contains(stderr, `"https_listen"`) {
		t.Fatalf("metrics on the https port: exit %d, stderr:\n%s", code, stderr)
	}
	// The same check for a config file, and on all interfaces.
	cfg := filepath.Join(dir, "relay.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"h3_listen": "127.0.0.1:%d", "https_listen": "off", "metrics_listen": "0.0.0.0:%d"}`, port, port)), 0o644)
	_, stderr, code = runBin(t, bin, []string{"POSTERN_HOME=" + dir},
		"relay", "serve", "--data", filepath.Join(dir, "r2"), "--config", cfg)
	if code == 0 || !strings.Contains(stderr, cfg) || !strings.Contains(stderr, `"metrics_listen"`) || !strings.Contains(stderr, `"h3_listen"`) {
		t.Fatalf("metrics on the h3 port: exit %d, stderr:\n%s", code, stderr)
	}

	rp := startRelay(t, bin, filepath.Join(dir, "r3"), "--metrics", "off")
	if _, err := os.Stat(filepath.Join(rp.dir, "metrics.addr")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("metrics off, but metrics.addr: %v", err)
	}
	if strings.Contains(rp.logs(), "metrics listening") {
		t.Fatalf("metrics off, but logs say:\n%s", rp.logs())
	}
	rp.stop()
}

// TestSweepCountsExpired: the relay's TTL sweep reports what it deleted to
// postern_envelopes_expired_total.
func TestSweepCountsExpired(t *testing.T) {
	// Envelopes put "ten days ago" with a one-day TTL have expired now.
	st := store.NewMemory(store.Options{TTL: 24 * time.Hour, Now: func() time.Time { return time.Now().Add(-10 * 24 * time.Hour) }})
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var id [32]byte
	rand.Read(id[:])
	pub, _, _ := ed25519.GenerateKey(nil)
	if err := st.CreateMailbox(ctx, id, pub, nil); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := 0; i < n; i++ {
		if _, err := st.Put(ctx, id, []byte(fmt.Sprintf("envelope %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	met := metrics.NewRelay("dev")
	srv, err := metrics.Listen("127.0.0.1:0", met.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sweep(ctx, st, st, slog.New(slog.DiscardHandler), met)
	}()
	waitMetrics(t, srv.Addr().String(), map[string]float64{"postern_envelopes_expired_total": n})
	cancel()
	<-done
	if s := st.Stats(); s.Envelopes != 0 {
		t.Fatalf("%d envelopes left after the sweep", s.Envelopes)
	}
}
