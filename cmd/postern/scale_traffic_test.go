package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
)

// scaleTrafficSenders is how many sessions the traffic phase sends from.
const scaleTrafficSenders = 16

// runTraffic is TestScale's traffic phase (POSTERN_SCALE_TRAFFIC): while
// the sessions are held, it sends 4 KiB envelopes at rate per second for
// d, open loop (envelope i is due at i/rate seconds, whether or not the
// ones before it were accepted), from scaleTrafficSenders sessions to one
// mailbox whose receiver acks every delivery; in the second half of the
// phase the legitimate client's round trips run beside it. It logs what
// the phase cost the relay (CPU, GC cycles, memory) and the latencies,
// and fails if an envelope was not accepted or not delivered. This is
// where the relay's GC rule (gctune.go) works with a large live heap under
// moderate traffic: compare a run with GOGC=100 in the environment, which
// turns the rule off.
func runTraffic(t *testing.T, ctx context.Context, rl *scaleRelay, tr string, legit *legitClient, k, rate int, d time.Duration) {
	n := int(float64(rate) * d.Seconds())
	if n <= 0 {
		t.Fatalf("POSTERN_SCALE_TRAFFIC: %d envelopes/s for %s is no envelope", rate, d)
	}
	recv := newLegitClient(t, ctx, rl.d, tr)
	defer recv.close()
	envs := make([][]byte, n)
	for i := range envs {
		var err error
		envs[i], err = envelope.Seal(recv.card, nil, []byte(fmt.Sprint("traffic ", i)),
			&envelope.Options{Suite: envelope.SuiteX25519, Bucket: envelope.Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
	}
	cs := make([]*client.Client, scaleTrafficSenders)
	for i := range cs {
		c, err := client.Dial(ctx, newRegistry(), client.DialOptions{Transport: tr, LocalAddr: "127.0.0.1"}, rl.d)
		if err != nil {
			t.Fatalf("traffic sender %d: %v", i, err)
		}
		defer c.Close()
		cs[i] = c
	}

	var delivered atomic.Int64
	recvDone := make(chan error, 1)
	go func() { recvDone <- takeAll(ctx, recv, n, &delivered) }()

	m0, _ := scrape(t, rl.metrics)
	relay0, self0 := cpuTime(t, rl.cmd.Process.Pid), cpuTime(t, os.Getpid())
	start := time.Now()
	sendLat := make([][]time.Duration, len(cs))
	due := func(i int) time.Time {
		return start.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(cs)+1)
	// One goroutine hands each envelope to its sender at its due time; it
	// wakes through a relaytest.Pacer, since time.Sleep in a process
	// otherwise idle wakes up to 1 ms late (the latency, counted from the
	// due time, would include that). A sender still busy with its last
	// envelope takes the next late, and the latency counts that too.
	// A sender that fails ends the pacing too (pctx), not only its own
	// share.
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	work := make([]chan int, len(cs))
	for j, c := range cs {
		work[j] = make(chan int, n/len(cs)+1)
		wg.Go(func() {
			for i := range work[j] {
				if _, err := c.Send(ctx, envs[i], nil); err != nil {
					errs <- fmt.Errorf("traffic send %d of %d: %w", i+1, n, err)
					stop()
					return
				}
				sendLat[j] = append(sendLat[j], time.Since(due(i)))
			}
		})
	}
	wg.Go(func() {
		defer func() {
			for _, w := range work {
				close(w)
			}
		}()
		pace := relaytest.NewPacer()
		defer pace.Close()
		for i := range n {
			if pctx.Err() != nil {
				if err := ctx.Err(); err != nil {
					errs <- err
				}
				return
			}
			pace.Until(due(i))
			work[i%len(cs)] <- i
		}
	})
	// The legitimate round trips start halfway, when the relay has run
	// under the traffic long enough for its GC rule to have followed it.
	select {
	case <-time.After(d / 2):
	case <-ctx.Done():
	}
	legitLat := legit.roundTrips(t, ctx, k)
	wg.Wait()
	sent := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := <-recvDone; err != nil {
		t.Fatalf("traffic: after %d of %d delivered: %v", delivered.Load(), n, err)
	}
	relayCPU, selfCPU := cpuTime(t, rl.cmd.Process.Pid)-relay0, cpuTime(t, os.Getpid())-self0
	wall := time.Since(start)
	m1, _ := scrape(t, rl.metrics)
	s := rl.sample(t, tr)
	var all []time.Duration
	for _, l := range sendLat {
		all = append(all, l...)
	}
	gc := m1["go_gc_duration_seconds_count"] - m0["go_gc_duration_seconds_count"]
	commits := m1["postern_store_commit_writes_count"] - m0["postern_store_commit_writes_count"]
	writes := m1["postern_store_commit_writes_sum"] - m0["postern_store_commit_writes_sum"]
	syncs := m1["postern_store_syncs_total"] - m0["postern_store_syncs_total"]
	t.Logf("%s traffic: %d envelopes of 4 KiB at %d/s from %d sessions, sent in %s, all delivered and acked after %s",
		tr, n, rate, len(cs), sent.Round(time.Millisecond), wall.Round(time.Millisecond))
	t.Logf("%s traffic: relay CPU %.1f%% of one core (%.1f µs per envelope), load generator %.1f%%; relay GC cycles %.0f (one per %.1f s)",
		tr, 100*relayCPU.Seconds()/wall.Seconds(), float64(relayCPU.Microseconds())/float64(n),
		100*selfCPU.Seconds()/wall.Seconds(), gc, wall.Seconds()/max(gc, 1))
	t.Logf("%s traffic: the store committed %.0f times (%.2f a envelope, each sent and acked), %.1f writes a commit, %.2f fdatasyncs a envelope",
		tr, commits, commits/float64(n), writes/max(commits, 1), syncs/float64(n))
	if _, last := rl.gcTrace(); last != "" { // GODEBUG=gctrace=1: live heap against the goal
		t.Logf("%s traffic: the relay's last GC cycle: %s", tr, last)
	}
	t.Logf("%s traffic: relay VmRSS %d MiB (VmHWM %d MiB), Go heap in use %d MiB at the end", tr, s.mem.rss>>20, s.mem.hwm>>20, int64(s.heapInuse)>>20)
	t.Logf("%s traffic: send→ack from each envelope's due time: %s", tr, summarize(all))
	t.Logf("%s traffic: legitimate send→deliver in the second half: %s", tr, legitLat)
}

// takeAll takes n deliveries on l's mailbox and acks them from another
// goroutine in batches of up to 128, as relay/server's RelayLoad does, so
// that an ack's round trip never delays a delivery. An envelope delivered
// twice is an error.
func takeAll(ctx context.Context, l *legitClient, n int, delivered *atomic.Int64) error {
	refs := make(chan client.Ref, n) // the receiver never waits for the acks
	acked := make(chan error, 1)
	go func() {
		var batch []client.Ref
		for ref := range refs {
			batch = append(batch[:0], ref)
			for len(batch) < 128 && len(refs) > 0 {
				batch = append(batch, <-refs)
			}
			if _, err := l.recv.Ack(ctx, l.owner, l.id, batch...); err != nil {
				acked <- err
				for range refs {
				}
				return
			}
		}
		acked <- nil
	}()
	err := func() error {
		defer close(refs)
		seen := make(map[client.Ref]bool, n)
		for delivered.Load() < int64(n) {
			select {
			case dl, ok := <-l.recv.Deliveries():
				if !ok {
					return fmt.Errorf("receiver's session ended: %v", l.recv.Err())
				}
				if seen[dl.Ref] {
					return fmt.Errorf("envelope delivered twice after %d distinct", len(seen))
				}
				seen[dl.Ref] = true
				refs <- dl.Ref
				delivered.Add(1)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}()
	if aerr := <-acked; err == nil && aerr != nil {
		err = fmt.Errorf("ack: %w", aerr)
	}
	return err
}
