package metrics

import (
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const relayA = "abcdefghijklmnopqrstuvwxyz"

// exercise reports one event of every kind, plus values outside the fixed
// label sets.
func exercise(r *Relay, p *Probe) {
	r.Handshake("https", "ok")
	r.Handshake("h3", "cover")
	r.Handshake("h3", "cover")
	r.Handshake("127.0.0.1:8443", "ok") // not a transport name
	r.Handshake("https", "203.0.113.9") // not a result
	r.SessionOpened("https")
	r.SessionOpened("https")
	r.SessionClosed("https")
	r.SessionOpened("smtp")
	r.Envelope("accepted", "")
	r.Envelope("accepted", "")
	r.Envelope("delivered", "")
	r.Envelope("rejected", "capability")
	r.Envelope("rejected", "mailbox 0badc0de") // not a reason
	r.Envelope("bogus", "capability")          // not an event: ignored
	r.SendDuration(3 * time.Millisecond)
	r.Expired(4)
	r.Expired(0)
	r.Commit(7, 2*time.Millisecond)
	r.SetQuotaBytes(1 << 30)
	p.Target(relayA, "https")
	p.Success(relayA, "https", 250*time.Millisecond)
	p.Failure(relayA, "h3", "timeout", 10*time.Second)
	p.Failure("not-a-relay-id:127.0.0.1", "h3", "something", time.Second)
}

func TestExposition(t *testing.T) {
	r, p := NewRelay("v1.2.3"), NewProbe("v1.2.3")
	exercise(r, p)
	var mailboxes atomic.Int64
	r.WatchStore(func() StoreStats {
		return StoreStats{Mailboxes: int(mailboxes.Load()), Envelopes: 9, Bytes: 4096}
	})
	mailboxes.Store(3)

	want := `
# HELP postern_handshakes_total Requests that reached a transport listener, by transport and result: ok (authenticated relay session), auth_failed (session path, bad or expired token), replay (token seen before), cover (served the cover site), busy (valid session refused at the listener's session cap), limited (valid session refused at a per-source or per-connection cap or above the source's fair share), conn_limited (h3: a QUIC connection refused, per Initial packet, its source holding its cap of connections or its fair share of the listener's; https: a TCP connection reset at accept, its source holding its cap of connections), conn_busy (h3: a QUIC connection refused, per Initial packet, the listener holding its cap of connections with none to take, or a connection without a session closed to make room for a new one or under memory pressure).
# TYPE postern_handshakes_total counter
postern_handshakes_total{result="auth_failed",transport="h3"} 0
postern_handshakes_total{result="auth_failed",transport="https"} 0
postern_handshakes_total{result="busy",transport="h3"} 0
postern_handshakes_total{result="busy",transport="https"} 0
postern_handshakes_total{result="conn_busy",transport="h3"} 0
postern_handshakes_total{result="conn_busy",transport="https"} 0
postern_handshakes_total{result="conn_limited",transport="h3"} 0
postern_handshakes_total{result="conn_limited",transport="https"} 0
postern_handshakes_total{result="cover",transport="h3"} 2
postern_handshakes_total{result="cover",transport="https"} 0
postern_handshakes_total{result="limited",transport="h3"} 0
postern_handshakes_total{result="limited",transport="https"} 0
postern_handshakes_total{result="ok",transport="h3"} 0
postern_handshakes_total{result="ok",transport="https"} 1
postern_handshakes_total{result="ok",transport="other"} 1
postern_handshakes_total{result="other",transport="https"} 1
postern_handshakes_total{result="replay",transport="h3"} 0
postern_handshakes_total{result="replay",transport="https"} 0
# HELP postern_sessions_total Relay sessions started, by transport.
# TYPE postern_sessions_total counter
postern_sessions_total{transport="h3"} 0
postern_sessions_total{transport="https"} 2
postern_sessions_total{transport="other"} 1
# HELP postern_sessions_active Relay sessions open now, by transport.
# TYPE postern_sessions_active gauge
postern_sessions_active{transport="h3"} 0
postern_sessions_active{transport="https"} 1
postern_sessions_active{transport="other"} 1
# HELP postern_envelopes_accepted_total Envelopes made durable and acknowledged to their sender.
# TYPE postern_envelopes_accepted_total counter
postern_envelopes_accepted_total 2
# HELP postern_envelopes_delivered_total Envelopes acknowledged by their recipient and deleted.
# TYPE postern_envelopes_delivered_total counter
postern_envelopes_delivered_total 1
# HELP postern_envelopes_expired_total Envelopes deleted undelivered when their time to live ran out.
# TYPE postern_envelopes_expired_total counter
postern_envelopes_expired_total 4
# HELP postern_envelopes_rejected_total Envelopes refused at Send, by reason.
# TYPE postern_envelopes_rejected_total counter
postern_envelopes_rejected_total{reason="bad_envelope"} 0
postern_envelopes_rejected_total{reason="capability"} 1
postern_envelopes_rejected_total{reason="internal"} 0
postern_envelopes_rejected_total{reason="mailbox_full"} 0
postern_envelopes_rejected_total{reason="malformed"} 0
postern_envelopes_rejected_total{reason="no_mailbox"} 0
postern_envelopes_rejected_total{reason="other"} 1
postern_envelopes_rejected_total{reason="relay_full"} 0
postern_envelopes_rejected_total{reason="source_limit"} 0
# HELP postern_store_mailboxes Mailboxes in the store.
# TYPE postern_store_mailboxes gauge
postern_store_mailboxes 3
# HELP postern_store_envelopes Undelivered envelopes in the store.
# TYPE postern_store_envelopes gauge
postern_store_envelopes 9
# HELP postern_store_bytes Envelope bytes in the store (counted against postern_store_quota_bytes).
# TYPE postern_store_bytes gauge
postern_store_bytes 4096
# HELP postern_store_quota_bytes Configured maximum of envelope bytes in the store (0: no limit).
# TYPE postern_store_quota_bytes gauge
postern_store_quota_bytes 1.073741824e+09
`
	names := []string{"postern_handshakes_total", "postern_sessions_total", "postern_sessions_active",
		"postern_envelopes_accepted_total", "postern_envelopes_delivered_total", "postern_envelopes_expired_total",
		"postern_envelopes_rejected_total", "postern_store_mailboxes", "postern_store_envelopes", "postern_store_bytes",
		"postern_store_quota_bytes"}
	if err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// The store gauges are read at scrape time.
	mailboxes.Store(5)
	if err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(`
# HELP postern_store_mailboxes Mailboxes in the store.
# TYPE postern_store_mailboxes gauge
postern_store_mailboxes 5
`), "postern_store_mailboxes"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{
		"postern_send_duration_seconds": 1, "postern_store_commit_duration_seconds": 1, "postern_store_commit_writes": 1,
	} {
		if n := testutil.CollectAndCount(r.reg, name); n != want {
			t.Errorf("%s: %d series, want %d", name, n, want)
		}
	}

	wantProbe := `
# HELP postern_probe_success Whether the last probe of a relay over a transport completed the transport handshake, the relay hello and a ping (1) or not (0).
# TYPE postern_probe_success gauge
postern_probe_success{relay="abcdefghijklmnopqrstuvwxyz",transport="h3"} 0
postern_probe_success{relay="abcdefghijklmnopqrstuvwxyz",transport="https"} 1
postern_probe_success{relay="other",transport="h3"} 0
# HELP postern_probe_duration_seconds Duration of the last probe of a relay over a transport, until success or failure.
# TYPE postern_probe_duration_seconds gauge
postern_probe_duration_seconds{relay="abcdefghijklmnopqrstuvwxyz",transport="h3"} 10
postern_probe_duration_seconds{relay="abcdefghijklmnopqrstuvwxyz",transport="https"} 0.25
postern_probe_duration_seconds{relay="other",transport="h3"} 1
`
	if err := testutil.GatherAndCompare(p.Gatherer(), strings.NewReader(wantProbe),
		"postern_probe_success", "postern_probe_duration_seconds"); err != nil {
		t.Fatal(err)
	}
	fails := map[string]float64{}
	mfs, err := p.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "postern_probe_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + ","
			}
			fails[key] = m.GetCounter().GetValue()
		}
	}
	// Target declared every class of the https pair at zero.
	for _, c := range Classes {
		if v, ok := fails["class="+c+",relay="+relayA+",transport=https,"]; !ok || v != 0 {
			t.Errorf("https pair class %s: %v %v, want a zero series", c, v, ok)
		}
	}
	if v := fails["class=timeout,relay="+relayA+",transport=h3,"]; v != 1 {
		t.Errorf("h3 timeout failures = %v, want 1", v)
	}
	if v := fails["class=other,relay=other,transport=h3,"]; v != 1 {
		t.Errorf("clamped failure = %v, want 1 (have %v)", v, fails)
	}
}

