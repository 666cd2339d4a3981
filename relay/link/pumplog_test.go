package link_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
	"github.com/postern/postern/transport/route"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// slowStore is a memory store whose Put takes about as long as an
// fdatasync, so that two copies of a layer are stored at once.
type slowStore struct{ *store.Memory }

func (s slowStore) Put(ctx context.Context, id [32]byte, env []byte) (store.Ref, error) {
	time.Sleep(20 * time.Millisecond)
	return s.Memory.Put(ctx, id, env)
}

// TestForwarderDuplicateForward: a client that forwards one layer twice
// (or sends a Forward again whose ack it lost) gets both copies out on
// one link, and the home relay answers the second CodeBusy while it
// stores the first: a refusal of that item for now, not a failure of the
// link (no failure logged, no second dial), and the copy is sent again
// and answered CodeReplay.
func TestForwarderDuplicateForward(t *testing.T) {
	home, desc, line := homeRelayOn(t, slowStore{store.NewMemory(store.Options{})})
	mb := relaytest.NewMailbox(t, home.Connect(t), nil)
	layer, err := forward.Seal(desc, 1, nil, mb.Seal(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	var buf lockedBuf
	var dials atomic.Int32
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
			dials.Add(1)
			return linkTo(ctx, t, home)
		},
		Log:        slog.New(slog.NewTextHandler(&buf, nil)),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	p := relay.ForwardPayload{Descriptor: line, Layer: layer}.Append(nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	for range 2 {
		if err := fw.Forward(ctx, [16]byte{1}, p); err != nil {
			t.Fatal(err)
		}
	}
	runForwarder(ctx, t, fw) // one drain finds both
	waitFor(ctx, t, "the queue emptied", func() bool { return q.len() == 0 })
	if strings.Contains(buf.String(), "failed") || dials.Load() != 1 {
		t.Fatalf("a duplicate forward failed the link (%d dials): %s", dials.Load(), buf.String())
	}
	if n := home.Store.Stats().Envelopes; n != 1 {
		t.Fatalf("the home relay holds %d envelopes, want 1", n)
	}
}

// TestForwarderLogsNoRelayID: what the pump logs of a failed delivery is
// its class, not the error's text, which (a route error) names the home
// relay.
func TestForwarderLogsNoRelayID(t *testing.T) {
	h, lines, descs := newHomes(t, 1)
	k := forward.RelayHash(descs[0].RelayKey)
	mb := relaytest.NewMailbox(t, h.relay[k].Connect(t), nil)
	layer, err := forward.Seal(descs[0], 1, nil, mb.Seal(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	var buf lockedBuf
	fw := link.NewForwarder(link.ForwarderConfig{Queue: &memQueue{}, Dest: forward.Dest,
		Dial: func(ctx context.Context, d *descriptor.Descriptor) (*client.Client, error) {
			return nil, &route.Error{Attempts: []route.Attempt{{Relay: d.RelayID(), Transport: "https",
				Err: &transport.Error{Class: transport.ClassRefused, Op: "dial", Transport: "https", Err: transport.ErrRefused}}}}
		},
		Log:        slog.New(slog.NewTextHandler(&buf, nil)),
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock guard
	defer cancel()
	runForwarder(ctx, t, fw)
	if err := fw.Forward(ctx, [16]byte{1}, relay.ForwardPayload{Descriptor: lines[0], Layer: layer}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "a log line", func() bool { return strings.Contains(buf.String(), "failed") })
	if id := descs[0].RelayID(); strings.Contains(buf.String(), id) || !strings.Contains(buf.String(), "refused") {
		t.Fatalf("the pump logged %q: the relay id %s, or not the class", buf.String(), id)
	}
}
