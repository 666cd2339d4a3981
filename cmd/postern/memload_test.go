package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// rawSubscribe opens a session over tr, subscribes to the mailbox and
// then never reads again, as an abusive holder of a descriptor would.
func rawSubscribe(ctx context.Context, reg *transport.Registry, c route.Candidate, relayKey ed25519.PublicKey, owner ed25519.PrivateKey, id [32]byte) (transport.Conn, error) {
	conn, err := reg.Dial(ctx, c.Endpoint)
	if err != nil {
		return nil, err
	}
	conn.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion}))
	_, p, err := relay.ReadFrame(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	h, err := relay.ParseServerHello(p)
	if err != nil {
		conn.Close()
		return nil, err
	}
	sub := relay.Subscribe{Req: 1, Mailbox: id}
	bind, _ := relay.NewBinding(relayKey, h.Challenge)
	sub.Sig = relay.Sign(owner, bind, sub)
	_, err = conn.Write(relay.AppendFrame(nil, sub))
	return conn, err
}

// TestStalledSubscribersMemory reproduces the memory-exhaustion finding:
// 64 h3 sessions subscribe to a mailbox of 256 envelopes of 64 KiB and
// stop reading. Before delivery budgets each pinned up to 16 MiB (1.12 GB
// RSS was measured); now the relay holds at most one batch per session
// and 64 MiB in all. The bound asserted is the goal, 256 MB.
func TestStalledSubscribersMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a relay and 64 sessions")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := startRelay(t, bin, filepath.Join(dir, "relay"), "--log-level", "info")
	defer rp.stop()
	d, err := descriptor.Parse(rp.line, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := transportEnv("h3")
	c, err := dialRelay(ctx, e, rp.line)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, owner, _ := ed25519.GenerateKey(nil)
	var id [32]byte
	rand.Read(id[:])
	if err := c.CreateMailbox(ctx, owner, id, nil); err != nil {
		t.Fatal(err)
	}
	ident, _ := envelope.NewIdentity()
	card := ident.Card(id, nil, nil)
	big := bytes.Repeat([]byte("m"), envelope.MaxPayload(envelope.SuiteX25519, envelope.Bucket64K)-200)
	for i := 0; i < 256; i++ {
		env, err := envelope.Seal(card, nil, big, &envelope.Options{Suite: envelope.SuiteX25519})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	base := rssBytes(t, rp.cmd.Process.Pid)
	reg := newRegistry()
	cands := route.FromDescriptor(d, route.Filter{Transport: "h3"})
	var conns []transport.Conn
	for i := 0; i < 64; i++ {
		// From four source addresses, so the per-source session cap is
		// not what keeps the relay small.
		cand := cands[0]
		cand.Endpoint.LocalAddr = fmt.Sprintf("127.0.0.%d", 10+i%4)
		conn, err := rawSubscribe(ctx, reg, cand, d.RelayKey, owner, id)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, conn)
	}
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	// Let the pushes run into the stalled streams, then sample the peak.
	var peak int64
	for i := 0; i < 20; i++ {
		time.Sleep(250 * time.Millisecond)
		peak = max(peak, rssBytes(t, rp.cmd.Process.Pid))
	}
	t.Logf("relay RSS: %d MB after filling the mailbox, peak %d MB with 64 stalled subscribers",
		base>>20, peak>>20)
	if peak > 256<<20 {
		t.Fatalf("relay RSS %d MB with 64 stalled subscribers, goal under 256 MB", peak>>20)
	}
	// A legitimate client still gets its envelopes meanwhile: a fetch on
	// the crowded mailbox, and send→deliver on a mailbox of its own.
	start := time.Now()
	ds, err := c.Fetch(ctx, owner, id, 4)
	if err != nil || len(ds) != 4 {
		t.Fatalf("legitimate fetch: %d, %v", len(ds), err)
	}
	t.Logf("a legitimate 4-envelope fetch took %s meanwhile", time.Since(start).Round(time.Millisecond))
	t.Logf("legitimate send→deliver meanwhile: %s", sendDeliver(t, ctx, c))
}

// sendDeliver subscribes c to a new mailbox and returns the median of ten
// send→push round trips of a 4 KiB envelope.
func sendDeliver(t *testing.T, ctx context.Context, c *client.Client) time.Duration {
	_, owner, _ := ed25519.GenerateKey(nil)
	var id [32]byte
	rand.Read(id[:])
	if err := c.CreateMailbox(ctx, owner, id, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(ctx, owner, id); err != nil {
		t.Fatal(err)
	}
	ident, _ := envelope.NewIdentity()
	card := ident.Card(id, nil, nil)
	var lat []time.Duration
	for i := 0; i < 10; i++ {
		env, err := envelope.Seal(card, nil, []byte("ping"), &envelope.Options{Suite: envelope.SuiteX25519})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := c.Send(ctx, env, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-c.Deliveries():
			lat = append(lat, time.Since(start))
			c.Ack(ctx, owner, id, d.Ref)
		case <-ctx.Done():
			t.Fatal("no delivery")
		}
	}
	slices.Sort(lat)
	return lat[len(lat)/2].Round(10 * time.Microsecond)
}
