package metrics

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ProbeScrape holds the metrics of one scrape-driven probe, the answer to
// one GET /probe?target=… of `postern probe --listen`, on a registry made
// for that request alone (as blackbox_exporter's /probe does): only the
// pairs probed now appear, and nothing carries over between scrapes.
//
//	postern_probe_success{relay,transport}               gauge 0 or 1
//	postern_probe_duration_seconds{relay,transport}      gauge, until success or failure
//	postern_probe_failure_class{relay,transport,class}   gauge 1 on a failed pair, with its class
//	postern_probe_timeout_seconds                        gauge, the time the probe was given
type ProbeScrape struct {
	reg      *prometheus.Registry
	success  *prometheus.GaugeVec
	duration *prometheus.GaugeVec
	class    *prometheus.GaugeVec
}

// NewProbeScrape returns the metrics of one scrape-driven probe that was
// given timeout.
func NewProbeScrape(timeout time.Duration) *ProbeScrape {
	p := &ProbeScrape{
		reg: prometheus.NewRegistry(),
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_probe_success",
			Help: "Whether this probe of a relay over a transport completed the transport handshake, the relay hello and a ping (1) or not (0).",
		}, []string{"relay", "transport"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_probe_duration_seconds",
			Help: "Duration of this probe of a relay over a transport, until success or failure.",
		}, []string{"relay", "transport"}),
		class: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_probe_failure_class",
			Help: "1 for a relay and transport whose probe failed, with the failure class as the class label; absent for a pair that succeeded.",
		}, []string{"relay", "transport", "class"}),
	}
	limit := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "postern_probe_timeout_seconds",
		Help: "Time this probe was given: the exporter's --timeout, or less to fit the scrape's own timeout.",
	})
	limit.Set(timeout.Seconds())
	p.reg.MustRegister(p.success, p.duration, p.class, limit)
	return p
}

// Success records a successful probe of a pair that took d.
func (p *ProbeScrape) Success(relayID, transportName string, d time.Duration) {
	r, t := clampRelay(relayID), clamp(transportName, Transports)
	p.success.WithLabelValues(r, t).Set(1)
	p.duration.WithLabelValues(r, t).Set(d.Seconds())
}

// Failure records a failed probe of a pair, of class (a transport.Class
// name), that gave up after d.
func (p *ProbeScrape) Failure(relayID, transportName, class string, d time.Duration) {
	r, t := clampRelay(relayID), clamp(transportName, Transports)
	p.success.WithLabelValues(r, t).Set(0)
	p.duration.WithLabelValues(r, t).Set(d.Seconds())
	p.class.WithLabelValues(r, t, clamp(class, Classes)).Set(1)
}

// Gatherer returns the request's registry.
func (p *ProbeScrape) Gatherer() prometheus.Gatherer { return p.reg }

// ServeHTTP writes the metrics in the format the request asks for.
func (p *ProbeScrape) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// ListenProbe is Listen for the probe exporter: besides Handler's paths it
// serves probe on GET /probe. The server's write timeout (a minute) bounds
// how long probe may take.
func ListenProbe(addr string, g prometheus.Gatherer, probe http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	s := &Server{ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET /probe", probe)
	mux.Handle("/", Handler(g, &s.health))
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      ProbeWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		// net/http logs peer addresses on some errors; they must not leave
		// the process.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// ProbeWriteTimeout is the probe exporter's HTTP write timeout: a
// scrape-driven probe must answer well within it.
const ProbeWriteTimeout = time.Minute
