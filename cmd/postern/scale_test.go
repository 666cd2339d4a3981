package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// TestScale holds many idle relay sessions on a real `postern relay serve`
// process and measures what they cost it, and what they cost a legitimate
// client's send→deliver round trip. It runs only when asked:
//
//	POSTERN_SCALE=20000 go test -run '^TestScale$' -v -timeout 90m ./cmd/postern
//
// Variables (all optional but POSTERN_SCALE):
//
//	POSTERN_SCALE            sessions to hold per transport (e.g. 2000, 20000)
//	POSTERN_SCALE_TRANSPORT  "https", "h3" or "https,h3" (default), one relay each
//	POSTERN_SCALE_K          legitimate round trips, idle and loaded (default 500)
//	POSTERN_SCALE_PAR        sessions opened in parallel (default 32)
//	POSTERN_SCALE_PER_SOURCE sessions per loopback source address (default 32;
//	                         the listener allows 64 per source)
//	POSTERN_SCALE_PING       how often each held session pings, as a client
//	                         following a mailbox does (default 1m; the relay
//	                         closes a session silent for 5m)
//	POSTERN_SCALE_WORKERS    load worker processes holding the sessions (default:
//	                         1, this process, unless RLIMIT_NOFILE is too small)
//	POSTERN_SCALE_BULK       KiB each held session sends once it is open, as
//	                         one Send the relay reads whole and refuses (an
//	                         envelope of random bytes): the sessions are held
//	                         after bulk traffic, not after a ping only
//	                         (default 0, none)
//	POSTERN_SCALE_SETTLE     how long to wait once the sessions are open
//	                         before measuring them held (default 0): the
//	                         runtime returns memory to the system over
//	                         seconds, and the relay lowers GOGC once opening
//	                         stops (gctune.go)
//	POSTERN_SCALE_TRAFFIC    envelopes/s of 4 KiB to send, open loop, once the
//	                         sessions are measured held, while they stay
//	                         held (default 0: no traffic phase; see
//	                         runTraffic)
//	POSTERN_SCALE_TRAFFIC_FOR how long the traffic phase lasts (default 1m)
//	POSTERN_SCALE_TIMEOUT    bound of one transport's run (default 20m)
//	POSTERN_SCALE_MEMORY_MIB the relay's memory_limit in MiB (default 2048;
//	                         GOMEMLIMIT is nine tenths of it)
//	POSTERN_SCALE_BIN        a postern binary to run as the relay instead of
//	                         this tree's (to measure a change side by side)
//	POSTERN_SCALE_PROFILE    a directory: run the relay as this test binary
//	                         (the same code as `postern`) and write its heap
//	                         profile, and a CPU profile of the loaded round
//	                         trips, there while the sessions are held (run
//	                         without -race then)
//	POSTERN_SCALE_MEMPROFILERATE  with POSTERN_SCALE_PROFILE: the relay's
//	                         runtime.MemProfileRate (1 records every
//	                         allocation; Go's default samples one per 512 KiB)
//
// For the relay's GC cycles in the log, point POSTERN_SCALE_BIN at a
// script that runs `GODEBUG=gctrace=1 exec postern "$@"`.
//
// The relay runs with memory_limit 2 GiB and max_sessions N + 256. It
// asserts only correctness: every session opened and is alive at the end
// (a sample answers a ping), every legitimate envelope was delivered, and
// the relay's peak RSS stayed under memory_limit. Timings and memory are
// logged, never asserted.
func TestScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("POSTERN_SCALE"))
	if n <= 0 {
		t.Skip("set POSTERN_SCALE=N (e.g. 2000 or 20000) to hold N sessions on a relay process")
	}
	// This process holds one socket per session (TCP for https, UDP for
	// h3) and the relay one TCP socket per https session.
	nofile, err := raiseNofile(uint64(n + scaleSpareFiles))
	if err != nil || nofile < 2*scaleSpareFiles {
		t.Skipf("RLIMIT_NOFILE is %d (%v): raise it to at least %d (ulimit -n)", nofile, err, n+scaleSpareFiles)
	}
	for _, tr := range strings.Split(cmp.Or(os.Getenv("POSTERN_SCALE_TRANSPORT"), "https,h3"), ",") {
		t.Run(tr, func(t *testing.T) { runScale(t, strings.TrimSpace(tr), n, int(nofile)) })
	}
}

