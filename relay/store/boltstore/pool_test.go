package boltstore

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"testing"

	"github.com/postern/postern/relay/store/storetest"
)

// Put builds each envelope's record in a pooled buffer that the committer
// gives back once it has copied it, so a Put of a 4 KiB envelope does not
// allocate the envelope's size. (Before the pool every Put allocated the
// sealed envelope, 4,124 bytes, on top of the rest.) Under the race
// detector sync.Pool drops a quarter of what it is given, so this test
// runs without it; .ci/run runs it so.
func TestPutRecordPooled(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector; .ci/run runs this test without it")
	}
	ctx := context.Background()
	s, err := Open(t.TempDir(), crashOpts)
	must(t, err)
	defer s.Close()
	s.compacting.Store(true) // no compaction's allocations in the count
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	const warm, n, size = 64, 256, 4096
	envs := make([][]byte, warm+n)
	for i := range envs {
		envs[i] = storetest.Envelope(id, size, i)
	}
	for _, env := range envs[:warm] {
		_, err := s.Put(ctx, id, env)
		must(t, err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, env := range envs[warm:] {
		_, err := s.Put(ctx, id, env)
		must(t, err)
	}
	runtime.ReadMemStats(&after)
	per := float64(after.TotalAlloc-before.TotalAlloc) / n
	t.Logf("%.0f bytes allocated per Put of a %d-byte envelope", per, size)
	if per >= size/2 {
		t.Errorf("a Put of a %d-byte envelope allocated %.0f bytes: the record buffer is not reused", size, per)
	}
	// Every envelope reads back whole (TestPutRecordPooledConcurrent is
	// the one that can see a buffer given back too early).
	items, err := s.Fetch(ctx, id, warm+n)
	must(t, err)
	if len(items) != warm+n {
		t.Fatalf("fetched %d envelopes, want %d", len(items), warm+n)
	}
	for i, it := range items {
		if string(it.Envelope) != string(envs[i]) {
			t.Fatalf("envelope %d came back different", i)
		}
	}
}

// Puts from many goroutines at once, more than one batch holds, so that
// while the committer applies one batch the Puts it has just answered
// take buffers for their next envelopes: a record buffer given back to
// the pool before the committer has copied it would be taken by one of
// them and written over. The race detector reports that (a mutant that
// gives the buffer back before the copy fails here under -race, as CI
// runs it); without it the overwrite is rarely seen.
func TestPutRecordPooledConcurrent(t *testing.T) {
	ctx := context.Background()
	opts := crashOpts
	opts.MaxBatch = 4
	s, err := Open(t.TempDir(), opts)
	must(t, err)
	defer s.Close()
	const putters, each, size = 32, 40, 1024
	for p := range putters {
		must(t, s.CreateMailbox(ctx, storetest.ID(p), storetest.Owner(p), nil))
	}
	var wg sync.WaitGroup
	for p := range putters {
		wg.Go(func() {
			id := storetest.ID(p)
			for i := range each {
				if _, err := s.Put(ctx, id, storetest.Envelope(id, size, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for p := range putters {
		id := storetest.ID(p)
		items, err := s.Fetch(ctx, id, each)
		must(t, err)
		if len(items) != each {
			t.Fatalf("mailbox %d holds %d envelopes, want %d", p, len(items), each)
		}
		for i, it := range items {
			if !bytes.Equal(it.Envelope, storetest.Envelope(id, size, i)) {
				t.Fatalf("mailbox %d, envelope %d came back different", p, i)
			}
		}
	}
}

// FetchAfter reads envelopes into pooled buffers, which Recycle gives
// back: fetching a page again after giving the last one back allocates
// far less than the envelopes' size. (Before the pool each fetched 4 KiB
// envelope allocated its sealed size, 4,124 bytes.) Without the race
// detector, as TestPutRecordPooled.
func TestFetchRecycled(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector; .ci/run runs this test without it")
	}
	ctx := context.Background()
	s, err := Open(t.TempDir(), crashOpts)
	must(t, err)
	defer s.Close()
	s.compacting.Store(true)
	id := storetest.ID(1)
	must(t, s.CreateMailbox(ctx, id, storetest.Owner(1), nil))
	const page, rounds, size = 16, 64, 4096
	envs := make([][]byte, page)
	for i := range envs {
		envs[i] = storetest.Envelope(id, size, i)
		_, err := s.Put(ctx, id, envs[i])
		must(t, err)
	}
	fetch := func() {
		items, err := s.FetchAfter(ctx, id, 0, page)
		must(t, err)
		if len(items) != page {
			t.Fatalf("fetched %d envelopes, want %d", len(items), page)
		}
		for i, it := range items {
			if !bytes.Equal(it.Envelope, envs[i]) {
				t.Fatalf("envelope %d came back different", i)
			}
		}
		s.Recycle(items)
		for i, it := range items {
			if it.Envelope != nil {
				t.Fatalf("item %d still holds its envelope after Recycle", i)
			}
		}
	}
	fetch() // fills the pool
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range rounds {
		fetch()
	}
	runtime.ReadMemStats(&after)
	per := float64(after.TotalAlloc-before.TotalAlloc) / (rounds * page)
	t.Logf("%.0f bytes allocated per fetched %d-byte envelope", per, size)
	if per >= size/2 {
		t.Errorf("fetching a %d-byte envelope allocated %.0f bytes: the read buffer is not reused", size, per)
	}
}
