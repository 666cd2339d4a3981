package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// probeParallel bounds how many relay/transport pairs are probed at once.
const probeParallel = 16

func probeCmd() command {
	return command{
		name: "probe",
		args: "RELAY...",
		summary: "Check which relay/transport pairs are reachable from here. Each RELAY is a\n" +
			"relay descriptor (postern-relay1:...) or a contact card (postern-card1:...;\n" +
			"each home relay it lists), as a line or a file holding one, or the name of a\n" +
			"contact (`postern contact list`; --id picks the identity whose contacts).\n" +
			"For each relay and each of its transports, dial, complete the relay hello and\n" +
			"a ping, and print one line per pair: relay id, transport, \"ok\" or the failure\n" +
			"class, and the time it took. Classes: refused, reset, timeout (TCP\n" +
			"blackholed), tls (alert, bad certificate, or ServerHello dropped), udp_silent\n" +
			"(UDP dropped), auth, protocol, network_down (this machine's network), invalid\n" +
			"(fix the descriptor), canceled, unknown. Exits 1 if any pair failed.\n\n" +
			"With --listen it runs as a Prometheus exporter instead. It probes every\n" +
			"--interval and serves postern_probe_* metrics on ADDR/metrics, with the failure\n" +
			"class as the class label. Like blackbox_exporter, ADDR/probe?target=T probes T\n" +
			"when Prometheus scrapes it, within the scrape's timeout, and answers with\n" +
			"postern_probe_success, _duration_seconds and _failure_class{class}; add\n" +
			"&transport=https or h3 for one transport. T is the id of a relay given on the\n" +
			"command line, directly or through a card or contact (anything else, contact\n" +
			"names included, gets 400, so a scrape learns nothing of your contacts);\n" +
			"nothing else is dialled.\n" +
			"--interval 0 leaves only /probe. See deploy/prometheus/probe.yml.\n\n" +
			"examples:\n  postern probe relay.descriptor\n" +
			"  postern probe --id demo/alice.id bob\n" +
			"  postern probe --timeout 5s bob.card 'postern-relay1:...'\n" +
			"  postern probe --listen 127.0.0.1:9465 --interval 0 bob relay.descriptor\n" +
			"  curl 'http://127.0.0.1:9465/probe?target=RELAY_ID&transport=h3'",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := identityFlag(fs)
			timeout := fs.Duration("timeout", 10*time.Second, "give up on a pair after this long (on /probe: at most this long)")
			listen := fs.String("listen", "", "run as an exporter serving /metrics, /probe and /healthz on this TCP `address`")
			interval := fs.Duration("interval", 60*time.Second, "with --listen: time between probe rounds; 0: no rounds, only /probe")
			maxScrapes := fs.Int("max-scrapes", defaultMaxScrapes, "with --listen: /probe requests probing at once; more get 503")
			return func(ctx context.Context, args []string) error {
				if len(args) == 0 {
					return usageErr("give at least one relay descriptor, contact card or contact name")
				}
				if *timeout <= 0 {
					return usageErr("--timeout %v is not positive", *timeout)
				}
				if *interval < 0 {
					return usageErr("--interval %v is negative", *interval)
				}
				if *maxScrapes < 1 {
					return usageErr("--max-scrapes %d: allow at least 1", *maxScrapes)
				}
				spec, err := resolveProbeArgs(e.stderr, resolveID(e, *idPath), args)
				if err != nil {
					return err
				}
				p := &prober{reg: newRegistry(), timeout: *timeout}
				if *listen != "" {
					x := &exporter{p: p, spec: spec, sem: make(chan struct{}, *maxScrapes), log: newLogger(e, "info")}
					return x.run(ctx, e, *listen, *interval)
				}
				return probeOnce(ctx, e, p, spec.pairs)
			}
		},
	}
}

// probeOnce probes every pair once and prints the table.
func probeOnce(ctx context.Context, e *env, p *prober, pairs []probeTarget) error {
	results := p.round(ctx, pairs)
	printProbeTable(e.stdout, results)
	failed := 0
	for _, r := range results {
		if !r.ok {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d relay/transport pairs failed", failed, len(results))
	}
	return nil
}

// probeTarget is one relay/transport pair and the endpoints that serve it,
// in the descriptor's order.
type probeTarget struct {
	relay, transport string
	cands            []route.Candidate
}

type probeResult struct {
	relay, transport string
	ok               bool
	class            transport.Class
	took             time.Duration
}

type prober struct {
	reg     *transport.Registry
	timeout time.Duration
}

// round probes every target, a few at a time, and returns the results in
// target order.
func (p *prober) round(ctx context.Context, targets []probeTarget) []probeResult {
	results := make([]probeResult, len(targets))
	sem := make(chan struct{}, probeParallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = p.probe(ctx, t)
		}()
	}
	wg.Wait()
	return results
}

// probe tries the target's endpoints in order, through the one dial path,
// until one completes the transport handshake, the relay hello and a
// ping. The pair fails with the class of the last endpoint's failure.
func (p *prober) probe(ctx context.Context, t probeTarget) probeResult {
	res := probeResult{relay: t.relay, transport: t.transport}
	start := time.Now()
	c, _, err := route.Dial(ctx, p.reg, t.cands, route.Options{PerAttempt: p.timeout, Stagger: -1}, pingHandshake)
	res.took = time.Since(start)
	if err != nil {
		res.class = probeClass(err)
		return res
	}
	c.Close()
	res.ok = true
	return res
}

// errRelayProtocol marks a failure after the transport handshake that is
// not a transport failure: the peer is not speaking the relay protocol.
var errRelayProtocol = errors.New("relay protocol")

// pingHandshake is a probe's handshake: the relay hello and one ping.
func pingHandshake(ctx context.Context, conn transport.Conn) (*client.Client, error) {
	c, err := client.New(ctx, conn)
	if err != nil {
		return nil, afterHandshake(ctx, err)
	}
	if err := c.Ping(ctx); err != nil {
		c.Close()
		return nil, afterHandshake(ctx, err)
	}
	return c, nil
}

// afterHandshake classifies a failure of the relay hello or ping: the
// context's end, a transport failure on the stream, or else a protocol
// failure.
func afterHandshake(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var pe *relay.Error
	if !errors.As(err, &pe) && transport.ClassOf(err) != transport.ClassUnknown {
		return err
	}
	return fmt.Errorf("%w: %w", errRelayProtocol, err)
}

func probeClass(err error) transport.Class {
	var re *route.Error
	if errors.As(err, &re) && len(re.Attempts) > 0 {
		err = re.Attempts[len(re.Attempts)-1].Err
	}
	if errors.Is(err, errRelayProtocol) {
		return transport.ClassProtocol
	}
	return transport.ClassOf(err)
}

func (r probeResult) status() string {
	if r.ok {
		return "ok"
	}
	return r.class.String()
}

// printProbeTable prints one line per pair. It shows relay ids and
// transport names only, never addresses.
func printProbeTable(w io.Writer, results []probeResult) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "RELAY\tTRANSPORT\tRESULT\tTIME")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.relay, r.transport, r.status(), r.took.Round(time.Millisecond))
	}
	tw.Flush()
}
