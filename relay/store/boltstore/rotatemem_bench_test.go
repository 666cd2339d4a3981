package boltstore_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
)

// BenchmarkRotateMemory measures the peak heap in use while four
// mailboxes of 16 MiB each (256 envelopes of 64 KiB) are rotated at
// once, beside the live heap before (the store loaded, after a
// collection). Sampled every 2 ms; each iteration rotates them back and
// forth once (ids free at once: Retire -1).
func BenchmarkRotateMemory(b *testing.B) {
	const boxes, envs, size = 4, 256, 64 << 10
	s, err := boltstore.Open(b.TempDir(), store.Options{MaxMailboxBytes: -1, MaxStoreBytes: -1, MaxMailboxEnvelopes: -1, Retire: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for n := range boxes {
		id := storetest.ID(n)
		if err := s.CreateMailbox(ctx, id, storetest.Owner(n), nil); err != nil {
			b.Fatal(err)
		}
		for i := range envs {
			if _, err := s.Put(ctx, id, storetest.Envelope(id, size, i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
		}
	}()
	from, to := 0, boxes
	for b.Loop() {
		for range 2 {
			var wg sync.WaitGroup
			for n := range boxes {
				wg.Go(func() {
					if _, err := s.RotateMailbox(ctx, storetest.ID(from+n), storetest.ID(to+n), storetest.Owner(to+n), nil); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			from, to = to, from
		}
	}
	close(stop)
	<-sampled
	b.ReportMetric(float64(base)/(1<<20), "base-heap-MiB")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
}
