package boltstore_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/postern/postern/relay/store/boltstore"
	"github.com/postern/postern/relay/store/storetest"
)

func BenchmarkPut(b *testing.B) {
	s, err := boltstore.Open(b.TempDir(), unlimited)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	storetest.BenchPut(b, s)
}

// BenchmarkRawFsync is the physical limit beside BenchmarkPut: one 4 KiB
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

// BenchmarkOpen50k measures Open, with its integrity checks, of a store
// holding 50,000 envelopes of 1 KiB in 500 mailboxes.
func BenchmarkOpen50k(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	s, err := boltstore.Open(dir, unlimited)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for m := range 500 {
		wg.Go(func() {
			id := storetest.ID(m)
			if err := s.CreateMailbox(ctx, id, storetest.Owner(m), nil); err != nil {
				b.Error(err)
				return
			}
			for i := range 100 {
				if _, err := s.Put(ctx, id, storetest.Envelope(id, 1024, i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := boltstore.Open(dir, unlimited)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	// After the loop: b.Loop's ResetTimer drops metrics reported before.
	b.ReportMetric(float64(len(storeData(b, dir)))/(1<<20), "MiB")
	b.ReportMetric(float64(indexHeap(b, dir))/50000, "index-B/env")
}

func openBench(b *testing.B) *boltstore.Store {
	s, err := boltstore.Open(b.TempDir(), unlimited)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// storeData returns the bytes of every file in the store directory dir
// but the key file, concatenated.
func storeData(t testing.TB, dir string) []byte {
	t.Helper()
	var data []byte
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == boltstore.KeyFile {
			return err
		}
		b, err := os.ReadFile(path)
		data = append(data, b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// indexHeap returns the heap an open store in dir holds (its index):
// live heap with the store open minus live heap before Open.
func indexHeap(b *testing.B, dir string) int64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, err := boltstore.Open(dir, unlimited)
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	s.Close()
	return int64(after.HeapAlloc) - int64(before.HeapAlloc)
}
