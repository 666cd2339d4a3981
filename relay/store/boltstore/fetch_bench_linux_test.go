package boltstore

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// BenchmarkPutBesideFetch: 8 putters put 4 KiB envelopes (b.N in all)
// while one reader fetches a backlog of 64 envelopes of 64 KiB from
// another mailbox over and over, as a client that reconnects to a full
// mailbox does. reader=none is the same puts alone, the baseline in the
// same run; reader=warm fetches from the page cache; reader=cold first
// evicts the log's pages (posix_fadvise DONTNEED), so every fetch reads
// the disk, as a backlog left for hours would. Reported: Put latency
// p50/p99/p99.9 in ms and the reader's fetches.
func BenchmarkPutBesideFetch(b *testing.B) {
	for _, reader := range []string{"none", "warm", "cold"} {
		b.Run("reader="+reader, func(b *testing.B) { putBesideFetch(b, reader) })
	}
}

func putBesideFetch(b *testing.B, reader string) {
	ctx := context.Background()
	dir := b.TempDir()
	s, err := Open(dir, store.Options{IDKey: testKey, MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const putters, backlog = 8, 64
	full := storetest.ID(1000)
	if err := s.CreateMailbox(ctx, full, storetest.Owner(1000), nil); err != nil {
		b.Fatal(err)
	}
	for i := range backlog {
		if _, err := s.Put(ctx, full, storetest.Envelope(full, store.MaxEnvelopeSize, i)); err != nil {
			b.Fatal(err)
		}
	}
	for p := range putters {
		if err := s.CreateMailbox(ctx, storetest.ID(p), storetest.Owner(p), nil); err != nil {
			b.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var fetches atomic.Int64
	var rg sync.WaitGroup
	if reader != "none" {
		rg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if reader == "cold" {
					evict(b, filepath.Join(dir, LogDir))
				}
				items, err := s.Fetch(ctx, full, backlog)
				if err != nil || len(items) != backlog {
					b.Errorf("fetch: %d items, %v", len(items), err)
					return
				}
				fetches.Add(1)
			}
		})
	}
	var next atomic.Int64
	lat := make([][]time.Duration, putters)
	b.ResetTimer()
	var wg sync.WaitGroup
	for p := range putters {
		wg.Go(func() {
			id := storetest.ID(p)
			env := storetest.Envelope(id, 4096, p)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				binary.BigEndian.PutUint64(env[2+32:], uint64(i)) // unique bytes
				t0 := time.Now()
				if _, err := s.Put(ctx, id, env); err != nil {
					b.Error(err)
					return
				}
				lat[p] = append(lat[p], time.Since(t0))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(stop)
	rg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))]) / 1e6 }
	if len(all) > 0 {
		b.ReportMetric(q(.5), "put-p50-ms")
		b.ReportMetric(q(.99), "put-p99-ms")
		b.ReportMetric(q(.999), "put-p99.9-ms")
	}
	b.ReportMetric(float64(fetches.Load())/b.Elapsed().Seconds(), "fetches/s")
}

// evict drops the page cache of every file in dir (they are synced, so
// their pages are clean and go at once).
func evict(b *testing.B, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // compacted away meanwhile
		}
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
}
