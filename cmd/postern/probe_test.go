package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/metrics"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// deadDescriptor signs, with a fresh key, a descriptor whose https and h3
// endpoints point at a loopback port nothing listens on. It returns the
// line, the relay id and the address.
func deadDescriptor(t *testing.T) (line, id, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	line, id = descriptorAt(t, addr, "https", "h3")
	return line, id, addr
}

// descriptorAt signs, with a fresh key, a descriptor with one endpoint at
// addr for each transport. It returns the line and the relay id.
func descriptorAt(t *testing.T, addr string, transports ...string) (line, id string) {
	t.Helper()
	key := make([]byte, descriptor.KeySize)
	rand.Read(key)
	pin := make([]byte, descriptor.PinSize)
	rand.Read(pin)
	d := &descriptor.Descriptor{Issued: time.Now().Truncate(time.Second), Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	for _, tr := range transports {
		d.Endpoints = append(d.Endpoints, descriptor.Endpoint{Transport: tr, Addr: addr, SNI: "localhost",
			Path: "/dead", Key: key, CertSHA256: pin})
	}
	_, priv, _ := ed25519.GenerateKey(nil)
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	return line, d.RelayID()
}

// probeRows parses the probe table into relay id + transport -> result.
func probeRows(t *testing.T, out string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "RELAY") {
		t.Fatalf("no table header in:\n%s", out)
	}
	rows := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("bad table row %q", l)
		}
		if _, err := time.ParseDuration(f[3]); err != nil {
			t.Fatalf("bad time in row %q", l)
		}
		rows[f[0]+" "+f[1]] = f[2]
	}
	return rows
}

func relayAddrs(t *testing.T, line string) []string {
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ep := range d.Endpoints {
		out = append(out, ep.Addr)
	}
	return out
}

func TestProbeOneShot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--metrics", "off")
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	live := d.RelayID()
	deadLine, dead, deadAddr := deadDescriptor(t)
	deadFile := filepath.Join(dir, "dead.descriptor")
	os.WriteFile(deadFile, []byte("# a relay that is down\n"+deadLine+"\n"), 0o644)
	envv := []string{"POSTERN_HOME=" + dir}
	secret := append(relayAddrs(t, rp.line), deadAddr)

	t.Run("live", func(t *testing.T) {
		out, stderr, code := runBin(t, bin, envv, "probe", filepath.Join(rp.dir, "descriptor"))
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, stderr)
		}
		rows := probeRows(t, out)
		if len(rows) != 2 || rows[live+" https"] != "ok" || rows[live+" h3"] != "ok" {
			t.Fatalf("rows %v\n%s", rows, out)
		}
		checkNoAddr(t, out+stderr, secret)
	})
	t.Run("dead", func(t *testing.T) {
		out, stderr, code := runBin(t, bin, envv, "probe", "--timeout", "3s", deadFile)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
		}
		rows := probeRows(t, out)
		for _, tr := range []string{"https", "h3"} {
			if r := rows[dead+" "+tr]; r != "refused" && r != "timeout" {
				t.Errorf("%s: %q, want refused or timeout\n%s", tr, r, out)
			}
		}
		if !strings.Contains(stderr, "2 of 2 relay/transport pairs failed") {
			t.Errorf("stderr: %s", stderr)
		}
		checkNoAddr(t, out+stderr, secret)
	})
	t.Run("both", func(t *testing.T) {
		// The live relay's descriptor as a line, the dead one as a file.
		out, stderr, code := runBin(t, bin, envv, "probe", "--timeout", "3s", rp.line, deadFile)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out, stderr)
		}
		rows := probeRows(t, out)
		if len(rows) != 4 || rows[live+" https"] != "ok" || rows[live+" h3"] != "ok" || rows[dead+" https"] == "ok" {
			t.Fatalf("rows %v", rows)
		}
		checkNoAddr(t, out+stderr, secret)
	})
	t.Run("usage", func(t *testing.T) {
		if _, _, code := runBin(t, bin, envv, "probe"); code != 2 {
			t.Fatalf("no descriptor: exit %d, want 2", code)
		}
		_, stderr, code := runBin(t, bin, envv, "probe", filepath.Join(dir, "missing"))
		if code != 1 || !strings.Contains(stderr, "missing") {
			t.Fatalf("missing file: exit %d %s", code, stderr)
		}
	})
}

// checkNoAddr fails if any relay address appears in the output.
func checkNoAddr(t *testing.T, out string, addrs []string) {
	t.Helper()
	for _, a := range addrs {
		_, port, _ := net.SplitHostPort(a)
		if strings.Contains(out, a) || strings.Contains(out, ":"+port) {
			t.Errorf("output reveals relay address %s:\n%s", a, out)
		}
	}
}

