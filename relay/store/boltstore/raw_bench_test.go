package boltstore_test

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/store/storetest"
)

// The physical limits beside BenchmarkPutters, on the same file system
// (b.TempDir()), and the two layouts issue #13 proposed, reduced to what
// one group commit of 16 envelopes (8 mailboxes) writes. Each reports
// env/s and bytes-written/env (/proc/self/io).

const (
	protoBatch   = 16
	protoBoxes   = 8
	protoSealed  = 4096 + 28 // a sealed 4 KiB envelope
	protoRecord  = protoSealed + 96
	protoSegment = 64 << 20
)

func fdatasync(b *testing.B, f *os.File) {
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
}

func rawFile(b *testing.B) *os.File {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// reportEnv reports env/s and bytes-written/env for n envelopes.
func reportEnv(b *testing.B, n int, written0 int64) {
	b.StopTimer()
	storetest.ReportWrites(b, n, "env", written0)
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "env/s")
}

func BenchmarkRaw(b *testing.B) {
	// One 4 KiB append and fdatasync per envelope, one at a time.
	b.Run("append-fsync", func(b *testing.B) {
		f, buf := rawFile(b), make([]byte, 4096)
		w0 := storetest.WriteBytes()
		for b.Loop() {
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
			fdatasync(b, f)
		}
		reportEnv(b, b.N, w0)
	})
	// What a 16-envelope bbolt-style commit must write: 16 × 8 KiB,
	// fdatasync, a 4 KiB meta page, fdatasync (issue #13's limit).
	b.Run("batch16x8KiB-2sync", func(b *testing.B) {
		f, buf, meta := rawFile(b), make([]byte, protoBatch*8192), make([]byte, 4096)
		m, err := os.OpenFile(f.Name(), os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		w0 := storetest.WriteBytes()
		for b.Loop() {
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
			fdatasync(b, f)
			if _, err := m.WriteAt(meta, 0); err != nil {
				b.Fatal(err)
			}
			fdatasync(b, m)
		}
		reportEnv(b, b.N*protoBatch, w0)
	})
	// What a log commit writes: n records appended in one write, one
	// fdatasync; 16 as above, and 128, about the batch the store commits
	// at 256 putters (its env/commit), which is the disk's limit there.
	for _, n := range []int{protoBatch, 128} {
		b.Run(fmt.Sprintf("log%d-1sync", n), func(b *testing.B) {
			f, buf := rawFile(b), make([]byte, n*protoRecord)
			w0 := storetest.WriteBytes()
			for b.Loop() {
				if _, err := f.Write(buf); err != nil {
					b.Fatal(err)
				}
				fdatasync(b, f)
			}
			reportEnv(b, b.N*n, w0)
		})
	}
}

// protoDB opens a bbolt file laid out as issue #13 proposed: NoFreelistSync
// with the hashmap freelist and a 64 MiB AllocSize.
func protoDB(b *testing.B) *bolt.DB {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "proto.db"), 0o600,
		&bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	db.AllocSize = protoSegment
	b.Cleanup(func() { db.Close() })
	return db
}

// protoCommit writes one batch into the flat buckets env (mailbox hash ||
// seq -> value(i)), refs (hash || ref -> seq) and boxes (hash -> record),
// with FillPercent 1.0.
func protoCommit(db *bolt.DB, seq uint64, value func(i int) []byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		var bk [3]*bolt.Bucket
		for i, name := range []string{"env", "refs", "boxes"} {
			var err error
			if bk[i], err = tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
			bk[i].FillPercent = 1.0
		}
		for i := range protoBatch {
			var hid [32]byte
			hid[0] = byte(i % protoBoxes)
			k := binary.BigEndian.AppendUint64(hid[:], seq+uint64(i))
			ref := make([]byte, 32)
			rand.Read(ref)
			if err := bk[0].Put(k, value(i)); err != nil {
				return err
			}
			if err := bk[1].Put(append(hid[:], ref...), k[32:]); err != nil {
				return err
			}
			if err := bk[2].Put(hid[:], make([]byte, 64)); err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkLayout measures the candidate layouts, one 16-envelope group
// commit per op, single-threaded.
func BenchmarkLayout(b *testing.B) {
	sealed := make([]byte, protoSealed)
	rand.Read(sealed)
	// Envelopes inline in a flat, tuned bbolt bucket.
	b.Run("bbolt-flat-inline", func(b *testing.B) {
		db := protoDB(b)
		w0 := storetest.WriteBytes()
		for i := 0; b.Loop(); i++ {
			if err := protoCommit(db, uint64(i*protoBatch), func(int) []byte { return sealed }); err != nil {
				b.Fatal(err)
			}
		}
		reportEnv(b, b.N*protoBatch, w0)
	})
	// Envelopes out of line in an append-only log (fdatasync), the index
	// (segment, offset) in the tuned bbolt (two more fdatasyncs).
	b.Run("log+bbolt-index", func(b *testing.B) {
		db, f := protoDB(b), rawFile(b)
		buf := make([]byte, protoBatch*protoRecord)
		w0 := storetest.WriteBytes()
		for i := 0; b.Loop(); i++ {
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
			fdatasync(b, f)
			if err := protoCommit(db, uint64(i*protoBatch), func(int) []byte { return make([]byte, 48) }); err != nil {
				b.Fatal(err)
			}
		}
		reportEnv(b, b.N*protoBatch, w0)
	})
	// Everything in the log, the index in memory: one write and one
	// fdatasync per commit.
	b.Run("log+memory-index", func(b *testing.B) {
		f := rawFile(b)
		buf := make([]byte, protoBatch*protoRecord)
		index := make(map[[40]byte][3]uint64)
		w0 := storetest.WriteBytes()
		off := uint64(0)
		for i := 0; b.Loop(); i++ {
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
			fdatasync(b, f)
			for j := range protoBatch {
				var k [40]byte
				k[0] = byte(j % protoBoxes)
				binary.BigEndian.PutUint64(k[32:], uint64(i*protoBatch+j))
				index[k] = [3]uint64{0, off, protoRecord}
				off += protoRecord
			}
		}
		reportEnv(b, b.N*protoBatch, w0)
	})
}

// BenchmarkPutters is the store at 8, 64 and 256 concurrent putters of
// 4 KiB envelopes: env/s, env/commit and bytes-written/env.
func BenchmarkPutters(b *testing.B) {
	for _, n := range []int{8, 64, 256} {
		b.Run(putterName(n), func(b *testing.B) {
			s := openBench(b)
			storetest.BenchPutters(b, s, n)
		})
	}
}

func putterName(n int) string { return fmt.Sprintf("putters=%d", n) }
