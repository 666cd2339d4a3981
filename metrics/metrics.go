// Package metrics declares every Prometheus metric Postern exposes, on
// registries the program owns (never the global default), and serves them on
// a separate listener.
//
// Two processes expose metrics: a relay ([Relay]) and the reachability prober
// `postern probe --listen` ([Probe], and [ProbeScrape] on its /probe). Code
// reports through the small methods of those types; no other package names a
// metric.
//
// # No user can be told apart
//
// Every label value comes from a fixed, small set declared here; anything
// else is reported as "other". No metric carries an address, a mailbox id, a
// key or an envelope id. The only open-ended label is the probe's relay id,
// which names a relay (a public descriptor key hash), never a user, and is
// accepted only in its fixed 26-character form.
//
// # Relay metrics
//
//	postern_build_info{version,goversion}                 gauge, always 1
//	postern_handshakes_total{transport,result}            counter; result: ok, auth_failed, replay, cover, busy, limited, conn_limited, conn_busy
//	postern_sessions_total{transport}                     counter of relay sessions started
//	postern_sessions_active{transport}                    gauge
//	postern_envelopes_accepted_total                      counter (durable and acked to the sender)
//	postern_envelopes_delivered_total                     counter (acked by the recipient)
//	postern_envelopes_expired_total                       counter (deleted by the TTL sweep)
//	postern_envelopes_rejected_total{reason}              counter; reason: malformed, bad_envelope,
//	                                                      no_mailbox, mailbox_full, relay_full, source_limit
//	                                                      (send_bytes_per_source), capability, internal
//	postern_send_duration_seconds                         histogram, Send read to envelope durable
//	postern_mailbox_ops_refused_total                     counter; creates and rotations refused at
//	                                                      the per-source allowance (mailbox_ops_per_source)
//	postern_store_mailboxes, _envelopes, _bytes           gauges read from the store at scrape time
//	postern_store_quota_bytes                             gauge, configured maximum store bytes
//	postern_store_disk_full                               gauge, 1 while writes fail for lack of disk space
//	postern_descriptor_expiry_timestamp_seconds           gauge, when the relay's current descriptor expires
//	postern_forwards_total{result}                        counter; result: queued, delivered, replay, refused
//	postern_links_up                                      gauge, relay links with a session now
//	postern_forward_queue_items, _bytes                   gauges read from the outbox at scrape time
//	postern_store_commit_duration_seconds                 histogram of store write transactions
//	postern_store_commit_writes                           histogram of writes per transaction
//	postern_store_syncs_total                             counter, fdatasyncs of group commits
//
// # Probe metrics
//
//	postern_build_info{version,goversion}
//	postern_probe_success{relay,transport}                gauge 0 or 1, last probe
//	postern_probe_duration_seconds{relay,transport}       gauge, duration of the last probe
//	postern_probe_failures_total{relay,transport,class}   counter; class: timeout, refused, reset,
//	                                                      tls, auth, protocol, canceled, invalid, stalled,
//	                                                      network_down, udp_silent, busy, throttled,
//	                                                      relay_down, unknown
//
// Both also carry the standard go_* and process_* collectors.
//
// # Scrape-driven probe metrics
//
// The prober's GET /probe?target=… answers with a registry of its own per
// request ([ProbeScrape]), without the standard collectors:
//
//	postern_probe_success{relay,transport}                gauge 0 or 1, this probe
//	postern_probe_duration_seconds{relay,transport}       gauge, duration of this probe
//	postern_probe_failure_class{relay,transport,class}    gauge 1 on a failed pair; class as above
//	postern_probe_timeout_seconds                         gauge, the time this probe was given
package metrics

import (
	"regexp"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Other replaces a label value outside its fixed set.
const Other = "other"

// The fixed label sets. A value outside its set is reported as Other.
var (
	// Transports are the transport names that may appear as a label.
	Transports = []string{"https", "h3"}
	// Results are the handshake outcomes (transport.Outcome values).
	Results = []string{"ok", "auth_failed", "replay", "cover", "busy", "limited", "conn_limited", "conn_busy"}
	// Reasons are the reasons an envelope is rejected.
	Reasons = []string{"malformed", "bad_envelope", "no_mailbox", "mailbox_full", "relay_full", "source_limit", "capability", "internal"}
	// Classes are the failure classes: every transport.Class name (a test
	// keeps the two in step).
	Classes = []string{"timeout", "refused", "reset", "tls", "auth", "protocol", "canceled", "invalid", "stalled",
		"network_down", "udp_silent", "busy", "throttled", "relay_down", "unknown"}
)

// relayIDRE is the form of descriptor.RelayIDOf: 26 lower-case base32 characters.
var relayIDRE = regexp.MustCompile(`^[a-z2-7]{26}$`)

// clamp returns v if it is in set, else Other.
func clamp(v string, set []string) string {
	for _, s := range set {
		if v == s {
			return v
		}
	}
	return Other
}

// clampRelay returns id if it has the form of a relay id, else Other.
func clampRelay(id string) string {
	if relayIDRE.MatchString(id) {
		return id
	}
	return Other
}

// Buckets. Latencies span a memory store (tens of microseconds) to a slow
// disk under load (seconds); batch sizes span 1 to the store's default
// MaxBatch of 512.
var (
	latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	batchBuckets   = prometheus.ExponentialBuckets(1, 2, 10) // 1 .. 512
)

// newRegistry returns a registry with the Go and process collectors and
// postern_build_info.
func newRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "postern_build_info",
		Help: "Build of the running postern binary; the value is always 1.",
	}, []string{"version", "goversion"})
	bi.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(bi)
	return reg
}

