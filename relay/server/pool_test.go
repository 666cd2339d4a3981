package server_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/transport"
)

// A Send frame's payload comes from a pool and goes back once the store
// has the envelope, so the relay does not allocate an envelope's size per
// Send. The frames are encoded before the count and
// carry the same envelope, which the memory store keeps once, so what is
// counted is the relay's own reading and answering. Under the race
// detector sync.Pool drops a quarter of what it is given, so this test
// runs without it; .ci/run runs it so.
func TestSendPayloadPooled(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector; .ci/run runs this test without it")
	}
	r := relaytest.New(t, store.Options{}, server.Config{})
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	env := mb.Seal(t, "pooled")
	cc := helloSession(t, r)
	defer cc.Close()
	const warm, n = 32, 256
	frames := make([][]byte, warm+n)
	for i := range frames {
		frames[i] = relay.AppendFrame(nil, relay.Send{Req: uint32(i + 1), Envelope: env})
	}
	send := func(f []byte) {
		t.Helper()
		if _, err := cc.Write(f); err != nil {
			t.Fatal(err)
		}
		typ, p, err := relay.ReadFrame(cc)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := relay.ParseResult(p); typ != relay.FrameResult || err != nil || res.Code != relay.CodeOK {
			t.Fatalf("Send answered with frame %d, %+v, %v", typ, res, err)
		}
	}
	for _, f := range frames[:warm] {
		send(f)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, f := range frames[warm:] {
		send(f)
	}
	runtime.ReadMemStats(&after)
	per := float64(after.TotalAlloc-before.TotalAlloc) / n
	t.Logf("%.0f bytes allocated per Send of a %d-byte envelope (relay and test client)", per, len(env))
	if per >= float64(len(env))/2 {
		t.Errorf("a Send of a %d-byte envelope allocated %.0f bytes: its payload is not pooled", len(env), per)
	}
}

// Sends of every envelope size, pipelined on one session so that the
// relay reads the next frames while earlier Sends are being stored: a
// payload given back to its pool before the store is done with it would
// be read into again (the race detector reports it; the stored envelopes
// come back different). Every envelope must come back as it was sent.
func TestSendPayloadsPipelined(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	envs, want := everySize(t, mb, 60)
	cc, wrote := pipelineSends(t, r, envs)
	for range envs {
		typ, p, err := relay.ReadFrame(cc)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := relay.ParseResult(p); typ != relay.FrameResult || err != nil || res.Code != relay.CodeOK {
			t.Fatalf("a Send answered with frame %d, %+v, %v", typ, res, err)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	got, err := c.Fetch(context.Background(), mb.Owner, mb.ID, len(envs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(envs) {
		t.Fatalf("the mailbox holds %d envelopes, want %d", len(got), len(envs))
	}
	for _, d := range got {
		if !want[string(d.Envelope)] {
			t.Fatalf("an envelope of %d bytes came back different from every one sent", len(d.Envelope))
		}
	}
}

// helloSession opens a raw session to r and exchanges hellos.
func helloSession(t *testing.T, r *relaytest.Relay) transport.Conn {
	t.Helper()
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	if _, err := cc.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion})); err != nil {
		t.Fatal(err)
	}
	if _, _, err := relay.ReadFrame(cc); err != nil {
		t.Fatal(err)
	}
	return cc
}

// everySize seals n envelopes to mb, of every bucket in turn, each
// different, and returns them and the set of them.
func everySize(t *testing.T, mb *relaytest.Mailbox, n int) ([][]byte, map[string]bool) {
	t.Helper()
	var envs [][]byte
	set := map[string]bool{}
	for i := range n {
		bucket := []int{envelope.Bucket4K, envelope.Bucket16K, envelope.Bucket64K}[i%3]
		msg := bytes.Repeat([]byte{byte(i)}, envelope.MaxPayload(envelope.SuiteX25519, bucket)-100)
		env, err := envelope.Seal(mb.Card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519, Bucket: bucket})
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, env)
		set[string(env)] = true
	}
	return envs, set
}