// scaleRelay is a relay process under load and how to read its figures.
type scaleRelay struct {
	*relayProc
	d       *descriptor.Descriptor
	metrics string // host:port of /metrics
	profile string // heap profile path, or ""
}

// scaleMemoryLimit is the relay's memory_limit: POSTERN_SCALE_MEMORY_MIB
// MiB, default 2 GiB.
func scaleMemoryLimit() int64 { return int64(envInt("POSTERN_SCALE_MEMORY_MIB", 2048)) << 20 }

// startScaleRelay starts a relay with memory_limit scaleMemoryLimit() and max_sessions
// n + 256 (and the settings in extra): this tree's binary,
// POSTERN_SCALE_BIN, or this test binary with POSTERN_SCALE_PROFILE.
func startScaleRelay(t *testing.T, tr string, n int, extra ...map[string]any) *scaleRelay {
	dir := t.TempDir()
	settings := map[string]any{"max_sessions": n + 256, "memory_limit": scaleMemoryLimit()}
	for _, e := range extra {
		maps.Copy(settings, e)
	}
	cfg, _ := json.Marshal(settings)
	cfgPath := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	bin, profile := "", ""
	if pdir := os.Getenv("POSTERN_SCALE_PROFILE"); pdir != "" {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(pdir, 0o755); err != nil {
			t.Fatal(err)
		}
		bin, profile = exe, filepath.Join(pdir, fmt.Sprintf("relay-heap-%s-%d.pprof", tr, n))
		t.Setenv(scaleChildEnv, profile)
	} else if bin = os.Getenv("POSTERN_SCALE_BIN"); bin == "" {
		bin = buildBinary(t)
	}
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--config", cfgPath, "--log-level", "warn")
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	addr, err := os.ReadFile(filepath.Join(dir, "relay", "metrics.addr"))
	if err != nil {
		t.Fatal(err)
	}
	return &scaleRelay{relayProc: rp, d: d, metrics: strings.TrimSpace(string(addr)), profile: profile}
}

// scaleSample is one reading of the relay's memory and goroutines.
type scaleSample struct {
	mem        procMem
	goroutines float64
	heapInuse  float64
	stackInuse float64
	active     float64
}

func (r *scaleRelay) sample(t *testing.T, tr string) scaleSample {
	t.Helper()
	mem, err := readProcMem(r.cmd.Process.Pid)
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	m, _ := scrape(t, r.metrics)
	return scaleSample{mem: mem, goroutines: m["go_goroutines"], heapInuse: m["go_memstats_heap_inuse_bytes"],
		stackInuse: m["go_memstats_stack_inuse_bytes"],
		active:     m[`postern_sessions_active{transport="`+tr+`"}`]}
}

// gcTrace counts the relay's gctrace lines so far (GODEBUG=gctrace=1 in
// its environment, e.g. through a POSTERN_SCALE_BIN wrapper) and returns
// the last one.
func (r *scaleRelay) gcTrace() (n int, last string) {
	for _, l := range strings.Split(r.logs(), "\n") {
		if strings.HasPrefix(l, "gc ") && strings.Contains(l, " MB, ") {
			n, last = n+1, l
		}
	}
	return n, last
}

// refusals sums the relay's handshake outcomes other than ok for tr.
func (r *scaleRelay) refusals(t *testing.T, tr string) string {
	m, _ := scrape(t, r.metrics)
	var out []string
	for k, v := range m {
		if strings.HasPrefix(k, "postern_handshakes_total{") && strings.Contains(k, `transport="`+tr+`"`) &&
			!strings.Contains(k, `result="ok"`) && v > 0 {
			out = append(out, fmt.Sprintf("%s=%g", k[len("postern_handshakes_total"):], v))
		}
	}
	return strings.Join(out, " ")
}

// scaleSpareFiles is the file descriptors a process needs beside one per
// session.
const scaleSpareFiles = 512

