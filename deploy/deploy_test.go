package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/transport/descriptor"
)

// requireTool returns the path of an external tool. A missing tool skips the
// test on a developer's machine and fails it in CI when ciRequired is set.
func requireTool(t *testing.T, name string, ciRequired bool) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if ciRequired && os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed; CI must install it (Debian package: see deploy/README.md)", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return path
}

func run(t *testing.T, dir string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readYAML parses a YAML file of this directory into its documents.
func readYAML(t *testing.T, path string) []any {
	t.Helper()
	docs, err := parseYAML(path, string(readFile(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// decodeStrict converts a parsed YAML or JSON value into v, rejecting fields
// that v does not declare.
func decodeStrict(value any, v any) error {
	b, err := json.Marshal(value)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

// relayJSON is deploy/relay.json as the relay reads it.
type relayJSON map[string]any

func loadRelayJSON(t *testing.T, data []byte) relayJSON {
	t.Helper()
	var cfg relayJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("relay.json: %v", err)
	}
	return cfg
}

func (c relayJSON) port(t *testing.T, field string) int {
	t.Helper()
	s, _ := c[field].(string)
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("relay.json %s = %q: %v", field, s, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("relay.json %s = %q: port is not a number", field, s)
	}
	return n
}

// TestRelayConfig checks that the example config is one a production relay
// runs with: transports on 443, metrics off the transport port and
// reachable by a scraper in a container, and the durable store.
func TestRelayConfig(t *testing.T) {
	cfg := loadRelayJSON(t, readFile(t, "relay.json"))
	if p := cfg.port(t, "https_listen"); p != 443 {
		t.Errorf("https_listen port %d, want 443", p)
	}
	if p := cfg.port(t, "h3_listen"); p != 443 {
		t.Errorf("h3_listen port %d, want 443", p)
	}
	if m := cfg.port(t, "metrics_listen"); m == 443 || m != 9464 {
		t.Errorf("metrics_listen port %d, want 9464 (never the transport port)", m)
	}
	if h, _, _ := net.SplitHostPort(cfg["metrics_listen"].(string)); h != "0.0.0.0" {
		t.Errorf("metrics_listen host %q: in a container it must be 0.0.0.0 so Prometheus can scrape it", h)
	}
	if cfg["store"] != "bolt" {
		t.Errorf("store = %v, want bolt (durable)", cfg["store"])
	}
	if _, ok := cfg["data_dir"]; ok {
		t.Errorf("data_dir is set; the image and the unit pass --data /var/lib/postern")
	}
}

// TestRelayConfigRuns starts the real relay with deploy/relay.json, its
// listen addresses moved to loopback ports chosen by the kernel, checks the
// descriptor it publishes, its health endpoint and that every metric it
// exports is one the rules and the dashboard know, and stops it with SIGTERM
// as docker, systemd and the kubelet do.
func TestRelayConfigRuns(t *testing.T) {
	goTool := requireTool(t, "go", true)
	dir := t.TempDir()
	bin := filepath.Join(dir, "postern")
	if out, err := run(t, "..", goTool, "build", "-o", bin, "./cmd/postern"); err != nil {
		t.Fatalf("go build ./cmd/postern: %v\n%s", err, out)
	}
	cfg := loadRelayJSON(t, readFile(t, "relay.json"))
	cfg["https_listen"] = "127.0.0.1:0"
	cfg["h3_listen"] = "127.0.0.1:0"
	cfg["metrics_listen"] = "127.0.0.1:0"
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard only
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "relay", "serve", "--data", data, "--config", cfgPath)
	cmd.Env = append(os.Environ(), "POSTERN_HOME="+filepath.Join(dir, "home"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The relay logs the address its metrics listener bound.
	metricsAddr := make(chan string, 1)
	var logMu sync.Mutex
	var logs strings.Builder
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		re := regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logs.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				metricsAddr <- m[1]
			}
		}
	}()
	logText := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.String()
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	if !sc.Scan() {
		cmd.Wait()
		<-logDone
		t.Fatalf("relay exited before printing its descriptor: %v\n%s", sc.Err(), logText())
	}
	// stdout names the descriptor file and never carries the descriptor
	// (its session key would land in the service manager's journal).
	ready := sc.Text()
	if strings.Contains(ready, descriptor.Prefix) || !strings.Contains(ready, filepath.Join(data, "descriptor")) {
		t.Errorf("stdout: %q, want the descriptor's path and not the descriptor", ready)
	}
	written, err := os.ReadFile(filepath.Join(data, "descriptor"))
	if err != nil {
		t.Fatalf("descriptor file: %v", err)
	}
	line := strings.TrimSpace(string(written))
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		t.Fatalf("descriptor: %v", err)
	}
	var transports []string
	for _, e := range d.Endpoints {
		transports = append(transports, e.Transport)
		if e.Addr != cfg["public_https"] || e.SNI != cfg["sni"] {
			t.Errorf("endpoint %s: addr %q sni %q, want the public name and SNI of relay.json", e.Transport, e.Addr, e.SNI)
		}
	}
	if !slices.Equal(transports, []string{"https", "h3"}) {
		t.Errorf("descriptor transports %v, want [https h3]", transports)
	}

	var addr string
	select {
	case addr = <-metricsAddr:
	case <-ctx.Done():
		t.Fatalf("the relay did not log its metrics address\n%s", logText())
	}
	get := func(path string) string {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %v", path, resp.Status, err)
		}
		return string(body)
	}
	get("/healthz") // the Kubernetes probes' path
	exported := map[string]bool{}
	for _, l := range strings.Split(get("/metrics"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name := l[:strings.IndexAny(l, "{ ")]
		exported[name] = true
		if strings.HasPrefix(name, "postern_") && !knownSeries(name) {
			t.Errorf("the relay exports %s, which the alert rules and dashboard do not know", name)
		}
	}
	// Metrics with no labels are exported from the start; the rules and the
	// dashboard also rely on the standard collectors.
	for _, want := range []string{"postern_build_info", "postern_store_bytes", "postern_store_quota_bytes",
		"postern_send_duration_seconds_count", "postern_store_commit_duration_seconds_count",
		"process_start_time_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total",
		"process_open_fds", "go_goroutines"} {
		if !exported[want] {
			t.Errorf("the relay does not export %s", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
	}
	<-logDone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("relay did not stop cleanly on SIGTERM: %v\n%s", err, logText())
	}
}

// TestPromtoolRules checks the alert rules and runs their unit tests.
func TestPromtoolRules(t *testing.T) {
	promtool := requireTool(t, "promtool", true)
	if out, err := run(t, "prometheus", promtool, "check", "rules", "alerts.yml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := run(t, "prometheus", promtool, "test", "rules", "alerts_test.yml"); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestPromtoolConfig checks the Prometheus config used by docker compose,
// including the rule file it loads.
func TestPromtoolConfig(t *testing.T) {
	promtool := requireTool(t, "promtool", true)
	out, err := run(t, "prometheus", promtool, "check", "config", "prometheus.yml")
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	if !strings.Contains(out, "1 rule files found") {
		t.Errorf("prometheus.yml does not load the alert rules:\n%s", out)
	}
	// The vantage-point example, with the blackbox-style /probe job.
	if out, err := run(t, "prometheus", promtool, "check", "config", "probe.yml"); err != nil {
		t.Fatalf("promtool check config probe.yml: %v\n%s", err, out)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := decodeStrict(readYAML(t, "prometheus/alerts.yml")[0], &rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	return rf
}

// TestEveryAlertTested requires, for every alert, a promtool case where it
// fires and one where it must not, and a severity and summary on each.
func TestEveryAlertTested(t *testing.T) {
	rf := loadRules(t)
	var tf ruleTestFile
	if err := decodeStrict(readYAML(t, "prometheus/alerts_test.yml")[0], &tf); err != nil {
		t.Fatalf("alerts_test.yml: %v", err)
	}
	fires := map[string]bool{}
	quiet := map[string]bool{}
	for _, tc := range tf.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !fires[r.Alert] {
				t.Errorf("alert %s has no promtool test where it fires", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("alert %s has no promtool test where it does not fire", r.Alert)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: summary and description annotations are required", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("alerts.yml has no alerts")
	}
	if !slices.Equal(tf.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("alerts_test.yml loads %v, want [alerts.yml]", tf.RuleFiles)
	}
}

// TestSystemdUnit runs systemd-analyze verify on the unit, failing on any
// warning, and holds its exposure score to the level recorded in the README.
func TestSystemdUnit(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", false)
	unit := string(readFile(t, "postern-relay.service"))
	for _, want := range []string{
		"DynamicUser=yes", "StateDirectory=postern", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
		"MemoryDenyWriteExecute=yes", "ProtectProc=invisible", "ProcSubset=pid", "UMask=0077",
		"Restart=on-failure",
		"ExecStart=/usr/local/bin/postern relay serve --data /var/lib/postern --config /etc/postern/relay.json",
	} {
		if !slices.Contains(strings.Split(unit, "\n"), want) {
			t.Errorf("postern-relay.service lacks %q", want)
		}
	}
	// verify checks that ExecStart's binary exists: point it at one that
	// does, in a copy of the unit under the same name.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "postern-relay.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/postern", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, sa, "verify", "--man=no", path)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// --threshold is on the 0-100 scale of the 0.0-10.0 exposure shown.
	out, err = run(t, dir, sa, "security", "--offline=yes", "--threshold=20", path)
	if err != nil {
		t.Fatalf("systemd-analyze security: exposure above 2.0 (%v)\n%s", err, lastLine(out))
	}
	t.Logf("systemd-analyze security: %s", lastLine(out))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// dockerInstr is one Dockerfile instruction with continuations joined.
type dockerInstr struct {
	line int
	cmd  string // upper case
	args string
}

func parseDockerfile(t *testing.T, src string) []dockerInstr {
	t.Helper()
	var out []dockerInstr
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{start, strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile ends in a line continuation")
	}
	return out
}

const imageUID = "65532"

// TestDockerfile checks the image recipe, since no Docker engine runs here.
func TestDockerfile(t *testing.T) {
	instrs := parseDockerfile(t, string(readFile(t, "Dockerfile")))
	var stages [][]dockerInstr
	for _, in := range instrs {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("line %d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build[0].args, "golang:") {
		t.Errorf("build stage FROM %s, want golang:…", build[0].args)
	}
	base := strings.Fields(final[0].args)[0]
	if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
		t.Errorf("final stage FROM %s, want distroless static or scratch", base)
	}
	buildText := ""
	for _, in := range build {
		buildText += in.cmd + " " + in.args + "\n"
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/postern"} {
		if !strings.Contains(buildText, want) {
			t.Errorf("build stage lacks %s", want)
		}
	}

	var user, entry string
	var expose, volumes []string
	for _, in := range instrs {
		switch in.cmd {
		case "ADD":
			if regexp.MustCompile(`(?i)(^|\s)(https?|git)://|git@`).MatchString(in.args) {
				t.Errorf("line %d: ADD from a URL: fetch in a build stage with a checksum instead", in.line)
			}
		case "RUN":
			if regexp.MustCompile(`\b(curl|wget)\b`).MatchString(in.args) {
				t.Errorf("line %d: downloads outside the Go module proxy", in.line)
			}
		}
	}
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "EXPOSE":
			expose = append(expose, strings.Fields(in.args)...)
		case "VOLUME":
			var v []string
			if err := json.Unmarshal([]byte(in.args), &v); err != nil {
				v = strings.Fields(in.args)
			}
			volumes = append(volumes, v...)
		case "RUN":
			t.Errorf("line %d: RUN in the final stage (distroless has no shell)", in.line)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final USER %q: want a numeric non-root uid (runAsNonRoot needs a number)", user)
	} else if uid != imageUID {
		t.Errorf("final USER %q: the manifests and compose file expect uid %s", user, imageUID)
	}
	for _, p := range []string{"443/tcp", "443/udp", "9464/tcp"} {
		if !slices.Contains(expose, p) {
			t.Errorf("EXPOSE lacks %s (has %v)", p, expose)
		}
	}
	if !slices.Contains(volumes, "/var/lib/postern") {
		t.Errorf("VOLUME %v lacks /var/lib/postern", volumes)
	}
	var argv []string
	if err := json.Unmarshal([]byte(entry), &argv); err != nil {
		t.Fatalf("ENTRYPOINT %s is not exec form: %v", entry, err)
	}
	want := []string{"relay", "serve", "--data", "/var/lib/postern", "--config", "/etc/postern/relay.json"}
	if len(argv) < 1 || filepath.Base(argv[0]) != "postern" || !slices.Equal(argv[1:], want) {
		t.Errorf("ENTRYPOINT %v, want postern %v", argv, want)
	}
	// The binary the ENTRYPOINT runs is the one the build stage copied in.
	copied := false
	for _, in := range final {
		if in.cmd == "COPY" && strings.Contains(in.args, "--from=") && strings.HasSuffix(in.args, " "+argv[0]) {
			copied = true
		}
	}
	if !copied {
		t.Errorf("no COPY --from=… puts the binary at %s", argv[0])
	}
}