// TestLabelsFromFixedSets checks every label value of every postern_
// series after feeding the metrics hostile values.
func TestLabelsFromFixedSets(t *testing.T) {
	r, p := NewRelay("dev"), NewProbe("dev")
	exercise(r, p)
	allowed := map[string][]string{
		"transport": append(Transports, Other),
		"result":    append(append(slices.Clone(Results), ForwardResults...), Other),
		"reason":    append(Reasons, Other),
		"class":     append(Classes, Other),
	}
	for _, g := range []prometheus.Gatherer{r.Gatherer(), p.Gatherer()} {
		mfs, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if !strings.HasPrefix(mf.GetName(), "postern_") {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					v := l.GetValue()
					switch l.GetName() {
					case "relay":
						if v != Other && !relayIDRE.MatchString(v) {
							t.Errorf("%s: relay label %q", mf.GetName(), v)
						}
					case "version", "goversion":
						if mf.GetName() != "postern_build_info" {
							t.Errorf("%s has label %s", mf.GetName(), l.GetName())
						}
					default:
						set, ok := allowed[l.GetName()]
						if !ok {
							t.Errorf("%s: unexpected label %s", mf.GetName(), l.GetName())
						} else if clamp(v, set) != v {
							t.Errorf("%s: %s=%q is outside its set", mf.GetName(), l.GetName(), v)
						}
					}
					if strings.Contains(v, "127.0.0.1") || strings.Contains(v, "203.0.113") || strings.Contains(v, "0badc0de") {
						t.Errorf("%s: label %s=%q carries caller data", mf.GetName(), l.GetName(), v)
					}
				}
			}
		}
	}
}