// newHolder holds the sessions in this process when RLIMIT_NOFILE allows
// (or POSTERN_SCALE_WORKERS says how many worker processes to use).
func newHolder(t *testing.T, ctx context.Context, s loadSpec, nofile int) loadHolder {
	n := s.To - s.From
	workers := envInt("POSTERN_SCALE_WORKERS", (n+nofile-scaleSpareFiles-1)/(nofile-scaleSpareFiles))
	if workers <= 1 {
		return newLocalHolder(ctx, s, t.Logf)
	}
	t.Logf("%s: %d sessions in %d load worker processes (RLIMIT_NOFILE %d)", s.Transport, n, workers, nofile)
	h, err := newWorkerHolder(s, workers, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func runScale(t *testing.T, tr string, n, nofile int) {
	if tr != "https" && tr != "h3" {
		t.Fatalf("POSTERN_SCALE_TRANSPORT: %q is not https or h3", tr)
	}
	// The relay holds a TCP socket per https session, one UDP socket for
	// all of h3.
	if tr == "https" && nofile < n+scaleSpareFiles {
		t.Skipf("RLIMIT_NOFILE is %d (hard limit), and a relay holding %d https sessions needs %d open files: raise the hard limit (root with CAP_SYS_RESOURCE, or LimitNOFILE in a systemd unit)",
			nofile, n, n+scaleSpareFiles)
	}
	perSource := envInt("POSTERN_SCALE_PER_SOURCE", 32)
	ctx, cancel := context.WithTimeout(context.Background(), envDuration("POSTERN_SCALE_TIMEOUT", 20*time.Minute))
	defer cancel()
	if dl, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Minute))
		defer cancel()
	}
	k := envInt("POSTERN_SCALE_K", 500)
	rl := startScaleRelay(t, tr, n)
	defer rl.stop()
	legit := newLegitClient(t, ctx, rl.d, tr)
	defer legit.close()
	legit.roundTrips(t, ctx, 20) // warm up
	s0 := rl.sample(t, tr)
	idle := legit.roundTrips(t, ctx, k)

	h := newHolder(t, ctx, loadSpec{Line: rl.line, Transport: tr, From: 0, To: n,
		Sources: (n + perSource - 1) / perSource, Par: envInt("POSTERN_SCALE_PAR", 32),
		Ping: envDuration("POSTERN_SCALE_PING", time.Minute)}, nofile)
	defer h.close()
	start, drops0 := time.Now(), udpRcvbufErrors()
	opened, firstErr := h.open(ctx)
	openTime := time.Since(start)
	drops1 := udpRcvbufErrors()
	t.Logf("%s: UDP datagrams dropped host-wide for full receive buffers while opening: %d", tr, drops1-drops0)
	if opened < n {
		t.Errorf("opened %d of %d %s sessions in %s; first failure: %v; relay refusals: %s",
			opened, n, tr, openTime.Round(time.Second), firstErr, rl.refusals(t, tr))
	}
	if settle := envDuration("POSTERN_SCALE_SETTLE", 0); settle > 0 {
		t.Logf("%s: letting the relay settle for %s before measuring", tr, settle)
		select {
		case <-time.After(settle):
		case <-ctx.Done():
		}
	}
	sN := rl.sample(t, tr)
	gc0, lastGC := rl.gcTrace()
	t.Logf("%s: %d held: relay VmRSS %d MiB, Go heap in use %d MiB, %.0f goroutines", tr, opened, sN.mem.rss>>20, int64(sN.heapInuse)>>20, sN.goroutines)
	if gc0 > 0 {
		t.Logf("%s: relay GC cycles so far: %d; last: %s", tr, gc0, lastGC)
	}
	if rl.profile != "" {
		rl.cmd.Process.Signal(syscall.SIGUSR2) // CPU profile of the loaded round trips
	}
	loaded := legit.roundTrips(t, ctx, k)
	if rl.profile != "" {
		rl.cmd.Process.Signal(syscall.SIGUSR2)
		t.Logf("relay CPU profile of the loaded round trips: %s (go tool pprof -top %s)", cpuProfilePath(rl.profile), cpuProfilePath(rl.profile))
	}
	sEnd := rl.sample(t, tr)
	if gc1, last := rl.gcTrace(); gc1 > 0 {
		t.Logf("%s: relay GC cycles during the loaded round trips: %d; last: %s", tr, gc1-gc0, last)
	}
	if rl.profile != "" {
		rl.heapProfile(t, ctx)
	}
	if rate := envInt("POSTERN_SCALE_TRAFFIC", 0); rate > 0 {
		runTraffic(t, ctx, rl, tr, legit, k, rate, envDuration("POSTERN_SCALE_TRAFFIC_FOR", time.Minute))
	}
	dead, sampleFails, pingFails, err := h.check(ctx)
	if err != nil {
		t.Error(err)
	}
	t.Logf("%s: UDP datagrams dropped host-wide for full receive buffers while held: %d", tr, udpRcvbufErrors()-drops1)
	logScale(t, tr, n, opened, openTime, s0, sN, sEnd, idle, loaded, h.mem())
	// conn_busy here would be the h3 listener shedding connections (pressure.go).
	t.Logf("%s: handshake outcomes other than ok: %s", tr, cmp.Or(rl.refusals(t, tr), "none"))
	if dead > 0 || sampleFails > 0 || pingFails > 0 {
		t.Errorf("%d of %d held sessions ended, %d of a sample failed a ping at the end, %d keep-alive pings failed",
			dead, opened, sampleFails, pingFails)
	}
	if peak, limit := max(sN.mem.hwm, sEnd.mem.hwm), scaleMemoryLimit(); peak >= limit {
		t.Errorf("relay peak RSS %d MiB with %d sessions, over memory_limit %d MiB", peak>>20, opened, limit>>20)
	}
}

