package storetest

import (
	"context"
	"encoding/binary"
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
