package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// BenchmarkSteadyState is the store as a relay that has run for a while
// uses it: each op puts a 4 KiB envelope and acks the one its putter put
// 32 ops before, so segments fill, compact and (with recycling) are
// written over the spare. Segments are 8 MiB here instead of 64 so that
// the warm-up (three segments' worth of ops, until a segment has been
// written over the spare) takes seconds; a segment's size does not change
// what one batch's write and fdatasync cost. recycle=off deletes compacted
// segments, so every batch appends to a new file, as before recycling.
// Reported: ops/s, fdatasyncs per op, and the latency of Put (one group
// commit) at p50, p99 and p99.9 in ms, with raw-append and raw-overwrite
// (an 8 KiB write and fdatasync at the end of a growing file, and over
// blocks a file already has) timed in the same run.
func BenchmarkSteadyState(b *testing.B) {
	for _, putters := range []int{1, 64} {
		for _, recycle := range []bool{true, false} {
			name := fmt.Sprintf("putters=%d/recycle=%v", putters, map[bool]string{true: "on", false: "off"}[recycle])
			b.Run(name, func(b *testing.B) { steadyState(b, putters, recycle) })
		}
	}
}

func steadyState(b *testing.B, putters int, recycle bool) {
	defer func(n int64, r bool, p func(string)) { segmentBytes, recycleSegments, crashPoint = n, r, p }(segmentBytes, recycleSegments, crashPoint)
	segmentBytes, recycleSegments = 8<<20, recycle
	var reused, created atomic.Int64
	crashPoint = func(step string) {
		switch step {
		case stepSpareRenamed:
			reused.Add(1)
		case stepSegmentRenamed:
			created.Add(1)
		}
	}
	ctx := context.Background()
	dir := b.TempDir()
	s, err := Open(dir, store.Options{IDKey: testKey, MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for p := range putters {
		if err := s.CreateMailbox(ctx, storetest.ID(p), storetest.Owner(p), nil); err != nil {
			b.Fatal(err)
		}
	}
	const lag = 32
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	timed := false
	// run does n ops over the putters; each putter owns a mailbox.
	run := func(n int64) {
		next.Store(0)
		var wg sync.WaitGroup
		for p := range putters {
			wg.Go(func() {
				id := storetest.ID(p)
				env := storetest.Envelope(id, 4096, p)
				var refs []store.Ref
				var mine []time.Duration
				for {
					i := next.Add(1)
					if i > n {
						break
					}
					binary.BigEndian.PutUint64(env[2+32:], uint64(i)) // unique bytes
					t0 := time.Now()
					ref, err := s.Put(ctx, id, env)
					if err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
					refs = append(refs, ref)
					if len(refs) > lag {
						if _, err := s.Ack(ctx, id, refs[0]); err != nil {
							b.Error(err)
							return
						}
						refs = refs[1:]
					}
				}
				for _, ref := range refs {
					s.Ack(ctx, id, ref)
				}
				mu.Lock()
				if timed {
					lat = append(lat, mine...)
				}
				mu.Unlock()
			})
		}
		wg.Wait()
	}
	opsPerSegment := segmentBytes / 4400
	for w := 0; w < 8; w++ { // warm up: until a segment was written over the spare (or 8 segments' worth)
		run(opsPerSegment)
		if reused.Load() > 0 || (!recycle && created.Load() >= 2) {
			break
		}
	}
	if recycle && reused.Load() == 0 {
		b.Fatal("no segment was written over the spare in the warm-up")
	}
	syncs0, reused0, created0 := s.Stats().Commits, reused.Load(), created.Load()
	timed = true
	b.ResetTimer()
	run(int64(b.N))
	b.StopTimer()
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/secs, "ops/s")
	b.ReportMetric(float64(s.Stats().Commits-syncs0)/float64(b.N), "syncs/op")
	b.ReportMetric(float64(reused.Load()-reused0), "segs-recycled")
	b.ReportMetric(float64(created.Load()-created0), "segs-new")
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	if len(lat) > 0 {
		b.ReportMetric(q(.5), "put-p50-ms")
		b.ReportMetric(q(.99), "put-p99-ms")
		b.ReportMetric(q(.999), "put-p99.9-ms")
	}
	ra, ro := rawSyncs(b, filepath.Join(dir, "raw"), 2000)
	b.ReportMetric(ra, "raw-append-p50-ms")
	b.ReportMetric(ro, "raw-overwrite-p50-ms")
}

// rawSyncs times n 8 KiB writes each followed by fdatasync, appended to a
// new file and then written over it, and returns each one's median in ms.
func rawSyncs(b *testing.B, path string, n int) (appendMs, overwriteMs float64) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 8192)
	med := func() float64 {
		lat := make([]time.Duration, n)
		for i := range n {
			t0 := time.Now()
			if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
				b.Fatal(err)
			}
			if err := fdatasync(f); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(t0)
		}
		slices.Sort(lat)
		return float64(lat[n/2]) / 1e6
	}
	return med(), med()
}