func logScale(t *testing.T, tr string, n, opened int, openTime time.Duration, s0, sN, sEnd scaleSample, idle, loaded latencies, self procMem) {
	mib := func(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
	per := func(a, b float64) string {
		if opened == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f KiB", (b-a)/float64(opened)/1024)
	}
	t.Logf("%s: opened %d of %d sessions in %s (%.0f/s)", tr, opened, n, openTime.Round(time.Millisecond), float64(opened)/openTime.Seconds())
	t.Logf("%s: relay VmRSS %s idle → %s held → %s after the loaded round trips; VmHWM %s", tr,
		mib(s0.mem.rss), mib(sN.mem.rss), mib(sEnd.mem.rss), mib(max(sN.mem.hwm, sEnd.mem.hwm)))
	t.Logf("%s: RSS per session %s; Go heap in use %s → %s (%s per session); goroutines %.0f → %.0f (%.1f per session); sessions_active %.0f",
		tr, per(float64(s0.mem.rss), float64(sN.mem.rss)), mib(int64(s0.heapInuse)), mib(int64(sN.heapInuse)),
		per(s0.heapInuse, sN.heapInuse), s0.goroutines, sN.goroutines, (sN.goroutines-s0.goroutines)/float64(max(opened, 1)), sN.active)
	t.Logf("%s: goroutine stacks %s → %s (%s per session)", tr, mib(int64(s0.stackInuse)), mib(int64(sN.stackInuse)), per(s0.stackInuse, sN.stackInuse))
	t.Logf("%s: legitimate send→deliver, idle relay:  %s", tr, idle)
	t.Logf("%s: legitimate send→deliver, %d held: %s", tr, opened, loaded)
	t.Logf("%s: load generator VmRSS %s, VmHWM %s", tr, mib(self.rss), mib(self.hwm))
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	t.Logf("| %s | %d | %s | %s | %s | %s | %.0f | %s / %s | %s / %s |", tr, opened, mib(sN.mem.rss), per(float64(s0.mem.rss), float64(sN.mem.rss)),
		per(s0.heapInuse, sN.heapInuse), per(s0.stackInuse, sN.stackInuse), sN.goroutines, ms(idle.p50), ms(idle.p99), ms(loaded.p50), ms(loaded.p99))
}

// heapProfile asks the profiling relay child for a heap profile and waits
// for the file.
func (r *scaleRelay) heapProfile(t *testing.T, ctx context.Context) {
	os.Remove(r.profile)
	r.cmd.Process.Signal(syscall.SIGUSR1)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(r.profile); err == nil {
			t.Logf("relay heap profile: %s (go tool pprof -sample_index=inuse_space -top %s)", r.profile, r.profile)
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Errorf("no heap profile from the relay child: %v", ctx.Err())
			return
		}
	}
	t.Errorf("no heap profile from the relay child after 60s")
}

// legitClient is one user: a sender session and a receiver session
// subscribed to its mailbox, from 127.0.0.1.
type legitClient struct {
	send, recv *client.Client
	owner      ed25519.PrivateKey
	id         [32]byte
	card       *envelope.Card
	stop       chan struct{} // ends the keep-alive pings
	pinged     chan struct{} // closed when they have ended
}