func TestClamp(t *testing.T) {
	for _, tc := range []struct {
		v    string
		set  []string
		want string
	}{
		{"https", Transports, "https"},
		{"h3", Transports, "h3"},
		{"HTTPS", Transports, Other},
		{"", Transports, Other},
		{"auth_failed", Results, "auth_failed"},
		{"relay_full", Reasons, "relay_full"},
		{"refused", Classes, "refused"},
		{"127.0.0.1", Classes, Other},
	} {
		if got := clamp(tc.v, tc.set); got != tc.want {
			t.Errorf("clamp(%q) = %q, want %q", tc.v, got, tc.want)
		}
	}
	for id, want := range map[string]string{
		relayA:                         relayA,
		"abcdefghijklmnopqrstuvwxy":    Other, // 25
		"abcdefghijklmnopqrstuvwxyz2":  Other, // 27
		"ABCDEFGHIJKLMNOPQRSTUVWXYZ":   Other,
		"abcdefghijklmnopqrstuvwxy1":   Other, // 1 is not base32
		"127.0.0.1:8443abcdefghijklmn": Other,
	} {
		if got := clampRelay(id); got != want {
			t.Errorf("clampRelay(%q) = %q, want %q", id, got, want)
		}
	}
}

// TestLint runs the promtool linter over everything both registries
// expose, including the Go and process collectors.
func TestLint(t *testing.T) {
	r, p := NewRelay("dev"), NewProbe("dev")
	exercise(r, p)
	for name, g := range map[string]prometheus.Gatherer{"relay": r.Gatherer(), "probe": p.Gatherer()} {
		problems, err := testutil.GatherAndLint(g)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, pr := range problems {
			t.Errorf("%s: %s: %s", name, pr.Metric, pr.Text)
		}
	}
	// The linter itself is sensitive: a badly named metric is reported.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "postern_requests", Help: "x"}))
	if problems, _ := testutil.GatherAndLint(bad); len(problems) == 0 {
		t.Fatal("linter accepted a counter without _total")
	}
}

