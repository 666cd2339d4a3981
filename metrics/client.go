package metrics

import (
	"fmt"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Client metrics: what one run of a client command (`postern send`,
// `postern recv`) saw of the way to its relays. A one-shot command has no
// endpoint to scrape, so it writes them to a file in the text format
// (WriteFile), for node_exporter's textfile collector:
//
//	postern_build_info{version,goversion}                   gauge, always 1
//	postern_client_dial_attempts_total{transport,class}     counter; class: ok (the attempt won the
//	                                                        race) or a failure class (see Classes)
//	postern_client_dial_seconds{transport}                  histogram, dial to relay hello, winners only
//	postern_client_session_failures_total{class}            counter of sessions that failed after the
//	                                                        dial: stalled, throttled, busy, ...
//
// No label names a relay, an address, a mailbox or a key: the transport
// and the class come from fixed sets, anything else is "other". There are
// no go_* or process_* metrics: they would describe a process that has
// exited by the time the file is read.

// ClientClasses are the class label's values on client metrics: "ok" and
// every failure class.
var ClientClasses = append([]string{"ok"}, Classes...)

// sessionClasses are the session failures declared at zero, so that a
// rate over them exists before the first failure.
var sessionClasses = []string{"stalled", "throttled", "busy"}

// dialBuckets span a loopback relay hello (a millisecond) to a per-attempt
// timeout (15 s).
var dialBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15}

// Client holds the metrics of one client run. Its methods are safe for
// concurrent use.
type Client struct {
	reg         *prometheus.Registry
	attempts    *prometheus.CounterVec
	dialSeconds *prometheus.HistogramVec
	sessions    *prometheus.CounterVec
}

// NewClient returns client metrics on a new registry; version is the
// build's version string for postern_build_info.
func NewClient(version string) *Client {
	c := &Client{
		reg: prometheus.NewRegistry(),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_client_dial_attempts_total",
			Help: "Attempts to reach a relay (one transport, one endpoint), by transport and outcome: ok (the attempt won the race) or its failure class. Attempts cancelled because another won are not counted.",
		}, []string{"transport", "class"}),
		dialSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postern_client_dial_seconds",
			Help:    "Time from the dial of the winning attempt to the end of the relay hello, by transport.",
			Buckets: dialBuckets,
		}, []string{"transport"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_client_session_failures_total",
			Help: "Relay sessions that failed after the dial, by failure class: stalled (the flow froze), throttled (throughput under the floor), busy (the relay asked to come back later).",
		}, []string{"class"}),
	}
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "postern_build_info",
		Help: "Build of the postern binary that wrote these metrics; the value is always 1.",
	}, []string{"version", "goversion"})
	bi.WithLabelValues(version, runtime.Version()).Set(1)
	c.reg.MustRegister(bi, c.attempts, c.dialSeconds, c.sessions)
	for _, class := range sessionClasses {
		c.sessions.WithLabelValues(class)
	}
	return c
}

// Gatherer returns the registry.
func (c *Client) Gatherer() prometheus.Gatherer { return c.reg }

// DialAttempt records one attempt over transportName that ended with
// class ("ok" for the winner, else a transport.Class name) after d.
func (c *Client) DialAttempt(transportName, class string, d time.Duration) {
	t := clamp(transportName, Transports)
	class = clamp(class, ClientClasses)
	c.attempts.WithLabelValues(t, class).Inc()
	if class == "ok" {
		c.dialSeconds.WithLabelValues(t).Observe(d.Seconds())
	}
}

// SessionFailure records a session that failed after the dial with class
// (a transport.Class name).
func (c *Client) SessionFailure(class string) {
	c.sessions.WithLabelValues(clamp(class, Classes)).Inc()
}

// WriteFile writes the metrics to path in the Prometheus text format, as
// node_exporter's textfile collector reads it: into a temporary file in
// the same directory, mode 0644, renamed over path, so a reader never sees
// half a file.
func (c *Client) WriteFile(path string) error {
	if err := prometheus.WriteToTextfile(path, c.reg); err != nil {
		return fmt.Errorf("client metrics: writing %s: %w (POSTERN_METRICS_FILE must name a file in a writable directory)", path, err)
	}
	return nil
}
