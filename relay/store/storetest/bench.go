package storetest

import (
	"context"
	"encoding/binary"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/relay/store"
)

// BenchPut runs parallel putters of distinct 4 KiB envelopes spread over a
// few mailboxes of s, an empty store without quotas, and reports
// envelopes/s (and, for a store that counts commits, commits/s and
// envelopes/commit).
func BenchPut(b *testing.B, s store.Store) {
	ctx := context.Background()
	const boxes = 8
	for i := range boxes {
		if err := s.CreateMailbox(ctx, ID(i), Owner(i), nil); err != nil {
			b.Fatal(err)
		}
	}
	commits0 := s.Stats().Commits
	var seq atomic.Uint64
	b.SetParallelism(16) // 16 putters per CPU, like many sessions
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		env := Envelope(ID(0), 4096, 0)
		for pb.Next() {
			n := seq.Add(1)
			id := ID(int(n % boxes))
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

// BenchPutters runs exactly putters goroutines putting distinct 4 KiB
// envelopes into 8 mailboxes of s (an empty store without quotas) until
// b.N puts are done, and reports env/s, env/commit (for a store that
// counts commits) and bytes-written/env: the bytes this process caused to
// be written to storage (/proc/self/io write_bytes, which overcounts
// writes over a cached file, see WriteBytes; not reported where that file
// is missing) and, for a store that counts commits, dev-bytes-written/env:
// what the block device under os.TempDir (where benchmarks keep their
// stores) was sent, see DeviceWriteBytes.
func BenchPutters(b *testing.B, s store.Store, putters int) {
	ctx := context.Background()
	const boxes = 8
	for i := range boxes {
		if err := s.CreateMailbox(ctx, ID(i), Owner(i), nil); err != nil {
			b.Fatal(err)
		}
	}
	commits0, written0, dev0 := s.Stats().Commits, WriteBytes(), DeviceWriteBytes(os.TempDir())
	var seq atomic.Int64
	b.SetBytes(4096)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range putters {
		wg.Go(func() {
			env := Envelope(ID(0), 4096, 0)
			for {
				n := seq.Add(1)
				if n > int64(b.N) {
					return
				}
				id := ID(int(n % boxes))
				copy(env[2:], id[:])
				binary.BigEndian.PutUint64(env[2+32:], uint64(n)) // unique bytes: no dedupe
				if _, err := s.Put(ctx, id, env); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	ReportWrites(b, b.N, "env", written0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "env/s")
	if c := s.Stats().Commits - commits0; c > 0 {
		b.ReportMetric(float64(b.N)/float64(c), "env/commit")
		ReportDeviceWrites(b, b.N, "env", os.TempDir(), dev0)
	}
}

// WriteBytes returns the write_bytes counter of /proc/self/io: bytes this
// process caused to be written to storage (counted when pages are
// dirtied), or -1 if it cannot be read. Where the page cache keeps a file
// in large folios, dirtying part of a cached folio counts all of it, so
// writes over a recently written file count more than the device is sent:
// DeviceWriteBytes is the check.
func WriteBytes() int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// ReportWrites reports bytes-written/unit: the growth of WriteBytes since
// since, divided by n. It reports nothing if /proc/self/io is missing.
func ReportWrites(b *testing.B, n int, unit string, since int64) {
	if now := WriteBytes(); since >= 0 && now >= 0 && n > 0 {
		b.ReportMetric(float64(now-since)/float64(n), "bytes-written/"+unit)
	}
}

// ReportDeviceWrites reports dev-bytes-written/unit: the growth of
// DeviceWriteBytes(path) since since, divided by n, or nothing if the
// device's counter cannot be read.
func ReportDeviceWrites(b *testing.B, n int, unit, path string, since int64) {
	if now := DeviceWriteBytes(path); since >= 0 && now >= 0 && n > 0 {
		b.ReportMetric(float64(now-since)/float64(n), "dev-bytes-written/"+unit)
	}
}
