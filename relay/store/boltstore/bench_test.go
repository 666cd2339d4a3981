package boltstore_test

import (
	"os"
	"path/filepath"
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