func newLegitClient(t *testing.T, ctx context.Context, d *descriptor.Descriptor, tr string) *legitClient {
	t.Helper()
	opts := client.DialOptions{Transport: tr, LocalAddr: "127.0.0.1"}
	l := &legitClient{}
	var err error
	if l.send, err = client.Dial(ctx, newRegistry(), opts, d); err != nil {
		t.Fatalf("legitimate sender: %v", err)
	}
	if l.recv, err = client.Dial(ctx, newRegistry(), opts, d); err != nil {
		l.send.Close()
		t.Fatalf("legitimate receiver: %v", err)
	}
	_, l.owner, _ = ed25519.GenerateKey(nil)
	rand.Read(l.id[:])
	if err := l.recv.CreateMailbox(ctx, l.owner, l.id, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.recv.Subscribe(ctx, l.owner, l.id); err != nil {
		t.Fatal(err)
	}
	ident, _ := envelope.NewIdentity()
	l.card = ident.Card(l.id, nil, nil)
	l.stop, l.pinged = make(chan struct{}), make(chan struct{})
	go l.keepAlive()
	return l
}

// keepAlive pings both sessions every 30 s, as a client following its
// mailbox does, so that the relay does not close them as idle while the
// load is opened.
func (l *legitClient) keepAlive() {
	defer close(l.pinged)
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		for _, c := range []*client.Client{l.send, l.recv} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c.Ping(ctx) // a failure shows in the next round trip
			cancel()
		}
	}
}

func (l *legitClient) close() {
	close(l.stop)
	<-l.pinged
	l.send.Close()
	l.recv.Close()
}

// scaleDeliverWait bounds one legitimate send→deliver round trip.
const scaleDeliverWait = 30 * time.Second

// roundTrips sends k small envelopes, one at a time, and times each from
// Send to its push on the receiver. Envelopes are sealed beforehand and
// acked afterwards, outside the timing.
func (l *legitClient) roundTrips(t *testing.T, ctx context.Context, k int) latencies {
	t.Helper()
	envs := make([][]byte, k)
	for i := range envs {
		var err error
		if envs[i], err = envelope.Seal(l.card, nil, []byte("scale test "+strconv.Itoa(i)), &envelope.Options{Suite: envelope.SuiteX25519}); err != nil {
			t.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, k)
	wait := time.NewTimer(scaleDeliverWait)
	defer wait.Stop()
	for i, env := range envs {
		start := time.Now()
		wait.Reset(scaleDeliverWait)
		if _, err := l.send.Send(ctx, env, nil); err != nil {
			t.Fatalf("legitimate send %d of %d: %v", i+1, k, err)
		}
		select {
		case dl, ok := <-l.recv.Deliveries():
			if !ok {
				t.Fatalf("legitimate receiver's session ended after %d of %d: %v", i, k, l.recv.Err())
			}
			lat = append(lat, time.Since(start))
			if _, err := l.recv.Ack(ctx, l.owner, l.id, dl.Ref); err != nil {
				t.Fatalf("legitimate ack %d of %d: %v", i+1, k, err)
			}
		case <-wait.C:
			t.Fatalf("legitimate envelope %d of %d not delivered within %s", i+1, k, scaleDeliverWait)
		case <-ctx.Done():
			t.Fatalf("legitimate envelope %d of %d not delivered: %v", i+1, k, ctx.Err())
		}
	}
	return summarize(lat)
}

// sessionPool holds the idle sessions.
type sessionPool struct {
	mu sync.Mutex
	cs []*client.Client
}

func (p *sessionPool) add(c *client.Client) {
	p.mu.Lock()
	p.cs = append(p.cs, c)
	p.mu.Unlock()
}

func (p *sessionPool) snapshot() []*client.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cs[:len(p.cs):len(p.cs)]
}

// loadSpec is a share of the load: sessions from..to-1 of the relay in
// Line over Transport, session i from source address i % Sources.
type loadSpec struct {
	Line, Transport string
	From, To        int
	Sources, Par    int
	Ping            time.Duration
}