// Relay holds the metrics of a relay process. Its methods are safe for
// concurrent use and cheap enough for hot paths. It satisfies
// relay.Observer.
type Relay struct {
	reg *prometheus.Registry

	handshakes     *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	sessionsActive *prometheus.GaugeVec
	accepted       prometheus.Counter
	delivered      prometheus.Counter
	expired        prometheus.Counter
	rejected       *prometheus.CounterVec
	sendDuration   prometheus.Histogram
	quota          prometheus.Gauge
	descExpiry     prometheus.Gauge
	forwards       *prometheus.CounterVec
	linksUp        prometheus.Gauge
	outbox         atomic.Pointer[func() (items int, bytes int64)]
	commitDuration prometheus.Histogram
	commitWrites   prometheus.Histogram
	opsRefused     prometheus.Counter

	stats atomic.Pointer[func() StoreStats]
}

// StoreStats are the store totals exported as gauges.
type StoreStats struct {
	Mailboxes int
	Envelopes int
	Bytes     int64
	DiskFull  bool   // writes are failing for lack of disk space
	Syncs     uint64 // fdatasyncs of the store's group commits so far
}

// NewRelay returns relay metrics on a new registry; version is the
// build's version string for postern_build_info.
func NewRelay(version string) *Relay {
	r := &Relay{
		reg: newRegistry(version),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_handshakes_total",
			Help: "Requests that reached a transport listener, by transport and result: ok (authenticated relay session), auth_failed (session path, bad or expired token), replay (token seen before), cover (served the cover site), busy (valid session refused at the listener's session cap), limited (valid session refused at a per-source or per-connection cap or above the source's fair share), conn_limited (h3: a QUIC connection refused, per Initial packet, its source holding its cap of connections or its fair share of the listener's; https: a TCP connection reset at accept, its source holding its cap of connections), conn_busy (h3: a QUIC connection refused, per Initial packet, the listener holding its cap of connections with none to take, or a connection without a session closed to make room for a new one or under memory pressure).",
		}, []string{"transport", "result"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_sessions_total",
			Help: "Relay sessions started, by transport.",
		}, []string{"transport"}),
		sessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_sessions_active",
			Help: "Relay sessions open now, by transport.",
		}, []string{"transport"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_envelopes_accepted_total",
			Help: "Envelopes made durable and acknowledged to their sender.",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_envelopes_delivered_total",
			Help: "Envelopes acknowledged by their recipient and deleted.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_envelopes_expired_total",
			Help: "Envelopes deleted undelivered when their time to live ran out.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_envelopes_rejected_total",
			Help: "Envelopes refused at Send, by reason.",
		}, []string{"reason"}),
		sendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "postern_send_duration_seconds",
			Help:    "Time from the relay reading a Send to the envelope being durable, for accepted envelopes.",
			Buckets: latencyBuckets,
		}),
		quota: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postern_store_quota_bytes",
			Help: "Configured maximum of envelope bytes in the store (0: no limit).",
		}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "postern_store_commit_duration_seconds",
			Help:    "Duration of durable store write transactions (group commits).",
			Buckets: latencyBuckets,
		}),
		commitWrites: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "postern_store_commit_writes",
			Help:    "Writes per durable store transaction (group commit batch size).",
			Buckets: batchBuckets,
		}),
		opsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "postern_mailbox_ops_refused_total",
			Help: "Mailbox creates and rotations refused as busy: the client's address had spent its allowance of the day (mailbox_ops_per_source).",
		}),
	}
	r.newNetworkMetrics()
	r.reg.MustRegister(r.handshakes, r.sessions, r.sessionsActive, r.accepted, r.delivered, r.expired,
		r.rejected, r.sendDuration, r.quota, r.descExpiry, r.forwards, r.linksUp, r.commitDuration, r.commitWrites, r.opsRefused, storeCollector{r})
	// Every known label combination exists from the start, at zero, so that
	// rate() and alerts see a series before the first event.
	for _, t := range Transports {
		for _, res := range Results {
			r.handshakes.WithLabelValues(t, res)
		}
		r.sessions.WithLabelValues(t)
		r.sessionsActive.WithLabelValues(t)
	}
	for _, reason := range Reasons {
		r.rejected.WithLabelValues(reason)
	}
	for _, res := range ForwardResults {
		r.forwards.WithLabelValues(res)
	}
	return r
}

