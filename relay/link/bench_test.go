package link_test

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/forward"
	"github.com/postern/postern/relay/link"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// BenchmarkTwoHop measures send→deliver through an entry relay beside a
// direct send to the home relay, in the same run: 8 senders, one
// subscribed receiver acking each envelope, 4 KiB envelopes, in-process
// relays on loopback TCP with memory stores and queues (so the cost shown
// is the extra hop: sealing the layer, the entry relay, the link, opening
// the layer).
func BenchmarkTwoHop(b *testing.B) {
	for _, mode := range []string{"direct", "via-entry"} {
		b.Run(mode, func(b *testing.B) { benchTwoHop(b, mode == "via-entry") })
	}
}

func benchTwoHop(b *testing.B, via bool) {
	home, homeDesc, homeLine := homeRelayB(b)
	q := &memQueue{}
	fw := link.NewForwarder(link.ForwarderConfig{Queue: q, Dest: forward.Dest,
		Dial: func(ctx context.Context, _ *descriptor.Descriptor) (*client.Client, error) {
			return linkTo(ctx, b, home)
		}, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	entry := relaytest.New(b, store.Options{MaxMailboxEnvelopes: 1 << 20}, server.Config{Forwarder: fw})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runForwarder(ctx, b, fw)
	owner := home.Connect(b)
	mb := relaytest.NewMailbox(b, owner, nil)
	if err := owner.Subscribe(ctx, mb.Owner, mb.ID); err != nil {
		b.Fatal(err)
	}
	target := home
	if via {
		target = entry
	}
	const senders = 8
	conns := make([]*client.Client, senders)
	for i := range conns {
		conns[i] = target.Connect(b)
	}
	starts := make([]time.Time, b.N)
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	acks := make(chan client.Ref, 1024)
	go func() {
		// Acks in batches, off the receiving path, as a real client would.
		var batch []client.Ref
		for ref := range acks {
			batch = append(batch, ref)
			if len(acks) == 0 || len(batch) >= 64 {
				owner.Ack(ctx, mb.Owner, mb.ID, batch...)
				batch = batch[:0]
			}
		}
	}()
	go func() {
		defer close(done)
		defer close(acks)
		for len(lat) < b.N {
			d := <-owner.Deliveries()
			o, err := envelope.Open(mb.Ident, d.Envelope)
			if err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(starts[binary.BigEndian.Uint32(o.Payload)]))
			acks <- d.Ref
		}
	}()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < b.N; i += senders {
				msg := binary.BigEndian.AppendUint32(nil, uint32(i))
				env, _ := envelope.Seal(mb.Card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519})
				starts[i] = time.Now()
				var err error
				if via {
					layer, lerr := forward.Seal(homeDesc, 1, nil, env)
					if lerr != nil {
						b.Error(lerr)
						return
					}
					err = conns[s].Forward(ctx, homeLine, layer)
				} else {
					_, err = conns[s].Send(ctx, env, nil)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	<-done
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "env/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}
