package main

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestApplyProcs: a durable store adds boltstore.ExtraProcs to the
// runtime's default; the memory store and an explicit GOMAXPROCS keep
// what the runtime has.
func TestApplyProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(def) })
	none := func(string) string { return "" }
	if got := applyProcs(false, none); got != def || runtime.GOMAXPROCS(0) != def {
		t.Fatalf("memory store: applyProcs = %d, GOMAXPROCS %d, want %d", got, runtime.GOMAXPROCS(0), def)
	}
	set := func(k string) string {
		if k == "GOMAXPROCS" {
			return "5"
		}
		return ""
	}
	if got := applyProcs(true, set); got != def || runtime.GOMAXPROCS(0) != def {
		t.Fatalf("GOMAXPROCS set: applyProcs = %d, GOMAXPROCS %d, want %d untouched", got, runtime.GOMAXPROCS(0), def)
	}
	if got := applyProcs(true, none); got != def+1 || runtime.GOMAXPROCS(0) != def+1 {
		t.Fatalf("durable store: applyProcs = %d, GOMAXPROCS %d, want %d", got, runtime.GOMAXPROCS(0), def+1)
	}
}

// TestRelayProcs: a real relay process exposes the GOMAXPROCS it chose:
// one more than the runtime's default with the durable store, the default
// with --dev (memory).
func TestRelayProcs(t *testing.T) {
	want := float64(runtime.GOMAXPROCS(0)) // the test binary's: the same default, or the same GOMAXPROCS variable
	extra := 1.0
	if os.Getenv("GOMAXPROCS") != "" {
		extra = 0
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want float64
	}{
		{"durable", nil, want + extra},
		{"memory", []string{"--dev"}, want},
	} {
		rp := startRelay(t, bin, filepath.Join(dir, c.name), c.args...)
		got, _ := scrape(t, metricsAddr(t, rp))
		if got["go_sched_gomaxprocs_threads"] != c.want {
			t.Errorf("%s relay: go_sched_gomaxprocs_threads = %v, want %v", c.name, got["go_sched_gomaxprocs_threads"], c.want)
		}
		rp.stop()
	}
}