// Gatherer returns the registry to serve.
func (r *Relay) Gatherer() prometheus.Gatherer { return r.reg }

// Handshake counts one request that reached a transport listener with the
// given outcome (a transport.Outcome).
func (r *Relay) Handshake(transportName, result string) {
	r.handshakes.WithLabelValues(clamp(transportName, Transports), clamp(result, Results)).Inc()
}

// SessionOpened counts a relay session start (relay.Observer).
func (r *Relay) SessionOpened(transportName string) {
	t := clamp(transportName, Transports)
	r.sessions.WithLabelValues(t).Inc()
	r.sessionsActive.WithLabelValues(t).Inc()
}

// SessionClosed counts a relay session end (relay.Observer).
func (r *Relay) SessionClosed(transportName string) {
	r.sessionsActive.WithLabelValues(clamp(transportName, Transports)).Dec()
}

// Envelope counts an envelope event (relay.Observer): "accepted",
// "delivered", or "rejected" with a reason. Other events are ignored.
func (r *Relay) Envelope(event, reason string) {
	switch event {
	case "accepted":
		r.accepted.Inc()
	case "delivered":
		r.delivered.Inc()
	case "rejected":
		r.rejected.WithLabelValues(clamp(reason, Reasons)).Inc()
	}
}

// MailboxOpRefused counts a mailbox operation refused at the per-source
// allowance (server.MailboxOpsObserver).
func (r *Relay) MailboxOpRefused() { r.opsRefused.Inc() }

// SendDuration observes the time an accepted Send took (relay.Observer).
func (r *Relay) SendDuration(d time.Duration) { r.sendDuration.Observe(d.Seconds()) }

// Expired counts envelopes deleted by the TTL sweep.
func (r *Relay) Expired(n int) {
	if n > 0 {
		r.expired.Add(float64(n))
	}
}

// Commit observes one durable store transaction (store.Options.OnCommit).
func (r *Relay) Commit(writes int, took time.Duration) {
	r.commitDuration.Observe(took.Seconds())
	r.commitWrites.Observe(float64(writes))
}

// newNetworkMetrics makes the metrics of the relay network: forwards,
// links and the descriptor's expiry.
func (r *Relay) newNetworkMetrics() {
	r.forwards = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postern_forwards_total",
		Help: "Two-hop forwards on this entry relay, by result: queued (accepted from a client), delivered (the home relay stored it), replay (it had it already), refused (it never will).",
	}, []string{"result"})
	r.linksUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "postern_links_up",
		Help: "Links to other relays that have a session now.",
	})
	r.descExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "postern_descriptor_expiry_timestamp_seconds",
		Help: "Unix time when the relay's current signed descriptor expires; the relay re-signs it at half its validity.",
	})
}

// ForwardResults are the result labels of postern_forwards_total.
var ForwardResults = []string{"queued", "delivered", "replay", "refused"}

// Forward counts a forwarding event from relay/link: a result, or a link
// going "up" or "down". Anything else is ignored.
func (r *Relay) Forward(event string) {
	switch event {
	case "up":
		r.linksUp.Inc()
	case "down":
		r.linksUp.Dec()
	default:
		for _, res := range ForwardResults {
			if res == event {
				r.forwards.WithLabelValues(res).Inc()
			}
		}
	}
}

// WatchOutbox sets how the forward queue's size is read at scrape time.
func (r *Relay) WatchOutbox(stats func() (items int, bytes int64)) { r.outbox.Store(&stats) }

// SetDescriptorExpiry records when the relay's current descriptor expires.
func (r *Relay) SetDescriptorExpiry(t time.Time) { r.descExpiry.Set(float64(t.Unix())) }

// SetQuotaBytes sets the configured store quota in bytes (0: no limit).
func (r *Relay) SetQuotaBytes(n int64) { r.quota.Set(float64(n)) }

// WatchStore makes the store gauges read stats at each scrape. Until it is
// called they read zero.
func (r *Relay) WatchStore(stats func() StoreStats) { r.stats.Store(&stats) }

