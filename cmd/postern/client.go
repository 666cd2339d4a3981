package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// dialRelay connects to one of the relays described by lines through the
// one dial path (package route), racing their endpoints. A descriptor
// that has expired is still tried, with a warning: a relay keeps its keys
// when it re-signs. POSTERN_TRANSPORT restricts the transport and
// POSTERN_BIND sets the local address (both mainly for tests and
// troubleshooting).
func dialRelay(ctx context.Context, e *env, lines ...string) (*client.Client, error) {
	c, _, err := dialParsed(ctx, e, lines...)
	return c, err
}

// dialParsed is dialRelay that also returns the parsed descriptors.
func dialParsed(ctx context.Context, e *env, lines ...string) (*client.Client, []*descriptor.Descriptor, error) {
	ds := make([]*descriptor.Descriptor, 0, len(lines))
	for _, line := range lines {
		d, stale, err := descriptor.ParseStale(line, time.Now())
		if err != nil {
			return nil, nil, err
		}
		if stale {
			fmt.Fprintf(e.stderr, "warning: the descriptor of relay %s expired on %s; trying it anyway (a relay keeps its keys when it renews)\n",
				d.RelayID(), d.Expires.UTC().Format("2006-01-02"))
		}
		ds = append(ds, d)
	}
	if err := checkDialEnv(e); err != nil {
		return nil, nil, err
	}
	c, err := client.Dial(ctx, newRegistry(), dialOptions(e), ds...)
	if err != nil {
		return nil, nil, explainDial(e, err)
	}
	return c, ds, nil
}

// dialOptions reads the troubleshooting variables: POSTERN_TRANSPORT
// (one transport only), POSTERN_BIND (the local address) and
// POSTERN_STALL (the stall window, a Go duration such as "2s"); with
// POSTERN_METRICS_FILE set, while send or recv runs (startMetrics), every
// attempt and session failure is counted for that file.
//
// With --network NAME, what worked on that network is remembered in
// POSTERN_HOME/routes (recipe hashes, no addresses) and tried first next
// time, and a session that stalls, is throttled or is told "busy" puts its
// way in last for a while.
func dialOptions(e *env) client.DialOptions {
	stall, _ := time.ParseDuration(e.getenv("POSTERN_STALL"))
	o := client.DialOptions{Transport: e.getenv("POSTERN_TRANSPORT"), LocalAddr: e.getenv("POSTERN_BIND"),
		StallWindow: stall}
	if m := runMetrics(e); m != nil {
		o.Observe = func(a route.Attempt) {
			class := "ok"
			if a.Err != nil {
				class = transport.ClassOf(a.Err).String()
			}
			m.DialAttempt(a.Transport, class, a.Took)
		}
		o.SessionFailed = func(c transport.Class) { m.SessionFailure(c.String()) }
	}
	// Without a state directory (no POSTERN_HOME, XDG_CONFIG_HOME or HOME)
	// sessions stay in memory rather than land in the working directory.
	if homeDir(e) != fallbackHome {
		if s, err := transport.OpenSessionDir(sessionDir(e)); err == nil {
			o.Sessions = s
		} else {
			fmt.Fprintf(e.stderr, "warning: %v\n", err)
		}
	}
	if e.network == "" || e.lane {
		return o
	}
	mem, err := openRoutes(filepath.Join(homeDir(e), "routes"))
	if err != nil {
		fmt.Fprintf(e.stderr, "warning: %v\n", err)
		return o
	}
	o.Memory, o.Network = mem, e.network
	return o
}

// routeMemories are the route memories this process opened, by file: one
// per file, as each saves the whole file from what it holds, so two
// dials at once (a home relay raced against a tunnel, the relays of
// `recv --follow`) would each write over what the other learnt.
var routeMemories struct {
	sync.Mutex
	byPath map[string]*route.Memory
}

