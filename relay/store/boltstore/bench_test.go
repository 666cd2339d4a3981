package boltstore_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
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
	// As a relay with this store runs (boltstore.Procs), unless GOMAXPROCS
	// is set: GOMAXPROCS=2 measures without the extra P.
	if os.Getenv("GOMAXPROCS") == "" {
		def := runtime.GOMAXPROCS(boltstore.Procs(runtime.GOMAXPROCS(0)))
		b.Cleanup(func() { runtime.GOMAXPROCS(def) })
	}
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

// BenchmarkFetch reads pages of 16 sealed 4 KiB envelopes from one mailbox,
// as a relay pushing to a subscriber does: pread from the page cache and
// AES-GCM open per envelope. Beside it, in the same run, the raw cost of
// the same work with a key schedule made once: pread of 16 × 4 KiB and
// AES-256-GCM open of 16 × 4 KiB into a new buffer each. store-recycled
// gives each page back (Recycle) before the next, as the relay does;
// store keeps none, so each read takes a new buffer.
func BenchmarkFetch(b *testing.B) {
	const page, size = 16, 4096
	for _, recycle := range []bool{false, true} {
		name := "store"
		if recycle {
			name = "store-recycled" // each page given back (Recycle), as the relay does
		}
		b.Run(name, func(b *testing.B) { benchFetch(b, page, size, recycle) })
	}
	b.Run("raw", func(b *testing.B) {
		f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		block, _ := aes.NewCipher(make([]byte, 32))
		aead, _ := cipher.NewGCM(block)
		nonce := make([]byte, aead.NonceSize())
		sealed := aead.Seal(nil, nonce, make([]byte, size), nil)
		for i := range page {
			if _, err := f.WriteAt(sealed, int64(i*len(sealed))); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(page * size)
		b.ReportAllocs()
		for b.Loop() {
			for i := range page {
				buf := make([]byte, len(sealed))
				if _, err := f.ReadAt(buf, int64(i*len(sealed))); err != nil {
					b.Fatal(err)
				}
				if _, err := aead.Open(nil, nonce, buf, nil); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*page), "ns/env")
	})
}

func benchFetch(b *testing.B, page, size int, recycle bool) {
	s, err := boltstore.Open(b.TempDir(), unlimited)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	id := storetest.ID(1)
	if err := s.CreateMailbox(ctx, id, storetest.Owner(1), nil); err != nil {
		b.Fatal(err)
	}
	for i := range page {
		if _, err := s.Put(ctx, id, storetest.Envelope(id, size, i)); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(page * size))
	b.ReportAllocs()
	for b.Loop() {
		items, err := s.FetchAfter(ctx, id, 0, page)
		if err != nil || len(items) != page {
			b.Fatalf("FetchAfter: %d items, %v", len(items), err)
		}
		if recycle {
			s.Recycle(items)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*page), "ns/env")
}