func TestBuildInfo(t *testing.T) {
	r := NewRelay("v9.9.9")
	mfs, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "postern_build_info" {
			m := mf.GetMetric()[0]
			found = m.GetGauge().GetValue() == 1 && m.GetLabel()[1].GetValue() == "v9.9.9" &&
				strings.HasPrefix(m.GetLabel()[0].GetValue(), "go")
		}
	}
	if !found {
		t.Fatal("postern_build_info{version=\"v9.9.9\"} 1 missing")
	}
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if testutil.CollectAndCount(r.reg, want) == 0 {
			t.Errorf("%s missing", want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:8443", "127.0.0.1:8443", true},
		{"127.0.0.1:9464", "127.0.0.1:8443", false},
		{"0.0.0.0:8443", "127.0.0.1:8443", true},
		{"127.0.0.1:8443", "[::]:8443", true},
		{":8443", "127.0.0.1:8443", true},
		{"localhost:8443", "127.0.0.1:8443", true},
		{"127.0.0.1:8443", "127.0.0.2:8443", false},
		{"[::1]:8443", "[::1]:8443", true},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{"off", "127.0.0.1:8443", false},
	} {
		if got := Overlaps(tc.a, tc.b); got != tc.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := Overlaps(tc.b, tc.a); got != tc.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

func TestListenRefusesTransportAddress(t *testing.T) {
	// A transport listener holds a TCP port; metrics may not take the same
	// address, nor the same port on all interfaces.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	taddr := tl.Addr().String()
	_, port, _ := net.SplitHostPort(taddr)
	// A UDP transport (h3) on a port nobody holds over TCP is refused too.
	ul, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	uaddr := ul.LocalAddr().String()
	reserved := []Reserved{{"https_listen", taddr}, {"h3_listen", uaddr}}
	for _, tc := range []struct{ addr, field string }{
		{taddr, "https_listen"},
		{"0.0.0.0:" + port, "https_listen"},
		{uaddr, "h3_listen"},
	} {
		s, err := Listen(tc.addr, NewRelay("dev").Gatherer(), reserved...)
		if err == nil {
			s.Close()
			t.Fatalf("metrics listener accepted %s", tc.addr)
		}
		if !errors.Is(err, ErrReserved) || !strings.Contains(err.Error(), tc.field) {
			t.Fatalf("Listen(%s): %v; want ErrReserved naming %s", tc.addr, err, tc.field)
		}
	}
	s, err := Listen("127.0.0.1:0", NewRelay("dev").Gatherer(), reserved...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if Overlaps(s.Addr().String(), taddr) || Overlaps(s.Addr().String(), uaddr) {
		t.Fatalf("metrics bound %s, a reserved port", s.Addr())
	}
}

func TestServer(t *testing.T) {
	r := NewRelay("dev")
	r.Envelope("accepted", "")
	s, err := Listen("127.0.0.1:0", r.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := "http://" + s.Addr().String()
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("GET", "/metrics"); code != 200 || !strings.Contains(body, "\npostern_envelopes_accepted_total 1\n") {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	if code, body := get("GET", "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	s.SetHealth(func() error { return errors.New("store disk full") })
	if code, body := get("GET", "/healthz"); code != 503 || body != "unhealthy: store disk full\n" {
		t.Fatalf("/healthz while unhealthy: %d %q", code, body)
	}
	if code, body := get("GET", "/livez"); code != 200 || body != "ok\n" {
		t.Fatalf("/livez while unhealthy: %d %q", code, body)
	}
	s.SetHealth(func() error { return nil })
	if code, _ := get("GET", "/healthz"); code != 200 {
		t.Fatalf("/healthz after recovery: %d", code)
	}
	for _, p := range []string{"/", "/metrics/", "/metricsx", "/debug/pprof/", "/healthz/x", "/favicon.ico"} {
		if code, _ := get("GET", p); code != 404 {
			t.Errorf("GET %s: %d, want 404", p, code)
		}
	}
	if code, _ := get("POST", "/metrics"); code == 200 {
		t.Errorf("POST /metrics: %d", code)
	}
	s.Close()
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("listener still serving after Close")
	}
}

func TestDescriptorExpiry(t *testing.T) {
	r := NewRelay("test")
	r.SetDescriptorExpiry(time.Unix(1_800_000_000, 0))
	if err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(`
# HELP postern_descriptor_expiry_timestamp_seconds Unix time when the relay's current signed descriptor expires; the relay re-signs it at half its validity.
# TYPE postern_descriptor_expiry_timestamp_seconds gauge
postern_descriptor_expiry_timestamp_seconds 1.8e+09
`), "postern_descriptor_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
}

func TestForwardMetrics(t *testing.T) {
	r := NewRelay("test")
	for _, e := range []string{"queued", "queued", "delivered", "up", "up", "down", "bogus"} {
		r.Forward(e)
	}
	r.WatchOutbox(func() (int, int64) { return 1, 70000 })
	if err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(`
# HELP postern_forward_queue_bytes Bytes of forward layers waiting in the outbox.
# TYPE postern_forward_queue_bytes gauge
postern_forward_queue_bytes 70000
# HELP postern_forward_queue_items Forward layers waiting in this entry relay's outbox for their home relays.
# TYPE postern_forward_queue_items gauge
postern_forward_queue_items 1
# HELP postern_links_up Links to other relays that have a session now.
# TYPE postern_links_up gauge
postern_links_up 1
`), "postern_forward_queue_bytes", "postern_forward_queue_items", "postern_links_up"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(r.forwards.WithLabelValues("queued")); got != 2 {
		t.Fatalf("queued %v", got)
	}
	if got := testutil.CollectAndCount(r.forwards); got != len(ForwardResults) {
		t.Fatalf("%d forward series, want only the fixed results", got)
	}
}
