package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
)

// TestRelayCapacity measures durable 4 KiB accepts through a real relay
// process (`postern relay serve` with its log store on this machine's
// disk) from a load generator in this test process, and what each
// envelope costs the relay process alone in CPU time (/proc/PID/stat).
// RelayLoad in relay/server runs client, transports, relay and store in
// one process, so its CPU per envelope includes the client's; here the
// relay's share is measured apart, which is what a relay on its own
// machine would spend.
//
//	POSTERN_CAPACITY            envelopes to send (unset: skip)
//	POSTERN_CAPACITY_SENDERS    sender sessions, one Send in flight each (default 64)
//	POSTERN_CAPACITY_TRANSPORT  "https", "h3" or "https,h3" (default)
//	POSTERN_SCALE_BIN           a postern binary to run as the relay (to
//	                            compare builds under the same load)
//	POSTERN_SCALE_PROFILE       a directory: the relay runs as this test
//	                            binary and writes a CPU profile of the
//	                            timed phase there (see TestScale)
//
// The load generator shares the machine's cores with the relay, so the
// accept rate is a floor; the relay's CPU per envelope gives its own
// ceiling on N cores (N × 10⁶ / µs per envelope), counting all the relay
// does for an envelope: accept, store, push, ack, delete. The test checks
// that every envelope was accepted, delivered and acked; it logs the
// figures and asserts none of them.
func TestRelayCapacity(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("POSTERN_CAPACITY"))
	if n <= 0 {
		t.Skip("set POSTERN_CAPACITY=N to send N envelopes through a relay process")
	}
	senders := 64
	if v, err := strconv.Atoi(os.Getenv("POSTERN_CAPACITY_SENDERS")); err == nil && v > 0 {
		senders = v
	}
	trs := os.Getenv("POSTERN_CAPACITY_TRANSPORT")
	if trs == "" {
		trs = "https,h3"
	}
	for _, tr := range strings.Split(trs, ",") {
		t.Run(tr, func(t *testing.T) { runCapacity(t, tr, n, senders) })
	}
}

func runCapacity(t *testing.T, tr string, n, senders int) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	// One mailbox takes every envelope: its quotas must hold all of them
	// should the receiver fall behind.
	r := startScaleRelay(t, tr, senders+16, map[string]any{
		"max_mailbox_envelopes": n + 1024, "max_mailbox_bytes": int64(n+1024) * 8 << 10})
	recv := newLegitClient(t, ctx, r.d, tr)
	defer recv.close()
	envs := make([][]byte, n)
	for i := range envs {
		var err error
		envs[i], err = envelope.Seal(recv.card, nil, []byte(fmt.Sprint(i)),
			&envelope.Options{Suite: envelope.SuiteX25519, Bucket: envelope.Bucket4K})
		if err != nil {
			t.Fatal(err)
		}
	}
	cs := make([]*client.Client, senders)
	for i := range cs {
		// 32 sessions per loopback source, below the per-source cap.
		opts := client.DialOptions{Transport: tr, LocalAddr: fmt.Sprintf("127.0.0.%d", 2+i/32)}
		c, err := client.Dial(ctx, newRegistry(), opts, r.d)
		if err != nil {
			t.Fatalf("sender %d: %v", i, err)
		}
		defer c.Close()
		cs[i] = c
	}

	// The receiver takes every push and acks them from another goroutine
	// in batches (takeAll), so that an ack's round trip never delays a
	// delivery.
	var delivered atomic.Int64
	recvDone := make(chan error, 1)
	go func() { recvDone <- takeAll(ctx, recv, n, &delivered) }()

	if r.profile != "" {
		r.cmd.Process.Signal(syscall.SIGUSR2) // a CPU profile of the timed phase
	}
	relay0, self0 := cpuTime(t, r.cmd.Process.Pid), cpuTime(t, os.Getpid())
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for _, c := range cs {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := c.Send(ctx, envs[i], nil); err != nil {
					errs <- fmt.Errorf("send %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	accepted := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := <-recvDone; err != nil {
		t.Fatalf("after %d of %d delivered: %v", delivered.Load(), n, err)
	}
	all := time.Since(start)
	relayCPU, selfCPU := cpuTime(t, r.cmd.Process.Pid)-relay0, cpuTime(t, os.Getpid())-self0
	if r.profile != "" {
		r.cmd.Process.Signal(syscall.SIGUSR2)
		// The relay renames the profile into place once it is whole; wait
		// for that, or the relay is stopped with the profile unwritten.
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(cpuProfilePath(r.profile)); err == nil {
				break
			}
		}
		t.Logf("%s: relay CPU profile: %s", tr, cpuProfilePath(r.profile))
	}
	perEnv := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	t.Logf("%s: %d envelopes of 4 KiB from %d sender sessions: accepted in %v (%.0f/s), delivered and acked in %v (%.0f/s)",
		tr, n, senders, accepted.Round(time.Millisecond), float64(n)/accepted.Seconds(), all.Round(time.Millisecond), float64(n)/all.Seconds())
	t.Logf("%s: CPU per envelope: relay process %.1f µs, load generator %.1f µs; the relay alone on %d cores would take at most %.0f/s",
		tr, perEnv(relayCPU), perEnv(selfCPU), runtime.NumCPU(), float64(runtime.NumCPU())*1e6/perEnv(relayCPU))
}

// cpuTime returns the user and system CPU time process pid has used
// (/proc/PID/stat, in clock ticks: USER_HZ, which Linux fixes at 100 for
// every architecture Go runs on).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th of them.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}