// openRange dials the sessions of s, s.Par at a time: transport
// handshake, relay hello and a ping each. It stops early after 64
// failures and returns how many opened and the first failure. progress
// is called with the count opened at every tenth of the share.
func (p *sessionPool) openRange(ctx context.Context, s loadSpec, progress func(int)) (int, error) {
	d, err := descriptor.Parse(s.Line, time.Now())
	if err != nil {
		return 0, err
	}
	var ep transport.Endpoint
	for _, e := range d.Endpoints {
		if te := e.TransportEndpoint(); te.Transport == s.Transport {
			ep = te
		}
	}
	if ep.Transport == "" {
		return 0, fmt.Errorf("the relay's descriptor has no %s endpoint", s.Transport)
	}
	reg := newRegistry()
	octx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		opened, failed atomic.Int64
		next           = atomic.Int64{}
		firstErr       atomic.Pointer[error]
		wg             sync.WaitGroup
	)
	next.Store(int64(s.From))
	every := int64(max((s.To-s.From)/10, 1))
	for range s.Par {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < s.To && octx.Err() == nil; i = int(next.Add(1) - 1) {
				e := ep
				e.LocalAddr = sourceAddr(i % s.Sources)
				c, err := openOne(octx, reg, e, d.RelayKey)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					if failed.Add(1) >= 64 {
						stop()
					}
					continue
				}
				p.add(c)
				if o := opened.Add(1); o%every == 0 {
					progress(int(o))
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return int(opened.Load()), *e
	}
	return int(opened.Load()), nil
}

// openOne opens one session and checks it answers a ping.
func openOne(ctx context.Context, reg *transport.Registry, ep transport.Endpoint, relayKey ed25519.PublicKey) (*client.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := reg.Dial(dctx, ep)
	if err != nil {
		return nil, err
	}
	c, err := client.New(dctx, conn, client.WithRelayKey(relayKey))
	if err != nil {
		return nil, fmt.Errorf("relay hello: %w", err)
	}
	if err := c.Ping(dctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("first ping: %w", err)
	}
	if kib := envInt("POSTERN_SCALE_BULK", 0); kib > 0 {
		if err := sendBulk(dctx, c, kib<<10); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// sendBulk sends n bytes through session c as one Send of random bytes,
// which the relay reads whole and refuses as no envelope (a refusal from
// the relay, not a failure to send, proves the bytes reached it), then
// checks the session still answers.
func sendBulk(ctx context.Context, c *client.Client, n int) error {
	junk := make([]byte, n)
	rand.Read(junk)
	_, err := c.Send(ctx, junk, nil)
	var refused *relay.Error
	switch {
	case err == nil:
		return errors.New("bulk: the relay accepted random bytes as an envelope")
	case !errors.As(err, &refused):
		return fmt.Errorf("bulk: %w", err)
	}
	if err := c.Ping(ctx); err != nil {
		return fmt.Errorf("ping after bulk: %w", err)
	}
	return nil
}

// keepAlive pings the held sessions one after another so that each is
// pinged about once per every, as a client following its mailbox does,
// until ctx ends. every 0 disables it.
func (p *sessionPool) keepAlive(ctx context.Context, every time.Duration, fails *atomic.Int64) {
	if every <= 0 {
		return
	}
	timer := time.NewTimer(every)
	defer timer.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		cs := p.snapshot()
		if len(cs) == 0 {
			timer.Reset(every)
			continue
		}
		c := cs[i%len(cs)]
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := c.Ping(pctx); err != nil && ctx.Err() == nil {
			fails.Add(1)
		}
		cancel()
		timer.Reset(max(every/time.Duration(len(cs)), time.Millisecond))
	}
}

// check counts held sessions that have ended, and pings up to sample of
// them spread over the pool, returning the failures.
func (p *sessionPool) check(ctx context.Context, sample int) (dead, failed int, why error) {
	cs := p.snapshot()
	for _, c := range cs {
		select {
		case <-c.Done():
			dead++
			if why == nil {
				why = c.Err()
			}
		default:
		}
	}
	if len(cs) == 0 {
		return dead, 0, why
	}
	step := max(len(cs)/sample, 1)
	for i := 0; i < len(cs); i += step {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := cs[i].Ping(pctx); err != nil {
			failed++
		}
		cancel()
	}
	return dead, failed, why
}

// closeAll ends every held session, 64 at a time.
func (p *sessionPool) closeAll() {
	cs := p.snapshot()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range cs {
		sem <- struct{}{}
		wg.Go(func() { c.Close(); <-sem })
	}
	wg.Wait()
}
