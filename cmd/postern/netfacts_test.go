package main

import (
	"io"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// TestFactsUpdatesKept: processes updating POSTERN_HOME/networks at once
// (a recv --follow beside sends: here goroutines, each opening the lock
// file as a process does) each keep their change: until 2026-12-06 each
// read the file, changed its entry and wrote the whole file back, and
// the last writer erased what the others had written meanwhile.
func TestFactsUpdatesKept(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock: commands at once are not serialized on Windows")
	}
	path := filepath.Join(t.TempDir(), "networks")
	e := &env{stderr: io.Discard, getenv: func(string) string { return "" }}
	const writers, rounds = 8, 20
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			s := &factsStore{path: path, key: string(rune('a' + i))}
			for r := range rounds {
				s.update(e, func(f *netFacts) { f.RecvBudget = r + 1 })
			}
		})
	}
	wg.Wait()
	all := (&factsStore{path: path}).readAll()
	for i := range writers {
		if f := all[string(rune('a'+i))]; f.RecvBudget != rounds {
			t.Fatalf("writer %d's facts: %+v (of %d entries); want its last update", i, f, len(all))
		}
	}
}