func openRoutes(path string) (*route.Memory, error) {
	routeMemories.Lock()
	defer routeMemories.Unlock()
	if m := routeMemories.byPath[path]; m != nil {
		return m, nil
	}
	m, err := route.OpenMemory(path, 0)
	if err != nil {
		return nil, err
	}
	if routeMemories.byPath == nil {
		routeMemories.byPath = map[string]*route.Memory{}
	}
	routeMemories.byPath[path] = m
	return m, nil
}

// sessionDir is where TLS sessions are kept between runs, so a run
// resumes as a browser does: one directory per --network (by hash), so
// that a relay cannot link this device's connections from one network to
// those from another through the tickets it issued.
func sessionDir(e *env) string {
	sum := sha256.Sum256([]byte("postern tls sessions\x00" + e.network))
	return filepath.Join(homeDir(e), "tls-sessions", hex.EncodeToString(sum[:8]))
}

// networkFlag adds --network to a command that dials relays.
func networkFlag(fs *flag.FlagSet, e *env) {
	fs.StringVar(&e.network, "network", "", "a `name` for the network you are on (home, office, ...): what reached the\n"+
		"relay here is remembered for a day and tried first next time")
}

// newer returns line if it is a valid descriptor of one of the relays in
// ds that expires later than the copy given, else "".
func newer(line string, ds []*descriptor.Descriptor) string {
	d, err := descriptor.Parse(line, time.Now())
	if err != nil {
		return ""
	}
	for _, old := range ds {
		if descriptor.SameRelay(old, d) && d.Expires.After(old.Expires) {
			return line
		}
	}
	return ""
}

