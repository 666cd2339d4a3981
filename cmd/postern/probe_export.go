package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/postern/postern/metrics"
)

// Defaults of the scrape-driven probes (GET /probe).
const (
	// defaultMaxScrapes bounds the /probe requests probing at once.
	defaultMaxScrapes = 8
	// scrapeOffset is left of the scrape's timeout for the reply.
	scrapeOffset = 500 * time.Millisecond
	// minScrapeProbe is the least a scrape-driven probe gets, however
	// short the scrape's timeout: enough for a near relay.
	minScrapeProbe = 250 * time.Millisecond
)

// exporter is `postern probe --listen`: scheduled probe rounds on
// /metrics, and probes driven by the scrape on /probe.
type exporter struct {
	p    *prober
	spec *probeSpec
	sem  chan struct{} // one token per /probe request probing now
	log  *slog.Logger
}

// run serves until ctx ends, probing every interval (the first round at
// once), or never when interval is 0.
func (x *exporter) run(ctx context.Context, e *env, addr string, interval time.Duration) error {
	met := metrics.NewProbe(version)
	if interval > 0 {
		for _, t := range x.spec.pairs {
			met.Target(t.relay, t.transport)
		}
	}
	srv, err := metrics.ListenProbe(addr, met.Gatherer(), x)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer srv.Close()
	fmt.Fprintf(e.stdout, "serving probe metrics on http://%s/metrics\n", srv.Addr())
	fmt.Fprintf(e.stdout, "probing on scrape at http://%s/probe?target=RELAY_ID_OR_CONTACT\n", srv.Addr())
	x.log.Info("probe exporter started", "addr", srv.Addr().String(), "pairs", len(x.spec.pairs),
		"interval", interval, "max_scrapes", cap(x.sem))
	if interval == 0 {
		<-ctx.Done()
		x.log.Info("probe exporter stopped")
		return nil
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		x.scheduledRound(ctx, met)
		select {
		case <-ctx.Done():
			x.log.Info("probe exporter stopped")
			return nil
		case <-tick.C:
		}
	}
}

// scheduledRound probes every pair and records the results on met.
func (x *exporter) scheduledRound(ctx context.Context, met *metrics.Probe) {
	ok := 0
	for _, r := range x.p.round(ctx, x.spec.pairs) {
		if ctx.Err() != nil {
			// A round cut short by shutdown says nothing about reachability.
			return
		}
		if r.ok {
			ok++
			met.Success(r.relay, r.transport, r.took)
		} else {
			met.Failure(r.relay, r.transport, r.class.String(), r.took)
			x.log.Warn("probe failed", "relay", r.relay, "transport", r.transport, "class", r.class.String())
		}
	}
	x.log.Info("probe round done", "ok", ok, "failed", len(x.spec.pairs)-ok)
}

// ServeHTTP answers GET /probe?target=T[&transport=NAME]: it probes the
// pairs of T now, within the scrape's timeout, and returns their metrics
// on a registry of this request alone. T must be the id of a relay the
// exporter was started with, so a request can never make it dial an
// address of the requester's choosing. Contact names are refused like any
// unknown target, with the same answer, so a scrape cannot tell which
// names are contacts. It neither logs nor repeats T.
func (x *exporter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tr := q.Get("transport")
	if tr != "" && tr != "https" && tr != "h3" {
		httpText(w, http.StatusBadRequest, "unknown transport: use https or h3, or leave it out for both")
		return
	}
	if _, ok := x.spec.targets[q.Get("target")]; !ok {
		httpText(w, http.StatusBadRequest, "unknown target: use the id of a relay this exporter was started with (`postern probe` prints them)")
		return
	}
	pairs := x.spec.pairsOf(q.Get("target"), tr)
	if len(pairs) == 0 {
		httpText(w, http.StatusBadRequest, "the target has no endpoint for transport "+tr)
		return
	}
	select {
	case x.sem <- struct{}{}:
		defer func() { <-x.sem }()
	default:
		httpText(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"%d probes are running already (--max-scrapes): scrape less often or raise --max-scrapes", cap(x.sem)))
		return
	}
	timeout := scrapeTimeout(x.p.timeout, r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"))
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	p := &prober{reg: x.p.reg, timeout: timeout}
	results := p.round(ctx, pairs)
	if r.Context().Err() != nil {
		return // the scraper gave up; nobody reads an answer
	}
	met := metrics.NewProbeScrape(timeout)
	for _, res := range results {
		if res.ok {
			met.Success(res.relay, res.transport, res.took)
		} else {
			met.Failure(res.relay, res.transport, res.class.String(), res.took)
			x.log.Debug("scrape probe failed", "relay", res.relay, "transport", res.transport, "class", res.class.String())
		}
	}
	met.ServeHTTP(w, r)
}

// scrapeTimeout is how long a scrape-driven probe may take: limit (the
// --timeout flag), or less when the scrape's timeout in header (seconds,
// as Prometheus sends X-Prometheus-Scrape-Timeout-Seconds) less
// scrapeOffset for the reply is shorter; never under minScrapeProbe,
// never near the HTTP write timeout.
func scrapeTimeout(limit time.Duration, header string) time.Duration {
	t := min(limit, metrics.ProbeWriteTimeout-10*time.Second)
	if s, err := strconv.ParseFloat(header, 64); err == nil && s > 0 && s < t.Seconds() {
		t = min(t, max(time.Duration(s*float64(time.Second))-scrapeOffset, minScrapeProbe))
	}
	return t
}

// httpText writes a short plain-text answer.
func httpText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}
