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

	"github.com/postern/postern/metrics"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// probeParallel bounds how many relay/transport pairs are probed at once.
const probeParallel = 16

func probeCmd() command {
	return command{
		name: "probe",
		args: "DESCRIPTOR...",
		summary: "Check which relay/transport pairs are reachable from here. For each relay\n" +
			"(a descriptor line, or a file holding one) and each of its transports, dial,\n" +
			"complete the relay hello and a ping, and print one line per pair: relay id,\n" +
			"transport, \"ok\" or the failure class, and the time it took. Classes:\n" +
			"refused, reset, timeout (TCP blackholed), tls (alert, bad certificate, or\n" +
			"ServerHello dropped), udp_silent (UDP dropped), auth, protocol, network_down\n" +
			"(this machine's network), invalid (fix the descriptor), canceled, unknown.\n" +
			"Exits 1 if any pair failed. With --listen it runs as a Prometheus exporter\n" +
			"instead, probing every --interval and serving postern_probe_* metrics on\n" +
			"ADDR/metrics, with the failure class as the class label.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			timeout := fs.Duration("timeout", 10*time.Second, "give up on a pair after this long")
			listen := fs.String("listen", "", "run as an exporter serving /metrics and /healthz on this TCP `address`")
			interval := fs.Duration("interval", 60*time.Second, "with --listen: time between probe rounds")
			return func(ctx context.Context, args []string) error {
				if len(args) == 0 {
					return usageErr("give at least one relay descriptor")
				}
				if *timeout <= 0 {
					return usageErr("--timeout %v is not positive", *timeout)
				}
				if *interval <= 0 {
					return usageErr("--interval %v is not positive", *interval)
				}
				targets, err := probeTargets(args)
				if err != nil {
					return err
				}
				p := &prober{reg: newRegistry(), timeout: *timeout}
				if *listen != "" {
					return p.export(ctx, e, targets, *listen, *interval)
				}
				results := p.round(ctx, targets)
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
		},
	}
}

// probeTarget is one relay/transport pair and the endpoints that serve it,
// in the descriptor's order.
type probeTarget struct {
	relay, transport string
	cands            []route.Candidate
}

// probeTargets parses the descriptors and groups their endpoints by relay
// and transport, in argument order. A relay given twice is probed once.
func probeTargets(args []string) ([]probeTarget, error) {
	var out []probeTarget
	index := map[[2]string]int{}
	seen := map[string]bool{}
	for _, a := range args {
		line, err := lineArg(a, descriptor.Prefix)
		if err != nil {
			return nil, err
		}
		d, err := descriptor.Parse(line, time.Now())
		if err != nil {
			return nil, err
		}
		id := d.RelayID()
		if seen[id] {
			continue
		}
		seen[id] = true
		for _, c := range route.FromDescriptor(d, route.Filter{}) {
			k := [2]string{id, c.Endpoint.Transport}
			i, ok := index[k]
			if !ok {
				i = len(out)
				index[k] = i
				out = append(out, probeTarget{relay: id, transport: c.Endpoint.Transport})
			}
			out[i].cands = append(out[i].cands, c)
		}
	}
	return out, nil
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

// export probes every interval and serves the results as metrics until ctx
// ends. The first round starts at once.
func (p *prober) export(ctx context.Context, e *env, targets []probeTarget, addr string, interval time.Duration) error {
	log := newLogger(e, "info")
	met := metrics.NewProbe(version)
	for _, t := range targets {
		met.Target(t.relay, t.transport)
	}
	srv, err := metrics.Listen(addr, met.Gatherer())
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer srv.Close()
	fmt.Fprintf(e.stdout, "serving probe metrics on http://%s/metrics\n", srv.Addr())
	log.Info("probe exporter started", "addr", srv.Addr().String(), "pairs", len(targets), "interval", interval)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok := 0
		for _, r := range p.round(ctx, targets) {
			if ctx.Err() != nil {
				// A round cut short by shutdown says nothing about reachability.
				break
			}
			if r.ok {
				ok++
				met.Success(r.relay, r.transport, r.took)
			} else {
				met.Failure(r.relay, r.transport, r.class.String(), r.took)
				log.Warn("probe failed", "relay", r.relay, "transport", r.transport, "class", r.class.String())
			}
		}
		if ctx.Err() == nil {
			log.Info("probe round done", "ok", ok, "failed", len(targets)-ok)
		}
		select {
		case <-ctx.Done():
			log.Info("probe exporter stopped")
			return nil
		case <-tick.C:
		}
	}
}