func identityFlag(fs *flag.FlagSet) *string {
	return fs.String("id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
}

func resolveID(e *env, p string) string {
	if p == "" {
		return defaultIdentityPath(e)
	}
	return p
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// checkDialEnv refuses troubleshooting variables that cannot work, naming
// the variable and what it accepts (never its value when that could be
// an address).
func checkDialEnv(e *env) error {
	if tr := e.getenv("POSTERN_TRANSPORT"); tr != "" {
		names := newRegistry().Names()
		if !slices.Contains(names, tr) {
			return fmt.Errorf("POSTERN_TRANSPORT=%s is not a transport postern has: set it to one of %s, or unset it to try every transport",
				truncate(tr, 16), strings.Join(names, ", "))
		}
	}
	if b := e.getenv("POSTERN_BIND"); b != "" && net.ParseIP(b) == nil {
		return errors.New("POSTERN_BIND is not an IP address: set it to an address of this device, or unset it to let the system choose")
	}
	if s := e.getenv("POSTERN_LANES"); s != "" {
		if n, err := strconv.Atoi(s); err != nil || n < 1 || n > maxLanesEnv {
			return fmt.Errorf("POSTERN_LANES=%s is not a number of connections from 1 to %d: set one (1: one at a time), or unset it for the default", truncate(s, 16), maxLanesEnv)
		}
	}
	if s := e.getenv("POSTERN_STALL"); s != "" {
		if d, err := time.ParseDuration(s); err != nil || d < client.MinStallWindow {
			return fmt.Errorf("POSTERN_STALL=%s is not a duration of at least %s (for example \"30s\"): set one, or unset it for the default", truncate(s, 16), client.MinStallWindow)
		}
	}
	return nil
}

// explainDial says what to do about a dial failure the troubleshooting
// variables caused. The relay's error classes stay in the chain.
func explainDial(e *env, err error) error {
	err = scrubAddrs(err)
	switch {
	case e.getenv("POSTERN_TRANSPORT") != "" && errors.Is(err, route.ErrNoCandidate):
		return fmt.Errorf("no relay here offers transport %s (POSTERN_TRANSPORT): unset POSTERN_TRANSPORT to use the transports they offer: %w",
			e.getenv("POSTERN_TRANSPORT"), err)
	case e.getenv("POSTERN_BIND") != "" && errors.Is(err, syscall.EADDRNOTAVAIL):
		return &explained{err: err, text: "POSTERN_BIND names an address this device does not have: set it to one of this device's addresses, or unset it to let the system choose"}
	}
	return err
}

// explained is an error whose text replaces its cause's, which stays in
// the chain for errors.Is.
type explained struct {
	err  error
	text string
}

func (x *explained) Error() string { return x.text }
func (x *explained) Unwrap() error { return x.err }

// Client metrics. A one-shot command has no endpoint to scrape, so with
// POSTERN_METRICS_FILE=PATH send and recv write their metrics (dial
// attempts by transport and failure class, dial times, session failures;
// see package metrics) to PATH in the text format of node_exporter's
// textfile collector when they finish, and `recv --follow` also every
// metricsEvery. The file is replaced whole (a temporary file renamed over
// it, mode 0644) and covers that one run: a counter starts again at zero
// with every run. It names no relay, address, mailbox or key.

// dialEnvHelp documents, in the help of send and recv, the environment
// variables that change how they reach relays.
const dialEnvHelp = "environment:\n" +
	"  POSTERN_TRANSPORT=NAME      use this transport only (https, h3), for troubleshooting\n" +
	"  POSTERN_BIND=IP             dial from this local address\n" +
	"  POSTERN_STALL=DURATION      a connection silent this long while a request waits is\n" +
	"                              stalled and replaced (default 10s)\n" +
	"  POSTERN_LANES=N             at most N connections at once when a flow is throttled\n" +
	"                              (default 4; 1: one at a time)\n" +
	"  POSTERN_METRICS_FILE=PATH   when done (recv --follow: also every minute), write the\n" +
	"                              client metrics to PATH for node_exporter's textfile\n" +
	"                              collector: dial attempts by transport and failure class,\n" +
	"                              dial times, session failures; no address, relay, mailbox\n" +
	"                              or key"

// metricsEvery is how often `recv --follow` rewrites the metrics file.
const metricsEvery = time.Minute

// metricsRuns holds the metrics of the runs in progress in this process,
// by file: dialOptions finds them through POSTERN_METRICS_FILE, which the
// copies of an env that the sender makes keep.
var metricsRuns sync.Map // path → *metrics.Client

// runMetrics returns the metrics of the run writing e's
// POSTERN_METRICS_FILE, or nil.
func runMetrics(e *env) *metrics.Client {
	path := e.getenv("POSTERN_METRICS_FILE")
	if path == "" {
		return nil
	}
	if m, ok := metricsRuns.Load(path); ok {
		return m.(*metrics.Client)
	}
	return nil
}

// metricsRun is one command's metrics and the file they go to.
type metricsRun struct {
	e    *env
	path string
	m    *metrics.Client

	mu   sync.Mutex // one write at a time, none after stop
	done bool
}

// startMetrics starts counting for POSTERN_METRICS_FILE, if set; the
// caller ends the run with stop, which writes the file.
func startMetrics(e *env) *metricsRun {
	path := e.getenv("POSTERN_METRICS_FILE")
	if path == "" {
		return nil
	}
	r := &metricsRun{e: e, path: path, m: metrics.NewClient(version)}
	metricsRuns.Store(path, r.m)
	return r
}

// write writes the file unless the run has ended; a failure is a
// warning, not the command's.
func (r *metricsRun) write(last bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.done = last
	if err := r.m.WriteFile(r.path); err != nil {
		fmt.Fprintf(r.e.stderr, "warning: %v\n", err)
	}
}

// every writes the file every d until ctx ends.
func (r *metricsRun) every(ctx context.Context, d time.Duration) {
	if r == nil {
		return
	}
	go func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.write(false)
			}
		}
	}()
}

// stop writes the file and ends the run.
func (r *metricsRun) stop() {
	if r == nil {
		return
	}
	r.write(true)
	metricsRuns.CompareAndDelete(r.path, r.m)
}