var (
	storeMailboxesDesc = prometheus.NewDesc("postern_store_mailboxes",
		"Mailboxes in the store.", nil, nil)
	storeEnvelopesDesc = prometheus.NewDesc("postern_store_envelopes",
		"Undelivered envelopes in the store.", nil, nil)
	storeBytesDesc = prometheus.NewDesc("postern_store_bytes",
		"Envelope bytes in the store (counted against postern_store_quota_bytes).", nil, nil)
	outboxItemsDesc = prometheus.NewDesc("postern_forward_queue_items",
		"Forward layers waiting in this entry relay's outbox for their home relays.", nil, nil)
	outboxBytesDesc = prometheus.NewDesc("postern_forward_queue_bytes",
		"Bytes of forward layers waiting in the outbox.", nil, nil)
	storeSyncsDesc = prometheus.NewDesc("postern_store_syncs_total",
		"fdatasyncs of the store's group commits (acks alone are held and share the next commit's).", nil, nil)
	storeDiskFullDesc = prometheus.NewDesc("postern_store_disk_full",
		"1 while the store's writes fail for lack of disk space (envelopes are refused), else 0.", nil, nil)
)

// storeCollector reads the store's totals once per scrape.
type storeCollector struct{ r *Relay }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeMailboxesDesc
	ch <- storeEnvelopesDesc
	ch <- storeBytesDesc
	ch <- storeDiskFullDesc
	ch <- storeSyncsDesc
	ch <- outboxItemsDesc
	ch <- outboxBytesDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	var s StoreStats
	if f := c.r.stats.Load(); f != nil {
		s = (*f)()
	}
	ch <- prometheus.MustNewConstMetric(storeMailboxesDesc, prometheus.GaugeValue, float64(s.Mailboxes))
	ch <- prometheus.MustNewConstMetric(storeEnvelopesDesc, prometheus.GaugeValue, float64(s.Envelopes))
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(s.Bytes))
	full := 0.0
	if s.DiskFull {
		full = 1
	}
	ch <- prometheus.MustNewConstMetric(storeDiskFullDesc, prometheus.GaugeValue, full)
	ch <- prometheus.MustNewConstMetric(storeSyncsDesc, prometheus.CounterValue, float64(s.Syncs))
	var items int
	var bytes int64
	if f := c.r.outbox.Load(); f != nil {
		items, bytes = (*f)()
	}
	ch <- prometheus.MustNewConstMetric(outboxItemsDesc, prometheus.GaugeValue, float64(items))
	ch <- prometheus.MustNewConstMetric(outboxBytesDesc, prometheus.GaugeValue, float64(bytes))
}

// Probe holds the metrics of the reachability prober.
type Probe struct {
	reg      *prometheus.Registry
	success  *prometheus.GaugeVec
	duration *prometheus.GaugeVec
	failures *prometheus.CounterVec
}

// NewProbe returns probe metrics on a new registry.
func NewProbe(version string) *Probe {
	p := &Probe{
		reg: newRegistry(version),
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_probe_success",
			Help: "Whether the last probe of a relay over a transport completed the transport handshake, the relay hello and a ping (1) or not (0).",
		}, []string{"relay", "transport"}),
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postern_probe_duration_seconds",
			Help: "Duration of the last probe of a relay over a transport, until success or failure.",
		}, []string{"relay", "transport"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postern_probe_failures_total",
			Help: "Failed probes of a relay over a transport, by failure class.",
		}, []string{"relay", "transport", "class"}),
	}
	p.reg.MustRegister(p.success, p.duration, p.failures)
	return p
}

// Gatherer returns the registry to serve.
func (p *Probe) Gatherer() prometheus.Gatherer { return p.reg }

// Target declares a relay/transport pair before its first probe, so that
// its failure counters exist at zero.
func (p *Probe) Target(relayID, transportName string) {
	r, t := clampRelay(relayID), clamp(transportName, Transports)
	for _, c := range Classes {
		p.failures.WithLabelValues(r, t, c)
	}
}

// Success records a successful probe that took d.
func (p *Probe) Success(relayID, transportName string, d time.Duration) {
	r, t := clampRelay(relayID), clamp(transportName, Transports)
	p.success.WithLabelValues(r, t).Set(1)
	p.duration.WithLabelValues(r, t).Set(d.Seconds())
}

// Failure records a failed probe of class (a transport.Class name) that
// gave up after d.
func (p *Probe) Failure(relayID, transportName, class string, d time.Duration) {
	r, t := clampRelay(relayID), clamp(transportName, Transports)
	p.success.WithLabelValues(r, t).Set(0)
	p.duration.WithLabelValues(r, t).Set(d.Seconds())
	p.failures.WithLabelValues(r, t, clamp(class, Classes)).Inc()
}