func TestProbeExporter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--metrics", "off")
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	live := d.RelayID()
	deadLine, dead, deadAddr := deadDescriptor(t)

	x := startProbeExporter(t, bin, []string{"POSTERN_HOME=" + dir}, "--interval", "1s", "--timeout", "3s", rp.line, deadLine)
	addr := x.addr

	want := map[string]float64{
		fmt.Sprintf(`postern_probe_success{relay=%q,transport="https"}`, live):                        1,
		fmt.Sprintf(`postern_probe_success{relay=%q,transport="h3"}`, live):                           1,
		fmt.Sprintf(`postern_probe_success{relay=%q,transport="https"}`, dead):                        0,
		fmt.Sprintf(`postern_probe_success{relay=%q,transport="h3"}`, dead):                           0,
		fmt.Sprintf(`postern_probe_failures_total{class="refused",relay=%q,transport="https"}`, live): 0,
	}
	got, body := waitMetrics(t, addr, want)
	for _, tr := range []string{"https", "h3"} {
		fails := 0.0
		for _, class := range []string{"refused", "timeout"} {
			fails += got[fmt.Sprintf(`postern_probe_failures_total{class=%q,relay=%q,transport=%q}`, class, dead, tr)]
		}
		if fails < 1 {
			t.Errorf("dead relay over %s: no refused or timeout failures counted:\n%s", tr, body)
		}
		if v, ok := got[fmt.Sprintf(`postern_probe_duration_seconds{relay=%q,transport=%q}`, live, tr)]; !ok || v <= 0 {
			t.Errorf("live relay over %s: duration %v %v", tr, v, ok)
		}
	}
	for series := range got {
		if strings.HasPrefix(series, "postern_envelopes") || strings.HasPrefix(series, "postern_handshakes") {
			t.Errorf("the prober exposes relay metric %s", series)
		}
	}
	secret := append(relayAddrs(t, rp.line), deadAddr)
	checkNoAddr(t, string(body), secret)
	promtoolCheck(t, body)

	logs := x.stop(t)
	if !strings.Contains(logs, "probe failed") || !strings.Contains(logs, dead) {
		t.Errorf("no failure logged for the dead relay:\n%s", logs)
	}
	checkNoAddr(t, logs, secret)
}

// probeExporter is a running `postern probe --listen` process.
type probeExporter struct {
	cmd    *exec.Cmd
	addr   string // host:port of its listener
	exited chan error
	mu     sync.Mutex
	stderr strings.Builder
}

// startProbeExporter runs `postern probe --listen 127.0.0.1:0 ARGS...`
// and waits until it serves.
func startProbeExporter(t *testing.T, bin string, envv []string, args ...string) *probeExporter {
	t.Helper()
	x := &probeExporter{exited: make(chan error, 1)}
	x.cmd = exec.Command(bin, append([]string{"probe", "--listen", "127.0.0.1:0"}, args...)...)
	x.cmd.Env = append(os.Environ(), envv...)
	x.cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.stderr.Write(p)
	})
	outPipe, err := x.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := x.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { x.exited <- x.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		x.cmd.Process.Kill()
		<-done
	})
	first := make(chan string, 1)
	go func() {
		br := bufio.NewReader(outPipe)
		l, _ := br.ReadString('\n')
		first <- l
		io.Copy(io.Discard, br)
	}()
	select {
	case l := <-first:
		const prefix = "serving probe metrics on http://"
		if !strings.HasPrefix(l, prefix) {
			t.Fatalf("probe printed %q\n%s", l, x.logs())
		}
		x.addr = strings.TrimSuffix(strings.TrimSpace(strings.TrimPrefix(l, prefix)), "/metrics")
	case <-time.After(60 * time.Second):
		t.Fatalf("probe exporter did not start\n%s", x.logs())
	}
	return x
}

func (x *probeExporter) logs() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stderr.String()
}

// stop sends SIGTERM, checks the exporter exits cleanly, and returns its
// logs.
func (x *probeExporter) stop(t *testing.T) string {
	t.Helper()
	x.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-x.exited:
		if err != nil {
			t.Fatalf("probe exporter exit: %v\n%s", err, x.logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("probe exporter did not stop on SIGTERM")
	}
	return x.logs()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestProbeClasses: a probe of an endpoint a censor or a dead relay has
// taken away reports the failure class that says which, in the table and
// as the exporter's class label.
func TestProbeClasses(t *testing.T) {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	key := make([]byte, descriptor.KeySize)
	pin := make([]byte, descriptor.PinSize)
	tcpSilent, err := net.Listen("tcp", "127.0.0.1:0") // connects complete; nobody talks
	if err != nil {
		t.Fatal(err)
	}
	defer tcpSilent.Close()
	udpSilent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpSilent.Close()
	cases := []struct {
		name, transport, addr, want string
	}{
		{"refused", "https", closedPort(t, "tcp"), "refused"},
		{"blackholed", "https", fullBacklog(t), "timeout"},
		{"ServerHello dropped", "https", tcpSilent.Addr().String(), "tls"},
		{"UDP dropped", "h3", udpSilent.LocalAddr().String(), "udp_silent"},
		{"UDP refused", "h3", closedPort(t, "udp"), "refused"},
	}
	p := &prober{reg: newRegistry(), timeout: 300 * time.Millisecond}
	met := metrics.NewProbe("test")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := route.Candidate{Relay: "r", Endpoint: transport.Endpoint{Transport: tc.transport, Addr: tc.addr,
				SNI: "localhost", Path: "/p", Key: key, CertSHA256: pin}}
			r := p.probe(t.Context(), probeTarget{relay: "r", transport: tc.transport, cands: []route.Candidate{c}})
			if r.status() != tc.want {
				t.Fatalf("probe: %q, want %q", r.status(), tc.want)
			}
			met.Failure(relayLabel, tc.transport, r.class.String(), r.took)
		})
	}
	failures := probeFailures(t, met)
	for _, tc := range cases {
		if k := tc.transport + " " + tc.want; failures[k] != 1 {
			t.Errorf("postern_probe_failures_total{transport,class} %s = %v, want 1", k, failures[k])
		}
	}
}

// relayLabel has the form of a relay id, so the exporter keeps it.
const relayLabel = "abcdefghijklmnopqrstuvwxyz"

func closedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// fullBacklog returns the address of a TCP listener whose accept queue is
// full: Linux drops further SYNs, as a blackhole does.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// probeFailures returns postern_probe_failures_total by "transport class".
func probeFailures(t *testing.T, met *metrics.Probe) map[string]float64 {
	t.Helper()
	mfs, err := met.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "postern_probe_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["transport"]+" "+labels["class"]] = m.GetCounter().GetValue()
		}
	}
	return out
}