// pipelineSends writes a Send of each of envs on a new raw session without
// waiting for answers, and returns the session (closed when the test
// ends), whose answers the caller reads, and the write's result.
func pipelineSends(t *testing.T, r *relaytest.Relay, envs [][]byte) (transport.Conn, <-chan error) {
	t.Helper()
	cc := helloSession(t, r)
	t.Cleanup(func() { cc.Close() })
	var frames []byte
	for i, env := range envs {
		frames = relay.AppendFrame(frames, relay.Send{Req: uint32(i + 1), Envelope: env})
	}
	wrote := make(chan error, 1)
	go func() { _, err := cc.Write(frames); wrote <- err }()
	return cc, wrote
}

// With the log store, whose reads are pooled (store.Recycler): envelopes
// of every size are pushed to a subscriber and fetched by a third session
// while a fourth pipelines the Sends that put them, so the relay reads
// Send payloads and the store builds records in the same buffers that
// deliveries have just given back. The store here overwrites every
// envelope given back before it pools it, so a delivery that uses its
// envelope after giving it back (copying it after, or writing it out
// from the store's buffer) delivers the overwritten bytes; the race
// detector would see a buffer reused too early as well. Every envelope
// pushed or fetched must be one that was sent.
func TestDeliveriesPooled(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "store"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var recycled atomic.Int64
	r := relaytest.NewWithStore(t, poisonRecycled{st, &recycled}, server.Config{})
	c := r.Connect(t)
	mb := relaytest.NewMailbox(t, c, nil)
	const n = 60
	envs, want := everySize(t, mb, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a deadlock guard
	defer cancel()
	recv := r.Connect(t)
	if err := recv.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		t.Fatal(err)
	}
	fetcher := r.Connect(t)
	fetched := make(chan error, 1)
	go func() { // until it has fetched every envelope: none is acked before
		got := map[string]bool{}
		for len(got) < n {
			page, err := fetcher.Fetch(ctx, mb.Owner, mb.ID, n)
			if err != nil {
				fetched <- err
				return
			}
			for _, d := range page {
				if !want[string(d.Envelope)] {
					fetched <- fmt.Errorf("a fetched envelope of %d bytes differs from every one sent", len(d.Envelope))
					return
				}
				got[string(d.Envelope)] = true
			}
		}
		fetched <- nil
	}()
	cc, wrote := pipelineSends(t, r, envs)
	go func() { // the answers, which the relay writes as it stores
		for range envs {
			if _, _, err := relay.ReadFrame(cc); err != nil {
				return
			}
		}
	}()
	seen := map[string]bool{}
	var refs []client.Ref
	for len(seen) < n {
		select {
		case d := <-recv.Deliveries():
			if !want[string(d.Envelope)] {
				t.Fatalf("a pushed envelope of %d bytes differs from every one sent", len(d.Envelope))
			}
			seen[string(d.Envelope)] = true
			refs = append(refs, d.Ref) // acked once the fetcher is done
		case <-ctx.Done():
			t.Fatalf("%d of %d envelopes pushed before the deadline", len(seen), n)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	if _, err := recv.Ack(ctx, mb.Owner, mb.ID, refs...); err != nil {
		t.Fatal(err)
	}
	if got := recycled.Load(); got < n {
		t.Errorf("%d envelopes given back to the store, want at least the %d pushed", got, n)
	}
}

// poisonRecycled is a log store that overwrites the envelopes given back
// to it before it pools them, and counts them.
type poisonRecycled struct {
	*boltstore.Store
	n *atomic.Int64
}

func (p poisonRecycled) Recycle(items []store.Item) {
	p.n.Add(int64(len(items)))
	for _, it := range items {
		for i := range it.Envelope {
			it.Envelope[i] = 0xA5
		}
	}
	p.Store.Recycle(items)
}
