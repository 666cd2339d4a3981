package store_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

var unlimited = store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1}

// benchPut runs parallel putters of distinct 4 KiB envelopes spread over a
// few mailboxes and reports envelopes/s (and commits/s for Bolt).
func benchPut(b *testing.B, s store.Store) {
	ctx := context.Background()
	const boxes = 8
	for i := range boxes {
		if err := s.CreateMailbox(ctx, storetest.ID(i), storetest.Owner(i), nil); err != nil {
			b.Fatal(err)
		}
	}
	commits0 := s.Stats().Commits
	var seq atomic.Uint64
	b.SetParallelism(16) // 16 putters per CPU, like many sessions
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		env := storetest.Envelope(storetest.ID(0), 4096, 0)
		for pb.Next() {
			n := seq.Add(1)
			id := storetest.ID(int(n % boxes))
			copy(env[2:], id[:])
			binary.BigEndian.PutUint64(env[2+32:], n) // unique bytes: no dedupe
			if _, err := s.Put(ctx, id, env); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/secs, "envelopes/s")
	if c := s.Stats().Commits - commits0; c > 0 {
		b.ReportMetric(float64(c)/secs, "commits/s")
		b.ReportMetric(float64(b.N)/float64(c), "envelopes/commit")
	}
}

func BenchmarkPutBolt(b *testing.B) {
	s, err := store.OpenBolt(b.TempDir(), unlimited)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchPut(b, s)
}

func BenchmarkPutMemory(b *testing.B) {
	s := store.NewMemory(unlimited)
	defer s.Close()
	benchPut(b, s)
}

// BenchmarkRawFsync is the physical limit beside BenchmarkPutBolt: one 4 KiB
// write plus fsync per op, on the same file system (b.TempDir()).
func BenchmarkRawFsync(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fsyncs/s")
}
