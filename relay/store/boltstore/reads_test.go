package boltstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/relay/store/storetest"
)

// parkFetch makes the next FetchAfter stop between its lookup and its
// reads: it returns a channel closed once the fetch is parked there and a
// function that lets it go on. The hook is removed when the test ends.
func parkFetch(t *testing.T) (parked <-chan struct{}, resume func()) {
	t.Helper()
	p, r := make(chan struct{}), make(chan struct{})
	first := true
	fetchReading = func() {
		if first {
			first = false
			close(p)
			<-r
		}
	}
	var once sync.Once
	resume = func() { once.Do(func() { close(r) }) }
	t.Cleanup(func() { resume(); fetchReading = nil })
	return p, resume
}

// fetched is what a FetchAfter started by fetchAsync returned.
type fetched struct {
	items []store.Item
	err   error
}

// fetchAsync fetches up to max envelopes of id in a goroutine of its own.
func fetchAsync(s *Store, id [store.IDSize]byte, max int) <-chan fetched {
	c := make(chan fetched, 1)
	go func() {
		items, err := s.Fetch(context.Background(), id, max)
		c <- fetched{items, err}
	}()
	return c
}

// checkFetched fails unless r holds the envelopes envs made for refs, in order.
func checkFetched(t *testing.T, r fetched, refs []store.Ref, id [store.IDSize]byte, size int) {
	t.Helper()
	must(t, r.err)
	if len(r.items) != len(refs) {
		t.Fatalf("the parked fetch returned %d envelopes, want the %d there when it looked", len(r.items), len(refs))
	}
	for i, it := range r.items {
		if it.Ref != refs[i] || !bytes.Equal(it.Envelope, storetest.Envelope(id, size, i)) {
			t.Fatalf("envelope %d differs", i)
		}
	}
}

// A FetchAfter reads outside the index lock: while one waits to read (as
// on a cold disk), Puts still commit. With the read under the lock the
// Put waits for the fetch, which waits for the Put: the test hangs, or
// fails after a minute.
func TestFetchReadsOutsideTheLock(t *testing.T) {
	ctx := context.Background()
	s, id, refs := ackSyncSetup(t, t.TempDir(), -1, 8)
	defer s.Close()
	parked, resume := parkFetch(t)
	done := fetchAsync(s, id, 0)
	<-parked
	put := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, id, storetest.Envelope(id, 512, 100))
		put <- err
	}()
	select {
	case err := <-put:
		must(t, err)
	case <-time.After(time.Minute): // a deadlock guard, not a timing: the Put never comes
		resume() // so that Close can end
		t.Fatal("a Put waited for a FetchAfter's disk reads: they hold the index lock")
	}
	resume()
	checkFetched(t, <-done, refs, id, 512)
}

// A segment compacted away while a fetch reads it stays open for that
// fetch, and its file, now the spare, is not written over until the fetch
// is done: the fetch returns the envelopes it looked up, not whatever a
// new segment wrote there.
func TestFetchReadAcrossCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, id, refs := skipSetup(t, dir)
	defer func() { s.Close() }()
	first := s.segs()[0]
	one := inSegment(t, s, id, refs, first.num)
	parked, resume := parkFetch(t)
	done := fetchAsync(s, id, len(one))
	<-parked
	// Every envelope of the first segment is copied to the end of the log
	// and the segment's file becomes the spare.
	must(t, s.compact(first.num, first.path))
	spare := filepath.Join(dir, LogDir, spareName)
	if _, err := os.Stat(spare); err != nil {
		t.Fatalf("the compacted segment is not the spare: %v", err)
	}
	// Fill two more segments: the first of them would be written over the
	// spare, and the second starts once it is full.
	newSegs := func() int { return len(s.segs()) }
	start := newSegs()
	for i := 0; newSegs() < start+2; i++ {
		_, err := s.Put(ctx, id, storetest.Envelope(id, 1024, 1000+i))
		must(t, err)
	}
	if _, err := os.Stat(spare); err != nil {
		t.Errorf("the spare was written over while a fetch still read it: %v", err)
	}
	resume()
	checkFetched(t, <-done, refs[:len(one)], id, 1024)
	s.rmu.Lock()
	orphans, reading := len(s.orphans), len(s.reading)
	s.rmu.Unlock()
	if orphans != 0 || reading != 0 {
		t.Errorf("after the fetch: %d files left open for readers, %d segments counted as read", orphans, reading)
	}
	// With its reader gone the spare is used again.
	start = newSegs()
	for i := 0; newSegs() < start+1; i++ {
		_, err := s.Put(ctx, id, storetest.Envelope(id, 1024, 2000+i))
		must(t, err)
	}
	if _, err := os.Stat(spare); !os.IsNotExist(err) {
		t.Errorf("the spare was not used again once its reader was done (%v)", err)
	}
}
